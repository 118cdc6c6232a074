"""ClutteredObjects: procedural objects on clutter, with their true boxes and masks.

``ClutteredObjects`` draws one object of a known class per image (disc, ring, square, frame,
triangle, cross, plus, bars, diamond, star, crescent, tee) in a random colour, scale, rotation
and position, on a cluttered background: a smooth colour field, a grating texture, pixel noise
and small *partial* shapes of other classes. The object is complete and larger than the
fragments, so a classifier has to find it; because the true box and pixel mask come with every
image, localisation (pointing game, box IoU) and label fidelity of mixing transforms can be
measured without any download.

Everything is drawn with coordinate grids and signed distances, a batch at a time, on CPU (or any
device). Randomness comes from a counter-based integer hash of ``(seed, split, index)``, so a
sample does not depend on which batch renders it, and the splits are disjoint random streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from salaug._checks import (
    check_choice,
    check_float,
    check_int,
    check_interval,
    resolve_index,
)

__all__ = ["CLASS_NAMES", "ClutteredObjects", "draw_shapes"]

#: Names of the drawable classes, in label order (``num_classes`` takes the first ones).
CLASS_NAMES: tuple[str, ...] = (
    "disc",
    "ring",
    "square",
    "frame",
    "triangle",
    "cross",
    "plus",
    "bars",
    "diamond",
    "star",
    "crescent",
    "tee",
)

Split = Literal["train", "val", "test"]
Background = Literal["default", "shifted"]
_BACKGROUNDS = ("default", "shifted")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_LENGTHS = {"train": 5000, "val": 1000, "test": 1000}

# Geometry of the samples, as fractions of the image side (radius = circumscribed radius).
_OBJECT_RADIUS = (0.14, 0.26)
_FRAGMENT_RADIUS = (0.06, 0.12)
_MAX_ROTATION = math.radians(20.0)  # small enough that no class turns into another
_MAX_FRAGMENTS = 6
_NOISE_BANK = 8
_MAX_OCCLUSION = 0.9  # at least a tenth of the object stays visible
_BLOB_SIGMA = (0.04, 0.10)  # shifted background: soft colour blobs, sigma as a fraction of the side
_CHUNK = 256  # images rendered per vectorised pass (bounds peak memory)

# --------------------------------------------------------------------------- counter-based RNG
_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in ``[0, 2**32)`` without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (xorshift-multiply rounds) on int64 tensors holding uint32 values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _keys(seed: int, stream: int, indices: Tensor) -> Tensor:
    """Two independent 32-bit keys per index: ``(N, 2)`` int64."""
    dev = indices.device
    base = _hash32(torch.tensor(seed & _M32, dtype=torch.int64, device=dev) ^ 0x3C6EF372)
    base = _hash32(base ^ ((seed >> 32) & _M32))
    base = _hash32(base ^ (stream * 0x9E3779B9 & _M32))
    base2 = _hash32(base ^ 0x68E31DA4)
    k1 = _hash32(_hash32(base ^ indices))
    k2 = _hash32(_hash32((base2 + indices) & _M32) ^ 0x1B873593)
    return torch.stack([k1, k2], dim=1)


def _uniform(keys: Tensor, stream: int, n: int) -> Tensor:
    """``(N, n)`` float32 uniforms in ``[0, 1)``, a pure function of ``(keys, stream, column)``."""
    counter = _hash32(torch.arange(n, dtype=torch.int64, device=keys.device) + stream * 4096 + 0x2545F491)
    x = _hash32(keys[:, :1] ^ counter)
    x = _hash32(x ^ keys[:, 1:])
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


# --------------------------------------------------------------------------- shapes
def _box_sdf(u: Tensor, v: Tensor, bx: float, by: float) -> Tensor:
    qx = u.abs() - bx
    qy = v.abs() - by
    outside = torch.hypot(qx.clamp(min=0), qy.clamp(min=0))
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _rot(u: Tensor, v: Tensor, angle: float) -> tuple[Tensor, Tensor]:
    c, s = math.cos(angle), math.sin(angle)
    return c * u + s * v, -s * u + c * v


def _sdf_disc(u: Tensor, v: Tensor) -> Tensor:
    return torch.hypot(u, v) - 1.0


def _sdf_ring(u: Tensor, v: Tensor) -> Tensor:
    return (torch.hypot(u, v) - 0.72).abs() - 0.26


def _sdf_square(u: Tensor, v: Tensor) -> Tensor:
    return _box_sdf(u, v, 0.7, 0.7)


def _sdf_frame(u: Tensor, v: Tensor) -> Tensor:
    return _box_sdf(u, v, 0.55, 0.55).abs() - 0.15


def _sdf_triangle(u: Tensor, v: Tensor) -> Tensor:
    # Equilateral, apex up (v grows downwards), circumradius 1, inradius 0.5.
    s = math.sqrt(3.0) / 2
    return torch.maximum(torch.maximum(v, s * u - 0.5 * v), -s * u - 0.5 * v) - 0.5


def _sdf_cross(u: Tensor, v: Tensor) -> Tensor:
    # An "X" whose bars cross at 60 degrees, so that no rotation turns it into a plus.
    a = _box_sdf(*_rot(u, v, math.radians(30.0)), 0.2, 0.95)
    b = _box_sdf(*_rot(u, v, math.radians(-30.0)), 0.2, 0.95)
    return torch.minimum(a, b)


def _sdf_plus(u: Tensor, v: Tensor) -> Tensor:
    return torch.minimum(_box_sdf(u, v, 0.95, 0.2), _box_sdf(u, v, 0.2, 0.95))


def _sdf_bars(u: Tensor, v: Tensor) -> Tensor:
    d = _box_sdf(u, v, 0.72, 0.13)
    d = torch.minimum(d, _box_sdf(u, v - 0.55, 0.72, 0.13))
    return torch.minimum(d, _box_sdf(u, v + 0.55, 0.72, 0.13))


def _sdf_diamond(u: Tensor, v: Tensor) -> Tensor:
    # A tall rhombus (half-width 0.6, half-height 1), so that no rotation turns it into a square.
    n = math.hypot(1.0, 0.6)
    return (u.abs() * 1.0 + v.abs() * 0.6 - 0.6) / n


def _sdf_star(u: Tensor, v: Tensor) -> Tensor:
    # Five points, outer radius 1, inner radius 0.45; fold the angle into one half-sector.
    sector = 2 * math.pi / 5
    phi = torch.atan2(u, -v)
    a = (torch.remainder(phi + sector / 2, sector) - sector / 2).abs()
    rho = torch.hypot(u, v)
    qx, qy = rho * torch.cos(a), rho * torch.sin(a)
    p2x, p2y = 0.45 * math.cos(sector / 2), 0.45 * math.sin(sector / 2)
    ex, ey = p2x - 1.0, p2y
    norm = math.hypot(ex, ey)
    nx, ny = ey / norm, -ex / norm  # outward normal of the edge tip -> inner vertex
    return (qx - 1.0) * nx + qy * ny


def _sdf_crescent(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(torch.hypot(u, v) - 1.0, 0.8 - torch.hypot(u - 0.45, v + 0.1))


def _sdf_tee(u: Tensor, v: Tensor) -> Tensor:
    return torch.minimum(_box_sdf(u, v + 0.5, 0.7, 0.2), _box_sdf(u, v - 0.22, 0.2, 0.73))


_SDFS = (
    _sdf_disc,
    _sdf_ring,
    _sdf_square,
    _sdf_frame,
    _sdf_triangle,
    _sdf_cross,
    _sdf_plus,
    _sdf_bars,
    _sdf_diamond,
    _sdf_star,
    _sdf_crescent,
    _sdf_tee,
)
assert len(_SDFS) == len(CLASS_NAMES)


def _shape_distance(class_ids: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Signed distance (shape units, negative inside) of each ``(N, H, W)`` point set to its shape."""
    out = torch.empty_like(u)
    for k, sdf in enumerate(_SDFS):  # a loop over classes, not samples
        sel = class_ids == k
        if bool(sel.any()):
            out[sel] = sdf(u[sel], v[sel])
    return out


def _local_coords(
    centers: Tensor, radii: Tensor, angles: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Pixel centres in each shape's frame, in units of its radius: two ``(N, H, W)`` tensors."""
    dev, dt = centers.device, centers.dtype
    ys = torch.arange(height, device=dev, dtype=dt) + 0.5
    xs = torch.arange(width, device=dev, dtype=dt) + 0.5
    inv_r = radii.reciprocal().view(-1, 1, 1)
    c = torch.cos(angles).view(-1, 1, 1) * inv_r
    s = torch.sin(angles).view(-1, 1, 1) * inv_r
    dx = xs.view(1, 1, -1) - centers[:, 0].view(-1, 1, 1)
    dy = ys.view(1, -1, 1) - centers[:, 1].view(-1, 1, 1)
    return c * dx + s * dy, c * dy - s * dx


def _coverage(
    class_ids: Tensor,
    centers: Tensor,
    radii: Tensor,
    angles: Tensor,
    height: int,
    width: int,
    cut: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """``(N, 1, H, W)`` coverage; ``cut = (direction, offset)`` keeps only the half-plane
    ``u cos(direction) + v sin(direction) <= offset`` of each shape (shape units)."""
    u, v = _local_coords(centers, radii, angles, height, width)
    dist = _shape_distance(class_ids, u, v)
    if cut is not None:
        direction, offset = cut
        side = torch.cos(direction).view(-1, 1, 1) * u + torch.sin(direction).view(-1, 1, 1) * v
        dist = torch.maximum(dist, side - offset.view(-1, 1, 1))
    return (0.5 - dist * radii.view(-1, 1, 1)).clamp(0, 1).unsqueeze(1)


def draw_shapes(
    class_ids: Tensor,
    centers: Tensor,
    radii: Tensor,
    angles: Tensor,
    size: int | tuple[int, int],
) -> Tensor:
    """Anti-aliased coverage of shapes, one per row, drawn with signed distances.

    Every shape fits in the disc of radius ``radii`` around its centre.

    Args:
        class_ids: ``(N,)`` integer indices into :data:`CLASS_NAMES`.
        centers: ``(N, 2)`` float ``(x, y)`` centres in pixels (pixel ``(i, j)`` spans
            ``[j, j + 1) x [i, i + 1)``).
        radii: ``(N,)`` float circumscribed radii in pixels.
        angles: ``(N,)`` float clockwise rotations in radians.
        size: ``H`` (square) or ``(H, W)``.

    Returns:
        ``(N, 1, H, W)`` float32 coverage in ``[0, 1]`` (1 inside, a one-pixel ramp at the edge).

    Example:
        >>> cov = draw_shapes(torch.tensor([0]), torch.tensor([[8.0, 8.0]]), torch.tensor([4.0]),
        ...                   torch.tensor([0.0]), 16)
        >>> cov.shape, float(cov[0, 0, 8, 8]), float(cov[0, 0, 0, 0])
        (torch.Size([1, 1, 16, 16]), 1.0, 0.0)
    """
    height, width = (size, size) if isinstance(size, int) else size
    n = class_ids.shape[0] if class_ids.ndim == 1 else -1
    if n < 0 or centers.shape != (n, 2) or radii.shape != (n,) or angles.shape != (n,):
        raise ValueError(
            "draw_shapes needs class_ids (N,), centers (N, 2), radii (N,) and angles (N,), got "
            f"{tuple(class_ids.shape)}, {tuple(centers.shape)}, {tuple(radii.shape)}, {tuple(angles.shape)}"
        )
    f32 = torch.float32
    return _coverage(class_ids, centers.to(f32), radii.to(f32), angles.to(f32), height, width)


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """``(N,)`` hue/saturation/value in ``[0, 1]`` → ``(N, 3)`` RGB."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device)
    k = torch.remainder(n + h.unsqueeze(-1) * 6, 6)
    return v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * torch.minimum(k, 4 - k).clamp(0, 1))


def _luma(rgb: Tensor) -> Tensor:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _mask_boxes(mask: Tensor) -> Tensor:
    """``(N, 1, H, W)`` bool → ``(N, 4)`` float32 half-open ``xyxy`` boxes (batched, no loop)."""
    height, width = mask.shape[-2:]
    cols = mask.any(dim=2).flatten(1)  # (N, W)
    rows = mask.any(dim=3).flatten(1)  # (N, H)
    x1 = cols.to(torch.uint8).argmax(dim=1)
    x2 = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    y1 = rows.to(torch.uint8).argmax(dim=1)
    y2 = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)


def _check_object_scale(object_scale: object) -> tuple[float, float]:
    """The object radius range as fractions of the side (default ``(0.14, 0.26)``; e.g. ``(0.08, 0.14)``
    gives small objects)."""
    if object_scale is None:
        return _OBJECT_RADIUS
    return check_interval("object_scale", object_scale, low=0.0, high=0.4, low_open=True)


# --------------------------------------------------------------------------- the dataset
class ClutteredObjects(Dataset):
    """Procedural images of one object on clutter, with its class, true box and pixel mask.

    Each image holds one complete object of class ``label`` (one of the first ``num_classes``
    entries of :data:`CLASS_NAMES`), circumscribed radius 14–26 % of the side, rotated by at most
    ±20°, fully inside the image, in a random colour that contrasts with the background under it.
    The background is a smooth random colour field plus, scaled by ``clutter``, a grating texture,
    pixel noise and 2–6 small fragments (partial shapes, cut by a random half-plane) of *other*
    classes drawn under the object. Labels are exactly balanced within every block of
    ``num_classes`` consecutive indices, in a random order.

    Samples are a pure function of ``(seed, split, index)`` (counter-based hashing), whatever batch
    renders them; different splits (or seeds) are independent streams. Pixel values are quantised
    to multiples of 1/255, like an 8-bit image, so ``cache=True`` (stored as uint8) returns exactly
    the same tensors as on-the-fly rendering.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: image side in pixels (square images, at least 16).
        length: number of samples; ``None`` means 5000 / 1000 / 1000 for train / val / test.
        num_classes: number of classes, 2 to 12.
        seed: base seed, any non-negative int (e.g. a nanosecond timestamp; seeds that differ by a
            multiple of ``2**63`` may give the same data).
        clutter: clutter strength; ``0`` gives clean images (smooth background only), ``1`` the
            default mix; larger values add more texture, noise and fragments.
        return_mask: also return the object's pixel mask.
        cache: render the whole split once at construction (in batches) and serve from memory
            (uint8 images, about ``3 * size**2`` bytes per sample).
        background: ``"default"`` (the texture above) or ``"shifted"``, a clutter family the
            default never draws, for distribution-shift tests: a rotated checkerboard instead of
            the grating and 2–6 soft colour blobs (Gaussian, no edges) instead of the shape
            fragments, with the same smooth colour field, pixel noise and ``clutter`` scaling.
        occlusion: fraction of each object's area hidden by an occluder, in ``[0, 0.9]``
            (``0``: none). The occluder is the part of a disc around the object on one side of a
            straight edge at a random angle, placed so that exactly ``round(occlusion * area)``
            object pixels are hidden, filled with a flat random colour plus pixel noise and drawn
            on top of the object. Hidden pixels are *not* in the mask and the box is the tight box
            of the visible pixels.
        object_scale: ``(lo, hi)`` range of the object's circumscribed radius as a fraction of
            the side, ``0 < lo <= hi <= 0.4``; ``None`` means the default ``(0.14, 0.26)``.
            Smaller values (e.g. ``(0.08, 0.14)``) give a small-object split; fragment sizes do
            not change.

    The three shift options draw from random streams the default never reads: with their default
    values every sample is bit-identical to a dataset built without them, and a shifted split
    keeps the labels (and, for ``background`` and ``occlusion``, the object poses) of the same
    ``(seed, split, index)``.

    Shape:
        ``dataset[i]`` is ``(image, label, box)`` or, with ``return_mask``, ``(image, label, box,
        mask)``: image ``(3, H, W)`` float32 in ``[0, 1]``, label a Python ``int``, box ``(4,)``
        float32 ``(x1, y1, x2, y2)`` in pixels, half-open (pixel ``(i, j)`` is in the box iff
        ``x1 <= j < x2`` and ``y1 <= i < y2``), the tight box of the mask; mask ``(1, H, W)`` bool,
        the object's visible pixels (coverage >= 0.5).

        :meth:`render` gives batches as a dict; a ``DataLoader`` with ``batch_size`` uses the
        batched :meth:`__getitems__` automatically.

    Example:
        >>> ds = ClutteredObjects("val", size=32, length=20, return_mask=True)
        >>> image, label, box, mask = ds[3]
        >>> image.shape, image.dtype, type(label).__name__, box.shape, mask.shape
        (torch.Size([3, 32, 32]), torch.float32, 'int', torch.Size([4]), torch.Size([1, 32, 32]))
        >>> ds.classes[:4]
        ('disc', 'ring', 'square', 'frame')
        >>> batch = ds.render(range(8))
        >>> sorted(batch), tuple(batch["image"].shape)
        (['box', 'image', 'label', 'mask'], (8, 3, 32, 32))
        >>> hidden = ClutteredObjects("val", size=32, length=20, return_mask=True, occlusion=0.3)
        >>> bool((hidden[3][3] <= mask).all())  # same object, fewer visible pixels
        True
    """

    #: the shifted test sets of the evidence and the demo, as constructor options: a background
    #: family never seen in training, 40 % of each object hidden, objects at a third of their usual size
    SHIFTS: ClassVar[MappingProxyType[str, dict[str, Any]]] = MappingProxyType({
        "background": {"background": "shifted"},
        "occlusion": {"occlusion": 0.4},
        "small": {"object_scale": (0.09, 0.14)},
    })

    def __init__(
        self,
        split: Split = "train",
        size: int = 64,
        length: int | None = None,
        num_classes: int = 10,
        seed: int = 0,
        clutter: float = 1.0,
        return_mask: bool = False,
        cache: bool = False,
        background: Background = "default",
        occlusion: float = 0.0,
        object_scale: tuple[float, float] | None = None,
    ) -> None:
        check_choice("split", split, tuple(_SPLIT_IDS))
        check_int("size", size, low=16)
        if length is None:
            length = _DEFAULT_LENGTHS[split]
        check_int("length", length, low=0)
        check_int("num_classes", num_classes, low=2, high=len(CLASS_NAMES))
        seed = check_int("seed", seed, low=0)  # a numpy integer becomes an int: its arithmetic would wrap
        check_float("clutter", clutter, low=0)
        check_choice("background", background, _BACKGROUNDS)
        check_float("occlusion", occlusion, low=0, high=_MAX_OCCLUSION)
        object_radius = _check_object_scale(object_scale)
        self.split = split
        self.size = size
        self.length = length
        self.num_classes = num_classes
        self.seed = seed
        self.clutter = float(clutter)
        self.return_mask = return_mask
        self.background = background
        self.occlusion = float(occlusion)
        self.object_scale = object_radius
        self.classes: tuple[str, ...] = CLASS_NAMES[:num_classes]
        self._noise_bank = self._make_noise_bank()
        self._cache: dict[str, Tensor] | None = None
        if cache:
            self._cache = self._render_all()

    # ------------------------------------------------------------------ Dataset protocol
    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple:
        index = resolve_index(index, self.length)
        if self._cache is not None:
            c = self._cache
            image = c["image"][index].to(torch.float32) / 255
            out = (image, int(c["label"][index]), c["box"][index].clone())
            return (*out, c["mask"][index].clone()) if self.return_mask else out
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        """Render several samples in one vectorised pass (used by ``DataLoader`` batching)."""
        if self._cache is not None:
            return [self[i] for i in indices]
        batch = self.render(indices)
        labels = batch["label"].tolist()
        parts = [batch["image"].unbind(0), labels, batch["box"].unbind(0)]
        if self.return_mask:
            parts.append(batch["mask"].unbind(0))
        return list(zip(*parts, strict=True))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, size={self.size}, length={self.length}, "
            f"num_classes={self.num_classes}, seed={self.seed}, clutter={self.clutter}{self._shift_repr()})"
        )

    def _shift_repr(self) -> str:
        parts = []
        if self.background != "default":
            parts.append(f", background={self.background!r}")
        if self.occlusion:
            parts.append(f", occlusion={self.occlusion}")
        if self.object_scale != _OBJECT_RADIUS:
            parts.append(f", object_scale={self.object_scale}")
        return "".join(parts)

    # ------------------------------------------------------------------ rendering
    def _make_noise_bank(self) -> Tensor:
        g = torch.Generator().manual_seed((self.seed * 7919 + 17) & (2**63 - 1))
        return torch.rand(_NOISE_BANK, 3, self.size, self.size, generator=g) * 2 - 1

    def _render_all(self) -> dict[str, Tensor]:
        images, labels, boxes, masks = [], [], [], []
        for start in range(0, self.length, _CHUNK):
            b = self.render(range(start, min(start + _CHUNK, self.length)))
            images.append(torch.round(b["image"] * 255).to(torch.uint8))
            labels.append(b["label"])
            boxes.append(b["box"])
            masks.append(b["mask"])
        s = self.size
        return {
            "image": torch.cat(images) if images else torch.empty(0, 3, s, s, dtype=torch.uint8),
            "label": torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
            "box": torch.cat(boxes) if boxes else torch.empty(0, 4),
            "mask": torch.cat(masks) if masks else torch.empty(0, 1, s, s, dtype=torch.bool),
        }

    def labels(self, indices: Sequence[int] | Tensor | None = None) -> Tensor:
        """Class labels without rendering images: ``(N,)`` int64 (all samples when ``None``)."""
        idx = self._index_tensor(range(self.length) if indices is None else indices)
        return self._labels(idx)

    def _index_tensor(self, indices: Sequence[int] | Tensor) -> Tensor:
        idx = torch.as_tensor(indices if isinstance(indices, Tensor) else list(indices), dtype=torch.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be a 1-D sequence of ints, got shape {tuple(idx.shape)}")
        if idx.numel() and (bool((idx < 0).any()) or bool((idx >= self.length).any())):
            raise IndexError(f"indices must lie in [0, {self.length}) for this dataset")
        return idx

    def _labels(self, idx: Tensor) -> Tensor:
        k = self.num_classes
        block_keys = _keys(self.seed, 16 + _SPLIT_IDS[self.split], idx // k)
        order = _uniform(block_keys, 0, k).argsort(dim=1)  # a random permutation per block
        return order.gather(1, (idx % k).unsqueeze(1)).squeeze(1)

    def _paste_fragments(
        self, image: Tensor, fcls: Tensor, fcen: Tensor, frad: Tensor, fu: Tensor, fcol: Tensor, active: Tensor
    ) -> Tensor:
        """Draw ``(N, F)`` small partial shapes in local windows and blend them into ``image``.

        Each fragment is rendered in a small window around its centre and accumulated into a
        full-size premultiplied layer with one ``scatter_add_``; overlapping fragments average.
        """
        n, nf = fcls.shape
        s = self.size
        m = n * nf
        w = 2 * math.ceil(_FRAGMENT_RADIUS[1] * s) + 3
        corner = torch.floor(fcen).long() - w // 2  # (N, F, 2) window top-left, may be off-image
        local = fcen - corner.to(torch.float32)
        cut = (2 * math.pi * fu[..., 1].flatten(), -0.2 + 0.7 * fu[..., 2].flatten())
        cov = _coverage(
            fcls.flatten(), local.view(m, 2), frad.flatten(), 2 * math.pi * fu[..., 0].flatten(), w, w, cut
        ).view(n, nf, 1, w, w) * active.view(n, nf, 1, 1, 1)
        values = torch.cat([cov * fcol.view(n, nf, 3, 1, 1), cov], dim=2)  # (N, F, 4, w, w)
        pad = w // 2 + 1  # a padded canvas, so that windows never fall off it
        big = s + 2 * pad
        ar = torch.arange(w)
        rows = (corner[..., 1].view(n, nf, 1, 1, 1) + pad + ar.view(1, 1, 1, w, 1)) * big
        cols = corner[..., 0].view(n, nf, 1, 1, 1) + pad + ar.view(1, 1, 1, 1, w)
        plane = (torch.arange(n).view(n, 1, 1, 1, 1) * 4 + torch.arange(4).view(1, 1, 4, 1, 1)) * big * big
        layer = torch.zeros(n * 4 * big * big)
        layer.scatter_add_(0, (plane + rows + cols).flatten(), values.flatten())
        layer = layer.view(n, 4, big, big)[:, :, pad : pad + s, pad : pad + s]
        alpha = layer[:, 3:]
        color = layer[:, :3] / alpha.clamp(min=1)
        return image * (1 - alpha.clamp(max=1)) + color

    def render(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """Render samples in vectorised passes.

        Args:
            indices: ``N`` sample indices in ``[0, len(self))`` (list, range or 1-D tensor).

        Returns:
            A dict with ``"image"`` ``(N, 3, H, W)`` float32 in ``[0, 1]``, ``"label"`` ``(N,)``
            int64, ``"box"`` ``(N, 4)`` float32 half-open ``xyxy`` pixels and ``"mask"``
            ``(N, 1, H, W)`` bool, identical to the per-sample ``dataset[i]``.
        """
        idx = self._index_tensor(indices)
        if self._cache is not None:
            return {
                "image": self._cache["image"][idx].to(torch.float32) / 255,
                "label": self._cache["label"][idx],
                "box": self._cache["box"][idx],
                "mask": self._cache["mask"][idx],
            }
        parts = [self._render(idx[i : i + _CHUNK]) for i in range(0, max(idx.numel(), 1), _CHUNK)]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    def _render(self, idx: Tensor) -> dict[str, Tensor]:
        n, s, k, clutter = idx.numel(), self.size, self.num_classes, self.clutter
        keys = _keys(self.seed, _SPLIT_IDS[self.split], idx)
        labels = self._labels(idx)

        # ---- object pose and colour
        u = _uniform(keys, 1, 9)
        lo, hi = self.object_scale
        radius = s * (lo + (hi - lo) * u[:, 0])
        margin = radius + 1.0
        centers = torch.stack([margin + (s - 2 * margin) * u[:, 1], margin + (s - 2 * margin) * u[:, 2]], 1)
        angle = (2 * u[:, 3] - 1) * _MAX_ROTATION
        color = _hsv_to_rgb(u[:, 4], 0.45 + 0.55 * u[:, 5], 0.55 + 0.45 * u[:, 6])
        coverage = draw_shapes(labels, centers, radius, angle, s)  # (N, 1, H, W)
        mask = coverage >= 0.5

        # ---- background: smooth colour field + grating + noise
        field = 0.15 + 0.6 * _uniform(keys, 2, 27).view(n, 3, 3, 3)
        image = F.interpolate(field, size=(s, s), mode="bilinear", align_corners=True)
        g = _uniform(keys, 3, 8)
        if clutter > 0 and self.background == "shifted":
            image = self._shifted_clutter(image, keys, g)
        elif clutter > 0:
            theta = math.pi * g[:, 0].view(-1, 1, 1)
            freq = (3 + 10 * g[:, 1]).view(-1, 1, 1) * (2 * math.pi / s)
            pos = torch.arange(s, dtype=torch.float32) + 0.5
            phase = freq * (torch.cos(theta) * pos.view(1, 1, -1) + torch.sin(theta) * pos.view(1, -1, 1))
            grating = torch.sin(phase + 2 * math.pi * g[:, 2].view(-1, 1, 1))
            image = image + (clutter * 0.12 * g[:, 3]).view(-1, 1, 1, 1) * grating.unsqueeze(1)
            # Pixel noise: a tile of the noise bank, rolled per sample (a gather, no loop).
            tile = (g[:, 4] * _NOISE_BANK).long().clamp(max=_NOISE_BANK - 1)
            shift_y = (g[:, 5] * s).long()
            shift_x = (g[:, 6] * s).long()
            ar = torch.arange(s)
            rows = (ar.view(1, -1) + shift_y.view(-1, 1)) % s  # (N, H)
            cols = (ar.view(1, -1) + shift_x.view(-1, 1)) % s  # (N, W)
            noise = self._noise_bank[tile]
            noise = noise.gather(2, rows.view(n, 1, s, 1).expand(n, 3, s, s))
            noise = noise.gather(3, cols.view(n, 1, 1, s).expand(n, 3, s, s))
            image = image + clutter * 0.05 * noise

            # ---- fragments: small partial shapes of other classes, under the object
            nf = _MAX_FRAGMENTS
            fu = _uniform(keys, 4, 9 * nf).view(n, nf, 9)
            count = torch.round(clutter * (2 + 4 * g[:, 7])).clamp(max=nf)
            active = (torch.arange(nf).view(1, -1) < count.view(-1, 1)).to(torch.float32)
            fcls = (labels.view(-1, 1) + 1 + (fu[..., 0] * (k - 1)).long().clamp(max=k - 2)) % k
            frad = s * (_FRAGMENT_RADIUS[0] + (_FRAGMENT_RADIUS[1] - _FRAGMENT_RADIUS[0]) * fu[..., 1])
            fcen = s * fu[..., 2:4]
            fcol = _hsv_to_rgb(fu[..., 7], 0.3 + 0.7 * fu[..., 8], 0.35 + 0.6 * fu[..., 7])  # (N, F, 3)
            image = self._paste_fragments(image, fcls, fcen, frad, fu[..., 4:7], fcol, active)
        image = image.clamp(0, 1)

        # ---- object on top, in a colour that contrasts with what lies under it
        area = mask.sum(dim=(1, 2, 3)).clamp(min=1).to(torch.float32)
        under = (image * mask).sum(dim=(2, 3)) / area.view(-1, 1)  # (N, 3)
        close = (_luma(color) - _luma(under)).abs() < 0.3
        dark_bg = _luma(under) < 0.5
        pushed = torch.where(dark_bg.unsqueeze(1), 0.6 + 0.4 * color, 0.4 * color)
        color = torch.where(close.unsqueeze(1), pushed, color)
        image = image + coverage * (color.view(n, 3, 1, 1) - image)
        if self.occlusion > 0:
            image, mask = self._occlude(image, mask, keys, centers, radius)
        image = torch.round(image.clamp(0, 1) * 255) / 255
        return {"image": image, "label": labels, "box": _mask_boxes(mask), "mask": mask}

    # ------------------------------------------------------------------ shift splits
    def _noise(self, g: Tensor) -> Tensor:
        """``(N, 3, H, W)`` pixel noise: a noise-bank tile rolled per sample by the uniforms ``g``."""
        n, s = g.shape[0], self.size
        tile = (g[:, 0] * _NOISE_BANK).long().clamp(max=_NOISE_BANK - 1)
        ar = torch.arange(s)
        rows = (ar.view(1, -1) + (g[:, 1] * s).long().view(-1, 1)) % s
        cols = (ar.view(1, -1) + (g[:, 2] * s).long().view(-1, 1)) % s
        noise = self._noise_bank[tile]
        noise = noise.gather(2, rows.view(n, 1, s, 1).expand(n, 3, s, s))
        return noise.gather(3, cols.view(n, 1, 1, s).expand(n, 3, s, s))

    def _shifted_clutter(self, image: Tensor, keys: Tensor, g: Tensor) -> Tensor:
        """The ``background="shifted"`` family: checkerboard, pixel noise and soft colour blobs."""
        n, s, clutter = image.shape[0], self.size, self.clutter
        h = _uniform(keys, 5, 8)
        theta = (math.pi / 2 * h[:, 0]).view(-1, 1, 1)
        freq = (2 + 5 * h[:, 1]).view(-1, 1, 1) * (2 * math.pi / s)
        pos = torch.arange(s, dtype=torch.float32) + 0.5
        u = torch.cos(theta) * pos.view(1, 1, -1) + torch.sin(theta) * pos.view(1, -1, 1)
        v = -torch.sin(theta) * pos.view(1, 1, -1) + torch.cos(theta) * pos.view(1, -1, 1)
        checker = torch.sign(torch.sin(freq * u + 2 * math.pi * h[:, 2].view(-1, 1, 1)) * torch.sin(freq * v))
        image = image + (clutter * 0.12 * (0.3 + 0.7 * h[:, 3])).view(-1, 1, 1, 1) * checker.unsqueeze(1)
        image = image + clutter * 0.05 * self._noise(h[:, 4:7])
        nb = _MAX_FRAGMENTS
        b = _uniform(keys, 6, 7 * nb).view(n, nb, 7)
        count = torch.round(clutter * (2 + 4 * h[:, 7])).clamp(max=nb)
        active = (torch.arange(nb).view(1, -1) < count.view(-1, 1)).to(torch.float32)  # (N, B)
        sigma = s * (_BLOB_SIGMA[0] + (_BLOB_SIGMA[1] - _BLOB_SIGMA[0]) * b[..., 0])
        cx, cy = s * b[..., 1], s * b[..., 2]
        d2 = (pos.view(1, 1, 1, -1) - cx[..., None, None]) ** 2 + (pos.view(1, 1, -1, 1) - cy[..., None, None]) ** 2
        alpha = (0.5 + 0.4 * b[..., 3])[..., None, None] * torch.exp(-d2 / (2 * sigma[..., None, None] ** 2))
        alpha = alpha * active[..., None, None]  # (N, B, H, W)
        colour = _hsv_to_rgb(b[..., 4], 0.4 + 0.6 * b[..., 5], 0.3 + 0.7 * b[..., 6])  # (N, B, 3)
        for j in range(nb):  # a loop over blob slots (at most 6), not samples
            a = alpha[:, j : j + 1]
            image = image + a * (colour[:, j].view(n, 3, 1, 1) - image)
        return image.clamp(0, 1)

    def _occlude(
        self, image: Tensor, mask: Tensor, keys: Tensor, centers: Tensor, radius: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Hide ``round(occlusion * area)`` pixels of each object under a flat occluder; ``(image, mask)``."""
        n, s = image.shape[0], self.size
        o = _uniform(keys, 7, 6)
        phi = 2 * math.pi * o[:, 0]
        pos = torch.arange(s, dtype=torch.float32) + 0.5
        dx = pos.view(1, 1, -1) - centers[:, 0].view(-1, 1, 1)
        dy = pos.view(1, -1, 1) - centers[:, 1].view(-1, 1, 1)
        proj = (torch.cos(phi).view(-1, 1, 1) * dx + torch.sin(phi).view(-1, 1, 1) * dy).flatten(1)  # (N, HW)
        flat = mask.flatten(1)
        area = flat.sum(1)
        hide = torch.minimum(torch.round(self.occlusion * area.to(torch.float32)).long(), area - 1).clamp(min=0)
        ordered = torch.where(flat, proj, torch.full_like(proj, float("inf"))).sort(dim=1).values
        edge = ordered.gather(1, (hide - 1).clamp(min=0).view(-1, 1))  # the hide-th smallest projection
        near = (dx.square() + dy.square()).flatten(1) <= (1.3 * radius + 1).square().view(-1, 1)
        occluder = (proj <= edge) & near & (hide > 0).view(-1, 1)
        # Ties at the edge could hide more pixels than asked; hide exactly the first `hide` of them.
        rank = torch.cumsum((occluder & flat).to(torch.int64), dim=1)
        occluder = occluder & ~(flat & (rank > hide.view(-1, 1)))
        occluder = occluder.view(n, 1, s, s)
        colour = _hsv_to_rgb(o[:, 1], 0.2 + 0.5 * o[:, 2], 0.3 + 0.6 * o[:, 3]).view(n, 3, 1, 1)
        fill = (colour + 0.05 * self._noise(o[:, 3:6])).clamp(0, 1)
        return torch.where(occluder, fill, image), mask & ~occluder
