"""The "pad" family: paste a partner's salient region where it hides nothing of the target."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug._checks import check_choice, check_float, check_interval
from salaug.boxes import (
    box_area,
    box_around,
    box_mass,
    box_size,
    least_salient_box,
    peak,
    row_prefix,
)
from salaug.transforms._ops import (
    PastePlan,
    by_chunks,
    needs_graph,
    partner_box_mass,
    paste_plan,
    paste_resampled,
    resample,
    serial_step,
)
from salaug.transforms.base import (
    Interpolation,
    MixTransform,
    Params,
    ParamSpec,
    sample_uniform,
)

__all__ = ["SalientPaste"]

_BACKGROUNDS = ("image", "constant", "reflect")
_COARSE = 32  # box searches run on saliency average-pooled to at most this many cells a side


def _coarse(saliency: Tensor, pad_value: float) -> tuple[Tensor, int]:
    """Average-pool ``(B, 1, H, W)`` saliency by an integer factor ``f`` so each side is <= 32 cells.

    The map is first padded (bottom / right) to a multiple of ``f`` with ``pad_value``. Returns the
    pooled map and ``f``. Box searches on it cost O(B * 32^2) instead of O(B * H * W).
    """
    h, w = saliency.shape[-2:]
    f = max(1, math.ceil(max(h, w) / _COARSE))
    if f == 1:
        return saliency, 1
    ph, pw = -h % f, -w % f
    if ph or pw:
        saliency = F.pad(saliency, (0, pw, 0, ph), value=pad_value)
    return F.avg_pool2d(saliency, f), f


def _from_coarse(cbox: Tensor, sizes: Tensor, f: int, size: tuple[int, int]) -> Tensor:
    """Full-resolution boxes of ``sizes (w, h)`` centred in coarse boxes, shifted inside the image."""
    h, w = size
    limit = torch.tensor([w, h], device=sizes.device)
    span = (cbox[:, 2:] - cbox[:, :2]) * f
    start = cbox[:, :2] * f + (span - sizes).clamp(min=0) // 2
    start = torch.minimum(start, limit - sizes).clamp(min=0)
    return torch.cat((start, start + sizes), 1)


def _search(saliency: Tensor, sizes: Tensor, tie: Tensor, least: bool) -> Tensor:
    """Least (or most) salient box of ``sizes`` per map, searched on a pooled map; ``(B, 4)``."""
    h, w = saliency.shape[-2:]
    coarse, f = _coarse(saliency, 1.0 if least else 0.0)
    if not least:  # the box of most mass is the box of least (1 - s) mass at a fixed size
        coarse = 1.0 - coarse
    hc, wc = coarse.shape[-2:]
    climit = torch.tensor([wc, hc], device=sizes.device)
    csizes = torch.minimum((sizes + f - 1) // f, climit).clamp(min=1)
    # about twenty small ops on (B, hc + 1, wc + 1) tables: in chunks of serial ops on CPU
    step = serial_step(coarse, (hc + 1) * (wc + 1))
    cbox = by_chunks(lambda c, z, t: least_salient_box(c, z, tie_break=t), step, coarse, csizes, tie[:, :hc, :wc])
    return _from_coarse(cbox, sizes, f, (h, w))


def _reflect(u: Tensor, n: int) -> Tensor:
    """Reflect pixel coordinates about the first and last pixel centres into ``[0, n - 1]``."""
    if n == 1:
        return torch.zeros_like(u)
    period = 2 * (n - 1)
    u = torch.remainder(u, period)
    return torch.where(u > n - 1, period - u, u)


class SalientPaste(MixTransform):
    r"""Paste each partner's salient region, rescaled, where it hides least of the target ("pad").

    Partners are a random permutation of the batch. For each sample a destination area fraction
    ``a ~ U(scale)`` and a zoom ``z ~ U(zoom)`` are drawn; the source box, of the destination's
    size divided by ``z`` (clamped to the image), is centred on the partner's saliency peak
    (``source="peak"``; a random point for a flat map) or is the box of that size holding the most
    partner saliency (``source="mass"``). It is resampled (bilinear or nearest) into the destination:

    * ``background="image"``: the destination is an image-shaped box of area ``a`` placed on the
      target's **least-salient** region of that size (searched with
      :func:`salaug.boxes.least_salient_box` over the saliency average-pooled to at most 32 cells a
      side, ties broken at random so flat maps get random positions). The destination box is
      centred in the chosen coarse box, whose mass bounds its own.
    * ``background="constant"`` / ``"reflect"`` (padded canvas): a strip of width ``a * W`` (or
      height ``a * H``) along a random side (left / right / top / bottom) receives the partner's
      region; the target is shrunk by ``1 - a``, keeping its aspect ratio, into the rest of the
      canvas (flush against the strip, centred along it), and the space left around it is filled
      with ``fill`` or with the target's reflection.

    Label weight of the partner, ``labels="area"`` (the default, the rule of the "pad" family):
    the destination's share of the image for ``"image"``; for a padded canvas the strip's share of
    the canvas, normalised over the parts that show an image (``"constant"``: strip / (strip +
    shrunk target); ``"reflect"``: the reflected padding shows the target, so strip / canvas).
    ``labels="saliency"``: the partner's saliency mass inside its source box over that plus the
    target's mass left visible (outside the destination for ``"image"``, all of it for a padded
    canvas); the area weight where both are zero. The output saliency is transformed with the
    images. Samples not transformed are returned unchanged.

    The paste samples the partners' boxes with one ``grid_sample`` (``"nearest"``: one flat gather)
    at the size of the largest possible box, in the partners' own order, and writes them with one
    ``scatter_`` into a copy of the batch: no full-size masks, temporaries or permuted copies in
    ``"image"`` mode. A padded canvas resamples every pixel of the target, so it costs about as
    much as a resize.

    Args:
        num_classes: number of classes K, needed for ``(B,)`` integer labels.
        scale: range of the pasted area as a fraction of the image, in ``(0, 1)``.
        zoom: range of the magnification from the source box to the destination (> 0).
        background: ``"image"``, ``"constant"`` or ``"reflect"``.
        labels: ``"area"`` or ``"saliency"``.
        label_rule: deprecated spelling of ``labels`` (``"mass"`` is ``"saliency"``).
        source: ``"peak"`` or ``"mass"``: how the partner's salient box is found.
        interpolation: ``"bilinear"`` or ``"nearest"`` resampling of the pasted region (both at
            patch size, about the same cost on CPU).
        fill: the padding value for ``background="constant"``.
        p: probability that each sample receives a paste (default 0.5).
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)` floating point.
        - saliency: :math:`(B, 1, H, W)` (or :math:`(B, 1, h, w)`, resized) in ``[0, 1]``.
        - labels: :math:`(B,)` int64 or :math:`(B, K)` float.
        - output: ``SalientBatch`` of :math:`(B, C, H, W)`, :math:`(B, 1, H, W)`, :math:`(B, K)`.

    Parameters returned with ``return_params=True``: ``applied`` ``(B,)`` bool, ``perm`` ``(B,)``
    long (a permutation), ``src_boxes`` / ``dst_boxes`` ``(B, 4)`` int64 (in the partner's / the
    output's pixels; empty where not applied), and for a padded canvas ``target_boxes`` ``(B, 4)``
    (where the shrunk target lies; the full image where not applied).

    Returns:
        ``SalientBatch(images, saliency, labels)``; images keep dtype and device.

    Raises:
        ValueError: for unknown options or out-of-range arguments, and (at call time) malformed
            inputs or params.

    Example:
        >>> import torch
        >>> x = torch.cat((torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)))
        >>> s = torch.zeros(2, 1, 16, 16); s[:, :, :8] = 1.0   # salient top half
        >>> paste = SalientPaste(scale=(0.25, 0.25), zoom=(1.0, 1.0), num_classes=2, p=1.0,
        ...                      generator=torch.Generator().manual_seed(0))
        >>> out, params = paste(x, s, torch.tensor([0, 1]), return_params=True)
        >>> params["dst_boxes"][:, 1].ge(8).tolist()           # pasted in the bottom half
        [True, True]
        >>> out.labels.tolist()
        [[0.75, 0.25], [0.25, 0.75]]
    """

    required_params: ClassVar[ParamSpec] = {**MixTransform.required_params, "src_boxes": ("int", ("B", 4)),
                                            "dst_boxes": ("int", ("B", 4))}
    clamp_saliency = False  # the resampled saliency is clamped where it is resampled
    replay_options = ("background", "interpolation", "fill")

    def __init__(self, num_classes: int | None = None, *, scale: tuple[float, float] = (0.1, 0.4),
                 zoom: tuple[float, float] = (0.75, 1.33), background: str = "image",
                 labels: Literal["area", "saliency"] = "area", source: str = "peak",
                 interpolation: Interpolation = "bilinear", fill: float = 0.0, p: float = 0.5,
                 generator: torch.Generator | None = None, label_rule: str | None = None) -> None:
        if label_rule is not None:
            warnings.warn("SalientPaste(label_rule=...) is deprecated: use labels='area' or labels='saliency'",
                          DeprecationWarning, stacklevel=2)
            labels = {"mass": "saliency"}.get(label_rule, label_rule)  # type: ignore[assignment]
        super().__init__(num_classes, labels=labels, p=p, generator=generator)
        self.scale = check_interval("scale", scale, low=0.0, high=1.0, low_open=True)
        self.zoom = check_interval("zoom", zoom, low=0.0, low_open=True)
        self.background = check_choice("background", background, _BACKGROUNDS)
        self.source = check_choice("source", source, ("peak", "mass"))
        self.interpolation: Interpolation = check_choice("interpolation", interpolation, ("bilinear", "nearest"))
        self.fill = check_float("fill", fill)

    def param_spec(self) -> ParamSpec:
        if self.background == "image":
            return self.required_params
        return {**self.required_params, "target_boxes": ("int", ("B", 4))}

    # -- parameters ---------------------------------------------------------------------------------
    def sample_mix(self, images: Tensor, saliency: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        b, _, h, w = images.shape
        dev, g = images.device, self.active_generator
        u = sample_uniform((b, 5), dev, g)
        tie = sample_uniform((b, _COARSE, _COARSE), dev, g)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        zoom = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * u[:, 1]
        limit = torch.tensor([w, h], device=dev)
        params: dict[str, Tensor] = {}
        if self.background == "image":
            dst_size = box_size(area, (h, w))
            dst = _search(saliency, dst_size, tie, least=True)
        else:
            dst, target = self._canvas_layout(area, u[:, 2], (h, w))
            dst_size = dst[:, 2:] - dst[:, :2]
            full = torch.tensor([0, 0, w, h], device=dev).expand(b, 4)
            params["target_boxes"] = torch.where(applied[:, None], target, full)
        src_size = torch.minimum((dst_size.float() / zoom[:, None]).round().long(), limit).clamp(min=1)
        if self.source == "peak":
            random_xy = (u[:, 3:5] * limit).long().clamp(max=limit - 1)
            centre = peak(saliency, fallback=random_xy)[perm]
            src = box_around(centre, src_size, (h, w))
        else:
            src = _search(saliency[perm], src_size, tie.flip(1), least=False)
        params["src_boxes"] = src.masked_fill(~applied[:, None], 0)
        params["dst_boxes"] = dst.masked_fill(~applied[:, None], 0)
        return params

    @property
    def default_interpolation(self) -> Interpolation:
        """This transform's ``interpolation`` (a call's ``interpolation`` overrides it)."""
        return self.interpolation

    @staticmethod
    def _canvas_layout(area: Tensor, u_side: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Strip (partner) and shrunk-target boxes of a padded canvas, ``(B, 4)`` each."""
        h, w = size
        side = (u_side * 4).long().clamp(max=3)  # 0 left, 1 right, 2 top, 3 bottom
        across = side < 2  # the strip spans the full height
        sw = (area * w).round().long().clamp(1, max(w - 1, 1))
        sh = (area * h).round().long().clamp(1, max(h - 1, 1))
        # target: the rest along the strip's axis, the other side scaled by the same factor
        tw = torch.where(across, (w - sw).clamp(min=1), ((1 - sh.float() / h) * w).round().long().clamp(1, w))
        th = torch.where(across, ((1 - sw.float() / w) * h).round().long().clamp(1, h), (h - sh).clamp(min=1))
        zero = torch.zeros_like(sw)
        strip_x1 = torch.where(side == 1, w - sw, zero)
        strip_y1 = torch.where(side == 3, h - sh, zero)
        strip = torch.stack((strip_x1, strip_y1,
                             torch.where(across, strip_x1 + sw, torch.full_like(sw, w)),
                             torch.where(across, torch.full_like(sh, h), strip_y1 + sh)), 1)
        tx1 = torch.where(side == 0, sw, torch.where(across, zero, (w - tw) // 2))
        ty1 = torch.where(side == 2, sh, torch.where(across, (h - th) // 2, zero))
        target = torch.stack((tx1, ty1, tx1 + tw, ty1 + th), 1)
        return strip, target

    # -- application --------------------------------------------------------------------------------
    def _patch_size(self, h: int, w: int) -> tuple[int, int]:
        if self.background != "image":
            return h, w
        side = math.sqrt(self.scale[1]) * (1 + 1e-6)
        return min(h, math.ceil(h * side) + 1), min(w, math.ceil(w * side) + 1)

    def pixel_plan(self, params: Params, size: tuple[int, int]) -> PastePlan:
        return paste_plan(params["src_boxes"], params["dst_boxes"], params["perm"], self._patch_size(*size), size,
                          self.active_interpolation)

    def mix_pixels(self, x: Tensor, params: Params, plan: PastePlan, *, is_saliency: bool = False) -> Tensor:
        x = x.contiguous()  # a no-op for the usual layout
        if self.background == "image":
            return paste_resampled(x, plan, clamp=is_saliency)
        nearest = self.active_interpolation == "nearest"  # masks: the padding is 0, as in the saliency
        canvas = self._canvas(x, params["target_boxes"], 0.0 if is_saliency or nearest else self.fill)
        if is_saliency:
            canvas = canvas.clamp(0, 1) if needs_graph(canvas) else canvas.clamp_(0, 1)
        canvas = paste_resampled(x, plan, canvas, clamp=is_saliency)
        return torch.where(params["applied"][:, None, None, None], canvas, x)

    def _canvas(self, x: Tensor, target: Tensor, fill: float) -> Tensor:
        """The shrunk target on a ``fill`` / reflect-padded canvas."""
        b, _, h, w = x.shape
        dev = x.device
        xs = torch.arange(w, device=dev)[None, :].expand(b, w)
        ys = torch.arange(h, device=dev)[None, :].expand(b, h)
        # canvas pixel -> target pixel (pixel-area aligned); outside the target box the coordinates
        # leave the image and are reflected back (reflect) or clamped and then filled (constant)
        dn_x = (target[:, 2] - target[:, 0]).clamp(min=1).float()[:, None]
        dn_y = (target[:, 3] - target[:, 1]).clamp(min=1).float()[:, None]
        ux = (xs - target[:, :1]).float().add(0.5).mul(w / dn_x).sub(0.5)
        uy = (ys - target[:, 1:2]).float().add(0.5).mul(h / dn_y).sub(0.5)
        if self.background == "reflect":
            ux, uy = _reflect(ux, w), _reflect(uy, h)
        else:
            ux, uy = ux.clamp(0, w - 1), uy.clamp(0, h - 1)
        out = resample(x, uy, ux, self.active_interpolation).to(x.dtype)
        if self.background == "constant":
            inside = ((xs >= target[:, :1]) & (xs < target[:, 2:3]))[:, None, :] & \
                     ((ys >= target[:, 1:2]) & (ys < target[:, 3:4]))[:, :, None]
            outside = ~inside[:, None]
            value = torch.full((), fill, dtype=out.dtype, device=out.device)  # also for bool / integer masks
            out = out.masked_fill(outside, value) if needs_graph(out) else out.masked_fill_(outside, value)
        return out

    def area_share(self, params: Params, size: tuple[int, int]) -> Tensor:
        h, w = size
        a_p = box_area(params["dst_boxes"]) / (h * w)
        if self.background in ("image", "reflect"):
            return a_p
        a_t = box_area(params["target_boxes"]) / (h * w)
        return a_p / (a_p + a_t).clamp(min=1e-12)

    def saliency_masses(self, saliency: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        prefix = row_prefix(saliency)
        pasted = partner_box_mass(saliency, params["src_boxes"], params["perm"], prefix)
        if self.background == "image":
            return 1.0 - box_mass(saliency, params["dst_boxes"], prefix), pasted
        return torch.ones_like(pasted), pasted  # the whole target stays visible, shrunk
