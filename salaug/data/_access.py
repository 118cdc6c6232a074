"""Reading fields from samples and batches: tuples, lists and dicts alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any



# ---------------------------------------------------------------------------------------------
# Sample access helpers
# ---------------------------------------------------------------------------------------------
def _describe_key(sample: object, key: object) -> str:
    if isinstance(sample, Mapping):
        return f"key {key!r} (the sample has keys {sorted(map(str, sample.keys()))})"
    return f"position {key!r} (the sample has {len(sample)} fields)"  # type: ignore[arg-type]


def _get(sample: object, key: object, what: str, arg: str) -> Any:
    """``sample[key]`` for a tuple/list/dict sample, with an error that says which argument to fix."""
    if isinstance(sample, Mapping):
        if key not in sample:
            raise KeyError(f"the {what} is not at {_describe_key(sample, key)}; pass {arg}=<its key>")
        return sample[key]
    if isinstance(sample, (tuple, list)):
        if not isinstance(key, int):
            raise TypeError(f"{arg} must be an int position for tuple/list samples, got {key!r}")
        if not -len(sample) <= key < len(sample):
            raise IndexError(f"the {what} is not at {_describe_key(sample, key)}; pass {arg}=<its position>")
        return sample[key]
    raise TypeError(
        f"samples must be tuples, lists or dicts (e.g. (image, label)), got {type(sample).__name__}"
    )


def _position(key: int, n: int) -> int:
    return key % n if isinstance(key, int) else key  # type: ignore[return-value]
