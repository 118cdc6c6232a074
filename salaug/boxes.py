"""Batched box primitives: saliency -> boxes, grid cells, masks, and saliency mass.

Conventions, used everywhere in salaug:

* A box is ``(x1, y1, x2, y2)`` in integer pixels, **half-open**: it covers columns
  ``x1 <= x < x2`` and rows ``y1 <= y < y2``. Boxes are ``(B, 4)`` (or ``(B, N, 4)``) ``int64``.
* Sizes are ``(w, h)`` pairs, image sizes ``(H, W)`` as in ``tensor.shape[-2:]``.
* The *mass* of a box is the fraction of the image's total saliency inside it. A map with no mass
  (all zero) is treated as uniform, so its mass is the box's area fraction: never NaN.

Everything here is batched over the first dimension and stays on the input's device (no host
syncs), so it can run inside a training step on a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_around",
    "box_mask",
    "box_mass",
    "box_size",
    "boxes_to_corners",
    "cell_index",
    "cell_mass",
    "cells_mask",
    "grid_cells",
    "integral_image",
    "least_salient_box",
    "peak",
    "row_prefix",
    "top_k_cells",
]


def box_area(boxes: Tensor) -> Tensor:
    """Area in pixels of ``(..., 4)`` half-open boxes, as float32 ``(...)``.

    Example:
        >>> box_area(torch.tensor([[0, 0, 4, 2], [1, 1, 1, 5]])).tolist()
        [8.0, 0.0]
    """
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).float()
    return wh[..., 0] * wh[..., 1]


def box_mask(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boolean masks of ``(B, 4)`` boxes, ``(B, 1, H, W)``, from row/column comparisons.

    Example:
        >>> box_mask(torch.tensor([[1, 0, 3, 1]]), (2, 4)).int().squeeze().tolist()
        [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    h, w = size
    ys = torch.arange(h, device=boxes.device)
    xs = torch.arange(w, device=boxes.device)
    rows = (ys >= boxes[:, 1, None]) & (ys < boxes[:, 3, None])  # (B, H)
    cols = (xs >= boxes[:, 0, None]) & (xs < boxes[:, 2, None])  # (B, W)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def integral_image(saliency: Tensor) -> Tensor:
    """Summed-area table of ``(B, 1, H, W)`` maps: ``(B, H + 1, W + 1)`` float64, zero-padded.

    ``I[b, y, x]`` is the sum of ``saliency[b, 0, :y, :x]``; float64 keeps box sums exact enough
    for mass thresholds on large images.
    """
    table = saliency[:, 0].to(torch.float64).cumsum(1).cumsum(2)
    return torch.nn.functional.pad(table, (1, 0, 1, 0))


def row_prefix(saliency: Tensor) -> Tensor:
    """Inclusive prefix sums along each row of ``(B, 1, H, W)`` maps, ``(B, H, W)`` float32.

    What :func:`box_mass` reads: a box's mass is the sum over its rows of two gathered prefix
    values, cheaper and (per row) more exact than a float64 summed-area table of the batch.
    """
    return saliency[:, 0].float().cumsum(-1)


def box_mass(saliency: Tensor, boxes: Tensor, prefix: Tensor | None = None) -> Tensor:
    """Fraction of each map's saliency mass inside boxes, float32.

    Gathers ``B * N * H`` row sums from per-row prefix sums (float64 accumulation).

    Args:
        saliency: ``(B, 1, H, W)``, non-negative.
        boxes: ``(B, 4)`` or ``(B, N, 4)`` half-open pixel boxes inside the image.
        prefix: the :func:`row_prefix` of ``saliency`` when already computed.

    Returns:
        ``(B,)`` or ``(B, N)`` in ``[0, 1]``. All-zero maps count as uniform (mass = area fraction).

    Example:
        >>> s = torch.zeros(1, 1, 4, 4); s[0, 0, 1, 1] = 1.0
        >>> box_mass(s, torch.tensor([[0, 0, 2, 2], [2, 2, 4, 4]]).unsqueeze(0)).tolist()
        [[1.0, 0.0]]
        >>> box_mass(torch.zeros(1, 1, 4, 4), torch.tensor([[0, 0, 2, 2]])).tolist()
        [0.25]
    """
    b, _, h, w = saliency.shape
    prefix = row_prefix(saliency) if prefix is None else prefix
    many = boxes.reshape(b, -1, 4).long()
    n = many.shape[1]
    x1, y1, x2, y2 = many.unbind(-1)  # (B, N)

    def column(x: Tensor) -> Tensor:  # prefix[..., x - 1], 0 for x == 0
        got = prefix.gather(2, (x - 1).clamp(0, w - 1)[:, None, :].expand(b, h, n))  # (B, H, N)
        return got * (x > 0)[:, None, :]

    ys = torch.arange(h, device=saliency.device)[None, :, None]
    rows = (ys >= y1[:, None, :]) & (ys < y2[:, None, :])
    sums = ((column(x2) - column(x1)) * rows).to(torch.float64).sum(1)  # (B, N)
    total = prefix[:, :, w - 1].to(torch.float64).sum(1, keepdim=True)  # (B, 1)
    area = box_area(many).to(torch.float64) / (h * w)
    has = total > 0
    mass = torch.where(has, sums / torch.where(has, total, torch.ones_like(total)), area)
    return mass.clamp(0, 1).float().view(boxes.shape[:-1])


def peak(saliency: Tensor, fallback: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """``(x, y)`` of each map's maximum, ``(B, 2)`` int64.

    Args:
        saliency: ``(B, 1, H, W)``.
        fallback: ``(B, 2)`` points used where a map is flat (max - min <= ``eps``), e.g. random
            centres; the image centre when not given.

    Example:
        >>> s = torch.zeros(2, 1, 5, 6); s[0, 0, 1, 4] = 1.0
        >>> peak(s).tolist()
        [[4, 1], [3, 2]]
    """
    b, _, h, w = saliency.shape
    flat = saliency.reshape(b, -1)
    idx = flat.argmax(1)
    xy = torch.stack((idx % w, idx // w), 1)
    flat_map = (flat.amax(1) - flat.amin(1)) <= eps
    if fallback is None:
        fallback = torch.tensor([w // 2, h // 2], device=saliency.device).expand(b, 2)
    return torch.where(flat_map[:, None], fallback.to(xy), xy)


def box_size(area: Tensor, size: tuple[int, int], ratio: Tensor | None = None) -> Tensor:
    """``(w, h)`` of boxes covering ``area`` of an ``(H, W)`` image, ``(B, 2)`` int64.

    Args:
        area: ``(B,)`` fraction of the image area in ``[0, 1]``.
        size: ``(H, W)``.
        ratio: ``(B,)`` aspect ratios ``w / h`` relative to the image's (1 = same shape as the
            image, as in CutMix).

    Sides are rounded and kept within ``[1, W]`` and ``[1, H]``, so the realised area can differ
    slightly from ``area``: label rules use the realised box.

    Example:
        >>> box_size(torch.tensor([0.25, 1.0]), (8, 16)).tolist()
        [[8, 4], [16, 8]]
    """
    h, w = size
    r = torch.ones_like(area) if ratio is None else ratio
    bw = (w * torch.sqrt(area * r)).round().long().clamp(1, w)
    bh = (h * torch.sqrt(area / r)).round().long().clamp(1, h)
    return torch.stack((bw, bh), 1)


def box_around(centers: Tensor, sizes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes of ``sizes`` centred on ``centers``, shifted (not clipped) to lie inside the image.

    Shifting keeps the sampled area exact; the centre stays inside the box.

    Args:
        centers: ``(B, 2)`` ``(x, y)`` pixels.
        sizes: ``(B, 2)`` ``(w, h)``, at most the image size.
        size: ``(H, W)``.

    Returns:
        ``(B, 4)`` int64 half-open boxes.

    Example:
        >>> box_around(torch.tensor([[0, 0], [5, 5]]), torch.tensor([[4, 2], [4, 4]]), (10, 10)).tolist()
        [[0, 0, 4, 2], [3, 3, 7, 7]]
    """
    h, w = size
    sizes = sizes.long()
    start = (centers.long() - sizes // 2).clamp(min=0)
    x1 = torch.minimum(start[:, 0], w - sizes[:, 0])
    y1 = torch.minimum(start[:, 1], h - sizes[:, 1])
    return torch.stack((x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]), 1)


def grid_cells(size: tuple[int, int], grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """The ``gh * gw`` cells of a grid over an ``(H, W)`` image, ``(gh * gw, 4)`` row-major.

    Cell edges are ``floor(i * H / gh)``, so cells tile the image exactly even when ``H`` is not
    a multiple of ``gh``.

    Example:
        >>> grid_cells((4, 5), (2, 2)).tolist()
        [[0, 0, 2, 2], [2, 0, 5, 2], [0, 2, 2, 4], [2, 2, 5, 4]]
    """
    h, w = size
    gh, gw = grid
    ye = torch.arange(gh + 1, device=device) * h // gh
    xe = torch.arange(gw + 1, device=device) * w // gw
    y1, x1 = torch.meshgrid(ye[:-1], xe[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(ye[1:], xe[1:], indexing="ij")
    return torch.stack((x1, y1, x2, y2), -1).reshape(-1, 4)


def top_k_cells(saliency: Tensor, grid: tuple[int, int], k: int, tie_break: Tensor | None = None) -> Tensor:
    """Select each map's ``k`` grid cells of highest saliency mass.

    Args:
        saliency: ``(B, 1, H, W)``.
        grid: ``(gh, gw)`` cells.
        k: cells to select, ``1 <= k <= gh * gw``.
        tie_break: ``(B, gh * gw)`` values in ``[0, 1)`` that order cells of equal mass (e.g.
            random numbers, so a flat map selects random cells); without it the first cells (in
            row-major order) win ties.

    Returns:
        ``(B, gh * gw)`` bool, exactly ``k`` True per row.

    Example:
        >>> s = torch.zeros(1, 1, 4, 4); s[0, 0, 3, 0] = 1.0
        >>> top_k_cells(s, (2, 2), 1).tolist()
        [[False, False, True, False]]
    """
    mass = cell_mass(saliency, grid)
    if tie_break is not None:
        mass = mass + 1e-4 * tie_break.to(mass)  # below any real mass difference we care about
    top = mass.sort(dim=1, descending=True, stable=True).indices[:, :k]  # stable: first cells win ties
    return torch.zeros_like(mass, dtype=torch.bool).scatter_(1, top, True)


def cell_index(n: int, cells: int, device: torch.device) -> Tensor:
    """Cell number ``(n,)`` of each of ``n`` pixels along one axis, for edges ``floor(i * n / cells)``.

    Example:
        >>> cell_index(5, 2, torch.device("cpu")).tolist()
        [0, 0, 1, 1, 1]
    """
    return torch.bucketize(torch.arange(n, device=device), torch.arange(1, cells, device=device) * n // cells,
                           right=True)


def cell_mass(saliency: Tensor, grid: tuple[int, int]) -> Tensor:
    """Fraction of each map's saliency mass in each grid cell, ``(B, gh * gw)`` float32, row-major.

    Two segment sums (rows into bands, then columns into cells), one pass over the map each; an
    all-zero map counts as uniform (mass = cell area fraction).

    Example:
        >>> s = torch.zeros(1, 1, 4, 4); s[0, 0, 3, 0] = 1.0
        >>> cell_mass(s, (2, 2)).tolist()
        [[0.0, 0.0, 1.0, 0.0]]
    """
    b, _, h, w = saliency.shape
    gh, gw = grid
    dev = saliency.device
    s = saliency[:, 0].float()
    bands = torch.zeros(b, gh, w, device=dev).index_add_(1, cell_index(h, gh, dev), s)
    cells = torch.zeros(b, gh, gw, device=dev).index_add_(2, cell_index(w, gw, dev), bands).flatten(1)
    total = cells.sum(1, keepdim=True)
    area = box_area(grid_cells((h, w), grid, dev)) / (h * w)
    return torch.where(total > 0, cells / total.clamp(min=1e-12), area.expand(b, -1))


def cells_mask(selected: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Pixel masks of selected grid cells: ``(B, gh * gw)`` bool -> ``(B, 1, H, W)`` bool.

    Example:
        >>> cells_mask(torch.tensor([[False, True, False, False]]), (2, 2), (2, 4)).int().squeeze().tolist()
        [[0, 0, 1, 1], [0, 0, 0, 0]]
    """
    h, w = size
    gh, gw = grid
    dev = selected.device
    cell = (cell_index(h, gh, dev)[:, None] * gw + cell_index(w, gw, dev)[None, :]).flatten()
    return selected.gather(1, cell.expand(selected.shape[0], -1)).view(-1, 1, h, w)


def least_salient_box(saliency: Tensor, sizes: Tensor, tie_break: Tensor | None = None,
                      table: Tensor | None = None) -> Tensor:
    """For each map, the box of the given size that holds the least saliency mass.

    Every position is scored in one batched gather over the summed-area table.

    Args:
        saliency: ``(B, 1, H, W)``.
        sizes: ``(B, 2)`` ``(w, h)`` per sample, at most the image size.
        tie_break: ``(B, H, W)`` values in ``[0, 1)`` ranking positions of equal mass (random
            numbers place boxes randomly on flat maps); the top-left position wins otherwise.
        table: the ``integral_image`` of ``saliency`` when already computed.

    Returns:
        ``(B, 4)`` int64 boxes.

    Example:
        >>> s = torch.ones(1, 1, 4, 4); s[0, 0, 2:, 2:] = 0.0
        >>> least_salient_box(s, torch.tensor([[2, 2]])).tolist()
        [[2, 2, 4, 4]]
    """
    b, _, h, w = saliency.shape
    table = integral_image(saliency) if table is None else table
    dev = saliency.device
    sizes = sizes.long()
    bw, bh = sizes[:, 0], sizes[:, 1]
    # Window sums for every top-left corner at once: T[y+bh, x+bw] - T[y, x+bw] - T[y+bh, x] + T[y, x],
    # with the table's rows and columns shifted per sample by gathers (no per-position boxes).
    top = table[:, :h]  # rows y
    bottom = table.gather(1, (torch.arange(h, device=dev) + bh[:, None]).clamp(max=h)[:, :, None].expand(b, h, w + 1))
    shift = (torch.arange(w, device=dev) + bw[:, None]).clamp(max=w)[:, None, :].expand(b, h, w)
    sums = (bottom.gather(2, shift) - top.gather(2, shift)) - (bottom[:, :, :w] - top[:, :, :w])
    total = table[:, h, w].view(b, 1, 1).clamp(min=1e-12)
    score = sums / total
    if tie_break is not None:
        score = score + 1e-6 * tie_break.to(score)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    valid = (xs + bw[:, None, None] <= w) & (ys + bh[:, None, None] <= h)
    score = score.masked_fill(~valid, float("inf"))
    idx = score.flatten(1).argmin(1)
    start = torch.stack((idx % w, idx // w), 1)
    return torch.cat((start, start + sizes), 1)


def boxes_to_corners(boxes: Tensor) -> Tensor:
    """Half-open ``(B, 4)`` boxes to kornia's ``(B, 4, 2)`` corner format (inclusive pixels).

    kornia orders corners top-left, top-right, bottom-right, bottom-left, and its right/bottom
    coordinates are the last pixel inside the box (``x2 - 1``), as ``crop_and_resize`` expects.

    Example:
        >>> boxes_to_corners(torch.tensor([[0, 0, 4, 2]])).tolist()
        [[[0.0, 0.0], [3.0, 0.0], [3.0, 1.0], [0.0, 1.0]]]
    """
    x1, y1, x2, y2 = boxes.float().unbind(-1)
    x2, y2 = x2 - 1, y2 - 1
    return torch.stack(
        (torch.stack((x1, y1), -1), torch.stack((x2, y1), -1), torch.stack((x2, y2), -1), torch.stack((x1, y2), -1)),
        -2,
    )
