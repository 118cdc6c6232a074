"""Localisation and label metrics, batched (no Python loop over samples, no host sync).

Boxes are ``(x1, y1, x2, y2)`` in pixels, **half-open**: pixel ``(i, j)`` (row ``i``, column
``j``, covering ``[j, j + 1) x [i, i + 1)``) is inside iff ``x1 <= j < x2`` and ``y1 <= i < y2``;
the width is ``x2 - x1``. These are the boxes :class:`salaug.datasets.ClutteredObjects` returns.

Inputs are checked like everywhere in salaug: shapes and types always, values (NaN / inf in maps
and boxes, masks outside ``[0, 1]``, indices out of range) where value checks run (CPU tensors by
default, see :func:`salaug.set_value_checks`). With value checks off a NaN map counts as a map
without a peak: a pointing-game miss and the whole-image box of :func:`saliency_box`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug._checks import check_finite, check_float, check_saliency_shape, size_pair, value_checks_on
from salaug.boxes import box_area, box_mask

__all__ = [
    "box_energy",
    "box_iou",
    "box_share",
    "cam_box_iou",
    "label_fidelity",
    "localisation_score",
    "mix_visibility",
    "pointing_game",
    "saliency_box",
    "visible_fraction",
]


def _check_maps(saliency: object, name: str = "saliency") -> Tensor:
    """The shared saliency shape check, plus finite values (value checks)."""
    saliency = check_saliency_shape(saliency, name)
    check_finite(
        saliency, name, "metrics need finite maps (salaug's CAMs never return NaN; check where they come from)"
    )
    return saliency


def _check_boxes(boxes: object, batch: int, name: str = "boxes") -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 4), got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch}, 4) as xyxy boxes, got {tuple(boxes.shape)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{name} must hold real pixel coordinates, got {boxes.dtype}")
    check_finite(boxes, name, "boxes must be finite (x1, y1, x2, y2) pixel coordinates")
    return boxes


def _check_image_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = size_pair(image_size)
    if size is not None:
        return size
    raise ValueError(
        f"image_size must be None or the (H, W) the boxes refer to, as positive ints, got {image_size!r}"
    )


def _resize(saliency: Tensor, image_size: object) -> Tensor:
    size = _check_image_size(image_size)
    if size is None or tuple(saliency.shape[-2:]) == size:
        return saliency
    return F.interpolate(saliency.float(), size=size, mode="bilinear", align_corners=False)


def pointing_game(
    saliency: Tensor,
    boxes: Tensor,
    tolerance: float = 0.0,
    image_size: tuple[int, int] | None = None,
) -> Tensor:
    """Pointing game (Zhang et al. 2016): does each map's peak fall on the object?

    The peak is the first arg-max pixel; it is a hit if the distance from its centre to the
    (closed) box is at most ``tolerance`` pixels, so with ``tolerance=0`` and integer boxes the
    peak pixel must lie in the half-open box (the original protocol uses 15 px at ImageNet resolution).
    A constant map (e.g. all zero) has no peak and always misses.

    Args:
        saliency: ``(B, 1, h, w)`` (or ``(B, h, w)``) float maps.
        boxes: ``(B, 4)`` half-open ``xyxy`` boxes in pixels of the (resized) map.
        tolerance: hit radius in pixels around the box.
        image_size: ``(H, W)`` the boxes refer to; the maps are resized bilinearly to it first.
            ``None``: the boxes are in the maps' own pixel grid.

    Returns:
        ``(B,)`` bool, on the maps' device.

    Raises:
        TypeError: non-tensor or integer maps, a ``tolerance`` that is not a number.
        ValueError: bad shapes, a negative or non-finite ``tolerance``, a bad ``image_size``,
            NaN / inf in the maps or boxes (value checks).

    Example:
        >>> s = torch.zeros(2, 1, 8, 8)
        >>> s[0, 0, 2, 3] = 1.0  # peak at x=3, y=2
        >>> s[1, 0, 7, 7] = 1.0
        >>> pointing_game(s, torch.tensor([[2.0, 1.0, 5.0, 4.0], [2.0, 1.0, 5.0, 4.0]])).tolist()
        [True, False]
    """
    saliency = _resize(_check_maps(saliency), image_size)
    b, _, _, w = saliency.shape
    boxes = _check_boxes(boxes, b).to(device=saliency.device, dtype=torch.float32)
    tolerance = check_float("tolerance", tolerance, low=0)
    flat = saliency.flatten(1)
    peak = flat.argmax(dim=1)
    px = (peak % w).to(torch.float32) + 0.5
    py = torch.div(peak, w, rounding_mode="floor").to(torch.float32) + 0.5
    dx = torch.maximum(boxes[:, 0] - px, px - boxes[:, 2]).clamp(min=0)
    dy = torch.maximum(boxes[:, 1] - py, py - boxes[:, 3]).clamp(min=0)
    hit = torch.hypot(dx, dy) <= tolerance
    has_peak = flat.amax(dim=1) > flat.amin(dim=1)
    return hit & has_peak


def box_share(boxes: Tensor, image_size: tuple[int, int] | int) -> Tensor:
    """Share of the image each box covers, counting only its part inside the image.

    What a map blind to the object scores on :func:`box_energy` (a uniform map puts this share of
    its mass in the box), hence the *chance* level of :func:`localisation_score`. A box reaching
    past the border counts only its in-image part (so the share never exceeds 1).

    Args:
        boxes: ``(B, 4)`` half-open ``xyxy`` boxes in pixels.
        image_size: ``(H, W)`` of the image (or one int for a square image).

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.

    Raises:
        TypeError / ValueError: non-tensor, badly shaped or non-finite boxes (value checks), a bad
            ``image_size``.

    Example:
        >>> box_share(torch.tensor([[0.0, 0.0, 4.0, 4.0], [-4.0, 0.0, 4.0, 8.0]]), (8, 8)).tolist()
        [0.25, 0.5]
    """
    size = _check_image_size(image_size)
    if size is None:
        raise ValueError("image_size must be the (H, W) of the image the boxes refer to")
    boxes = _check_boxes(boxes, boxes.shape[0] if isinstance(boxes, Tensor) and boxes.ndim == 2 else -1)
    h, w = size
    b = boxes.to(torch.float32)
    lo = torch.zeros(2, device=b.device)
    hi = torch.tensor([float(w), float(h)], device=b.device)
    clipped = torch.cat([torch.maximum(b[:, :2], lo), torch.minimum(b[:, 2:], hi)], dim=1)
    return box_area(clipped) / (h * w)


def box_energy(saliency: Tensor, boxes: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
    """Fraction of each map's mass inside its box (the energy-based pointing game).

    Negative map values count as 0. A map that ignores the object (uniform) scores the box's
    :func:`box_share`; one wholly inside the box scores 1; an all-zero map scores 0.

    Args:
        saliency: ``(B, 1, h, w)`` (or ``(B, h, w)``) float maps, non-negative.
        boxes: ``(B, 4)`` half-open ``xyxy`` boxes in pixels of the (resized) maps.
        image_size: ``(H, W)`` the boxes refer to; the maps are resized bilinearly to it first.
            ``None``: the boxes are in the maps' own pixel grid.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.

    Raises:
        TypeError / ValueError: as for :func:`pointing_game`.

    Example:
        >>> s = torch.zeros(2, 1, 4, 4)
        >>> s[0, 0, :2, :2] = 1.0
        >>> s[1] = 1.0
        >>> box_energy(s, torch.tensor([[0.0, 0.0, 2.0, 2.0]]).expand(2, 4)).tolist()
        [1.0, 0.25]
    """
    s = _resize(_check_maps(saliency), image_size).to(torch.float32).clamp_min(0)
    boxes = _check_boxes(boxes, s.shape[0]).to(device=s.device)
    inside = box_mask(boxes, (s.shape[-2], s.shape[-1]))
    total = s.flatten(1).sum(1)
    return (s * inside).flatten(1).sum(1) / total.clamp_min(1e-12) * (total > 0)


def localisation_score(
    saliency: Tensor, boxes: Tensor, image_size: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The box score of :func:`salaug.diagnose`: the mean of pointing game and energy inside the box.

    Args:
        saliency: ``(B, 1, h, w)`` (or ``(B, h, w)``) float maps, non-negative.
        boxes: ``(B, 4)`` half-open ``xyxy`` boxes in pixels of the (resized) maps.
        image_size: as for :func:`box_energy`.

    Returns:
        ``(score, pointing, energy)``, each ``(B,)`` float32 in ``[0, 1]``.

    Raises:
        TypeError / ValueError: as for :func:`pointing_game`.

    Example:
        >>> s = torch.zeros(1, 1, 4, 4)
        >>> s[0, 0, 0, 0] = 1.0
        >>> [t.tolist() for t in localisation_score(s, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))]
        [[1.0], [1.0], [1.0]]
    """
    saliency = _resize(_check_maps(saliency), image_size)
    pointing = pointing_game(saliency, boxes).to(torch.float32)
    energy = box_energy(saliency, boxes)
    return (pointing + energy) / 2, pointing, energy


def saliency_box(saliency: Tensor, threshold: float = 0.5) -> Tensor:
    """Bounding box of the salient pixels of each map, batched.

    Salient pixels are those ``>= threshold * max`` of their own map. An all-zero map makes every
    pixel salient, so its box is the whole image ``(0, 0, W, H)`` (the documented fallback).

    Args:
        saliency: ``(B, 1, H, W)`` (or ``(B, H, W)``) float maps, non-negative.
        threshold: fraction of each map's maximum, in ``[0, 1]``.

    Returns:
        ``(B, 4)`` float32 half-open ``xyxy`` boxes in pixels.

    Raises:
        TypeError: non-tensor or integer maps, a ``threshold`` that is not a number.
        ValueError: bad shapes, ``threshold`` outside ``[0, 1]``, NaN / inf maps (value checks).

    Example:
        >>> s = torch.zeros(2, 1, 6, 8)
        >>> s[0, 0, 1:3, 2:5] = 1.0
        >>> saliency_box(s).tolist()
        [[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 8.0, 6.0]]
    """
    saliency = _check_maps(saliency)
    threshold = check_float("threshold", threshold, low=0, high=1)
    _, _, h, w = saliency.shape
    peak = saliency.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    mask = saliency >= threshold * peak
    cols = mask.any(dim=2).flatten(1).to(torch.uint8)  # (B, W)
    rows = mask.any(dim=3).flatten(1).to(torch.uint8)  # (B, H)
    x1 = cols.argmax(dim=1)
    x2 = w - cols.flip(1).argmax(dim=1)
    y1 = rows.argmax(dim=1)
    y2 = h - rows.flip(1).argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Intersection over union of aligned box pairs (row ``i`` of ``a`` with row ``i`` of ``b``).

    Unlike ``torchvision.ops.box_iou`` (all pairs, ``(N, M)``), this compares box ``i`` with box
    ``i`` only. Two empty boxes have IoU 0.

    Args:
        boxes_a: ``(B, 4)`` ``xyxy`` boxes.
        boxes_b: ``(B, 4)`` ``xyxy`` boxes.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.

    Raises:
        TypeError: non-tensor or bool boxes.
        ValueError: shapes that are not both ``(B, 4)``, NaN / inf coordinates (value checks).

    Example:
        >>> box_iou(torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]]), torch.tensor([[1.0, 0, 3, 2], [0, 0, 1, 1]])).tolist()
        [0.3333333432674408, 1.0]
    """
    if not isinstance(boxes_a, Tensor) or not isinstance(boxes_b, Tensor):
        raise TypeError("boxes_a and boxes_b must be torch.Tensors of shape (B, 4)")
    if boxes_a.ndim != 2 or boxes_a.shape[1] != 4 or boxes_a.shape != boxes_b.shape:
        raise ValueError(
            f"boxes_a and boxes_b must both have shape (B, 4), got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}"
        )
    _check_boxes(boxes_a, boxes_a.shape[0], "boxes_a")
    _check_boxes(boxes_b, boxes_a.shape[0], "boxes_b")
    a = boxes_a.to(torch.float32)
    b = boxes_b.to(device=a.device, dtype=torch.float32)
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def cam_box_iou(
    saliency: Tensor,
    boxes: Tensor,
    threshold: float = 0.5,
    image_size: tuple[int, int] | None = None,
) -> Tensor:
    """IoU between each map's :func:`saliency_box` and the true box (a localisation score).

    Args:
        saliency: ``(B, 1, h, w)`` float maps.
        boxes: ``(B, 4)`` true half-open ``xyxy`` boxes.
        threshold: passed to :func:`saliency_box`.
        image_size: ``(H, W)`` the boxes refer to; the maps are resized bilinearly to it first.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.

    Raises:
        TypeError / ValueError: as for :func:`pointing_game` and :func:`saliency_box`.

    Example:
        >>> s = torch.zeros(1, 1, 8, 8)
        >>> s[0, 0, 2:6, 2:6] = 1.0
        >>> cam_box_iou(s, torch.tensor([[2.0, 2.0, 6.0, 4.0]])).tolist()
        [0.5]
    """
    saliency = _resize(_check_maps(saliency), image_size)
    boxes = _check_boxes(boxes, saliency.shape[0])
    return box_iou(saliency_box(saliency, threshold), boxes.to(saliency.device))


def label_fidelity(soft_labels: Tensor, classes: Tensor, visible: Tensor) -> Tensor:
    """How true a mixed label is to what the mixed image shows.

    A mix of sample ``i`` (class ``classes[i, 0]``) with its partner (class ``classes[i, 1]``)
    leaves a fraction ``visible[i, 0]`` of the sample's object and ``visible[i, 1]`` of the
    partner's object visible. The *true* label puts weight ``visible_j / (visible_0 + visible_1)``
    on class ``classes[i, j]`` (both zero: 1/2 each; both classes equal: all weight on it). The
    fidelity is ``1 - TV(soft_labels, true)``, with total variation ``TV(p, q) = ½ Σ_k |p_k -
    q_k|``: 1 is a perfect label, 0 one that puts all its mass on classes the image does not show
    (e.g. a CutMix area label of 0.5/0.5 when the pasted box missed the partner's object entirely
    scores 0.5).

    Args:
        soft_labels: ``(B, K)`` float label distributions (rows sum to 1).
        classes: ``(B, 2)`` integer classes of the sample and of its partner.
        visible: ``(B, 2)`` float visible fractions (non-negative) of the two objects, e.g. from
            :func:`mix_visibility`.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.

    Raises:
        ValueError: on shape mismatches, classes outside ``[0, K)``, negative visibility or rows
            that are not distributions (value checks run on CPU tensors; see ``_checks``).

    Example:
        >>> labels = torch.tensor([[0.7, 0.3, 0.0], [0.5, 0.5, 0.0]])
        >>> classes = torch.tensor([[0, 1], [0, 2]])
        >>> visible = torch.tensor([[0.7, 0.3], [1.0, 0.0]])
        >>> label_fidelity(labels, classes, visible).tolist()
        [1.0, 0.5]
    """
    for name, t in (("soft_labels", soft_labels), ("classes", classes), ("visible", visible)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if soft_labels.ndim != 2 or not soft_labels.is_floating_point():
        raise ValueError(
            f"soft_labels must be a float (B, K) tensor, got {tuple(soft_labels.shape)} {soft_labels.dtype}"
        )
    b, k = soft_labels.shape
    if classes.shape != (b, 2) or classes.is_floating_point() or classes.dtype == torch.bool:
        raise ValueError(
            f"classes must be an integer ({b}, 2) tensor (own class, partner class), got "
            f"{tuple(classes.shape)} {classes.dtype}"
        )
    if visible.shape != (b, 2):
        raise ValueError(f"visible must be a ({b}, 2) tensor of visible fractions, got {tuple(visible.shape)}")
    p = soft_labels.to(torch.float32)
    classes = classes.to(device=p.device, dtype=torch.long)
    vis = visible.to(device=p.device, dtype=torch.float32)
    if value_checks_on(p):
        if bool((classes < 0).any()) or bool((classes >= k).any()):
            raise ValueError(f"classes must lie in [0, {k - 1}] for soft labels with K={k} columns")
        if not bool(torch.isfinite(vis).all()) or bool((vis < 0).any()):
            raise ValueError("visible fractions must be finite and non-negative")
        if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones((), device=p.device), atol=1e-3):
            raise ValueError("soft_labels rows must be probability distributions (non-negative, sum to 1)")
    total = vis.sum(dim=1, keepdim=True)
    weights = torch.where(total > 0, vis / total.clamp(min=1e-12), torch.full_like(vis, 0.5))
    true = torch.zeros_like(p).scatter_add_(1, classes, weights)
    tv = 0.5 * (p - true).abs().sum(dim=1)
    return (1 - tv).clamp(0, 1)


def _check_mask(mask: object, name: str) -> Tensor:
    """A ``(B, 1, H, W)`` bool mask or float weights in ``[0, 1]`` (values: value checks)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, H, W), got {type(mask).__name__}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W) (one mask per image), got {tuple(mask.shape)}")
    if mask.is_complex():
        raise TypeError(f"{name} must be bool or real weights in [0, 1], got {mask.dtype}")
    if mask.dtype != torch.bool and value_checks_on(mask) and mask.numel() > 0:
        lo, hi = torch.aminmax(mask.to(torch.float32))
        if not (lo >= 0 and hi <= 1):  # NaN fails both
            raise ValueError(
                f"{name} values must lie in [0, 1] (a mask or per-pixel weights), got min {float(lo):.4g}, "
                f"max {float(hi):.4g}; pass a bool mask or clamp the weights"
            )
    return mask


def visible_fraction(masks_before: Tensor, masks_after: Tensor) -> Tensor:
    """Fraction of each object's pixels still visible: ``Σ(before · after) / Σ before``.

    Args:
        masks_before: ``(B, 1, H, W)`` bool (or float in ``[0, 1]``) object masks.
        masks_after: ``(B, 1, H, W)`` bool, or float weights in ``[0, 1]`` (how much of each pixel
            of the object survives, e.g. ``1 - mix_weight``).

    Returns:
        ``(B,)`` float32 in ``[0, 1]``; an empty ``masks_before`` gives 0.

    Raises:
        TypeError: non-tensor masks.
        ValueError: masks that are not ``(B, 1, H, W)`` of the same shape, or values outside
            ``[0, 1]`` (value checks).

    Example:
        >>> before = torch.zeros(1, 1, 4, 4, dtype=torch.bool); before[..., :2, :] = True
        >>> after = torch.zeros(1, 1, 4, 4, dtype=torch.bool); after[..., :, :1] = True
        >>> visible_fraction(before, after).tolist()
        [0.25]
    """
    for name, t in (("masks_before", masks_before), ("masks_after", masks_after)):
        _check_mask(t, name)
    if masks_before.shape != masks_after.shape:
        raise ValueError(
            f"masks_before {tuple(masks_before.shape)} and masks_after {tuple(masks_after.shape)} must match"
        )
    before = masks_before.to(torch.float32)
    after = masks_after.to(device=before.device, dtype=torch.float32)
    area = before.sum(dim=(1, 2, 3))
    kept = (before * after).sum(dim=(1, 2, 3))
    return torch.where(area > 0, kept / area.clamp(min=1e-12), torch.zeros_like(area))


def mix_visibility(object_masks: Tensor, partner: Tensor, mix_weight: Tensor) -> Tensor:
    """Visible fractions of both objects after ``mixed = (1 - m) * x + m * x[partner]``.

    Covers box and cell pastes (``m`` a 0/1 mask) and pixel-wise mixes (``m`` in ``[0, 1]``): the
    sample's own object keeps ``Σ(mask · (1 - m)) / Σ mask`` and the partner's object shows
    ``Σ(mask[partner] · m) / Σ mask[partner]``. This holds for mixes that paste the partner's
    pixels in place (CutMix, SaliencyMix, AttentiveCutMix, Mixup, GuidedMixup); for transforms that
    move or rescale the partner's content (SnapMix, SalientPaste), warp the partner's mask the same
    way and use :func:`visible_fraction` on it.

    Args:
        object_masks: ``(B, 1, H, W)`` bool object masks of the unmixed batch.
        partner: ``(B,)`` long index of each sample's partner.
        mix_weight: ``(B, 1, H, W)`` float (or bool) weight of the partner per pixel.

    Returns:
        ``(B, 2)`` float32 visible fractions (own object, partner object), ready for
        :func:`label_fidelity`.

    Raises:
        TypeError: non-tensor masks or weights, non-integer ``partner``.
        ValueError: shape mismatches, ``partner`` indices outside the batch or weights outside
            ``[0, 1]`` (value checks).

    Example:
        >>> masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
        >>> masks[0, :, :2, :2] = True; masks[1, :, 2:, 2:] = True
        >>> m = torch.zeros(2, 1, 4, 4); m[:, :, :, 3:] = 1.0  # paste the last column
        >>> mix_visibility(masks, torch.tensor([1, 0]), m).tolist()
        [[1.0, 0.5], [0.5, 0.0]]
    """
    _check_mask(object_masks, "object_masks")
    _check_mask(mix_weight, "mix_weight")
    b = object_masks.shape[0]
    if not isinstance(partner, Tensor) or partner.ndim != 1 or partner.shape[0] != b:
        raise ValueError(f"partner must be a (B,) index tensor with B={b}")
    if partner.is_floating_point() or partner.is_complex() or partner.dtype == torch.bool:
        raise TypeError(f"partner must hold integer indices (e.g. params['perm']), got {partner.dtype}")
    if mix_weight.shape != object_masks.shape:
        raise ValueError(
            f"mix_weight {tuple(mix_weight.shape)} must have the shape of object_masks {tuple(object_masks.shape)}; "
            "resize it to the masks' (H, W)"
        )
    if value_checks_on(partner) and b > 0:
        lo, hi = torch.aminmax(partner)
        if lo < 0 or hi >= b:
            raise ValueError(f"partner indices must lie in [0, {b - 1}] (a permutation of the batch), got min "
                             f"{int(lo)}, max {int(hi)}")
    m = mix_weight.to(device=object_masks.device, dtype=torch.float32)
    own = visible_fraction(object_masks, 1 - m)
    other = visible_fraction(object_masks[partner.to(object_masks.device)], m)
    return torch.stack([own, other], dim=1)
