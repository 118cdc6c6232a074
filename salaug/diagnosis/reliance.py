"""The reliance test: does the model's decision depend on the object or on its background?

After Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition" (ICLR
2021, the Backgrounds Challenge; no inpainting there either). Each image is shown to the model in
nine versions, all built in one batched pass, and the accuracy of each is measured: the original,
and four versions under each of two **fills** of the removed region:

* fill ``t`` (Only-BG-T): the object's box is filled by **tiling the same image's own background**
  from outside the box (the widest strip beside the box, repeated across it); outside the object
  the Only-FG version shows the image's own mean background colour;
* fill ``b`` (Only-BG-B): the box is filled with **black**, read as each channel's darkest value in
  the image's **background**, outside the object's box (the library does not know the
  normalisation; a black pixel of the background is black in any per-channel normalisation).
  The object is left out of the reading: a dark object would otherwise paint its own colour into
  its box, and the box's shape alone would then give the class away. Where the box covers the
  whole image, the whole image's darkest value is used. The Only-FG version shows the object on
  that black.

Per fill ``f``:

* ``object_only_f``: the object (its mask where given, else its box) on the fill;
* ``background_only_f``: the image with its object's box filled (the object removed);
* ``mixed_same_f``: the object pasted, at its place, onto the ``background_only_f`` of another image
  **of the same class**;
* ``mixed_rand_f``: the same onto that of a **random** image of the batch.

The **BG-gap** ``mixed_same - mixed_rand`` is what the background's class information is worth
to the model: about 0 for a model that reads the object, large for one that reads the
background (a class-coded mark, a background colour). ``background_only`` far above chance
says the same from the other side. Neither can come from the fill itself (the fill is the same
for every class, and a model that answers one class on every filled image scores at most the
majority class's share), so positive evidence holds on any data; a *negative* result only
counts when the fill kept the images on the data's distribution, which the controls of
:mod:`salaug.diagnosis.report` check, each comparison against its own control.

The object region is its pixel mask when the data gives one (grown by one pixel to take its
anti-aliased rim along), else its box. The removed region of ``background_only`` and of the
partners' backgrounds is always the box (a mask would leave the object's outline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug.boxes import box_mask

__all__ = ["FILLS", "VARIANTS", "background_black", "reliance_images", "reliance_share", "same_class_partners",
           "tiled_background"]

#: The two fills: ``"t"`` (the image's own background tiled into the box) and ``"b"`` (black).
FILLS = ("t", "b")
#: The versions of each image, in the order of :func:`reliance_images`.
VARIANTS = ("original", *(f"{v}_{f}" for f in FILLS
                          for v in ("object_only", "background_only", "mixed_same", "mixed_rand")))


def same_class_partners(classes: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each image, another image of the batch with the same class (itself when it is alone).

    Batched: a random order grouped by class, each image paired with the next one of its group
    (cyclically).

    Args:
        classes: ``(B,)`` long class indices.
        generator: random source of the order (CPU generator; ``None``: the global one).

    Returns:
        ``(B,)`` long partner indices on ``classes.device``.

    Example:
        >>> p = same_class_partners(torch.tensor([0, 1, 0, 1, 2]), torch.Generator().manual_seed(0))
        >>> torch.tensor([0, 1, 0, 1, 2])[p].tolist(), p[4].item()
        ([0, 1, 0, 1, 2], 4)
    """
    b = classes.shape[0]
    dev = classes.device
    noise = torch.rand(b, generator=generator).to(dev)
    order = torch.argsort(classes.to(torch.float64) + noise.to(torch.float64) * 0.5)
    sorted_cls = classes[order]
    counts = torch.bincount(sorted_cls)
    start = torch.cumsum(counts, 0) - counts  # first position of each class in the order
    pos = torch.arange(b, device=dev)
    first = start[sorted_cls]
    nxt = first + (pos - first + 1) % counts[sorted_cls]  # next position within the class, cyclic
    partner = torch.empty_like(order)
    partner[order] = order[nxt]
    return partner


def random_partners(batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """``(B,)`` a random derangement-like pairing: a random order, each image paired with the next."""
    order = torch.randperm(batch, generator=generator).to(device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def tiled_background(images: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Only-BG-T: each image's box filled by tiling the image's own background from beside the box.

    The source is the largest of the four strips outside the box (left, right, above, below);
    pixel ``(y, x)`` of the box takes the strip's pixel in the same row (left / right) or column
    (above / below), the strip repeated as often as the box needs. Batched: one gather.

    Args:
        images: ``(B, C, H, W)`` float images.
        boxes: ``(B, 4)`` integer half-open ``xyxy`` boxes, clipped to the image.

    Returns:
        ``(filled, has_source)``: ``(B, C, H, W)`` images with their boxes tiled, and ``(B,)`` bool,
        ``False`` for a box covering the whole image (nothing to tile: the box is left as it is).

    Example:
        >>> x = torch.arange(8.0).view(1, 1, 1, 8)
        >>> filled, ok = tiled_background(x, torch.tensor([[1, 0, 5, 1]]))
        >>> filled.flatten().tolist(), ok.tolist()
        ([0.0, 5.0, 6.0, 7.0, 5.0, 5.0, 6.0, 7.0], [True])
    """
    b, c, h, w = images.shape
    x1, y1, x2, y2 = boxes.unbind(1)
    strips = torch.stack([x1 * h, (w - x2) * h, y1 * w, (h - y2) * w], 1)  # left, right, above, below
    side = strips.argmax(1).view(b, 1, 1)
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, w)

    def v(t: Tensor) -> Tensor:
        return t.view(b, 1, 1)

    dx, dy = xs - v(x1), ys - v(y1)
    left = torch.remainder(dx, v(x1.clamp_min(1)))
    right = v(x2) + torch.remainder(dx, v((w - x2).clamp_min(1)))
    above = torch.remainder(dy, v(y1.clamp_min(1)))
    below = v(y2) + torch.remainder(dy, v((h - y2).clamp_min(1)))
    src_x = torch.where(side == 0, left, torch.where(side == 1, right, xs.expand(b, h, w)))
    src_y = torch.where(side == 2, above, torch.where(side == 3, below, ys.expand(b, h, w)))
    inside = box_mask(boxes, (h, w))[:, 0]
    has_source = strips.amax(1) > 0
    inside = inside & has_source.view(b, 1, 1)
    index = torch.where(inside, src_y * w + src_x, ys * w + xs).flatten(1)  # (B, H*W)
    filled = images.flatten(2).gather(2, index.unsqueeze(1).expand(b, c, h * w)).view(b, c, h, w)
    return filled, has_source


def background_black(images: Tensor, inside: Tensor) -> Tensor:
    """Fill B's black: each channel's darkest value outside the object's box.

    Args:
        images: ``(B, C, H, W)`` float images.
        inside: ``(B, 1, H, W)`` bool, ``True`` inside the object's box.

    Returns:
        ``(B, C, 1, 1)``: per image and channel the minimum over the pixels outside the box (over
        the whole image where the box covers it all).

    Example:
        >>> x = torch.tensor([[[[0.9, 0.1], [0.8, 0.7]]]])  # a dark object at the top right
        >>> inside = torch.tensor([[[[False, True], [False, False]]]])
        >>> background_black(x, inside).flatten().tolist() == [x[0, 0, 1, 1].item()]
        True
    """
    outside = ~inside
    some = outside.flatten(1).any(1).view(-1, 1, 1, 1)  # (B, 1, 1, 1): the box leaves a background
    masked = torch.where(outside | ~some, images, torch.full_like(images, float("inf")))
    return masked.amin(dim=(2, 3), keepdim=True)


def reliance_images(
    images: Tensor,
    classes: Tensor,
    boxes: Tensor,
    masks: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The versions of :data:`VARIANTS`, stacked: ``(9, B, C, H, W)``.

    Args:
        images: ``(B, C, H, W)`` float images.
        classes: ``(B,)`` long true classes (pairs the same-class backgrounds).
        boxes: ``(B, 4)`` half-open ``xyxy`` object boxes in pixels.
        masks: ``(B, 1, H, W)`` bool object masks, or ``None`` (the boxes stand in for them).
        generator: random source of the pairings (CPU generator).

    Returns:
        ``(9, B, C, H, W)`` on the images' device and dtype.
    """
    b, _, h, w = images.shape
    whole = torch.tensor([w, h, w, h], device=boxes.device)
    pixel_boxes = torch.minimum(boxes.round().long().clamp_min(0), whole)
    inside = box_mask(pixel_boxes, (h, w))  # (B, 1, H, W)
    if masks is None:
        obj = inside
    else:
        grown = F.max_pool2d(masks.to(images.dtype), 3, stride=1, padding=1) > 0
        obj = grown & inside | masks.bool()
    black = background_black(images, inside)  # (B, C, 1, 1): each channel's darkest background value
    tiled, has_source = tiled_background(images, pixel_boxes)
    outside = (~inside).to(images.dtype)
    own_colour = (images * outside).sum((2, 3), keepdim=True) / outside.sum((2, 3), keepdim=True).clamp_min(1)
    tiled = torch.where(inside & ~has_source.view(b, 1, 1, 1), black, tiled)  # nothing to tile: black
    same = same_class_partners(classes, generator)
    rand = random_partners(b, images.device, generator)
    out = [images]
    for background, fill in ((tiled, own_colour), (torch.where(inside, black, images), black)):
        out += [torch.where(obj, images, fill.expand_as(images)), background,
                torch.where(obj, images, background.index_select(0, same)),
                torch.where(obj, images, background.index_select(0, rand))]
    return torch.stack(out)


def reliance_share(
    hits: Tensor,
    fills: tuple[str, ...],
    chance: float,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """The share of the model's margin over chance that the background accounts for, with an interval.

    ``share = gap / (original - chance)``, where ``gap`` is the BG-gap (mixed-same minus mixed-rand
    accuracy) averaged over ``fills`` and ``original`` the accuracy on the unchanged images. The
    interval is a percentile bootstrap over the images, batched: each image falls in one of
    ``2 ** (1 + 2 * len(fills))`` cells by its hits (original, then mixed-same and mixed-rand per
    fill), so a resample of the ``N`` images is one multinomial draw of the cell counts, and the
    ``resamples`` draws are one vectorised NumPy call (seeded: the same inputs give the same
    interval). Chance is held fixed.

    Args:
        hits: ``(V, N)`` bool, each image's hit under each variant of :data:`VARIANTS`.
        fills: the fills whose BG-gap counts (a non-empty subset of :data:`FILLS`).
        chance: the chance accuracy (the most frequent label's share).
        confidence: level of the interval, in ``(0, 1)``.
        resamples: bootstrap draws.
        seed: seed of the draws.

    Returns:
        ``{"gap", "margin", "share", "low", "high"}``: the mean BG-gap, ``original - chance``, the
        share, and the interval's bounds of the share (the denominator of each resample is kept at
        least ``1 / N`` above 0).

    Example:
        >>> hits = torch.zeros(len(VARIANTS), 100, dtype=torch.bool)
        >>> hits[0, :60] = True                                      # original: 0.60
        >>> hits[VARIANTS.index("mixed_same_t"), :60] = True         # mixed-same: 0.60
        >>> hits[VARIANTS.index("mixed_rand_t"), :48] = True         # mixed-rand: 0.48
        >>> r = reliance_share(hits, ("t",), chance=0.1)
        >>> round(r["gap"], 2), round(r["margin"], 2), round(r["share"], 2), r["low"] > 0
        (0.12, 0.5, 0.24, True)
    """
    import numpy as np

    if not fills or any(f not in FILLS for f in fills):
        raise ValueError(f"fills must be a non-empty subset of {FILLS}, got {fills!r}")
    rows = [VARIANTS.index("original")]
    for f in fills:
        rows += [VARIANTS.index(f"mixed_same_{f}"), VARIANTS.index(f"mixed_rand_{f}")]
    h = hits[rows].to(torch.long).cpu()  # (1 + 2F, N)
    n = h.shape[1]
    weights = 2 ** torch.arange(h.shape[0]).view(-1, 1)
    counts = torch.bincount((h * weights).sum(0), minlength=2 ** h.shape[0]).double().numpy()  # (cells,)
    bits = ((np.arange(counts.size)[:, None] >> np.arange(h.shape[0])[None, :]) & 1).astype(np.float64)
    original = bits[:, 0]
    gap = (bits[:, 1::2] - bits[:, 2::2]).mean(1)  # per cell: mean over fills of mixed-same - mixed-rand

    def stat(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, o = c @ gap / n, c @ original / n
        return g, o - chance

    g0, m0 = stat(counts[None, :])
    draws = np.random.default_rng(seed).multinomial(n, counts / max(n, 1), size=resamples).astype(np.float64)
    g, m = stat(draws)
    shares = g / np.maximum(m, 1.0 / max(n, 1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(shares, [tail, 100 - tail])
    share = float(g0[0] / max(float(m0[0]), 1.0 / max(n, 1)))
    return {"gap": float(g0[0]), "margin": float(m0[0]), "share": share, "low": float(low), "high": float(high)}
