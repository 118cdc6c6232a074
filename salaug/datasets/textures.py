"""TexturedBlobs: the class is the texture of a blob, on 1/f noise with distractor blobs.

A second embedded dataset whose generator shares nothing with
:class:`~salaug.datasets.ClutteredObjects`: objects are smooth random blobs (a radius with random
low harmonics), the class is the *texture* filling the blob (stripes at four orientations,
checkerboard, rings, dots, spokes, waves, a flat fill), the background is coloured 1/f ("pink")
noise, and one or two smaller distractor blobs carry a random texture at lower contrast. The
object is the largest and most contrasted blob, so a classifier has to find it; the true box and
mask come with every image.

Randomness comes from ``torch.Generator`` streams seeded per ``(seed, split, block of 256
indices)``, so a sample does not depend on which batch renders it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from salaug._checks import check_choice, check_int, check_interval, resolve_index

__all__ = ["TEXTURE_NAMES", "TexturedBlobs"]

#: Names of the textures, in label order (``num_classes`` takes the first ones).
TEXTURE_NAMES: tuple[str, ...] = ("stripes-0", "stripes-45", "stripes-90", "stripes-135", "checker", "rings",
                                  "dots", "spokes", "waves", "flat")
_SPLITS = {"train": 0, "val": 1, "test": 2}
_BLOCK = 256  # indices per random stream
_PARAMS = 16  # uniform draws per sample
_HARMONIC_AMP = 0.15  # largest amplitude of each of the outline's three harmonics (relative to the radius)
_REACH = 1 + 3 * _HARMONIC_AMP  # the outline's farthest point from the centre, in radii
_MAX_SCALE = 0.3  # largest radius / side for which a centre range remains at the smallest size (16 px)


def _texture(k: Tensor, u: Tensor, v: Tensor, period: Tensor) -> Tensor:
    """Texture values in ``[0, 1]`` for class ids ``k (N,)`` at local coordinates ``u, v (N, S, S)``
    (pixels from the blob's centre, rotated), with stripe period ``period (N,)`` in pixels."""
    f = (2 * math.pi / period).view(-1, 1, 1)
    r, theta = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    d45, d135 = (u + v) / math.sqrt(2), (u - v) / math.sqrt(2)
    all_k = torch.stack([
        torch.cos(f * v), torch.cos(f * d45), torch.cos(f * u), torch.cos(f * d135),
        torch.sign(torch.cos(f * u) * torch.cos(f * v)),
        torch.cos(f * r),
        (torch.cos(f * u) * torch.cos(f * v) > 0.4).float() * 2 - 1,
        torch.cos(4 * theta) * torch.clamp(r / 2, max=1.0),
        torch.cos(f * v + 2.5 * torch.sin(0.5 * f * u)),
        torch.zeros_like(u),
    ], 1)  # (N, 10, S, S)
    picked = all_k.gather(1, k.view(-1, 1, 1, 1).expand(-1, 1, *u.shape[1:]))[:, 0]
    return (picked + 1) / 2


def _pink_noise(g: torch.Generator, n: int, size: int) -> Tensor:
    """``(n, 3, S, S)`` coloured 1/f noise, each image min-max scaled to ``[0, 1]``."""
    white = torch.randn(n, 3, size, size, generator=g)
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    amp = 1 / torch.sqrt(fy * fy + fx * fx).clamp(min=1 / size)
    field = torch.fft.irfft2(torch.fft.rfft2(white) * amp, s=(size, size))
    lo = field.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = field.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (field - lo) / (hi - lo).clamp(min=1e-6)


def _smooth_field(g: torch.Generator, n: int, size: int) -> Tensor:
    """``(n, 3, S, S)`` the shifted background: a random linear colour gradient plus pixel noise."""
    t = torch.linspace(0, 1, size)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    ramp = (torch.cos(angle).view(-1, 1, 1) * t.view(1, 1, -1) + torch.sin(angle).view(-1, 1, 1) * t.view(1, -1, 1))
    ramp = (ramp - ramp.flatten(1).amin(1).view(-1, 1, 1)) / 2
    c0, c1 = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    noise = 0.08 * torch.randn(n, 3, size, size, generator=g)
    return (c0 + (c1 - c0) * ramp.unsqueeze(1) + noise).clamp(0, 1)


def _blob(params: Tensor, cx: Tensor, cy: Tensor, radius: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Coverage ``(N, S, S)`` in ``[0, 1]`` of smooth random blobs, and centred pixel offsets
    ``du, dv`` ``(N, S, S)``. ``params (N, 6)`` uniform draws set the harmonics' amplitudes and phases."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    du, dv = xs - cx.view(-1, 1, 1), ys - cy.view(-1, 1, 1)
    theta = torch.atan2(dv, du)
    edge = torch.ones_like(theta)
    for h, i in zip((2, 3, 4), (0, 2, 4), strict=True):
        amp = (params[:, i] - 0.5) * (2 * _HARMONIC_AMP)
        edge = edge + amp.view(-1, 1, 1) * torch.cos(h * theta + 2 * math.pi * params[:, i + 1].view(-1, 1, 1))
    dist = torch.sqrt(du * du + dv * dv) - radius.view(-1, 1, 1) * edge
    return (0.5 - dist).clamp(0, 1), du, dv


class TexturedBlobs(Dataset):
    """Procedural images of one textured blob among distractors, with its class, box and mask.

    Each image holds one object: a smooth random blob (radius ````object_scale`` of the side, low
    random harmonics on its outline) fully inside the image, filled with the texture of its class
    (:data:`TEXTURE_NAMES`, period 3-6 px, rotated by at most ±12°) in two random colours of
    high contrast. Under it: coloured 1/f noise and one or two distractor blobs of 0.6 times the
    object's radius, each with a random texture at 60 % of the contrast;
    Gaussian pixel noise (sigma 0.12) over everything. Labels are balanced
    within every block of ``num_classes`` consecutive indices.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: image side in pixels (square, at least 16).
        length: number of samples.
        num_classes: number of classes, 2 to 10.
        seed: base seed, any non-negative int (seeds that differ by a multiple of ``2**62`` give the
            same data).
        return_mask: also return the object's pixel mask.
        background: ``"default"`` (1/f noise) or ``"shifted"`` (a colour gradient with pixel
            noise, never drawn in the default), for distribution-shift tests.
        object_scale: ``(lo, hi)`` object radius as a fraction of the side, within ``(0, 0.3]``
            (the largest radius whose blob, harmonics included, fits inside a 16-px image);
            default ``(0.16, 0.26)``.

    Shape:
        ``dataset[i]`` is ``(image, label, box)`` or, with ``return_mask``, ``(image, label, box,
        mask)``: image ``(3, H, W)`` float32 in ``[0, 1]``, label an ``int``, box ``(4,)`` float32
        half-open ``(x1, y1, x2, y2)`` pixels (the tight box of the mask), mask ``(1, H, W)`` bool
        (object coverage >= 0.5). :meth:`render` gives a batch as a dict of those, stacked.

    Raises:
        ValueError, TypeError: for arguments out of range or of the wrong type.

    Example:
        >>> ds = TexturedBlobs("val", size=32, length=12, return_mask=True)
        >>> image, label, box, mask = ds[3]
        >>> image.shape, type(label).__name__, box.shape, mask.shape
        (torch.Size([3, 32, 32]), 'int', torch.Size([4]), torch.Size([1, 32, 32]))
        >>> batch = ds.render(range(4))
        >>> bool((batch["image"][3] == image).all()), sorted(batch)
        (True, ['box', 'image', 'label', 'mask'])
    """

    #: the shifted test sets of the evidence, as constructor options: a background family never
    #: seen in training, objects at about half their usual size
    SHIFTS: ClassVar[MappingProxyType[str, dict[str, Any]]] = MappingProxyType({
        "background": {"background": "shifted"},
        "small": {"object_scale": (0.12, 0.18)},
    })

    def __init__(self, split: Literal["train", "val", "test"] = "train", size: int = 32, length: int = 1000,
                 num_classes: int = 10, seed: int = 0, return_mask: bool = False,
                 background: Literal["default", "shifted"] = "default",
                 object_scale: tuple[float, float] = (0.16, 0.26)) -> None:
        self.split = check_choice("split", split, tuple(_SPLITS))
        self.size = check_int("size", size, low=16)
        self.length = check_int("length", length, low=0)
        self.num_classes = check_int("num_classes", num_classes, low=2, high=len(TEXTURE_NAMES))
        self.seed = check_int("seed", seed, low=0)
        self.return_mask = bool(return_mask)
        self.background = check_choice("background", background, ("default", "shifted"))
        self.object_scale = check_interval("object_scale", object_scale, low=0.0, high=_MAX_SCALE, low_open=True)
        self.classes: tuple[str, ...] = TEXTURE_NAMES[: self.num_classes]
        self._blocks: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (f"TexturedBlobs(split={self.split!r}, size={self.size}, length={self.length}, "
                f"num_classes={self.num_classes}, seed={self.seed}, background={self.background!r})")

    def __getitem__(self, index: int) -> tuple:
        index = resolve_index(index, self.length)
        b = self.render([index])
        out = (b["image"][0], int(b["label"][0]), b["box"][0])
        return (*out, b["mask"][0]) if self.return_mask else out

    def render(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """Samples ``indices`` as a dict: ``"image"`` ``(N, 3, H, W)`` float32, ``"label"`` ``(N,)``
        int64, ``"box"`` ``(N, 4)`` float32, ``"mask"`` ``(N, 1, H, W)`` bool."""
        idx = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices, dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.length):
            raise IndexError(f"indices must lie in [0, {self.length}), got {idx.min()}..{idx.max()}")
        blocks = idx.div(_BLOCK, rounding_mode="floor")
        out: dict[str, Tensor] = {}
        for block in blocks.unique().tolist() or [0]:
            data = self._block(block)
            if not out:
                out = {key: value.new_empty((idx.numel(), *value.shape[1:])) for key, value in data.items()}
            where = (blocks == block).nonzero()[:, 0]
            for key, value in data.items():
                out[key][where] = value[idx[where] - block * _BLOCK]
        return out

    def _block(self, block: int) -> dict[str, Tensor]:
        if block not in self._blocks:
            if len(self._blocks) > 64:
                self._blocks.clear()
            self._blocks[block] = self._render_block(block)
        return self._blocks[block]

    def _render_block(self, block: int) -> dict[str, Tensor]:
        n, s = _BLOCK, self.size
        g = torch.Generator().manual_seed(((self.seed * 3 + _SPLITS[self.split]) * 1_000_003 + block) & (2**62 - 1))
        first = block * _BLOCK
        k = self.num_classes
        labels = torch.cat([torch.randperm(k, generator=g) for _ in range(n // k + 2)])
        labels = labels[first % k: first % k + n]  # balanced within each block of k consecutive indices
        u = torch.rand(n, _PARAMS, generator=g)
        background = _pink_noise(g, n, s) if self.background == "default" else _smooth_field(g, n, s)
        background = 0.25 + 0.5 * background  # mid-range, so objects can contrast either way
        lo, hi = self.object_scale
        radius = s * (lo + (hi - lo) * u[:, 0])
        margin = radius * _REACH + 1.0  # the outline's farthest point plus the anti-aliased edge
        cx, cy = margin + (s - 2 * margin) * u[:, 1], margin + (s - 2 * margin) * u[:, 2]
        image = background
        for d in range(2):  # distractors, drawn first (the object covers them where they overlap)
            shown = (u[:, 3] < 0.5) | (d == 0)
            dr = torch.rand(n, 8, generator=g)
            cov, du, dv = _blob(dr[:, 2:], dr[:, 0] * s, dr[:, 1] * s, radius * 0.6, s)
            tex = _texture(torch.randint(0, len(TEXTURE_NAMES), (n,), generator=g), du, dv,
                           torch.full((n,), 3.5) + 1.5 * dr[:, 0])
            col = torch.rand(n, 3, 1, 1, generator=g)
            fill = col * (0.4 + 0.6 * tex.unsqueeze(1))
            alpha = (cov * shown.view(-1, 1, 1)).unsqueeze(1)
            image = image + alpha * (fill - image) * 0.85
        cov, du, dv = _blob(u[:, 4:10], cx, cy, radius, s)
        angle = (u[:, 10] - 0.5) * math.radians(24)
        ca, sa = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
        tex = _texture(labels, ca * du + sa * dv, -sa * du + ca * dv, 3.0 + 3.0 * u[:, 11])
        c0 = torch.rand(n, 3, 1, 1, generator=g)
        c1 = (c0 + 0.45 + 0.3 * torch.rand(n, 3, 1, 1, generator=g)) % 1.0  # far from c0 in every channel
        fill = c0 + (c1 - c0) * tex.unsqueeze(1)
        image = image + cov.unsqueeze(1) * (fill - image)
        image = (image + 0.12 * torch.randn(image.shape, generator=g)).clamp(0, 1)  # sensor noise
        image = (image * 255).round() / 255
        mask = (cov >= 0.5).unsqueeze(1)
        rows, cols = mask[:, 0].any(2), mask[:, 0].any(1)
        ar = torch.arange(s)
        y1 = torch.where(rows, ar, s).amin(1)
        y2 = torch.where(rows, ar + 1, 0).amax(1)
        x1 = torch.where(cols, ar, s).amin(1)
        x2 = torch.where(cols, ar + 1, 0).amax(1)
        box = torch.stack((x1, y1, x2, y2), 1).float()
        return {"image": image.float().contiguous(), "label": labels.long(), "box": box, "mask": mask}
