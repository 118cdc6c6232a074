"""salaug: saliency-guided data augmentation for PyTorch.

CAMs computed batched on the model's device (``salaug.GradCAM`` and family), transforms that crop,
mix or paste salient regions with correctly mixed soft labels (``salaug.SaliencyMix`` and family),
a Lightning callback that runs both inside the training loop (``salaug.SaliencyAugmentation``), and
a DataLoader path (``salaug.SaliencyCollate``).
"""

from salaug import boxes
from salaug._checks import normalize_saliency, set_value_checks
from salaug.callback import SaliencyAugmentation
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
from salaug.data import CAMSaliency, MaskBank, MaskedDataset, SaliencyCollate, precompute_masks
from salaug.datasets import ClutteredObjects
from salaug.metrics import box_iou, cam_box_iou, label_fidelity, pointing_game
from salaug.monitor import SaliencyMonitor
from salaug.saliency import SpectralResidual
from salaug.transforms import (
    AttentiveCutMix,
    GuidedMixup,
    KeepCutout,
    SaliencyMix,
    SaliencyTransform,
    SalientBatch,
    SalientCrop,
    SalientPaste,
    SnapMix,
)

__version__ = "0.1.0"

__all__ = [
    "CAM_METHODS",
    "AblationCAM",
    "AttentiveCutMix",
    "BaseCAM",
    "CAMSaliency",
    "ClutteredObjects",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedMixup",
    "HiResCAM",
    "KeepCutout",
    "LayerCAM",
    "MaskBank",
    "MaskedDataset",
    "SaliencyAugmentation",
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
    "AblationCAM",
    "box_iou",
    "boxes",
    "cam_box_iou",
    "create_cam",
    "label_fidelity",
    "normalize_saliency",
    "pointing_game",
    "precompute_masks",
    "set_value_checks",
    "vit_reshape",
]
