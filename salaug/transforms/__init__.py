"""Saliency-guided transforms: crop, mix, paste (pad) and keep.

Each is called ``t(images, saliency, labels, *, num_classes=None, params=None, return_params=False,
generator=None)`` and returns a :class:`SalientBatch` whose labels are ``(B, K)`` soft labels, so
transforms chain and ``F.cross_entropy(logits, labels)`` works unchanged. Constructors take
``num_classes`` as their only positional argument. The mixes share :class:`MixTransform`.
"""

from salaug.transforms.base import (
    MixTransform,
    Params,
    ParamsRecord,
    SaliencyTransform,
    SalientBatch,
)
from salaug.transforms.crop import SalientCrop
from salaug.transforms.erase import KeepCutout
from salaug.transforms.labels import mix_soft_labels, to_soft_labels
from salaug.transforms.mix import (
    AttentiveCutMix,
    GuidedMixup,
    ResizeMix,
    SaliencyMix,
    SnapMix,
)
from salaug.transforms.paste import SalientPaste
from salaug.transforms.puzzle import PuzzleMix
from salaug.transforms.recipe import crop_flip
from salaug.transforms.registry import TRANSFORM_NAMES, TRANSFORMS, TransformSpec, create_transform

__all__ = [
    "AttentiveCutMix",
    "GuidedMixup",
    "KeepCutout",
    "MixTransform",
    "Params",
    "ParamsRecord",
    "PuzzleMix",
    "ResizeMix",
    "SaliencyMix",
    "SaliencyTransform",
    "SalientBatch",
    "SalientCrop",
    "SalientPaste",
    "SnapMix",
    "TRANSFORMS",
    "TRANSFORM_NAMES",
    "TransformSpec",
    "create_transform",
    "crop_flip",
    "mix_soft_labels",
    "to_soft_labels",
]
