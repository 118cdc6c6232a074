"""Transform names and their builders: the one table behind ``salaug demo`` and the benchmarks.

A name (``"snapmix"``, ``"cutmix"``, ``"none"``, ...) maps to a :class:`TransformSpec`: the
transform class, the constructor defaults the name stands for, and whether the transform reads
saliency. :func:`create_transform` builds one, with the caller's options on top of those defaults;
``"none"`` (no transform) builds ``None``.

Two names are saliency-free (:data:`SALIENCY_FREE`): ``"cutmix"`` is :class:`SaliencyMix` meant to
be fed a flat saliency map (its box centre then falls back to a uniform random point: plain CutMix
through the same code path and label rule, which isolates what the saliency adds), and
``"resizemix"`` is :class:`ResizeMix` (the whole partner image resized into a box). A caller feeds
those a flat map instead of computing a CAM per batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from salaug.transforms.base import SaliencyTransform
from salaug.transforms.crop import SalientCrop
from salaug.transforms.erase import KeepCutout
from salaug.transforms.mix import (
    AttentiveCutMix,
    GuidedMixup,
    ResizeMix,
    SaliencyMix,
    SnapMix,
)
from salaug.transforms.paste import SalientPaste
from salaug.transforms.puzzle import PuzzleMix

__all__ = ["NO_TRANSFORM", "SALIENCY_FREE", "TRANSFORMS", "TRANSFORM_NAMES", "TransformSpec", "create_transform"]


@dataclass(frozen=True)
class TransformSpec:
    """What a transform name stands for.

    Attributes:
        cls: the transform class.
        defaults: constructor keywords the name sets (the caller's options override them).
        reads_saliency: ``False`` for a saliency-free method, which its caller feeds a flat map.
    """

    cls: type[SaliencyTransform]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    reads_saliency: bool = True


#: name -> :class:`TransformSpec`. The crops and cutouts keep one class per image and default to
#: ``p=1``; their names set ``p=0.5``, the mixes' own default, so every name augments half a batch.
TRANSFORMS: Mapping[str, TransformSpec] = MappingProxyType({
    "saliencymix": TransformSpec(SaliencyMix),
    "snapmix": TransformSpec(SnapMix),
    "salientcrop": TransformSpec(SalientCrop, {"p": 0.5}),
    "keepcutout": TransformSpec(KeepCutout, {"p": 0.5}),
    "guidedmixup": TransformSpec(GuidedMixup),
    "salientpaste": TransformSpec(SalientPaste),
    "attentivecutmix": TransformSpec(AttentiveCutMix),
    "puzzlemix": TransformSpec(PuzzleMix),
    "cutmix": TransformSpec(SaliencyMix, reads_saliency=False),
    "resizemix": TransformSpec(ResizeMix, reads_saliency=False),
})
#: the name of "no transform" (:func:`create_transform` returns ``None``)
NO_TRANSFORM = "none"
#: every name :func:`create_transform` accepts, ``"none"`` last
TRANSFORM_NAMES: tuple[str, ...] = (*TRANSFORMS, NO_TRANSFORM)
#: the names whose transform reads no saliency (fed a flat map)
SALIENCY_FREE: tuple[str, ...] = tuple(name for name, spec in TRANSFORMS.items() if not spec.reads_saliency)


def create_transform(name: str, num_classes: int | None = None, **options: Any) -> SaliencyTransform | None:
    """Build the transform a name stands for, with ``options`` over the name's defaults.

    Args:
        name: one of :data:`TRANSFORM_NAMES`.
        num_classes: number of classes ``K`` of the labels (passed to the constructor).
        **options: further constructor keywords, e.g. ``p=1.0`` or ``labels="area"``.

    Returns:
        The transform, or ``None`` for ``"none"`` (which takes no options).

    Raises:
        ValueError: an unknown name, or an option the transform's constructor does not take
            (both messages list the valid choices).

    Example:
        >>> create_transform("snapmix", 10)  # doctest: +ELLIPSIS
        SnapMix(num_classes=10, ...)
        >>> create_transform("salientcrop", 10).p, create_transform("salientcrop", 10, p=1.0).p
        (0.5, 1.0)
        >>> create_transform("none") is None
        True
    """
    if name == NO_TRANSFORM and not options:
        return None
    if name == NO_TRANSFORM:
        raise ValueError(f"transform 'none' takes no options, got {sorted(options)}")
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORM_NAMES)}")
    spec = TRANSFORMS[name]
    accepted = set(inspect.signature(spec.cls.__init__).parameters) - {"self", "num_classes", "args", "kwargs"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"transform {name!r} ({spec.cls.__name__}) has no option {', '.join(unknown)}; "
                         f"its options are {', '.join(sorted(accepted))}")
    return spec.cls(num_classes, **{**spec.defaults, **options})
