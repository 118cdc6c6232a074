"""Saliency from a model: batched, on-device, side-effect-free class activation maps.

Every method takes ``(model, target_layer=None, *, reshape=None)`` and is called as
``cam(images (B, C, H, W), targets=None, *, output_size=None) -> (B, 1, H, W)`` float32 in
``[0, 1]``. Images of any float dtype are cast to the model's; NaN / inf inputs raise where value
checks run, and no method ever returns a NaN map (such an image's map is all zeros). See
:mod:`salaug.cam.base` for these rules and :class:`salaug.cam.base.BaseCAM` for the contract and
the fused ``record()`` mode.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 5))
    >>> cam = create_cam("gradcam", net)          # target layer found automatically
    >>> sal = cam(torch.rand(4, 3, 16, 16))        # predicted classes
    >>> sal.shape, cam.target_layer_name
    (torch.Size([4, 1, 16, 16]), '1')
    >>> bool(sal.min() >= 0) and bool(sal.max() <= 1)
    True
"""

from __future__ import annotations

from typing import Any

from torch import nn

from salaug.cam.attention import attention_input, cls_attention, find_attention, tokens_from_mask
from salaug.cam.base import BaseCAM
from salaug.cam.eigen import EigenCAM
from salaug.cam.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from salaug.cam.layers import vit_reshape
from salaug.cam.perturbation import AblationCAM, ScoreCAM

__all__ = [
    "BaseCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "EigenCAM",
    "ScoreCAM",
    "AblationCAM",
    "CAM_METHODS",
    "create_cam",
    "vit_reshape",
    "find_attention",
    "attention_input",
    "cls_attention",
    "tokens_from_mask",
]

#: name -> class, the names accepted by :func:`create_cam` (and by the callback's ``cam=``).
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}


def create_cam(
    name_or_cam: str | BaseCAM | type[BaseCAM], model: nn.Module, target_layer: Any = None, **kwargs: Any
) -> BaseCAM:
    """Build a CAM from a registry name, or pass an existing CAM object through.

    Args:
        name_or_cam: a key of :data:`CAM_METHODS` (case-insensitive; ``"gradcampp"`` is accepted
            for ``"gradcam++"``), a :class:`BaseCAM` subclass, or an already-built CAM (returned
            unchanged; ``model`` / ``target_layer`` / ``kwargs`` are then ignored).
        model: the classifier.
        target_layer: as for :class:`BaseCAM`.
        **kwargs: further constructor keywords (``reshape=``, ``batch_size=``).

    Returns:
        A :class:`BaseCAM` instance.

    Raises:
        ValueError: unknown name (the valid ones are listed).
        TypeError: anything else.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.LazyLinear(2))
        >>> type(create_cam("GradCAM++", net, "0")).__name__
        'GradCAMPlusPlus'
    """
    if isinstance(name_or_cam, BaseCAM):
        return name_or_cam
    if isinstance(name_or_cam, type) and issubclass(name_or_cam, BaseCAM):
        return name_or_cam(model, target_layer, **kwargs)
    if isinstance(name_or_cam, str):
        key = name_or_cam.strip().lower().replace("_", "").replace("-", "")
        key = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(key, key)
        if key not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {name_or_cam!r}; valid names: {sorted(CAM_METHODS)}")
        return CAM_METHODS[key](model, target_layer, **kwargs)
    raise TypeError(
        f"name_or_cam must be a CAM name ({sorted(CAM_METHODS)}), a BaseCAM subclass or instance, "
        f"got {type(name_or_cam).__name__}"
    )
