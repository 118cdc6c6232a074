"""Saliency-guided mixing: SaliencyMix, AttentiveCutMix, SnapMix and GuidedMixup.

Every transform here mixes each sample with a *partner* from the same batch, chosen per batch by
a random permutation (GuidedMixup can instead pair samples whose salient regions overlap little).
Boxes, cells and weights are sampled per sample, ``p`` is drawn once per sample, and everything is
batched: no Python loop over samples (GuidedMixup's greedy pairing is the one documented
exception) and no host sync, so the transforms can run inside a training step on an accelerator.

The label rules make the soft labels describe what the mixed image really contains:

=================  ===========================================================================
transform          partner's share of the label
=================  ===========================================================================
SaliencyMix        area of the pasted box / image area
AttentiveCutMix    area of the pasted cells / image area (``k / cells`` for a dividing grid)
SnapMix            saliency mass of the partner pasted vs. mass of the target kept
GuidedMixup        mean over pixels of the partner's mixing weight
=================  ===========================================================================

All sampled quantities are returned as tensors in the ``params`` dict, so
``t(x2, s2, y2, params=params)`` replays the same mix on another batch of the same size (e.g.
segmentation masks).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug._filters import gaussian_blur
from salaug.boxes import box_area, box_around, box_mask, box_mass, box_size, cells_mask, grid_cells, \
    integral_image, peak, top_k_cells
from salaug.transforms.base import Params, SalientBatch, SaliencyTransform, sample_beta, sample_uniform
from salaug.transforms.labels import mix_soft_labels

__all__ = ["AttentiveCutMix", "GuidedMixup", "SaliencyMix", "SnapMix", "greedy_pairing"]


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number (Beta(alpha, alpha)), got {alpha!r}")
    return float(alpha)


def _require(params: Params, keys: tuple[str, ...], owner: str) -> None:
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(
            f"params for {owner} must contain {list(keys)}, missing {missing}; pass the dict returned by "
            f"a call of the same transform with return_params=True"
        )


def _random_boxes(area: Tensor, u: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes of the image's aspect covering ``area`` (B,), at uniform positions from ``u`` (B, 2)."""
    h, w = size
    sizes = box_size(area, size)
    free = torch.stack((w - sizes[:, 0], h - sizes[:, 1]), 1)  # room left, >= 0
    start = torch.minimum((u * (free + 1)).long(), free)
    return torch.cat((start, start + sizes), 1)


def _paste(mask: Tensor, fresh: Tensor, base: Tensor) -> Tensor:
    """``torch.where(mask, fresh, base)``, written into ``fresh`` (a temporary the caller owns).

    Reusing the gathered partner tensor as the output saves a full-size allocation and its page
    faults, which on CPU is a third of the cost of the paste. Falls back to a new tensor when
    autograd needs the graph.
    """
    if torch.is_grad_enabled() and (fresh.requires_grad or base.requires_grad):
        return torch.where(mask, fresh, base)
    return torch.where(mask, fresh, base, out=fresh)


def _masked(mask: Tensor, applied: Tensor) -> Tensor:
    """``(B, 1, H, W)`` bool mask restricted to the applied samples."""
    return mask & applied.view(-1, 1, 1, 1)


class SaliencyMix(SaliencyTransform):
    r"""SaliencyMix: paste a box around the partner's saliency peak (Uddin et al., ICLR 2021).

    For each sample ``i`` with partner ``j = perm[i]``, a box of area ``lam ~ Beta(alpha, alpha)``
    (same aspect as the image, as in CutMix) is centred on the peak of ``j``'s saliency, shifted
    to lie inside the image, and ``j``'s pixels inside it replace ``i``'s at the same place. A flat
    map has no peak: its box gets a random centre, which is plain CutMix. Unlike the reference
    code, every sample has its own box, partner and ``p`` draw.

    Label: the partner's share is the realised box area over the image area (sides are rounded to
    pixels, so it can differ slightly from ``lam``).

    Args:
        alpha: concentration of ``Beta(alpha, alpha)`` for the box area, ``> 0``.
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        p: probability that each sample is mixed.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)`; saliency: :math:`(B, 1, H, W)` (or lower resolution);
          labels: :math:`(B,)` or :math:`(B, K)`.
        - Output: :class:`SalientBatch` with images :math:`(B, C, H, W)` (dtype and device kept),
          saliency :math:`(B, 1, H, W)` pasted the same way, labels :math:`(B, K)`.

    Params (``return_params=True``):
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``boxes`` ``(B, 4)`` int64 half-open
        ``(x1, y1, x2, y2)`` boxes (ignored where not applied).

    Raises:
        ValueError: if ``alpha <= 0`` (and for ``p`` / ``num_classes``, see the base class).

    Example:
        >>> import torch
        >>> x, s = torch.rand(4, 3, 16, 16), torch.rand(4, 1, 16, 16)
        >>> t = SaliencyMix(num_classes=4, generator=torch.Generator().manual_seed(0))
        >>> out, params = t(x, s, torch.arange(4), return_params=True)
        >>> out.images.shape, out.labels.shape, sorted(params)
        (torch.Size([4, 3, 16, 16]), torch.Size([4, 4]), ['applied', 'boxes', 'perm'])
        >>> torch.allclose(out.labels.sum(1), torch.ones(4))
        True
    """

    def __init__(self, alpha: float = 1.0, num_classes: int | None = None, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes=num_classes, p=p, generator=generator)
        self.alpha = _check_alpha(alpha)

    def generate_parameters(self, images: Tensor, saliency: Tensor) -> Params:
        b, _, h, w = images.shape
        dev = images.device
        applied = self.sample_applied(b, dev)
        perm = self.sample_partners(b, dev)
        area = sample_beta(self.alpha, self.alpha, (b,), dev, self.generator)
        u = sample_uniform((b, 2), dev, self.generator)
        random_centres = torch.stack(((u[:, 0] * w).long().clamp(max=w - 1), (u[:, 1] * h).long().clamp(max=h - 1)), 1)
        centres = peak(saliency, fallback=random_centres)[perm]
        boxes = box_around(centres, box_size(area, (h, w)), (h, w))
        return {"applied": applied, "perm": perm, "boxes": boxes}

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        _require(params, ("applied", "perm", "boxes"), type(self).__name__)
        h, w = images.shape[-2:]
        applied, perm, boxes = params["applied"], params["perm"], params["boxes"]
        mask = _masked(box_mask(boxes, (h, w)), applied)
        out = _paste(mask, images[perm], images)
        sal = _paste(mask, saliency[perm], saliency)
        share = box_area(boxes) / (h * w) * applied
        return SalientBatch(out, sal, mix_soft_labels(labels, perm, share))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, " + super().extra_repr()


class AttentiveCutMix(SaliencyTransform):
    r"""Attentive CutMix: paste the partner's most salient grid cells (Walawalkar et al., 2020).

    The image is cut into a ``grid`` of cells (edges ``floor(i * H / gh)``, so any size works);
    for each sample the ``k`` cells of its partner holding the most saliency mass (ties broken at
    random, so a flat map picks random cells) are pasted at their own positions.

    Label: the partner's share is the pasted pixel area over the image area, ``k / (gh * gw)``
    when the grid divides the image.

    Args:
        grid: ``(gh, gw)`` cells (an int means square), each ``>= 1``.
        k: cells to paste, ``1 <= k <= gh * gw``.
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        p: probability that each sample is mixed.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)` with :math:`H \ge gh, W \ge gw`; saliency:
          :math:`(B, 1, H, W)`; labels: :math:`(B,)` or :math:`(B, K)`.
        - Output: :class:`SalientBatch` (images, pasted saliency, :math:`(B, K)` labels).

    Params:
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``cells`` ``(B, gh * gw)`` bool
        (row-major cells pasted from the partner).

    Raises:
        ValueError: for a grid below 1 cell, ``k`` out of range, or (at call time) a grid finer
            than the image.

    Example:
        >>> import torch
        >>> x, s = torch.zeros(4, 3, 8, 8), torch.rand(4, 1, 8, 8)
        >>> x[1::2] = 1.0  # odd samples are all ones, of class 1
        >>> t = AttentiveCutMix(grid=(4, 4), k=4, num_classes=2, generator=torch.Generator().manual_seed(0))
        >>> out = t(x, s, torch.tensor([0, 1, 0, 1]))
        >>> torch.allclose(out.images.mean((1, 2, 3)), out.labels[:, 1])  # labels say what is there
        True
    """

    def __init__(self, grid: int | tuple[int, int] = (7, 7), k: int = 6, num_classes: int | None = None,
                 p: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes=num_classes, p=p, generator=generator)
        grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if len(grid) != 2 or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid):
            raise ValueError(f"grid must be a positive int or a pair (gh, gw) of positive ints, got {grid!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= grid[0] * grid[1]:
            raise ValueError(f"k must be an int in [1, {grid[0] * grid[1]}] for a {grid[0]}x{grid[1]} grid, got {k!r}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.k = k

    def _check_size(self, h: int, w: int) -> None:
        if h < self.grid[0] or w < self.grid[1]:
            raise ValueError(f"a {self.grid[0]}x{self.grid[1]} grid needs images of at least that size, got {h}x{w}")

    def generate_parameters(self, images: Tensor, saliency: Tensor) -> Params:
        b, _, h, w = images.shape
        self._check_size(h, w)
        dev = images.device
        applied = self.sample_applied(b, dev)
        perm = self.sample_partners(b, dev)
        tie = sample_uniform((b, self.grid[0] * self.grid[1]), dev, self.generator)
        cells = top_k_cells(saliency, self.grid, self.k, tie_break=tie)[perm]
        return {"applied": applied, "perm": perm, "cells": cells}

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        _require(params, ("applied", "perm", "cells"), type(self).__name__)
        h, w = images.shape[-2:]
        self._check_size(h, w)
        applied, perm, cells = params["applied"], params["perm"], params["cells"]
        if cells.shape[-1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"params['cells'] has {cells.shape[-1]} cells, this transform's grid has "
                             f"{self.grid[0] * self.grid[1]}")
        mask = _masked(cells_mask(cells, self.grid, (h, w)), applied)
        out = _paste(mask, images[perm], images)
        sal = _paste(mask, saliency[perm], saliency)
        cell_area = box_area(grid_cells((h, w), self.grid, images.device)) / (h * w)
        share = (cells.to(cell_area.dtype) @ cell_area) * applied
        return SalientBatch(out, sal, mix_soft_labels(labels, perm, share))

    def extra_repr(self) -> str:
        return f"grid={self.grid}, k={self.k}, " + super().extra_repr()


def _resize_grid(dst: Tensor, src: Tensor, size: tuple[int, int]) -> Tensor:
    """Sampling grid ``(B, H, W, 2)`` that resizes each ``src`` box onto its ``dst`` box.

    Pixel centres are mapped as ``F.interpolate(..., align_corners=False)`` maps them, and source
    coordinates are clamped to the source box, so inside ``dst`` the result equals the bilinear
    resize of the crop. Outside ``dst`` the grid is meaningless (masked off by the caller).
    """
    h, w = size
    dst, src = dst.to(torch.float32), src.to(torch.float32)

    def axis(n: int, d1: Tensor, d2: Tensor, s1: Tensor, s2: Tensor) -> Tensor:
        pix = torch.arange(n, device=dst.device, dtype=torch.float32)
        scale = ((s2 - s1) / (d2 - d1))[:, None]
        coord = (pix[None, :] + 0.5 - d1[:, None]) * scale + s1[:, None] - 0.5
        coord = torch.minimum(torch.maximum(coord, s1[:, None]), (s2 - 1)[:, None])
        return (2 * coord + 1) / n - 1

    gx = axis(w, dst[:, 0], dst[:, 2], src[:, 0], src[:, 2])  # (B, W)
    gy = axis(h, dst[:, 1], dst[:, 3], src[:, 1], src[:, 3])  # (B, H)
    b = dst.shape[0]
    return torch.stack((gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)), -1)


def _warp(x: Tensor, grid: Tensor) -> Tensor:
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.grid_sample(work, grid.to(work.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(x.dtype)


class SnapMix(SaliencyTransform):
    r"""SnapMix: resize a partner box into a target box, labels by saliency mass (Huang et al., 2021).

    For each sample ``i`` with partner ``j = perm[i]``: a target box of area
    ``Beta(alpha, alpha)`` at a uniform position in ``i`` and an independently sampled source box
    in ``j`` (both with the image's aspect). The source box of ``j`` is resized bilinearly
    (``align_corners=False``) into the target box of ``i``.

    Saliency maps are used as given, as mass distributions (each map normalised to sum 1, as
    SnapMix does with its CAMs; an all-zero map counts as uniform):

    * ``weights[:, 0]`` (target) ``= 1 -`` mass of ``i``'s saliency inside the target box,
    * ``weights[:, 1]`` (partner) ``=`` mass of ``j``'s saliency inside the source box.

    These raw weights need not sum to 1 and are always in ``params["weights"]``. The returned
    labels always have rows summing to 1:

    * ``normalize=True`` (default): the partner's share is ``w_p / (w_t + w_p)``; when both are 0
      (the box removed all of ``i``'s mass and pasted none of ``j``'s) it falls back to the area
      rule (target box area over image area).
    * ``normalize=False``: the partner's share is the raw ``w_p`` (the fraction of ``j``'s
      object actually pasted), the target keeps ``1 - w_p``. For the paper's unnormalised loss
      ``w_t * CE(y_i) + w_p * CE(y_j)`` use :meth:`paper_loss` with ``params``.

    Args:
        alpha: concentration of ``Beta(alpha, alpha)`` for both box areas, ``> 0``.
        normalize: how the raw weights become the label, see above.
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        p: probability that each sample is mixed.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)`; saliency: :math:`(B, 1, H, W)`; labels: :math:`(B,)` or
          :math:`(B, K)`.
        - Output: :class:`SalientBatch`; the saliency is resized and pasted like the images.

    Params:
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``boxes`` ``(B, 4)`` int64 target boxes,
        ``src_boxes`` ``(B, 4)`` int64 boxes in the partner, ``weights`` ``(B, 2)`` float32 raw
        (target, partner) weights, ``(1, 0)`` where not applied.

    Raises:
        ValueError: if ``alpha <= 0``.

    Example:
        >>> import torch
        >>> x, s = torch.rand(4, 3, 16, 16), torch.rand(4, 1, 16, 16)
        >>> t = SnapMix(num_classes=4, generator=torch.Generator().manual_seed(0))
        >>> out, params = t(x, s, torch.arange(4), return_params=True)
        >>> params["weights"].shape, torch.allclose(out.labels.sum(1), torch.ones(4))
        (torch.Size([4, 2]), True)
    """

    def __init__(self, alpha: float = 5.0, normalize: bool = True, num_classes: int | None = None,
                 p: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes=num_classes, p=p, generator=generator)
        self.alpha = _check_alpha(alpha)
        self.normalize = bool(normalize)

    def generate_parameters(self, images: Tensor, saliency: Tensor) -> Params:
        b, _, h, w = images.shape
        dev = images.device
        applied = self.sample_applied(b, dev)
        perm = self.sample_partners(b, dev)
        areas = sample_beta(self.alpha, self.alpha, (b, 2), dev, self.generator)
        u = sample_uniform((b, 4), dev, self.generator)
        boxes = _random_boxes(areas[:, 0], u[:, :2], (h, w))
        src_boxes = _random_boxes(areas[:, 1], u[:, 2:], (h, w))
        table = integral_image(saliency)
        removed = box_mass(saliency, boxes, table)
        pasted = box_mass(saliency, src_boxes, table[perm])
        weights = torch.stack((torch.where(applied, 1 - removed, 1.0), torch.where(applied, pasted, 0.0)), 1)
        return {"applied": applied, "perm": perm, "boxes": boxes, "src_boxes": src_boxes, "weights": weights}

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        _require(params, ("applied", "perm", "boxes", "src_boxes", "weights"), type(self).__name__)
        h, w = images.shape[-2:]
        applied, perm, boxes = params["applied"], params["perm"], params["boxes"]
        mask = _masked(box_mask(boxes, (h, w)), applied)
        grid = _resize_grid(boxes, params["src_boxes"], (h, w))
        out = _paste(mask, _warp(images[perm], grid), images)
        sal = _paste(mask, _warp(saliency[perm], grid), saliency)
        wt, wp = params["weights"].to(torch.float32).unbind(1)
        if self.normalize:
            total = wt + wp
            area = box_area(boxes) / (h * w)
            share = torch.where(total > 1e-6, wp / total.clamp(min=1e-6), area)
        else:
            share = wp
        share = share * applied
        return SalientBatch(out, sal, mix_soft_labels(labels, perm, share))

    @staticmethod
    def paper_loss(logits: Tensor, labels: Tensor, params: Params, num_classes: int | None = None) -> Tensor:
        """SnapMix's unnormalised loss ``mean(w_t * CE(logits, y) + w_p * CE(logits, y[perm]))``.

        Args:
            logits: ``(B, K)`` model outputs on the mixed images.
            labels: the *original* labels, ``(B,)`` class indices or ``(B, K)`` probabilities.
            params: the params of the SnapMix call (``return_params=True``).
            num_classes: ``K`` (taken from ``logits`` when not given).

        Returns:
            Scalar loss tensor.

        Example:
            >>> import torch
            >>> params = {"perm": torch.tensor([1, 0]), "weights": torch.tensor([[1.0, 0.0], [0.5, 0.5]])}
            >>> logits = torch.zeros(2, 2)
            >>> round(SnapMix.paper_loss(logits, torch.tensor([0, 1]), params).item(), 4)  # mean(ln2, ln2)
            0.6931
        """
        k = logits.shape[1] if num_classes is None else num_classes
        y = labels if labels.ndim == 2 else F.one_hot(labels.long(), k).to(logits.dtype)
        logp = F.log_softmax(logits, dim=1)
        ce_own = -(y * logp).sum(1)
        ce_partner = -(y[params["perm"]] * logp).sum(1)
        wt, wp = params["weights"].to(logits.dtype).unbind(1)
        return (wt * ce_own + wp * ce_partner).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, normalize={self.normalize}, " + super().extra_repr()


def greedy_pairing(similarity: Tensor, crowding: float = 0.05) -> Tensor:
    """Partners that overlap little: a greedy walk over a similarity matrix (GuidedMixup's pairing).

    The walk starts at the most *crowded* sample (the largest total similarity to the others),
    sets ``perm[row]`` to the unvisited sample ``c`` minimising
    ``similarity[row, c] - crowding * crowd[c] / B``, moves to ``c``, and so on; the last sample
    closes the cycle back to the first. ``crowd[c]`` is ``c``'s similarity to the samples still to
    place (the first one included, since the cycle returns to it), so among equally good partners
    the walk uses up the samples that will be hardest to place later. This is the classic greedy
    for arranging items in a cycle with no two similar neighbours: with samples of a few kinds
    (disjoint blobs), it finds a cycle without same-kind neighbours whenever no kind holds more
    than half the batch, where the plain "least similar next" walk often ends with overlaps.

    The result is a single cycle through the whole batch, so no sample is its own partner and
    (for ``B > 2``) no two samples are each other's partner, which would make their pixel-wise
    mixes identical.

    This is a Python loop of ``B - 1`` steps of small tensor operations (a masked argmin over
    ``B`` values): it never syncs with the device, and its cost (``O(B^2)`` work, about 30 us a
    step on CPU) is negligible next to the mixing itself. A greedy walk is inherently sequential;
    this is the one documented per-sample loop in :mod:`salaug.transforms`.

    Args:
        similarity: ``(B, B)`` float, symmetric, lower means a better partner; the diagonal is
            ignored. Add tiny random noise to break ties at random.
        crowding: weight of the crowding tie-break, ``>= 0`` (0: plain nearest-unvisited walk).

    Returns:
        ``(B,)`` int64 permutation, ``perm[i]`` the partner of ``i``.

    Example:
        >>> s = torch.tensor([[1.0, 0.9, 0.0, 0.1], [0.9, 1.0, 0.2, 0.0], [0.0, 0.2, 1.0, 0.9],
        ...                   [0.1, 0.0, 0.9, 1.0]])
        >>> greedy_pairing(s).tolist()  # 0, 1 are alike, and 2, 3: partners are of the other kind
        [2, 3, 1, 0]
    """
    b = similarity.shape[0]
    dev = similarity.device
    if b == 1:
        return torch.zeros(1, dtype=torch.long, device=dev)
    cost = similarity.to(torch.float32).clone()
    off = cost.clone().fill_diagonal_(0.0)
    cost.fill_diagonal_(float("inf"))
    crowd = off.sum(1)
    first = crowd.argmax()
    perm = torch.empty(b, dtype=torch.long, device=dev)
    used = torch.zeros(b, dtype=torch.bool, device=dev)
    used[first.view(1)] = True
    row = first
    for _ in range(b - 1):
        scores = cost.index_select(0, row.view(1))[0] - (crowding / b) * crowd
        col = scores.masked_fill(used, float("inf")).argmin()
        perm[row.view(1)] = col.view(1)
        used[col.view(1)] = True
        crowd = crowd - off.index_select(1, col.view(1))[:, 0]
        row = col
    perm[row.view(1)] = first.view(1)
    return perm


class GuidedMixup(SaliencyTransform):
    r"""GuidedMixup: pixel-wise mixup weighted by smoothed saliency (Kang & Kim, AAAI 2023).

    Each saliency map is smoothed with a Gaussian (``sigma`` pixels, reflect border: the result of
    kornia's ``gaussian_blur2d``, computed faster, see :meth:`smooth`) and normalised to sum 1 (an
    all-zero map becomes uniform). With ``s_a`` the sample's map and ``s_b`` its partner's, the
    sample keeps the per-pixel weight

    .. math:: w_a = \frac{s_a + \epsilon}{s_a + s_b + 2\epsilon}

    (``eps`` is tiny: where both maps are zero the mix is 0.5) and the output is
    ``w_a * x_a + (1 - w_a) * x_b``. The output saliency is mixed with the same weights (so it
    stays in ``[0, 1]``).

    Partners: ``pairing="greedy"`` pairs samples whose salient regions overlap little, as the
    paper's greedy pairing: the cosine similarity of the smoothed maps (pooled to at most 16x16)
    forms a ``B x B`` matrix (one matmul) and :func:`greedy_pairing` walks it (``B - 1`` tensor
    steps, no host sync, documented there). Tiny random noise breaks ties, so flat maps get
    random partners. ``pairing="random"`` uses a random permutation.

    Label: the partner's share is the mean over pixels of ``1 - w_a``.

    Args:
        sigma: standard deviation of the Gaussian smoothing in pixels, ``>= 0`` (0: none); the
            kernel spans ``+-3 sigma``, capped by the image size.
        pairing: ``"greedy"`` or ``"random"``.
        eps: added to both maps in the weight ratio, ``> 0``.
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        p: probability that each sample is mixed.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)`; saliency: :math:`(B, 1, H, W)`; labels: :math:`(B,)` or
          :math:`(B, K)`.
        - Output: :class:`SalientBatch` (mixed images, mixed saliency, :math:`(B, K)` labels).

    Params:
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``mask`` ``(B, 1, H, W)`` float32:
        each sample's own per-pixel weight ``w_a`` (1 where not applied).

    Raises:
        ValueError: for ``sigma < 0``, ``eps <= 0`` or an unknown ``pairing``.

    Example:
        >>> import torch
        >>> x = torch.rand(4, 3, 16, 16)
        >>> s = torch.zeros(4, 1, 16, 16); s[:2, :, :8, :8] = 1.0; s[2:, :, 8:, 8:] = 1.0
        >>> out, params = GuidedMixup(num_classes=4, sigma=1.0)(x, s, torch.arange(4), return_params=True)
        >>> [bool((i < 2) != (j < 2)) for i, j in enumerate(params["perm"].tolist())]  # disjoint blobs
        [True, True, True, True]
        >>> torch.allclose(out.labels.sum(1), torch.ones(4))
        True
    """

    def __init__(self, sigma: float = 3.0, pairing: Literal["greedy", "random"] = "greedy", eps: float = 1e-8,
                 num_classes: int | None = None, p: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes=num_classes, p=p, generator=generator)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
        if pairing not in ("greedy", "random"):
            raise ValueError(f"pairing must be 'greedy' or 'random', got {pairing!r}")
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.sigma = float(sigma)
        self.pairing = pairing
        self.eps = float(eps)

    def smooth(self, saliency: Tensor) -> Tensor:
        """Gaussian-smooth ``(B, 1, H, W)`` maps and normalise each to sum 1 (zero map: uniform).

        The blur equals ``kornia.filters.gaussian_blur2d(s, (kh, kw), (sigma, sigma))`` with its
        default reflect border, but is computed as two matmuls with banded ``(H, H)`` and ``(W, W)``
        Gaussian matrices: single-channel convolutions are slow on CPU and a matmul is not (several
        times faster at 224x224).
        """
        h, w = saliency.shape[-2:]
        s = saliency.to(torch.float32)
        if self.sigma > 0:
            s = gaussian_blur(s, self.sigma).clamp(min=0)
        total = s.sum((2, 3), keepdim=True)
        uniform = torch.full_like(s, 1.0 / (h * w))
        return torch.where(total > 0, s / total.clamp(min=1e-30), uniform)

    def generate_parameters(self, images: Tensor, saliency: Tensor) -> Params:
        b, _, h, w = images.shape
        dev = images.device
        applied = self.sample_applied(b, dev)
        s = self.smooth(saliency)
        if self.pairing == "random":
            perm = self.sample_partners(b, dev)
        else:
            pooled = F.adaptive_avg_pool2d(s, (min(h, 16), min(w, 16))).flatten(1)
            unit = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-30)
            noise = sample_uniform((b, b), dev, self.generator)
            perm = greedy_pairing(unit @ unit.T + 1e-5 * noise)
        sa, sb = s + self.eps, s[perm] + self.eps
        mask = torch.where(applied.view(-1, 1, 1, 1), sa / (sa + sb), 1.0)
        return {"applied": applied, "perm": perm, "mask": mask}

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        _require(params, ("applied", "perm", "mask"), type(self).__name__)
        perm, wa = params["perm"], params["mask"]
        if wa.shape[-2:] != images.shape[-2:] or wa.shape[0] != images.shape[0]:
            raise ValueError(f"params['mask'] has shape {tuple(wa.shape)}, which does not fit images of shape "
                             f"{tuple(images.shape)}")
        # lerp(end=own, weight=w) is exact where w == 1, so samples not applied stay bit-identical.
        out = torch.lerp(images[perm], images, wa.to(images.dtype))
        sal = torch.lerp(saliency[perm], saliency, wa.to(saliency.dtype)).clamp(0, 1)
        share = (1 - wa.to(torch.float32)).mean((1, 2, 3)) * params["applied"]
        return SalientBatch(out, sal, mix_soft_labels(labels, perm, share))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, pairing={self.pairing!r}, " + super().extra_repr()
