"""Silhouettes: grey shapes on a black background with dim clutter, with their true boxes and masks.

A dark-background dataset, unlike :class:`~salaug.datasets.ClutteredObjects` and
:class:`~salaug.datasets.TexturedBlobs`: most pixels are (nearly) black, so a neutral grey fill
lies far off its distribution. One bright object of a known class (the shapes of
:data:`salaug.datasets.CLASS_NAMES`) per image, and a few small, dim fragments of other shapes
as clutter. Drawn a batch at a time from a seeded generator (the splits are disjoint streams);
``render(range(n))`` gives all samples at once.

Example:
    >>> ds = Silhouettes("test", size=32, length=4, num_classes=3)
    >>> s = ds.render(range(4))
    >>> s["image"].shape, s["mask"].shape, s["box"].shape, float(s["image"].amin())
    (torch.Size([4, 1, 32, 32]), torch.Size([4, 1, 32, 32]), torch.Size([4, 4]), 0.0)
    >>> image, label, box, mask = ds[0]
    >>> image.shape, int(label) in (0, 1, 2)
    (torch.Size([1, 32, 32]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from salaug._checks import check_choice, check_int
from salaug.datasets.objects import CLASS_NAMES, draw_shapes

__all__ = ["Silhouettes"]

_SPLITS = {"train": 0, "val": 1, "test": 2}
_OBJECT_RADIUS = (0.13, 0.24)  # fractions of the side
_FRAGMENT_RADIUS = (0.07, 0.14)
_FRAGMENTS = 6
_OBJECT_GREY = (0.4, 1.0)
_FRAGMENT_GREY = (0.15, 0.6)


class Silhouettes(Dataset):
    """Grey silhouettes on black with dim clutter; samples ``(image, label, box, mask)``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint random streams).
        size: image side in pixels (>= 16).
        length: number of samples.
        num_classes: classes, the first ones of :data:`salaug.datasets.CLASS_NAMES` (2 to 12).
        seed: seed of the samples, any non-negative int (seeds that differ by a multiple of ``2**63``
            give the same data).
        channels: 1 (grey) or 3 (the grey repeated, for RGB networks).

    Samples: ``image`` ``(channels, size, size)`` float32 in ``[0, 1]``, ``label`` int64, ``box``
    ``(4,)`` float32 half-open ``xyxy`` pixels of the object, ``mask`` ``(1, size, size)`` bool.

    Raises:
        TypeError / ValueError: an argument of the wrong type or out of range.
    """

    def __init__(self, split: str = "train", size: int = 32, length: int = 1000, num_classes: int = 6,
                 seed: int = 0, channels: int = 1) -> None:
        check_choice("split", split, tuple(_SPLITS))
        check_int("size", size, low=16)
        check_int("length", length, low=0)
        check_int("num_classes", num_classes, low=2, high=len(CLASS_NAMES))
        seed = check_int("seed", seed, low=0)  # a numpy integer becomes an int: its arithmetic would wrap
        check_choice("channels", channels, (1, 3))
        self.split, self.size, self.length = split, size, length
        self.num_classes, self.seed, self.channels = num_classes, seed, channels
        self.classes: tuple[str, ...] = CLASS_NAMES[:num_classes]
        self._samples = self._draw()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        s = self._samples
        return s["image"][index], s["label"][index], s["box"][index], s["mask"][index]

    def render(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """The samples at ``indices`` as batched tensors ``image``, ``label``, ``box``, ``mask``."""
        idx = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices, dtype=torch.long)
        return {k: v[idx] for k, v in self._samples.items()}

    def _draw(self) -> dict[str, Tensor]:
        n, s = self.length, self.size
        g = torch.Generator().manual_seed((self.seed * 3 + _SPLITS[self.split]) & (2**63 - 1))

        def uniform(shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(shape, generator=g)

        labels = torch.randint(self.num_classes, (n,), generator=g)
        radius = s * uniform((n,), *_OBJECT_RADIUS)
        centre = radius.unsqueeze(1) + (s - 2 * radius).unsqueeze(1) * torch.rand(n, 2, generator=g)
        angle = uniform((n,), -math.radians(20), math.radians(20))
        coverage = draw_shapes(labels, centre, radius, angle, s)  # (N, 1, S, S)
        image = coverage * uniform((n, 1, 1, 1), *_OBJECT_GREY)
        m = n * _FRAGMENTS
        frag = draw_shapes(torch.randint(len(CLASS_NAMES), (m,), generator=g), s * torch.rand(m, 2, generator=g),
                           s * uniform((m,), *_FRAGMENT_RADIUS), uniform((m,), -math.pi, math.pi), s)
        frag = (frag * uniform((m, 1, 1, 1), *_FRAGMENT_GREY)).view(n, _FRAGMENTS, s, s).amax(1, keepdim=True)
        mask = coverage > 0.5
        image = torch.where(coverage > 0, image, frag)  # the object in front of the clutter
        ys, xs = mask.any(3).flatten(1), mask.any(2).flatten(1)
        ar = torch.arange(s)
        box = torch.stack([torch.where(xs, ar, s).amin(1), torch.where(ys, ar, s).amin(1),
                           torch.where(xs, ar + 1, 0).amax(1), torch.where(ys, ar + 1, 0).amax(1)], 1).float()
        return {"image": image.expand(n, self.channels, s, s).contiguous(), "label": labels, "box": box,
                "mask": mask}
