"""Saliency-guided transforms: crop, mix, paste (pad) and keep.

Each is called ``t(images, saliency, labels)`` and returns a :class:`SalientBatch` whose labels are
``(B, K)`` soft labels, so transforms chain and ``F.cross_entropy(logits, labels)`` works unchanged.
"""

from salaug.transforms.base import Params, SalientBatch, SaliencyTransform
from salaug.transforms.crop import SalientCrop
from salaug.transforms.erase import KeepCutout
from salaug.transforms.labels import mix_soft_labels, to_soft_labels
from salaug.transforms.mix import AttentiveCutMix, GuidedMixup, SaliencyMix, SnapMix
from salaug.transforms.paste import SalientPaste

__all__ = [
    "AttentiveCutMix",
    "GuidedMixup",
    "KeepCutout",
    "Params",
    "SaliencyMix",
    "SaliencyTransform",
    "SalientBatch",
    "SalientCrop",
    "SalientPaste",
    "SnapMix",
    "mix_soft_labels",
    "to_soft_labels",
]
