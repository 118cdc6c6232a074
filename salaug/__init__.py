"""salaug: saliency-guided data augmentation for PyTorch.

CAMs computed batched on the model's device (``salaug.GradCAM`` and family), transforms that crop,
mix or paste salient regions with correctly mixed soft labels (``salaug.SaliencyMix`` and family),
a Lightning callback that runs both inside the training loop (``salaug.SaliencyAugmentation``), and
a DataLoader path (``salaug.SaliencyCollate``).
"""

from salaug import boxes
from salaug.cam import (
    CAM_METHODS,
    AblationCAM,
    BaseCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    create_cam,
    vit_reshape,
)
from salaug.data import (
    CAMSaliency,
    MaskBank,
    MaskedDataset,
    SaliencyCollate,
    precompute_masks,
)
from salaug.datasets import ClutteredObjects
from salaug.metrics import box_iou, cam_box_iou, label_fidelity, pointing_game
from salaug.saliency import SpectralResidual, normalize_saliency
from salaug.transforms import (
    AttentiveCutMix,
    GuidedMixup,
    KeepCutout,
    PuzzleMix,
    ResizeMix,
    SaliencyMix,
    SaliencyTransform,
    SalientBatch,
    SalientCrop,
    SalientPaste,
    SnapMix,
    crop_flip,
)
from salaug.validation import set_value_checks

__version__ = "0.3.0"

# The Lightning callbacks are imported on first use: importing Lightning costs seconds, which every
# DataLoader worker started with spawn and every transform-only user would otherwise pay.
_LAZY = {
    "SaliencyAugmentation": "salaug.callback",
    "SaliencyMonitor": "salaug.monitor",
    "SaliencyAugmenter": "salaug.augmenter",
    "Diagnosis": "salaug.diagnosis",
    "diagnose": "salaug.diagnosis",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'salaug' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

__all__ = [
    "CAM_METHODS",
    "AblationCAM",
    "AttentiveCutMix",
    "BaseCAM",
    "CAMSaliency",
    "ClutteredObjects",
    "Diagnosis",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedMixup",
    "HiResCAM",
    "KeepCutout",
    "LayerCAM",
    "MaskBank",
    "MaskedDataset",
    "PuzzleMix",
    "ResizeMix",
    "SaliencyAugmentation",
    "SaliencyAugmenter",
    "SaliencyCollate",
    "SaliencyMix",
    "SaliencyMonitor",
    "SaliencyTransform",
    "SalientBatch",
    "SalientCrop",
    "SalientPaste",
    "ScoreCAM",
    "SnapMix",
    "SpectralResidual",
    "XGradCAM",
    "box_iou",
    "boxes",
    "cam_box_iou",
    "create_cam",
    "crop_flip",
    "diagnose",
    "label_fidelity",
    "normalize_saliency",
    "pointing_game",
    "precompute_masks",
    "set_value_checks",
    "vit_reshape",
]
