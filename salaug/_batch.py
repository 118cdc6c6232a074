"""Reading one field of a sample or a batch (tuple, list or dict), with errors that name the key to fix.

The one accessor used wherever salaug reads a field by ``image_key`` / ``label_key`` /
``box_key`` / ``mask_key``: the Lightning callback and monitor (batches), the collate path and the
mask precompute (samples).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["get_field", "field_position"]


def _describe(container: object, key: object, kind: str) -> str:
    if isinstance(container, Mapping):
        return f"key {key!r} (the {kind} has keys {sorted(map(str, container.keys()))})"
    return f"position {key!r} (the {kind} has {len(container)} fields)"  # type: ignore[arg-type]


def get_field(container: object, key: object, what: str, arg: str, *, kind: str = "sample") -> Any:
    """``container[key]`` for a tuple / list / dict, with an error that says which argument to fix.

    Args:
        container: a sample or a batch: a tuple, list or mapping.
        key: an int position (tuple / list) or a key (mapping).
        what: what the field holds, for the message (``"images"``).
        arg: the argument that chose ``key`` (``"image_key"``).
        kind: ``"sample"`` or ``"batch"``, for the message.

    Returns:
        The field.

    Raises:
        KeyError: a mapping without ``key``.
        IndexError: a position outside the tuple / list.
        TypeError: a non-int position for a tuple / list, or a container of another type.

    Example:
        >>> get_field({"image": 1, "label": 2}, "label", "labels", "label_key")
        2
        >>> get_field((1, 2), 3, "labels", "label_key")
        Traceback (most recent call last):
        ...
        IndexError: the labels are not at position 3 (the sample has 2 fields); pass label_key=<its position>
    """
    kinds = kind + ("es" if kind.endswith("ch") else "s")
    if isinstance(container, Mapping):
        if key not in container:
            raise KeyError(f"the {what} are not at {_describe(container, key, kind)}; pass {arg}=<its key>")
        return container[key]
    if isinstance(container, (tuple, list)):
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"{arg} must be an int position for tuple/list {kinds}, got {key!r}")
        if not -len(container) <= key < len(container):
            raise IndexError(f"the {what} are not at {_describe(container, key, kind)}; pass {arg}=<its position>")
        return container[key]
    raise TypeError(f"{kinds} must be tuples, lists or dicts (e.g. (image, label)), got {type(container).__name__}")


def field_position(key: int | str, n: int) -> int | str:
    """The non-negative position of ``key`` in an ``n``-field tuple (a str key is returned as is).

    Example:
        >>> field_position(-1, 3), field_position("image", 3)
        (2, 'image')
    """
    return key % n if isinstance(key, int) else key
