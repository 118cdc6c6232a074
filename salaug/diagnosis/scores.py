"""Per-image measures of the diagnosis that need the model: the box-free evidence score.

The box scores (:func:`salaug.metrics.localisation_score`, :func:`salaug.metrics.box_energy`,
:func:`salaug.metrics.box_share`) live in :mod:`salaug.metrics`; they are re-exported here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from salaug.cam.base import eval_mode
from salaug.metrics import box_energy, box_share, localisation_score

__all__ = ["DELETE_FRACTION", "box_energy", "box_share", "evidence_score", "localisation_score"]

#: Share of pixels the evidence score removes from each image (its top, then its bottom).
DELETE_FRACTION = 0.2


def _delete(images: Tensor, saliency: Tensor, top: bool, fraction: float) -> Tensor:
    """Replace each image's top (or bottom) ``fraction`` of map pixels by its mean colour."""
    b, _, h, w = images.shape
    flat = saliency.to(torch.float32).flatten(1)
    k = max(1, round(fraction * h * w))
    idx = flat.topk(k, dim=1, largest=top).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view(b, 1, h, w)
    fill = images.mean(dim=(2, 3), keepdim=True)
    return torch.where(mask, fill, images)


def evidence_score(
    model: nn.Module, images: Tensor, saliency: Tensor, targets: Tensor, *, fraction: float = DELETE_FRACTION
) -> Tensor:
    """The box-free score of :func:`salaug.diagnose`: how much class evidence lies under the map's peak.

    ``clamp((p_bottom - p_top) / p, 0, 1)`` where ``p`` is the softmax probability of the target
    class, ``p_top`` / ``p_bottom`` the same after replacing the map's top / bottom ``fraction`` of
    pixels with the image's mean colour. One no-grad forward of the three batches, in eval mode
    (each module's own mode is restored afterwards). A map unrelated to what the model uses scores
    about 0; a shortcut the model uses counts as evidence (pass boxes to detect one).

    Args:
        model: the classifier (returns ``(B, K)`` logits).
        images: ``(B, C, H, W)`` float images.
        saliency: ``(B, 1, H, W)`` maps at the images' size.
        targets: ``(B,)`` long class indices.
        fraction: share of pixels removed, in ``(0, 1)``.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.
    """
    with eval_mode(model), torch.no_grad():
        top, bottom = _delete(images, saliency, True, fraction), _delete(images, saliency, False, fraction)
        probs = model(torch.cat([images, top, bottom])).float().softmax(dim=1)
        p = probs.gather(1, targets.repeat(3).unsqueeze(1)).squeeze(1).view(3, -1)
    return ((p[2] - p[1]) / p[0].clamp_min(1e-12)).clamp(0, 1)
