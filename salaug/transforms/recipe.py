"""The standard recipe, batched: a padded random crop and a horizontal flip, per sample.

Every published mixing result sits on top of this augmentation (CIFAR's 4-px padded crop + flip),
so every comparison in this project gives it to every arm first. :func:`crop_flip` runs it on a
batch tensor on its device (one ``gather`` per axis, no loop over samples), moving masks and boxes
with the images, so it fits in a training loop right before ``aug(images, labels)`` or in a
``collate_fn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug._checks import check_flag, check_generator, check_images, check_int

__all__ = ["crop_flip"]


def crop_flip(images: Tensor, *maps: Tensor, boxes: Tensor | None = None, padding: int = 4, flip: bool = True,
              generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """Per-sample random ``H x W`` window of the zero-padded batch, then a horizontal flip of half.

    Each sample gets its own offsets ``(ox, oy)`` in ``[0, 2 * padding]`` and its own flip (drawn
    in that order: offsets ``(B, 2)``, then flips ``(B,)``). ``maps`` (masks, saliency: any
    ``(B, c, H, W)`` tensor) get the same window and flip, padded with zeros; ``boxes`` are clipped
    to the image, move with it and are clipped to the window, so each still bounds what is visible
    of its object.

    Args:
        images: ``(B, C, H, W)`` floating-point images.
        *maps: further ``(B, c, H, W)`` tensors to move with the images.
        boxes: ``(B, 4)`` half-open ``(x1, y1, x2, y2)`` pixel boxes, or ``None``.
        padding: zero padding on each side, the largest shift in pixels (4 for 32-px images).
        flip: flip each sample horizontally with probability 1/2.
        generator: draws the offsets and flips (on its device, then moved to the images'); the
            global stream of the images' device when ``None``.

    Returns:
        ``(images, *maps)`` and, when ``boxes`` is given, the moved ``(B, 4)`` boxes last
        (float32).

    Raises:
        TypeError, ValueError: non-image ``images``, a map or boxes of another batch or size, a
            negative ``padding``.

    Example:
        >>> import torch
        >>> x = torch.rand(4, 3, 32, 32)
        >>> g = torch.Generator().manual_seed(0)
        >>> y, m, b = crop_flip(x, x[:, :1] > 0.5, boxes=torch.tensor([[8, 8, 16, 16]]).expand(4, 4), generator=g)
        >>> y.shape, m.dtype, b.shape
        (torch.Size([4, 3, 32, 32]), torch.bool, torch.Size([4, 4]))
        >>> y, = crop_flip(x, padding=0, flip=False)
        >>> torch.equal(y, x)
        True
    """
    check_images(images, "images")
    pad = check_int("padding", padding, low=0)
    flip = check_flag("flip", flip)
    generator = check_generator(generator)
    b, _, h, w = images.shape
    for i, m in enumerate(maps):
        if not isinstance(m, Tensor) or m.ndim != 4 or m.shape[0] != b or m.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"maps[{i}] must be a (B, c, H, W) tensor matching the images {tuple(images.shape)}, "
                             f"got {getattr(m, 'shape', type(m).__name__)}")
    if boxes is not None and (not isinstance(boxes, Tensor) or boxes.shape != (b, 4)):
        raise ValueError(f"boxes must be a (B, 4) tensor for a batch of {b}, got {getattr(boxes, 'shape', boxes)!r}")
    dev = images.device
    draw_on = generator.device if generator is not None else dev
    offset = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=draw_on).to(dev)
    flipped = (torch.rand(b, generator=generator, device=draw_on) < 0.5).to(dev) & flip
    cols = torch.arange(w, device=dev)
    cols = torch.where(flipped.view(-1, 1), w - 1 - cols, cols) + offset[:, :1]  # (B, W) in the padded frame
    rows = torch.arange(h, device=dev) + offset[:, 1:]  # (B, H)
    out = []
    for x in (images, *maps):
        c = x.shape[1]
        padded = F.pad(x, (pad,) * 4)
        x = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, padded.shape[-1]))
        out.append(x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w)))
    if boxes is not None:
        shift = (pad - offset).to(torch.float32)  # (B, 2): (dx, dy)
        # clipped to the image before the shift (the padding shows nothing of the object), then
        # to the window
        bx = _clip(_clip(boxes.to(dev, torch.float32), h, w) + shift.repeat(1, 2), h, w)
        mirrored = torch.stack((w - bx[:, 2], bx[:, 1], w - bx[:, 0], bx[:, 3]), 1)
        out.append(torch.where(flipped.view(-1, 1), mirrored, bx))
    return tuple(out)


def _clip(boxes: Tensor, h: int, w: int) -> Tensor:
    """``(B, 4)`` float boxes clipped to an ``h x w`` image."""
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)), 1)
