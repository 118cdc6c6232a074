"""Saliency-aware erasing: KeepAugment's selective cutout, which spares the object."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from salaug._checks import check_float, check_int, check_interval
from salaug.boxes import box_mask, box_mass
from salaug.transforms._ops import (
    first_true,
    flat_index,
    gather,
    patch_index,
    pick,
    restore_first,
    rrc_boxes,
    scatter,
)
from salaug.transforms.base import Params, ParamSpec, SaliencyTransform, SalientBatch

__all__ = ["KeepCutout"]


def _max_side(scale_max: float, ratio: float, h: int, w: int, side: int) -> int:
    """Largest side a sampled candidate can have (see ``_ops.rrc_boxes``), with a rounding margin."""
    return min(side, math.ceil(math.sqrt(scale_max * h * w * ratio) * (1 + 1e-6)) + 1)


class KeepCutout(SaliencyTransform):
    r"""Erase a box that holds little saliency, so the object survives (KeepAugment's selective cut).

    For each sample, ``num_candidates`` boxes are drawn (area a uniform fraction ``scale`` of the
    image, aspect ratio ``w / h`` log-uniform in ``ratio``, uniform position) and scored by their
    saliency mass; the first whose mass is below ``threshold`` is erased. **Fallback:** when no
    candidate is below the threshold, nothing is erased for that sample (its box in the params is
    empty), so an erased box never holds ``threshold`` or more of the mass. Erased pixels get
    ``value`` (a float, or ``"random"``: standard-normal noise, suited to normalised images); erased
    saliency is set to 0, and so are erased pixels in a replay on masks (``interpolation="nearest"``).
    Labels are unchanged.

    Args:
        num_classes: number of classes K, needed for ``(B,)`` integer labels.
        scale: range of the erased area as a fraction of the image area, in ``(0, 1]``.
        ratio: range of the aspect ratio ``w / h`` in pixels.
        threshold: erase only boxes holding less than this fraction of the saliency mass.
        value: fill value, or ``"random"`` for per-pixel N(0, 1) noise (drawn in
            ``generate_parameters`` so a replay is exact).
        num_candidates: boxes tried per sample.
        p: probability that each sample is considered for erasing.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)` floating point.
        - saliency: :math:`(B, 1, H, W)` (or :math:`(B, 1, h, w)`, resized) in ``[0, 1]``.
        - labels: :math:`(B,)` int64 or :math:`(B, K)` float.
        - output: ``SalientBatch`` of :math:`(B, C, H, W)`, :math:`(B, 1, H, W)`, :math:`(B, K)`.

    Parameters returned with ``return_params=True``: ``applied`` ``(B,)`` bool, ``boxes`` ``(B, 4)``
    int64 erased boxes (empty ``(0, 0, 0, 0)`` where nothing is erased), ``mass`` ``(B,)`` float32
    saliency mass of each erased box, and ``noise`` ``(B, C, Hm, Wm)`` for ``value="random"``.

    Returns:
        ``SalientBatch(images, saliency, labels)``; images keep their dtype and device.

    Raises:
        ValueError: for out-of-range arguments, and (at call time) malformed inputs or params.

    Example:
        >>> import torch
        >>> x = torch.ones(2, 3, 16, 16)
        >>> s = torch.zeros(2, 1, 16, 16); s[:, :, 2:6, 2:6] = 1.0
        >>> cut = KeepCutout(threshold=0.05, num_classes=2, generator=torch.Generator().manual_seed(0))
        >>> out, params = cut(x, s, torch.tensor([0, 1]), return_params=True)
        >>> bool((params["mass"] < 0.05).all()), bool((out.images[:, :, 2:6, 2:6] == 1).all())
        (True, True)
    """

    replay_options = ("value",)

    def __init__(self, num_classes: int | None = None, *, scale: tuple[float, float] = (0.02, 0.25),
                 ratio: tuple[float, float] = (0.3, 3.3), threshold: float = 0.1, value: float | str = 0.0,
                 num_candidates: int = 16, p: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, p=p, generator=generator)
        self.scale = check_interval("scale", scale, low=0.0, high=1.0, low_open=True)
        self.ratio = check_interval("ratio", ratio, low=0.0, low_open=True)
        self.threshold = check_float("threshold", threshold, low=0.0, high=1.0)
        if isinstance(value, str) and value != "random":
            raise ValueError(f"value must be a number or 'random', got {value!r}")
        self.value = value if isinstance(value, str) else check_float("value", value)
        self.num_candidates = check_int("num_candidates", num_candidates, low=1)

    def param_spec(self) -> ParamSpec:
        spec: ParamSpec = {"applied": ("bool", ("B",)), "boxes": ("int", ("B", 4))}
        if self.value == "random":  # a replay on masks uses no noise, so any channel count replays
            spec["noise"] = ("float", ("B", "*" if self.active_interpolation == "nearest" else "C", "*", "*"))
        return spec

    def _patch_size(self, h: int, w: int) -> tuple[int, int]:
        return (_max_side(self.scale[1], 1 / self.ratio[0], h, w, h), _max_side(self.scale[1], self.ratio[1], h, w, w))

    def generate_parameters(self, images: Tensor, saliency: Tensor) -> dict[str, Tensor]:
        b, c, h, w = images.shape
        dev = images.device
        applied = self.sample_applied(b, dev)
        g = self.active_generator
        cand = rrc_boxes(b, self.num_candidates, (h, w), self.scale, self.ratio, dev, g)
        mass = box_mass(saliency, cand)
        idx, found = first_true(mass < self.threshold)
        use = (applied & found)[:, None]
        boxes = torch.where(use, pick(cand, idx), torch.zeros((), dtype=torch.long, device=dev))
        params = {"applied": applied, "boxes": boxes,
                  "mass": torch.where(use[:, 0], mass.gather(1, idx[:, None]).squeeze(1), torch.zeros((), device=dev))}
        if self.value == "random":
            hm, wm = self._patch_size(h, w)
            gdev = g.device if g is not None else dev
            params["noise"] = torch.randn((b, c, hm, wm), generator=g, device=gdev).to(dev)
        return params

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        h, w = images.shape[-2:]
        boxes = params["boxes"]
        mask = box_mask(boxes, (h, w))
        sal = torch.where(mask, torch.zeros((), dtype=saliency.dtype, device=saliency.device), saliency)
        nearest = self.active_interpolation == "nearest"  # masks: erased pixels are 0, as the saliency
        if isinstance(self.value, float) or nearest:
            fill = torch.full((), self.value if isinstance(self.value, float) and not nearest else 0,
                              dtype=images.dtype, device=images.device)
            return SalientBatch(torch.where(mask, fill, images), sal, labels)
        noise = params["noise"].to(dtype=images.dtype)
        hm, wm = noise.shape[-2:]
        rows, cols, ri, ci = patch_index(boxes, (hm, wm), (h, w))
        idx = flat_index(rows, cols, w)
        images = images.contiguous()
        out = scatter(images.clone(), gather(noise, flat_index(ri, ci, wm)), idx)
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        out = restore_first(out, images, idx, empty)  # an empty box collapsed onto one pixel
        return SalientBatch(out, sal, labels)
