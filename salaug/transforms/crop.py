"""Saliency-guided crop: a RandomResizedCrop whose box keeps the object.

Also home of the candidate-box helpers that :mod:`salaug.transforms.erase` and
:mod:`salaug.transforms.paste` share: sampling RandomResizedCrop-style boxes for a whole batch and
scoring their saliency mass, both without a Python loop over samples and without host syncs.
"""

from __future__ import annotations

import math

import torch
from kornia.geometry.transform import crop_and_resize
from torch import Tensor

from salaug.boxes import boxes_to_corners
from salaug.transforms.base import Params, SalientBatch, SaliencyTransform, sample_uniform

__all__ = ["SalientCrop"]


# -- helpers shared by crop / erase / paste -------------------------------------------------------
def _check_range(name: str, value: tuple[float, float], low: float, high: float | None,
                 open_low: bool = False) -> tuple[float, float]:
    """Validate a ``(lo, hi)`` range with ``low (<|<=) lo <= hi <= high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    bad_low = lo <= low if open_low else lo < low
    if bad_low or hi < lo or (high is not None and hi > high) or not (math.isfinite(lo) and math.isfinite(hi)):
        bound = f"{'(' if open_low else '['}{low}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must satisfy min <= max within {bound}, got {value!r}")
    return lo, hi


def _sample_boxes(batch: int, num: int, size: tuple[int, int], scale: tuple[float, float],
                  ratio: tuple[float, float], device: torch.device,
                  generator: torch.Generator | None) -> Tensor:
    """``num`` RandomResizedCrop-style boxes per sample, ``(B, N, 4)`` int64 half-open.

    Area is a uniform fraction of the image area in ``scale``, the aspect ratio ``w / h`` (pixels) is
    log-uniform in ``ratio``; sides are rounded and clamped to ``[1, W]`` x ``[1, H]`` (so a box that
    would not fit is shrunk rather than rejected) and the position is uniform among those that fit.
    """
    h, w = size
    u = sample_uniform((batch, num, 4), device, generator)
    area = (scale[0] + (scale[1] - scale[0]) * u[..., 0]) * (h * w)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    r = torch.exp(log_r)
    bw = torch.sqrt(area * r).round().clamp(1, w).long()
    bh = torch.sqrt(area / r).round().clamp(1, h).long()
    x1 = torch.minimum((u[..., 2] * (w - bw + 1)).long(), w - bw)
    y1 = torch.minimum((u[..., 3] * (h - bh + 1)).long(), h - bh)
    return torch.stack((x1, y1, x1 + bw, y1 + bh), -1)


def _row_prefix(saliency: Tensor) -> Tensor:
    """Inclusive prefix sums along each row, ``(B, H, W)`` float32.

    Cheaper and (per row) more exact than a float64 summed-area table: a box's mass is the sum over
    its rows of two gathered prefix values.
    """
    return saliency[:, 0].float().cumsum(-1)


def _fast_box_mass(saliency: Tensor, boxes: Tensor, prefix: Tensor | None = None) -> Tensor:
    """Fraction of each map's saliency inside ``(B, N, 4)`` boxes, ``(B, N)`` float32.

    Same semantics as :func:`salaug.boxes.box_mass` (an all-zero map counts as uniform, so the
    mass is the area fraction) but gathers only ``B * N * H`` row sums instead of building a
    float64 summed-area table of the whole batch.
    """
    b, _, h, w = saliency.shape
    prefix = _row_prefix(saliency) if prefix is None else prefix
    n = boxes.shape[1]
    x1, y1, x2, y2 = boxes.unbind(-1)  # (B, N)

    def column(x: Tensor) -> Tensor:  # prefix[..., x - 1], 0 for x == 0
        got = prefix.gather(2, (x - 1).clamp(0, w - 1)[:, None, :].expand(b, h, n))  # (B, H, N)
        return got * (x > 0)[:, None, :]

    ys = torch.arange(h, device=saliency.device)[None, :, None]
    rows = (ys >= y1[:, None, :]) & (ys < y2[:, None, :])
    sums = ((column(x2) - column(x1)) * rows).to(torch.float64).sum(1)  # (B, N)
    total = prefix[:, :, w - 1].to(torch.float64).sum(1, keepdim=True)  # (B, 1)
    area = ((x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)).to(torch.float64) / (h * w)
    has = total > 0
    mass = torch.where(has, sums / torch.where(has, total, torch.ones_like(total)), area)
    return mass.clamp(0, 1).float()


def _first_true(ok: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first True of each row of ``(B, N)`` bool, and whether there is one."""
    return ok.to(torch.uint8).argmax(1), ok.any(1)


def _pick(boxes: Tensor, idx: Tensor) -> Tensor:
    """``boxes[b, idx[b]]`` for ``(B, N, 4)`` boxes -> ``(B, 4)``."""
    return boxes.gather(1, idx.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)


def _patch_index(boxes: Tensor, patch: tuple[int, int], size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Destination rows / columns of a fixed ``patch = (Hm, Wm)`` grid laid over each box.

    Row ``i`` of the patch lands on ``y1 + min(i, h - 1)`` (columns alike), so a patch larger than
    its box writes its last row / column again: filled with the values of that last row / column,
    the duplicates are harmless and the paste is deterministic. Empty boxes collapse onto one pixel.

    Returns:
        ``rows (B, Hm)``, ``cols (B, Wm)`` destination pixels, and the clamped patch indices
        ``ri (B, Hm)``, ``ci (B, Wm)``.
    """
    hm, wm = patch
    h, w = size
    dev = boxes.device
    x1, y1, x2, y2 = boxes.unbind(-1)
    ri = torch.minimum(torch.arange(hm, device=dev)[None, :], (y2 - y1 - 1).clamp(min=0)[:, None])
    ci = torch.minimum(torch.arange(wm, device=dev)[None, :], (x2 - x1 - 1).clamp(min=0)[:, None])
    rows = (y1[:, None] + ri).clamp(0, h - 1)
    cols = (x1[:, None] + ci).clamp(0, w - 1)
    return rows, cols, ri, ci


def _flat(rows: Tensor, cols: Tensor, w: int) -> Tensor:
    """Flat pixel indices ``(B, 1, Hm * Wm)`` of the grid ``rows (B, Hm) x cols (B, Wm)``."""
    return (rows[:, :, None] * w + cols[:, None, :]).flatten(1)[:, None, :]


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x (B, C, H, W)`` at flat pixel indices ``(B, 1, L)`` -> ``(B, C, L)``, one gather."""
    b, c = x.shape[:2]
    return x.reshape(b, c, -1).gather(2, idx.expand(b, c, -1))


def _resample(x: Tensor, uy: Tensor, ux: Tensor, mode: str) -> Tensor:
    """Sample ``x (B, C, H, W)`` at the separable pixel coordinates ``uy (B, Hm)`` x ``ux (B, Wm)``.

    Coordinates are pixel centres (``0 .. H - 1``) and must lie inside the image. ``"nearest"`` is
    one flat gather; ``"bilinear"`` four gathers and three lerps, all at patch size (cheaper on CPU
    than ``grid_sample``, whose grid alone is as big as the patch). Integer coordinates reproduce
    the pixels exactly. Returns ``(B, C, Hm * Wm)``.
    """
    h, w = x.shape[-2:]
    if mode == "nearest":
        return _gather(x, _flat(uy.round().long(), ux.round().long(), w))
    r0, c0 = uy.floor(), ux.floor()
    wy, wx = uy - r0, ux - c0
    r0, c0 = r0.long(), c0.long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    wx = wx[:, None, :].expand(-1, uy.shape[1], -1).flatten(1)[:, None, :].to(x.dtype)
    wy = wy[:, :, None].expand(-1, -1, ux.shape[1]).flatten(1)[:, None, :].to(x.dtype)
    top = torch.lerp(_gather(x, _flat(r0, c0, w)), _gather(x, _flat(r0, c1, w)), wx)
    bottom = torch.lerp(_gather(x, _flat(r1, c0, w)), _gather(x, _flat(r1, c1, w)), wx)
    return torch.lerp(top, bottom, wy)


def _scatter(out: Tensor, values: Tensor, idx: Tensor) -> Tensor:
    """Write ``values (B, C, L)`` into ``out (B, C, H, W)`` in place at flat indices ``(B, 1, L)``.

    One ``scatter_``: no full-size temporaries, no mask. Duplicate indices must carry equal values.
    """
    b, c = out.shape[:2]
    out.view(b, c, -1).scatter_(2, idx.expand(b, c, -1), values.to(out.dtype))
    return out


def _restore_first(out: Tensor, images: Tensor, idx: Tensor, empty: Tensor) -> None:
    """Where ``empty`` (``(B,)`` bool), put back the one pixel an empty box collapsed onto.

    ``idx`` is the ``(B, 1, L)`` flat index of the paste (its first entry is that pixel); ``out`` and
    ``images`` are in the same sample order.
    """
    pix = idx[:, :, :1]
    keep = torch.where(empty[:, None, None], _gather(images, pix), _gather(out, pix))
    _scatter(out, keep, pix)


def _check_boxes_param(params: Params, key: str, batch: int, owner: str) -> Tensor:
    boxes = params.get(key)
    if not isinstance(boxes, Tensor) or boxes.shape != (batch, 4):
        got = None if not isinstance(boxes, Tensor) else tuple(boxes.shape)
        raise ValueError(f"{owner} params need {key!r} of shape ({batch}, 4), got {got}")
    return boxes


def _parse_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"size must be a positive int or an (h, w) pair of positive ints, got {size!r}")
    return (int(size[0]), int(size[1]))


_LOW_PRECISION = (torch.float16, torch.bfloat16)


class SalientCrop(SaliencyTransform):
    r"""CAM-guided RandomResizedCrop: a resized crop whose box keeps the salient object.

    For each sample, ``num_candidates`` boxes are drawn as in RandomResizedCrop (area a uniform
    fraction ``scale`` of the image, aspect ratio ``w / h`` log-uniform in ``ratio``; a side that
    would exceed the image is clamped to it) and their saliency mass is scored from per-row prefix
    sums. The first candidate that keeps at least ``keep`` of the mass is cropped. **Fallback:**
    when no candidate keeps enough, the whole image is used, so the chosen box *always* keeps
    ``>= keep`` of the mass. Images and saliency are cropped and resized together with kornia's
    ``crop_and_resize`` (bilinear). Labels are unchanged (returned as soft labels).

    Samples not transformed (probability ``1 - p``) are the whole image resized to ``size``; when
    ``size`` is the input size they are returned bit-for-bit unchanged.

    Args:
        size: output ``(h, w)`` (or an int for a square); ``None`` keeps the input size.
        keep: fraction of the saliency mass the crop must keep, in ``[0, 1]``.
        scale: range of the crop area as a fraction of the image area, in ``(0, 1]``.
        ratio: range of the crop aspect ratio ``w / h`` in pixels.
        num_candidates: boxes tried per sample.
        num_classes: number of classes K, needed for ``(B,)`` integer labels.
        p: probability that each sample is cropped.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)` floating point.
        - saliency: :math:`(B, 1, H, W)` (or :math:`(B, 1, h, w)`, resized) in ``[0, 1]``.
        - labels: :math:`(B,)` int64 or :math:`(B, K)` float.
        - output: ``SalientBatch`` of :math:`(B, C, h', w')`, :math:`(B, 1, h', w')`,
          :math:`(B, K)` with ``(h', w') = size``.

    Parameters returned with ``return_params=True``: ``applied`` ``(B,)`` bool, ``boxes``
    ``(B, 4)`` int64 half-open ``(x1, y1, x2, y2)`` crop boxes (the full image where not applied),
    ``mass`` ``(B,)`` float32 saliency mass each box keeps.

    Returns:
        ``SalientBatch(images, saliency, labels)``; images keep their dtype and device
        (float16 / bfloat16 images are cropped in float32 and cast back).

    Raises:
        ValueError: for out-of-range arguments, and (at call time) malformed inputs or params.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 16, 16)
        >>> s = torch.zeros(2, 1, 16, 16); s[:, :, 4:8, 4:8] = 1.0
        >>> crop = SalientCrop(size=8, keep=0.9, num_classes=3, generator=torch.Generator().manual_seed(0))
        >>> out, params = crop(x, s, torch.tensor([0, 2]), return_params=True)
        >>> out.images.shape, out.labels.tolist()
        (torch.Size([2, 3, 8, 8]), [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> bool((params["mass"] >= 0.9).all())
        True
    """

    def __init__(self, size: int | tuple[int, int] | None = None, keep: float = 0.8,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 num_candidates: int = 16, num_classes: int | None = None, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes=num_classes, p=p, generator=generator)
        self.size = _parse_size(size)
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"keep must be a fraction in [0, 1], got {keep}")
        self.keep = float(keep)
        self.scale = _check_range("scale", scale, 0.0, 1.0, open_low=True)
        self.ratio = _check_range("ratio", ratio, 0.0, None, open_low=True)
        if not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}")
        self.num_candidates = num_candidates

    def generate_parameters(self, images: Tensor, saliency: Tensor) -> Params:
        b, _, h, w = images.shape
        dev = images.device
        applied = self.sample_applied(b, dev)
        cand = _sample_boxes(b, self.num_candidates, (h, w), self.scale, self.ratio, dev, self.generator)
        mass = _fast_box_mass(saliency, cand)
        idx, found = _first_true(mass >= self.keep)
        chosen = _pick(cand, idx)
        chosen_mass = mass.gather(1, idx[:, None]).squeeze(1)
        use = applied & found
        full = torch.tensor([0, 0, w, h], device=dev, dtype=torch.long).expand(b, 4)
        boxes = torch.where(use[:, None], chosen, full)
        kept = torch.where(use, chosen_mass, torch.ones_like(chosen_mass))
        return {"applied": applied, "boxes": boxes, "mass": kept}

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        b, _, h, w = images.shape
        boxes = _check_boxes_param(params, "boxes", b, type(self).__name__).to(images.device)
        size = self.size or (h, w)
        corners = boxes_to_corners(boxes)
        src = images.float() if images.dtype in _LOW_PRECISION else images
        out = crop_and_resize(src, corners, size, align_corners=True).to(images.dtype)
        sal = crop_and_resize(saliency, corners, size, align_corners=True).clamp_(0, 1)
        if size == (h, w):  # full-image boxes (not applied, or the fallback) stay bit-exact
            full = torch.tensor([0, 0, w, h], device=boxes.device)
            keep = (boxes == full).all(1)[:, None, None, None]
            out = torch.where(keep, images, out)
            sal = torch.where(keep, saliency, sal)
        return SalientBatch(out, sal, labels)

    def extra_repr(self) -> str:
        return (f"size={self.size}, keep={self.keep}, scale={self.scale}, ratio={self.ratio}, "
                f"num_candidates={self.num_candidates}, {super().extra_repr()}")
