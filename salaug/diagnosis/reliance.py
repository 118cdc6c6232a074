"""The reliance test: does the model's decision depend on the object or on its background?

After Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition" (ICLR
2021, the backgrounds challenge). Each image is shown to the model in five versions, all built
in one batched pass, and the accuracy of each is measured:

* ``original``: the image as it is;
* ``object_only``: the object on a neutral background (every pixel outside the object replaced
  by the batch's mean colour, the same for all images, so the fill carries no class information);
* ``background_only``: the object's box filled with that neutral colour (the object removed);
* ``mixed_same``: the object pasted, at its place, onto the background (object box filled) of
  another image **of the same class**;
* ``mixed_rand``: the same onto the background of a **random** image of the batch.

The **BG-gap** ``mixed_same - mixed_rand`` is what the background's class information is worth
to the model: about 0 for a model that reads the object, large for one that reads the
background (a class-coded mark, a background colour). ``background_only`` far above chance
says the same from the other side.

The object region is its pixel mask when the data gives one (grown by one pixel to take its
anti-aliased rim along), else its box. The removed region of ``background_only`` and of the
partners' backgrounds is always the box (a mask would leave the object's outline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug.boxes import box_mask

__all__ = ["VARIANTS", "reliance_images", "same_class_partners"]

#: The five versions of each image, in the order of :func:`reliance_images`.
VARIANTS = ("original", "object_only", "background_only", "mixed_same", "mixed_rand")


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


def reliance_images(
    images: Tensor,
    classes: Tensor,
    boxes: Tensor,
    masks: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The five versions of :data:`VARIANTS`, stacked: ``(5, B, C, H, W)``.

    Args:
        images: ``(B, C, H, W)`` float images.
        classes: ``(B,)`` long true classes (pairs the same-class backgrounds).
        boxes: ``(B, 4)`` half-open ``xyxy`` object boxes in pixels.
        masks: ``(B, 1, H, W)`` bool object masks, or ``None`` (the boxes stand in for them).
        generator: random source of the pairings (CPU generator).

    Returns:
        ``(5, B, C, H, W)`` on the images' device and dtype.
    """
    b, _, h, w = images.shape
    inside = box_mask(boxes.round().long(), (h, w))  # (B, 1, H, W)
    if masks is None:
        obj = inside
    else:
        grown = F.max_pool2d(masks.to(images.dtype), 3, stride=1, padding=1) > 0
        obj = grown & inside | masks.bool()
    neutral = images.mean(dim=(0, 2, 3), keepdim=True).to(images.dtype)  # (1, C, 1, 1)
    background = torch.where(inside, neutral, images)
    object_only = torch.where(obj, images, neutral)
    same = same_class_partners(classes, generator)
    rand = random_partners(b, images.device, generator)
    mixed_same = torch.where(obj, images, background.index_select(0, same))
    mixed_rand = torch.where(obj, images, background.index_select(0, rand))
    return torch.stack([images, object_only, background, mixed_same, mixed_rand])
