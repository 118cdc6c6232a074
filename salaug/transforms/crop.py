"""Saliency-guided crop: a RandomResizedCrop whose box keeps the object."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from salaug._checks import check_float, check_int, check_interval, check_size
from salaug.boxes import box_mass, row_prefix
from salaug.transforms._ops import (
    box_resize,
    by_chunks,
    first_true,
    needs_graph,
    pick,
    resample,
    rrc_boxes,
    separable_grid,
    serial_step,
    warp,
)
from salaug.transforms.base import Params, ParamSpec, SaliencyTransform, SalientBatch

__all__ = ["SalientCrop"]

# Smallest CPU output (pixels) resized box by box: below it one grid_sample of the batch is faster
# (B64, one thread: 33.6 vs 28.4 ms at 128², 47.2 vs 43.3 ms at 160², 82.7 vs 102.0 ms at 224²).
_CROP_BY_BOX_PIXELS = 192 * 192


class SalientCrop(SaliencyTransform):
    r"""CAM-guided RandomResizedCrop: a resized crop whose box keeps the salient object.

    For each sample, ``num_candidates`` boxes are drawn as in RandomResizedCrop (area a uniform
    fraction ``scale`` of the image, aspect ratio ``w / h`` log-uniform in ``ratio``; a side that
    would exceed the image is clamped to it) and their saliency mass is scored from per-row prefix
    sums. The first candidate that keeps at least ``keep`` of the mass is cropped. **Fallback:**
    when no candidate keeps enough, the whole image is used, so the chosen box *always* keeps
    ``>= keep`` of the mass. Images and saliency are cropped and resized together, bilinearly, with
    the box's corner pixels on the output's corner pixels (the result of kornia's
    ``crop_and_resize(..., align_corners=True)``, computed as one ``grid_sample`` on a separable
    grid, on CPU from 192² output pixels as one ``F.interpolate`` per box; by nearest neighbour in
    a replay on masks, see :meth:`~salaug.transforms.SaliencyTransform.forward`). Labels are
    unchanged (returned as soft labels).

    Samples not transformed (probability ``1 - p``) are the whole image resized to ``size``; when
    ``size`` is the input size they are returned bit-for-bit unchanged.

    Args:
        num_classes: number of classes K, needed for ``(B,)`` integer labels.
        size: output ``(h, w)`` (or an int for a square); ``None`` keeps the input size.
        keep: fraction of the saliency mass the crop must keep, in ``[0, 1]``.
        scale: range of the crop area as a fraction of the image area, in ``(0, 1]``.
        ratio: range of the crop aspect ratio ``w / h`` in pixels.
        num_candidates: boxes tried per sample.
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

    required_params: ClassVar[ParamSpec] = {"applied": ("bool", ("B",)), "boxes": ("int", ("B", 4))}
    replay_options = ("size",)

    def __init__(self, num_classes: int | None = None, *, size: int | tuple[int, int] | None = None,
                 keep: float = 0.8, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), num_candidates: int = 16, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, p=p, generator=generator)
        self.size = check_size("size", size, optional=True)
        self.keep = check_float("keep", keep, low=0.0, high=1.0)
        self.scale = check_interval("scale", scale, low=0.0, high=1.0, low_open=True)
        self.ratio = check_interval("ratio", ratio, low=0.0, low_open=True)
        self.num_candidates = check_int("num_candidates", num_candidates, low=1)

    def generate_parameters(self, images: Tensor, saliency: Tensor) -> dict[str, Tensor]:
        b, _, h, w = images.shape
        dev = images.device
        applied = self.sample_applied(b, dev)
        cand = rrc_boxes(b, self.num_candidates, (h, w), self.scale, self.ratio, dev, self.active_generator)
        # a dozen small ops on (B, H, N) row sums: in chunks of serial ops on CPU
        step = serial_step(saliency, h * self.num_candidates)
        mass = by_chunks(box_mass, step, saliency, cand, row_prefix(saliency))
        idx, found = first_true(mass >= self.keep)
        chosen = pick(cand, idx)
        chosen_mass = mass.gather(1, idx[:, None]).squeeze(1)
        use = applied & found
        full = torch.tensor([0, 0, w, h], device=dev, dtype=torch.long).expand(b, 4)
        boxes = torch.where(use[:, None], chosen, full)
        kept = torch.where(use, chosen_mass, torch.ones_like(chosen_mass))
        return {"applied": applied, "boxes": boxes, "mass": kept}

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        h, w = images.shape[-2:]
        boxes = params["boxes"]
        size = self.size or (h, w)
        images, saliency = images.contiguous(), saliency.contiguous()  # one layout, whatever the caller's
        if self.active_interpolation == "nearest":
            x1, y1, x2, y2 = boxes.unbind(1)
            uy, ux = _corner_axis(y1, y2, size[0]), _corner_axis(x1, x2, size[1])
            out, sal = resample(images, uy, ux, "nearest"), resample(saliency, uy, ux, "nearest")
        elif images.device.type == "cpu" and min(size) > 1 and size[0] * size[1] >= _CROP_BY_BOX_PIXELS:
            rows = boxes.tolist()  # a CPU tensor: a memory read, not a sync
            out, sal = crop_resize(images, rows, size), crop_resize(saliency, rows, size)
            sal = sal.clamp(0, 1) if needs_graph(sal) else sal.clamp_(0, 1)
            return SalientBatch(out, sal, labels)
        else:
            grid = crop_grid(boxes, size, (h, w))  # one grid for both
            out = warp(images, grid).to(images.dtype)
            sal = warp(saliency, grid)
            sal = sal.clamp(0, 1) if needs_graph(sal) else sal.clamp_(0, 1)
        if size == (h, w):  # full-image boxes (not applied, or the fallback) stay bit-exact
            full = torch.tensor([0, 0, w, h], device=boxes.device)
            keep = (boxes == full).all(1)[:, None, None, None]
            out = _keep(keep, images, out)
            sal = _keep(keep, saliency, sal)
        return SalientBatch(out, sal, labels)


def crop_resize(x: Tensor, boxes: list[list[int]], size: tuple[int, int]) -> Tensor:
    """CPU: each sample's half-open box of ``x (B, C, H, W)`` resized to ``size`` (both sides > 1),
    corner to corner (``F.interpolate(..., align_corners=True)``, the mapping of :func:`crop_grid`).

    One ``F.interpolate`` per sample at its own box: on CPU its separable kernel beats one batched
    ``grid_sample`` (a loop over the samples, no sync on a CPU tensor). A whole-image box at the
    image's size is copied bit for bit; low-precision images are resized in float32 and rounded once.

    Returns:
        ``(B, C, *size)`` of ``x``'s dtype (differentiable).
    """
    b, c, h, w = x.shape
    out = x.new_empty((b, c, *size))
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if (x1, y1, x2, y2) == (0, 0, w, h) and size == (h, w):
            out[i] = x[i]
        else:
            out[i] = box_resize(x[i:i + 1, :, y1:y2, x1:x2], size, align_corners=True)[0]
    return out


def _keep(keep: Tensor, original: Tensor, out: Tensor) -> Tensor:
    """``torch.where(keep, original, out)`` for ``(B, 1, 1, 1)`` ``keep``, written into ``out`` (a fresh
    result) unless autograd records.

    On CPU only the kept samples are copied (their indices are read: a memory read there, not a
    sync), instead of a pass over the whole batch; accelerators take the ``where``.
    """
    if original.device.type == "cpu":
        idx = keep.flatten().nonzero().flatten()
        if idx.numel() == 0:
            return out
        if needs_graph(original, out):
            return out.index_copy(0, idx, original[idx])
        return out.index_copy_(0, idx, original[idx])
    if needs_graph(original, out):
        return torch.where(keep, original, out)
    return torch.where(keep, original, out, out=out)


def _corner_axis(a1: Tensor, a2: Tensor, n: int) -> Tensor:
    """``(B, n)`` source coordinates of ``n`` output pixels spanning the pixels ``a1 .. a2 - 1`` corner to corner.

    ``align_corners=True``: the first and last output pixels sit on the box's first and last pixel
    centres, as kornia's ``crop_and_resize(..., align_corners=True)``; a single output pixel takes
    the box's centre (where kornia's homography degenerates to NaN).
    """
    a1f = a1.float()[:, None]
    span = (a2 - a1 - 1).clamp(min=0).float()[:, None]
    if n == 1:
        return a1f + span / 2
    step = torch.arange(n, device=a1.device, dtype=torch.float32)[None, :] / (n - 1)
    return a1f + span * step


def crop_grid(boxes: Tensor, size: tuple[int, int], image: tuple[int, int]) -> Tensor:
    """The ``grid_sample`` grid ``(B, h, w, 2)`` resizing half-open ``(B, 4)`` boxes of an ``image``-sized
    batch to ``size = (h, w)`` (``align_corners=True`` corner mapping, see :func:`_corner_axis`).

    Example:
        >>> g = crop_grid(torch.tensor([[0, 0, 4, 4]]), (2, 2), (4, 4))
        >>> ((g + 1) * 4 - 1).div(2)[0].tolist()  # back to pixel coordinates (x, y)
        [[[0.0, 0.0], [3.0, 0.0]], [[0.0, 3.0], [3.0, 3.0]]]
    """
    x1, y1, x2, y2 = boxes.unbind(1)
    return separable_grid(_corner_axis(y1, y2, size[0]), _corner_axis(x1, x2, size[1]), image, torch.float32)
