"""Private pixel and box operations shared by the transforms (crop, erase, mix, paste).

Batched over the first dimension, on the input's device, with no host sync. On CPU, small box
searches (:func:`serial_step`) run over a few fixed slices of the batch whose sizes come from
shapes only (SnapMix's and ResizeMix's CPU pastes live in :mod:`salaug.transforms.mix`);
accelerators take the whole batch at once. The in-place writes
(``scatter_``, ``where(out=)``) fall back to out-of-place operations when autograd records a
graph, so every transform passes gradients to its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug.boxes import box_mass, box_size
from salaug.transforms.base import sample_uniform

__all__: list[str] = []


def needs_graph(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` (then no in-place writes)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# -- box sampling -------------------------------------------------------------------------------------
def random_boxes(sizes: Tensor, u: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes of ``sizes`` ``(..., 2)`` ``(w, h)`` at uniform positions inside an ``(H, W)`` image.

    The one box placer: ``u`` ``(..., 2)`` uniform draws in ``[0, 1)`` pick the ``(x, y)`` start
    among the ``W - w + 1`` (``H - h + 1``) that fit. Returns ``(..., 4)`` int64 half-open boxes.
    """
    h, w = size
    free = torch.stack((w - sizes[..., 0], h - sizes[..., 1]), -1)  # room left, >= 0
    start = torch.minimum((u * (free + 1)).long(), free)
    return torch.cat((start, start + sizes), -1)


def image_aspect_boxes(area: Tensor, u: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes of the image's aspect covering ``area`` ``(B,)`` of it (CutMix's), at uniform positions."""
    return random_boxes(box_size(area, size), u, size)


def rrc_boxes(batch: int, num: int, size: tuple[int, int], scale: tuple[float, float],
              ratio: tuple[float, float], device: torch.device, generator: torch.Generator | None) -> Tensor:
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
    return random_boxes(torch.stack((bw, bh), -1), u[..., 2:], size)


def inverse(perm: Tensor) -> Tensor:
    """The inverse permutation of ``(B,)`` ``perm``: ``inverse(perm)[perm[i]] == i``."""
    return torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.shape[0], device=perm.device))


def partner_box_mass(saliency: Tensor, boxes: Tensor, perm: Tensor, prefix: Tensor | None = None) -> Tensor:
    """``(B,)`` mass of the partner's map ``saliency[perm[i]]`` inside ``boxes[i]`` (partner pixels).

    Scores ``boxes[inverse(perm)]`` on the maps in their own order and reorders the result, so no
    permuted copy of the maps (or of their prefix sums) is made.
    """
    return box_mass(saliency, boxes[inverse(perm)], prefix)[perm]


def first_true(ok: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first True of each row of ``(B, N)`` bool, and whether there is one."""
    return ok.to(torch.uint8).argmax(1), ok.any(1)


def pick(boxes: Tensor, idx: Tensor) -> Tensor:
    """``boxes[b, idx[b]]`` for ``(B, N, 4)`` boxes -> ``(B, 4)``."""
    return boxes.gather(1, idx.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)


# -- masked pastes ------------------------------------------------------------------------------------
def masked(mask: Tensor, applied: Tensor) -> Tensor:
    """``(B, 1, H, W)`` bool mask restricted to the applied samples."""
    return mask & applied.view(-1, 1, 1, 1)


def paste(mask: Tensor, fresh: Tensor, base: Tensor) -> Tensor:
    """``torch.where(mask, fresh, base)``, written into ``fresh`` (a temporary the caller owns).

    Reusing the gathered partner tensor as the output saves a full-size allocation and its page
    faults, which on CPU is a third of the cost of the paste. Falls back to a new tensor when
    autograd needs the graph.
    """
    if needs_graph(fresh, base):
        return torch.where(mask, fresh, base)
    return torch.where(mask, fresh, base, out=fresh)


# -- gathers and scatters at patch size ---------------------------------------------------------------
def patch_index(boxes: Tensor, patch: tuple[int, int], size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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


def flat_index(rows: Tensor, cols: Tensor, w: int) -> Tensor:
    """Flat pixel indices ``(B, 1, Hm * Wm)`` of the grid ``rows (B, Hm) x cols (B, Wm)``."""
    return (rows[:, :, None] * w + cols[:, None, :]).flatten(1)[:, None, :]


def gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x (B, C, H, W)`` at flat pixel indices ``(B, 1, L)`` -> ``(B, C, L)``, one gather."""
    b, c = x.shape[:2]
    return x.reshape(b, c, -1).gather(2, idx.expand(b, c, -1))


#: ``at::internal::GRAIN_SIZE``: CPU ops on fewer elements run on one thread
PARALLEL_GRAIN = 32768


def serial_step(x: Tensor, per_sample: int) -> int:
    """Samples per chunk of ``x``'s batch for small per-sample work (box searches and scores).

    A search is a dozen or two small ops of ``per_sample`` elements per sample. Below
    :data:`PARALLEL_GRAIN` elements PyTorch runs an op on one thread; above, every op opens a
    parallel region that waits for all threads, which buys nothing at this size and costs
    milliseconds per op on a busy CPU. On CPU a few chunks of serial ops are faster; elsewhere the
    whole batch. Every sample is searched alone, so the results do not depend on the chunking.
    """
    if x.device.type != "cpu":
        return x.shape[0]
    return max(1, (PARALLEL_GRAIN - 1) // max(per_sample, 1))


def by_chunks(fn: Callable[..., Tensor], step: int, *tensors: Tensor) -> Tensor:
    """``fn(*tensors)`` computed on slices of ``step`` samples and concatenated (one call if it fits)."""
    b = tensors[0].shape[0]
    if step >= b:
        return fn(*tensors)
    return torch.cat([fn(*(t[i:i + step] for t in tensors)) for i in range(0, b, step)])


def grid_axis(u: Tensor, n: int) -> Tensor:
    """Pixel-centre coordinates ``u`` (``0 .. n - 1``) in ``grid_sample``'s ``[-1, 1]`` (``align_corners=False``)."""
    return (2 * u + 1) / n - 1


def separable_grid(uy: Tensor, ux: Tensor, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """The ``grid_sample`` grid ``(B, Hm, Wm, 2)`` of the separable coordinates ``uy (B, Hm)`` x ``ux (B, Wm)``.

    Coordinates are pixel centres of an ``(H, W)`` image. The two axes are broadcast into the
    halves of one new grid (rather than a ``cat`` of the two expanded axes; a broadcast ``where``
    over the last dimension of size 2 is six times slower on CPU).
    """
    h, w = size
    b, hm, wm = uy.shape[0], uy.shape[1], ux.shape[1]
    grid = torch.empty((b, hm, wm, 2), dtype=dtype, device=uy.device)
    grid[..., 0] = grid_axis(ux, w).to(dtype)[:, None, :]
    grid[..., 1] = grid_axis(uy, h).to(dtype)[:, :, None]
    return grid


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def warp(x: Tensor, grid: Tensor) -> Tensor:
    """Bilinear ``grid_sample`` of ``x (B, C, H, W)`` at ``grid (B, Hm, Wm, 2)`` -> ``(B, C, Hm, Wm)``.

    Border padding: coordinates are meant to lie inside the image, and rounding just outside it
    must not blend in zeros. float16 / bfloat16 are sampled in float32 (the result stays float32).
    One pass, one output: on CPU this beats separable gathers and lerps (several passes and
    temporaries) by about two to one.
    """
    work = x.float() if x.dtype in _LOW_PRECISION else x
    return F.grid_sample(work, grid.to(work.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def box_resize(box: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Bilinear ``F.interpolate`` of one box ``(1, C, h, w)`` to ``size`` (the CPU resize of one sample).

    float16 / bfloat16 are resized in float32 (the result stays float32), as :func:`warp`.
    """
    work = box.float() if box.dtype in _LOW_PRECISION else box
    return F.interpolate(work, size=size, mode="bilinear", align_corners=align_corners)


def nearest_index(uy: Tensor, ux: Tensor, size: tuple[int, int]) -> Tensor:
    """Flat indices ``(B, 1, Hm * Wm)`` of the pixels nearest to the separable pixel coordinates
    ``uy (B, Hm)`` x ``ux (B, Wm)`` of an ``(H, W)`` image (``grid_sample``'s nearest: half to even,
    clamped into the image)."""
    h, w = size
    rows = uy.round().long().clamp(0, h - 1)
    cols = ux.round().long().clamp(0, w - 1)
    return flat_index(rows, cols, w)


def resample(x: Tensor, uy: Tensor, ux: Tensor, mode: str = "bilinear") -> Tensor:
    """``x (B, C, H, W)`` sampled at separable pixel coordinates ``uy (B, Hm)`` x ``ux (B, Wm)``.

    ``"bilinear"``: :func:`warp` on :func:`separable_grid` (float results; low precision in
    float32). ``"nearest"``: one gather of the nearest pixels, in ``x``'s dtype (masks, label maps:
    every value is one of ``x``'s).

    Returns:
        ``(B, C, Hm, Wm)``.
    """
    size = (x.shape[-2], x.shape[-1])
    if mode == "nearest":
        b, c = x.shape[:2]
        return gather(x.contiguous(), nearest_index(uy, ux, size)).view(b, c, uy.shape[1], ux.shape[1])
    return warp(x, separable_grid(uy, ux, size, torch.float32))


class PastePlan(NamedTuple):
    """Where each pasted pixel comes from and goes, shared by the images and the saliency."""

    perm: Tensor  # (B,) partners
    inv: Tensor  # (B,) the inverse permutation: the target of each partner
    idx: Tensor  # (B, 1, Hm * Wm) flat destination pixels, targets' order
    uy: Tensor  # (B, Hm) source rows (pixel coordinates), partners' order
    ux: Tensor  # (B, Wm) source columns, partners' order
    grid: Tensor | None  # (B, Hm, Wm, 2) the bilinear sampling grid, partners' order; None for nearest
    empty: Tensor  # (B,) bool, empty destination boxes (nothing pasted), targets' order
    sizes: Tensor  # (B, 2) the destination boxes' (h, w), targets' order


def inside_patch(sizes: Tensor, patch: tuple[int, int]) -> Tensor:
    """``(B, 1, Hm * Wm)`` bool: the pixels of a ``patch = (Hm, Wm)`` grid laid over boxes of ``sizes``
    ``(B, 2)`` ``(h, w)`` (:func:`patch_index`) that are not repeats of a box's last row / column."""
    hm, wm = patch
    rows = torch.arange(hm, device=sizes.device)[None, :] < sizes[:, :1]
    cols = torch.arange(wm, device=sizes.device)[None, :] < sizes[:, 1:]
    return (rows[:, :, None] & cols[:, None, :]).flatten(1)[:, None, :]


def once(values: Tensor, inside: Tensor) -> Tensor:
    """``values`` with the repeated patch pixels (outside ``inside``) detached: a scatter writes a box's
    last row / column again from them, and with autograd each copy would pass the gradient again."""
    return torch.where(inside, values, values.detach())


def paste_plan(src: Tensor, dst: Tensor, perm: Tensor, patch: tuple[int, int], size: tuple[int, int],
               mode: str = "bilinear") -> PastePlan:
    """Plan :func:`paste_resampled`: target ``i``'s ``dst[i]`` box receives ``src[i]`` of ``perm[i]``.

    Args:
        src: ``(B, 4)`` int64 half-open boxes in the partner's pixels.
        dst: ``(B, 4)`` int64 half-open boxes in the target's pixels (empty: no paste).
        perm: ``(B,)`` partners.
        patch: ``(Hm, Wm)``, at least every ``dst`` box's size (the work is done at this size).
        size: the image ``(H, W)``.
        mode: ``"bilinear"`` or ``"nearest"``.
    """
    rows, cols, ri, ci = patch_index(dst, patch, size)
    uy = axis_pixels(dst[:, 1], dst[:, 3], src[:, 1], src[:, 3], ri)
    ux = axis_pixels(dst[:, 0], dst[:, 2], src[:, 0], src[:, 2], ci)
    inv = inverse(perm)
    uy, ux = uy[inv], ux[inv]  # sampling runs over the partners in their own order
    grid = separable_grid(uy, ux, size, torch.float32) if mode == "bilinear" else None
    empty = (dst[:, 2] <= dst[:, 0]) | (dst[:, 3] <= dst[:, 1])
    sizes = torch.stack((dst[:, 3] - dst[:, 1], dst[:, 2] - dst[:, 0]), 1)
    return PastePlan(perm, inv, flat_index(rows, cols, size[1]), uy, ux, grid, empty, sizes)


def paste_resampled(x: Tensor, plan: PastePlan, canvas: Tensor | None = None, clamp: bool = False) -> Tensor:
    """Each target's destination box filled with its partner's source box, resized; the rest kept.

    The source box is resampled (bilinear, or nearest when ``plan.grid`` is None) pixel-area
    aligned as ``F.interpolate(..., align_corners=False)``, with source coordinates clamped into
    the source box. An empty destination box leaves the target unchanged. The patches are sampled
    from the partners in their own order (one ``grid_sample``, or one flat gather), reordered at
    patch size and written by one ``scatter_`` into a copy of ``x``: no full-size masks, no
    permuted copy of the batch. With autograd the repeated rows / columns of a patch larger than
    its box pass no gradient (:func:`once`), so every pasted pixel passes its gradient once.

    Args:
        x: ``(B, C, H, W)`` contiguous, the partners' pixels (and the targets' unless ``canvas``).
        plan: from :func:`paste_plan`.
        canvas: ``(B, C, H, W)`` of ``x``'s dtype to paste onto instead of a copy of ``x`` (written
            in place unless autograd records a graph; samples with an empty box are not restored:
            the caller masks them).
        clamp: clamp the resampled values into ``[0, 1]`` (saliency: bilinear rounding can leave
            it by an ulp), at patch size.

    Returns:
        ``(B, C, H, W)``, a new tensor of ``x``'s dtype (or ``canvas``).
    """
    b, c = x.shape[:2]
    if plan.grid is None:
        values = gather(x, nearest_index(plan.uy, plan.ux, (x.shape[-2], x.shape[-1])))
    else:
        values = warp(x, plan.grid).reshape(b, c, -1)
    # back to the targets' order, at patch size (indexing: index_select over dim 0 is many times
    # slower on a busy multi-threaded CPU)
    values = values[plan.perm]
    if needs_graph(values):  # each pasted pixel passes its gradient once
        values = once(values, inside_patch(plan.sizes, (plan.uy.shape[1], plan.ux.shape[1])))
    if clamp:
        values = values.clamp_(0, 1) if not needs_graph(values) else values.clamp(0, 1)
    if canvas is not None:
        return scatter(canvas, values, plan.idx)
    out = scatter(x.clone(), values, plan.idx)
    return restore_first(out, x, plan.idx, plan.empty)  # an empty destination collapsed onto one pixel


def axis_pixels(d1: Tensor, d2: Tensor, s1: Tensor, s2: Tensor, idx: Tensor) -> Tensor:
    """Source pixel coordinates ``(B, L)`` of destination pixels ``d1 + idx`` when the span
    ``[d1, d2)`` is resampled from ``[s1, s2)`` (pixel-area aligned as ``F.interpolate(...,
    align_corners=False)``, clamped into the source span). Equal spans map pixel to pixel exactly."""
    dn = (d2 - d1).clamp(min=1).float()[:, None]
    sn = (s2 - s1).clamp(min=1).float()[:, None]
    s1f = s1.float()[:, None]
    u = s1f + (idx.float() + 0.5) * (sn / dn) - 0.5
    return torch.minimum(torch.maximum(u, s1f), s1f + sn - 1)


def scatter(out: Tensor, values: Tensor, idx: Tensor) -> Tensor:
    """``out (B, C, H, W)`` with ``values (B, C, L)`` written at flat indices ``(B, 1, L)``.

    One ``scatter_`` into ``out`` (a tensor the caller owns: no full-size temporaries, no mask),
    or an out-of-place ``scatter`` when autograd records a graph. Use the returned tensor.
    Duplicate indices must carry equal values.
    """
    b, c = out.shape[:2]
    index = idx.expand(b, c, -1)
    src = values.to(out.dtype)
    if needs_graph(out, src):
        return out.reshape(b, c, -1).scatter(2, index, src).view(out.shape)
    out = out.contiguous()
    out.view(b, c, -1).scatter_(2, index, src)
    return out


def restore_first(out: Tensor, images: Tensor, idx: Tensor, empty: Tensor) -> Tensor:
    """Where ``empty`` (``(B,)`` bool), put back the one pixel an empty box collapsed onto.

    ``idx`` is the ``(B, 1, L)`` flat index of the paste (its first entry is that pixel); ``out`` and
    ``images`` are in the same sample order. Returns the result (``out`` itself unless autograd
    records a graph).
    """
    pix = idx[:, :, :1]
    keep = torch.where(empty[:, None, None], gather(images, pix), gather(out, pix))
    return scatter(out, keep, pix)
