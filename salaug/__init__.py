"""salaug: saliency-guided data augmentation for PyTorch."""

from salaug import boxes
from salaug._checks import normalize_saliency, set_value_checks
from salaug.transforms import SalientBatch, SaliencyTransform

__version__ = "0.1.0"
