"""One per-batch measurement of the model check, shared by :func:`salaug.diagnose` and
:class:`salaug.SaliencyMonitor`: the three CAMs of one layer and the localisation scores of their maps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from salaug.cam import AblationCAM, EigenCAM, GradCAM
from salaug.cam.base import BaseCAM
from salaug.diagnosis.scores import evidence_score
from salaug.metrics import localisation_score

__all__ = ["CAM_ROLES", "PARTS", "check_cams", "score_maps"]

#: method -> what it checks; the order of the report's columns.
CAM_ROLES: dict[str, str] = {"gradcam": "reference", "eigencam": "backbone", "ablationcam": "head"}
#: The columns of :func:`score_maps` with boxes (without boxes: ``score`` only).
PARTS = ("score", "pointing", "energy")


def check_cams(model: nn.Module, layer: str | nn.Module | None, *, ablation_batch_size: int = 256,
               methods: tuple[str, ...] = tuple(CAM_ROLES)) -> dict[str, BaseCAM]:
    """The CAMs of the model check on one target layer: GradCAM (reference), EigenCAM (backbone),
    AblationCAM (head); ``methods`` picks a subset.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> sorted(check_cams(net, "1"))
        ['ablationcam', 'eigencam', 'gradcam']
    """
    build = {"gradcam": lambda: GradCAM(model, layer), "eigencam": lambda: EigenCAM(model, layer),
             "ablationcam": lambda: AblationCAM(model, layer, batch_size=ablation_batch_size)}
    return {m: build[m]() for m in methods}


def score_maps(maps: Mapping[str, Tensor], boxes: Tensor | None, *, model: nn.Module | None = None,
               images: Tensor | None = None, targets: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image localisation scores of each method's maps.

    With true boxes, :func:`salaug.metrics.localisation_score` (columns :data:`PARTS`: the score,
    the pointing game and the energy inside the box); without, the box-free
    :func:`salaug.diagnosis.evidence_score` (one column; needs ``model``, ``images``, ``targets``).

    Args:
        maps: method -> ``(B, 1, H, W)`` maps.
        boxes: ``(B, 4)`` xyxy pixel boxes, or ``None``.
        model, images, targets: for the evidence score (without boxes).

    Returns:
        method -> ``(B, 3)`` (boxes) or ``(B, 1)`` float32 scores.

    Example:
        >>> m = torch.zeros(1, 1, 8, 8)
        >>> m[0, 0, 2, 2] = 1.0
        >>> score_maps({"eigencam": m}, torch.tensor([[0.0, 0.0, 4.0, 4.0]]))["eigencam"].tolist()
        [[1.0, 1.0, 1.0]]
    """
    if boxes is not None:
        return {m: torch.stack([v.float() for v in localisation_score(s, boxes)], 1) for m, s in maps.items()}
    if model is None or images is None or targets is None:
        raise ValueError("score_maps without boxes needs model=, images= and targets= (the evidence score)")
    return {m: evidence_score(model, images, s, targets).unsqueeze(1) for m, s in maps.items()}
