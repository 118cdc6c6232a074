"""Saliency-guided mixing: SaliencyMix, AttentiveCutMix, SnapMix, GuidedMixup, and their saliency-free
twin ResizeMix.

Every transform here mixes each sample with a *partner* from the same batch, chosen per batch by
a random permutation (GuidedMixup can instead pair samples whose salient regions overlap little).
Boxes, cells and weights are sampled per sample, ``p`` is drawn once per sample, and everything is
batched: no Python loop over samples (GuidedMixup's greedy pairing is the one documented
exception) and no host sync, so the transforms can run inside a training step on an accelerator.

The label rules make the soft labels describe what the mixed image really contains:

=================  ======================================================  ==================
transform          partner's share of the label (the paper's rule)         other rule
=================  ======================================================  ==================
SaliencyMix        area of the pasted box / image area                     ``labels="saliency"``
AttentiveCutMix    area of the pasted cells / image area                   ``labels="saliency"``
SnapMix            saliency mass of the partner pasted vs. target kept     ``labels="area"``
ResizeMix          area of the box the whole partner is resized into       ``labels="saliency"``
GuidedMixup        mean over pixels of the partner's mixing weight         (none)
=================  ======================================================  ==================

``labels="saliency"`` (every box / cell / paste mix, also :class:`~salaug.transforms.SalientPaste`)
gives the partner the share ``pasted / (kept + pasted)``: ``pasted`` the fraction of the partner's
saliency mass that is pasted in, ``kept`` the fraction of the target's mass that stays visible
(SnapMix's rule, normalised to sum 1). A pair where either map is flat (no contrast, e.g. all
zero: no information on where the object is) gets the area share, as does a pair where both masses
vanish: never NaN, and flat saliency gives exactly the area labels. With object masks as saliency
the label is the visible share of each object.

All sampled quantities are returned as tensors in the ``params`` dict, so
``t(x2, s2, y2, params=params)`` replays the same mix on another batch of the same size (e.g.
segmentation masks).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug._checks import (
    check_choice,
    check_flag,
    check_float,
    check_int,
    check_interval,
    check_size,
)
from salaug._filters import gaussian_blur
from salaug.boxes import (
    box_area,
    box_around,
    box_mask,
    box_mass,
    box_size,
    cell_mass,
    cells_mask,
    grid_cells,
    peak,
    row_prefix,
    top_k_cells,
)
from salaug.transforms._ops import (
    axis_pixels,
    box_resize,
    image_aspect_boxes,
    masked,
    needs_graph,
    partner_box_mass,
    paste,
    resample,
    separable_grid,
    warp,
)
from salaug.transforms.base import (
    MixTransform,
    Params,
    ParamSpec,
    sample_beta,
    sample_uniform,
)

__all__ = ["AttentiveCutMix", "GuidedMixup", "ResizeMix", "SaliencyMix", "SnapMix", "greedy_pairing"]


def _alpha(alpha: object) -> float:
    return check_float("alpha", alpha, low=0.0, low_open=True)


class SaliencyMix(MixTransform):
    r"""SaliencyMix: paste a box around the partner's saliency peak (Uddin et al., ICLR 2021).

    For each sample ``i`` with partner ``j = perm[i]``, a box of area ``lam ~ Beta(alpha, alpha)``
    (same aspect as the image, as in CutMix) is centred on the peak of ``j``'s saliency, shifted
    to lie inside the image, and ``j``'s pixels inside it replace ``i``'s at the same place. A flat
    map has no peak: its box gets a random centre, which is plain CutMix. Unlike the reference
    code, every sample has its own box, partner and ``p`` draw.

    Label: ``labels="area"`` (the paper's rule, the default): the partner's share is the realised
    box area over the image area (sides are rounded to pixels, so it can differ slightly from
    ``lam``). ``labels="saliency"``: the partner's saliency mass inside the box against the
    target's mass outside it (see the module doc), which follows what is visible.

    Args:
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        alpha: concentration of ``Beta(alpha, alpha)`` for the box area, ``> 0``.
        labels: ``"area"`` (the paper's) or ``"saliency"``.
        p: probability that each sample is mixed (default 0.5).
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

    required_params: ClassVar[ParamSpec] = {**MixTransform.required_params, "boxes": ("int", ("B", 4))}
    flat_without_maps = True
    clamp_saliency = False  # pixels are copied, never resampled

    def __init__(self, num_classes: int | None = None, *, alpha: float = 1.0,
                 labels: Literal["area", "saliency"] = "area", p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, labels=labels, p=p, generator=generator)
        self.alpha = _alpha(alpha)

    def sample_mix(self, images: Tensor, saliency: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        return self._sample_boxes(images, saliency, perm)

    def sample_flat_mix(self, images: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        return self._sample_boxes(images, None, perm)  # CutMix: a random centre for every box

    def _sample_boxes(self, images: Tensor, saliency: Tensor | None, perm: Tensor) -> dict[str, Tensor]:
        b, _, h, w = images.shape
        dev, g = images.device, self.active_generator
        area = sample_beta(self.alpha, self.alpha, (b,), dev, g)
        u = sample_uniform((b, 2), dev, g)
        random_centres = torch.stack(((u[:, 0] * w).long().clamp(max=w - 1), (u[:, 1] * h).long().clamp(max=h - 1)), 1)
        centres = random_centres if saliency is None else peak(saliency, fallback=random_centres)
        return {"boxes": box_around(centres[perm], box_size(area, (h, w)), (h, w))}

    def pixel_plan(self, params: Params, size: tuple[int, int]) -> Tensor:
        return masked(box_mask(params["boxes"], size), params["applied"])

    def mix_pixels(self, x: Tensor, params: Params, plan: Tensor, *, is_saliency: bool = False) -> Tensor:
        return paste(plan, x[params["perm"]], x)

    def area_share(self, params: Params, size: tuple[int, int]) -> Tensor:
        return box_area(params["boxes"]) / (size[0] * size[1])

    def saliency_masses(self, saliency: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        prefix = row_prefix(saliency)
        kept = 1 - box_mass(saliency, params["boxes"], prefix)
        return kept, partner_box_mass(saliency, params["boxes"], params["perm"], prefix)


class AttentiveCutMix(MixTransform):
    r"""Attentive CutMix: paste the partner's most salient grid cells (Walawalkar et al., 2020).

    The image is cut into a ``grid`` of cells (edges ``floor(i * H / gh)``, so any size works);
    for each sample the ``k`` cells of its partner holding the most saliency mass (ties broken at
    random, so a flat map picks random cells) are pasted at their own positions.

    Label: ``labels="area"`` (the paper's rule, the default): the partner's share is the pasted
    pixel area over the image area, ``k / (gh * gw)`` when the grid divides the image.
    ``labels="saliency"``: the partner's saliency mass in the pasted cells against the target's
    mass in the cells it keeps (see the module doc).

    Args:
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        grid: ``(gh, gw)`` cells (an int means square), each ``>= 1``.
        k: cells to paste, ``1 <= k <= gh * gw``.
        labels: ``"area"`` (the paper's) or ``"saliency"``.
        p: probability that each sample is mixed (default 0.5).
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

    required_params: ClassVar[ParamSpec] = {**MixTransform.required_params, "cells": ("bool", ("B", "G"))}
    clamp_saliency = False  # pixels are copied, never resampled
    replay_options = ("grid",)  # grids of as many cells (2x8, 4x4) cut the image differently

    def __init__(self, num_classes: int | None = None, *, grid: int | tuple[int, int] = (7, 7), k: int = 6,
                 labels: Literal["area", "saliency"] = "area", p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, labels=labels, p=p, generator=generator)
        self.grid: tuple[int, int] = check_size("grid", grid)
        self.k = check_int("k", k, low=1, high=self.grid[0] * self.grid[1])

    def param_dims(self, images: Tensor) -> dict[str, int]:
        return {**super().param_dims(images), "G": self.grid[0] * self.grid[1]}

    def _check_size(self, h: int, w: int) -> None:
        if h < self.grid[0] or w < self.grid[1]:
            raise ValueError(f"a {self.grid[0]}x{self.grid[1]} grid needs images of at least that size, got {h}x{w}; "
                             "use a coarser grid")

    def sample_mix(self, images: Tensor, saliency: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        b, _, h, w = images.shape
        self._check_size(h, w)
        tie = sample_uniform((b, self.grid[0] * self.grid[1]), images.device, self.active_generator)
        return {"cells": top_k_cells(saliency, self.grid, self.k, tie_break=tie)[perm]}

    def pixel_plan(self, params: Params, size: tuple[int, int]) -> Tensor:
        self._check_size(*size)
        return masked(cells_mask(params["cells"], self.grid, size), params["applied"])

    def mix_pixels(self, x: Tensor, params: Params, plan: Tensor, *, is_saliency: bool = False) -> Tensor:
        return paste(plan, x[params["perm"]], x)

    def area_share(self, params: Params, size: tuple[int, int]) -> Tensor:
        cells = params["cells"]
        cell_area = box_area(grid_cells(size, self.grid, cells.device)) / (size[0] * size[1])
        return cells.to(cell_area.dtype) @ cell_area

    def saliency_masses(self, saliency: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        cells, perm = params["cells"].to(torch.float32), params["perm"]
        mass = cell_mass(saliency, self.grid)  # (B, G), each row sums to 1
        return 1 - (mass * cells).sum(1), (mass[perm] * cells).sum(1)


class _SnapPlan(NamedTuple):
    """SnapMix's full-size plan (accelerators): the paste mask ``(B, 1, H, W)``, the source
    coordinates ``uy (B, H)``, ``ux (B, W)`` and their ``grid_sample`` grid ``(B, H, W, 2)`` (None
    for nearest)."""

    mask: Tensor
    uy: Tensor
    ux: Tensor
    grid: Tensor | None


def _snap_plan(src: Tensor, dst: Tensor, applied: Tensor, size: tuple[int, int], mode: str = "bilinear") -> _SnapPlan:
    """Where SnapMix pastes (``dst`` boxes of the applied samples) and samples (in the ``src`` boxes).

    Each ``dst`` box pixel maps to its ``src`` box coordinates as ``F.interpolate(...,
    align_corners=False)`` maps them, clamped into the source box, so inside ``dst`` the result
    equals the bilinear resize of the crop; outside it the coordinates are clamped and masked off.
    The mask is one broadcast ``&`` of per-row and per-column tests.
    """
    h, w = size
    dev = dst.device
    ys, xs = torch.arange(h, device=dev)[None, :], torch.arange(w, device=dev)[None, :]
    x1, y1, x2, y2 = dst.unbind(1)
    in_y = (ys >= y1[:, None]) & (ys < y2[:, None]) & applied[:, None]
    in_x = (xs >= x1[:, None]) & (xs < x2[:, None])
    uy = axis_pixels(y1, y2, src[:, 1], src[:, 3], ys - y1[:, None])
    ux = axis_pixels(x1, x2, src[:, 0], src[:, 2], xs - x1[:, None])
    grid = None if mode == "nearest" else separable_grid(uy, ux, size, torch.float32)  # images and saliency
    return _SnapPlan(in_y[:, None, :, None] & in_x[:, None, None, :], uy, ux, grid)


def _snap_paste(x: Tensor, perm: Tensor, plan: _SnapPlan, clamp: bool) -> Tensor:
    """``where(mask, resize of x[perm]'s source boxes, x)`` for ``x (B, C, H, W)``, every pixel
    resampled: one ``grid_sample`` (or gather) of the permuted batch, no host sync (accelerators).

    ``clamp`` clamps the resized values into ``[0, 1]`` (saliency).
    """
    if plan.grid is None:
        warped = resample(x[perm], plan.uy, plan.ux, "nearest")
    else:
        warped = warp(x[perm], plan.grid)
    if clamp:
        warped = warped.clamp(0, 1) if needs_graph(warped) else warped.clamp_(0, 1)
    return paste(plan.mask, warped.to(x.dtype), x)


# Smallest CPU image (pixels) pasted box by box: below it a few ops per box cost more than resampling
# every pixel of the batch at once (B64, one thread: 4.1 vs 3.3 ms at 32², 6.5 vs 9.4 ms at 64²).
_BOX_PASTE_PIXELS = 48 * 48


class _BoxPlan(NamedTuple):
    """SnapMix's plan on CPU: one row ``(target, partner, x1, y1, x2, y2, a1, b1, a2, b2)`` of Python
    ints per applied sample with a non-empty destination box ``(x1, y1, x2, y2)``, whose partner's
    source box is ``(a1, b1, a2, b2)``."""

    rows: list[list[int]]
    mode: str


def _box_plan(src: Tensor, dst: Tensor, applied: Tensor, perm: Tensor, mode: str = "bilinear") -> _BoxPlan:
    """Plan :func:`_box_paste`; the boxes are read back as numbers (on CPU a memory read, not a sync)."""
    x1, y1, x2, y2 = dst.unbind(1)
    target = (applied & (y2 > y1) & (x2 > x1)).nonzero().flatten()
    return _BoxPlan(torch.cat((target[:, None], perm[target][:, None], dst[target], src[target]), 1).tolist(), mode)


def _nearest_pixels(d1: int, d2: int, s1: int, s2: int) -> Tensor:
    """``(d2 - d1,)`` offsets into ``[s1, s2)`` of the nearest source pixels of ``[d1, d2)``, rounded
    from :func:`axis_pixels`'s coordinates as :func:`_snap_paste` rounds them."""
    ends = torch.tensor([[d1], [d2], [s1], [s2]])
    u = axis_pixels(ends[0], ends[1], ends[2], ends[3], torch.arange(d2 - d1)[None, :])
    return u[0].round().long() - s1


def _box_paste(x: Tensor, plan: _BoxPlan, clamp: bool) -> Tensor:
    """:func:`_snap_paste` on CPU: each destination box written with ``F.interpolate`` of its source box.

    On CPU the resize of one box at its own size (a separable kernel, no pixel outside the box)
    costs less than the batched resamples of boxes of different sizes that were measured
    (``grid_sample`` costs about 1.5x per pixel, and a shared window or size buckets hold pixels no
    box needs), so this is a loop over the pasted samples: a few ops each, no host sync on a CPU
    tensor. On a CPU with more busy threads than cores every op of it waits for a time slice.
    Low-precision images are resized in float32 and rounded once; ``clamp`` clamps resized
    saliency into ``[0, 1]``. Differentiable (the copy is written in place).
    """
    out = x.clone()
    for t, p, x1, y1, x2, y2, a1, b1, a2, b2 in plan.rows:
        crop = x[p:p + 1, :, b1:b2, a1:a2]
        if plan.mode == "nearest":  # any dtype; the accelerators' pixels (grid_sample's nearest)
            out[t, :, y1:y2, x1:x2] = crop[0][:, _nearest_pixels(y1, y2, b1, b2)][:, :, _nearest_pixels(x1, x2, a1, a2)]
            continue
        patch = box_resize(crop, (y2 - y1, x2 - x1), align_corners=False)
        out[t, :, y1:y2, x1:x2] = (patch.clamp(0, 1) if clamp else patch)[0]
    return out


class _ResizedBoxMix(MixTransform):
    """A mix that resizes a source box of the partner (``src_boxes``) into a destination box of the
    target (``dst_boxes``), bilinearly; the area share is the destination box's (SnapMix, ResizeMix)."""

    required_params: ClassVar[ParamSpec] = {**MixTransform.required_params, "src_boxes": ("int", ("B", 4)),
                                            "dst_boxes": ("int", ("B", 4))}
    clamp_saliency = False  # the resampled saliency is clamped before the paste
    flat_without_maps = True

    def pixel_plan(self, params: Params, size: tuple[int, int]) -> _SnapPlan | _BoxPlan:
        src, dst, applied = params["src_boxes"], params["dst_boxes"], params["applied"]
        if dst.device.type == "cpu" and size[0] * size[1] >= _BOX_PASTE_PIXELS:
            return _box_plan(src, dst, applied, params["perm"], self.active_interpolation)
        return _snap_plan(src, dst, applied, size, self.active_interpolation)

    def mix_pixels(self, x: Tensor, params: Params, plan: _SnapPlan | _BoxPlan, *,
                   is_saliency: bool = False) -> Tensor:
        if isinstance(plan, _BoxPlan):
            return _box_paste(x.contiguous(), plan, clamp=is_saliency)
        return _snap_paste(x.contiguous(), params["perm"], plan, clamp=is_saliency)

    def area_share(self, params: Params, size: tuple[int, int]) -> Tensor:
        return box_area(params["dst_boxes"]) / (size[0] * size[1])


class SnapMix(_ResizedBoxMix):
    r"""SnapMix: resize a partner box into a target box, labels by saliency mass (Huang et al., 2021).

    For each sample ``i`` with partner ``j = perm[i]``: a destination box of area
    ``Beta(alpha, alpha)`` at a uniform position in ``i`` and an independently sampled source box
    in ``j`` (both with the image's aspect). The source box of ``j`` is resized bilinearly
    (``align_corners=False``) into the destination box of ``i``.

    Saliency maps are used as given, as mass distributions (each map normalised to sum 1, as
    SnapMix does with its CAMs; an all-zero map counts as uniform):

    * ``weights[:, 0]`` (target) ``= 1 -`` mass of ``i``'s saliency inside the destination box,
    * ``weights[:, 1]`` (partner) ``=`` mass of ``j``'s saliency inside the source box.

    These raw weights need not sum to 1 and are always in ``params["weights"]``. The returned
    labels always have rows summing to 1. With ``labels="saliency"`` (the paper's rule, the
    default):

    * ``normalize=True`` (default): the partner's share is ``w_p / (w_t + w_p)``; when both are 0
      (the box removed all of ``i``'s mass and pasted none of ``j``'s) it falls back to the area
      rule (destination box area over image area).
    * ``normalize=False``: the partner's share is the raw ``w_p`` (the fraction of ``j``'s
      object actually pasted), the target keeps ``1 - w_p``. For the paper's unnormalised loss
      ``w_t * CE(y_i) + w_p * CE(y_j)`` use :meth:`paper_loss` with ``params``.

    Where either map of a pair is flat (no contrast, e.g. all zero) the label is the area share:
    such a map says nothing about where the object is.

    ``labels="area"`` (the control): the partner's share is the destination box area over the
    image area, which is what the pixels contain.

    Args:
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        alpha: concentration of ``Beta(alpha, alpha)`` for both box areas, ``> 0``.
        normalize: how the raw weights become the label, see above.
        labels: ``"saliency"`` (the paper's) or ``"area"``.
        p: probability that each sample is mixed (default 0.5).
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)`; saliency: :math:`(B, 1, H, W)`; labels: :math:`(B,)` or
          :math:`(B, K)`.
        - Output: :class:`SalientBatch`; the saliency is resized and pasted like the images.

    Params:
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``src_boxes`` ``(B, 4)`` int64 boxes in
        the partner, ``dst_boxes`` ``(B, 4)`` int64 boxes they are resized into (as in
        :class:`~salaug.transforms.SalientPaste`), ``weights`` ``(B, 2)`` float32 raw (target,
        partner) weights, ``(1, 0)`` where not applied.

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

    required_params: ClassVar[ParamSpec] = {**_ResizedBoxMix.required_params, "weights": ("float", ("B", 2))}

    def __init__(self, num_classes: int | None = None, *, alpha: float = 5.0, normalize: bool = True,
                 labels: Literal["area", "saliency"] = "saliency", p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, labels=labels, p=p, generator=generator)
        self.alpha = _alpha(alpha)
        self.normalize = check_flag("normalize", normalize)

    def sample_mix(self, images: Tensor, saliency: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        src, dst = self._sample_boxes(images)
        prefix = row_prefix(saliency)
        return self._with_weights(src, dst, box_mass(saliency, dst, prefix),
                                  partner_box_mass(saliency, src, perm, prefix), applied)

    def sample_flat_mix(self, images: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        src, dst = self._sample_boxes(images)
        pixels = images.shape[-2] * images.shape[-1]  # a flat map's mass in a box is the box's area share
        return self._with_weights(src, dst, box_area(dst) / pixels, box_area(src) / pixels, applied)

    def _sample_boxes(self, images: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = images.shape
        dev, g = images.device, self.active_generator
        areas = sample_beta(self.alpha, self.alpha, (b, 2), dev, g)
        u = sample_uniform((b, 4), dev, g)
        return image_aspect_boxes(areas[:, 1], u[:, 2:], (h, w)), image_aspect_boxes(areas[:, 0], u[:, :2], (h, w))

    @staticmethod
    def _with_weights(src: Tensor, dst: Tensor, removed: Tensor, pasted: Tensor, applied: Tensor) -> dict[str, Tensor]:
        weights = torch.stack((torch.where(applied, 1 - removed, 1.0), torch.where(applied, pasted, 0.0)), 1)
        return {"src_boxes": src, "dst_boxes": dst, "weights": weights}

    def saliency_masses(self, saliency: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        wt, wp = params["weights"].to(torch.float32).unbind(1)  # measured when sampled
        return wt, wp

    def mass_share(self, kept: Tensor, pasted: Tensor, area: Tensor) -> Tensor:
        return super().mass_share(kept, pasted, area) if self.normalize else pasted.clamp(0, 1)

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


class ResizeMix(_ResizedBoxMix):
    r"""ResizeMix: the whole partner image, shrunk, pasted into a box of the target (Qin et al., 2020).

    For each sample ``i`` with partner ``j = perm[i]``: a scale ``tau ~ U(scale)`` of the image
    side, a destination box of the image's aspect with sides ``tau * (H, W)`` at a uniform
    position in ``i``, and all of ``j`` resized bilinearly (``align_corners=False``) into it. No
    saliency is needed to place anything: this is the saliency-free twin of :class:`SnapMix`'s
    paste (the whole partner instead of a random box of it), the control that tells whether a
    saliency method adds anything beyond "paste a whole object".

    Labels: ``labels="area"`` (the paper's, the default) gives the partner the destination box's
    share of the image area. ``labels="saliency"`` gives ``pasted / (kept + pasted)`` with
    ``pasted = 1`` (the whole partner map is pasted) and ``kept`` the target's mass outside the
    box; where either map is flat the area share is used.

    Args:
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        scale: ``(lo, hi)`` range of the pasted side as a fraction of the image side, within
            ``(0, 1]`` (the paper's ``(0.1, 0.8)``).
        labels: ``"area"`` (the paper's) or ``"saliency"``.
        p: probability that each sample is mixed (default 0.5).
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)`; saliency: :math:`(B, 1, H, W)`; labels: :math:`(B,)` or
          :math:`(B, K)`.
        - Output: :class:`SalientBatch`; the saliency is resized and pasted like the images.

    Params:
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``src_boxes`` ``(B, 4)`` int64 (the
        whole image), ``dst_boxes`` ``(B, 4)`` int64 boxes the partner is resized into.

    Raises:
        ValueError: if ``scale`` is not an increasing pair within ``(0, 1]``.

    Example:
        >>> import torch
        >>> x = torch.stack((torch.zeros(3, 16, 16), torch.ones(3, 16, 16)))
        >>> t = ResizeMix(num_classes=2, p=1.0, scale=(0.5, 0.5), generator=torch.Generator().manual_seed(0))
        >>> out = t(x, torch.zeros(2, 1, 16, 16), torch.tensor([0, 1]))
        >>> out.labels[0].tolist(), out.images[0].mean().item()  # an 8x8 copy of the ones image in sample 0
        ([0.75, 0.25], 0.25)
    """

    def __init__(self, num_classes: int | None = None, *, scale: tuple[float, float] = (0.1, 0.8),
                 labels: Literal["area", "saliency"] = "area", p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, labels=labels, p=p, generator=generator)
        self.scale = check_interval("scale", scale, low=0.0, high=1.0, low_open=True)

    def sample_mix(self, images: Tensor, saliency: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        return self.sample_flat_mix(images, applied, perm)  # the boxes never read the saliency

    def sample_flat_mix(self, images: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        b, _, h, w = images.shape
        dev, g = images.device, self.active_generator
        lo, hi = self.scale
        tau = sample_uniform((b,), dev, g, lo, hi)
        dst = image_aspect_boxes(tau * tau, sample_uniform((b, 2), dev, g), (h, w))
        src = torch.tensor([0, 0, w, h], device=dev).expand(b, 4)
        return {"src_boxes": src.contiguous(), "dst_boxes": dst}

    def saliency_masses(self, saliency: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        kept = 1 - box_mass(saliency, params["dst_boxes"])
        return kept, torch.ones_like(kept)


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


class GuidedMixup(MixTransform):
    r"""GuidedMixup: pixel-wise mixup weighted by smoothed saliency (Kang & Kim, AAAI 2023).

    Each saliency map is smoothed with a Gaussian (``sigma`` pixels, reflect border: the result of
    kornia's ``gaussian_blur2d``, computed faster, see :meth:`smooth`) and normalised to sum 1 (an
    all-zero map becomes uniform). With ``s_a`` the sample's map and ``s_b`` its partner's, the
    sample keeps the per-pixel weight

    .. math:: w_a = \frac{s_a + \epsilon}{s_a + s_b + 2\epsilon}

    (``eps`` is tiny: where both maps are zero the mix is 0.5) and the output is
    ``w_a * x_a + (1 - w_a) * x_b``. The output saliency is mixed with the same weights (so it
    stays in ``[0, 1]``). With ``interpolation="nearest"`` (a replay on masks) nothing is blended:
    each pixel shows the image whose weight is larger (the sample's own where ``w_a >= 0.5``).

    Partners: ``pairing="greedy"`` pairs samples whose salient regions overlap little, as the
    paper's greedy pairing: the cosine similarity of the smoothed maps (pooled to at most 16x16)
    forms a ``B x B`` matrix (one matmul) and :func:`greedy_pairing` walks it (``B - 1`` tensor
    steps, no host sync, documented there). Tiny random noise breaks ties, so flat maps get
    random partners. ``pairing="random"`` uses a random permutation.

    Label: the partner's share is the mean over pixels of ``1 - w_a`` (the paper's rule; a
    pixel-wise mix has no ``labels`` option).

    Args:
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        sigma: standard deviation of the Gaussian smoothing in pixels, ``>= 0`` (0: none); the
            kernel spans ``+-3 sigma``, capped by the image size.
        pairing: ``"greedy"`` or ``"random"``.
        eps: added to both maps in the weight ratio, ``> 0``.
        p: probability that each sample is mixed (default 0.5).
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)`; saliency: :math:`(B, 1, H, W)`; labels: :math:`(B,)` or
          :math:`(B, K)`.
        - Output: :class:`SalientBatch` (mixed images, mixed saliency, :math:`(B, K)` labels).

    Params:
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``own_weight`` ``(B, 1, H, W)``
        float32: each sample's own per-pixel weight ``w_a`` (1 where not applied; the partner's
        weight is ``1 - own_weight``).

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

    required_params: ClassVar[ParamSpec] = {**MixTransform.required_params,
                                            "own_weight": ("float", ("B", 1, "H", "W"))}

    def __init__(self, num_classes: int | None = None, *, sigma: float = 3.0,
                 pairing: Literal["greedy", "random"] = "greedy", eps: float = 1e-8, p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, p=p, generator=generator)
        self.sigma = check_float("sigma", sigma, low=0.0)
        self.pairing = check_choice("pairing", pairing, ("greedy", "random"))
        self.eps = check_float("eps", eps, low=0.0, low_open=True)

    def smooth(self, saliency: Tensor) -> Tensor:
        """Gaussian-smooth ``(B, 1, H, W)`` maps and normalise each to sum 1 (zero map: uniform).

        The blur equals ``kornia.filters.gaussian_blur2d(s, (kh, kw), (sigma, sigma))`` with its
        default reflect border, but is computed as two matmuls with banded ``(H, H)`` and ``(W, W)``
        Gaussian matrices: single-channel convolutions are slow on CPU and a matmul is not.
        """
        h, w = saliency.shape[-2:]
        s = saliency.to(torch.float32)
        if self.sigma > 0:
            s = gaussian_blur(s, self.sigma).clamp(min=0)
        total = s.sum((2, 3), keepdim=True)
        uniform = torch.full_like(s, 1.0 / (h * w))
        return torch.where(total > 0, s / total.clamp(min=1e-30), uniform)

    def generate_parameters(self, images: Tensor, saliency: Tensor | None) -> dict[str, Tensor]:
        assert saliency is not None, "flat saliency reaches GuidedMixup as a map of ones"
        # the pairing needs the smoothed maps the weights are made of: sampled here in one place
        b, _, h, w = images.shape
        dev = images.device
        applied = self.sample_applied(b, dev)
        s = self.smooth(saliency)
        if self.pairing == "random":
            perm = self.sample_partners(b, dev)
        else:
            pooled = F.adaptive_avg_pool2d(s, (min(h, 16), min(w, 16))).flatten(1)
            unit = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-30)
            noise = sample_uniform((b, b), dev, self.active_generator)
            perm = greedy_pairing(unit @ unit.T + 1e-5 * noise)
        sa, sb = s + self.eps, s[perm] + self.eps
        own = torch.where(applied.view(-1, 1, 1, 1), sa / (sa + sb), 1.0)
        return {"applied": applied, "perm": perm, "own_weight": own}

    def mix_pixels(self, x: Tensor, params: Params, plan: Any, *, is_saliency: bool = False) -> Tensor:
        own = params["own_weight"]
        if self.active_interpolation == "nearest":  # no blending: each pixel from the image of larger weight
            return torch.where(own >= 0.5, x, x[params["perm"]])
        # lerp(end=own, weight=w) is exact where w == 1, so samples not applied stay bit-identical.
        return torch.lerp(x[params["perm"]], x, own.to(x.dtype))

    def partner_share(self, saliency: Tensor, params: Params) -> Tensor:
        return (1 - params["own_weight"].to(torch.float32)).mean((1, 2, 3))
