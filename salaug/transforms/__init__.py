"""Saliency-guided transforms: crop, mix, paste (pad) and keep."""

from salaug.transforms.base import Params, SalientBatch, SaliencyTransform
from salaug.transforms.labels import mix_soft_labels, to_soft_labels

__all__ = ["Params", "SalientBatch", "SaliencyTransform", "mix_soft_labels", "to_soft_labels"]
