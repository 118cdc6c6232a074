"""The saliency-source protocol, and the sources that run no model: Flat, ModelFree, StoredMasks.

A source is asked once per batch for the maps a transform reads, and once more, after the
transform, for the labels to hand back (a source that completes them later, like
:class:`~salaug.sources.ForwardEvidence`, returns a tensor that is filled then)::

    maps = source.saliency(images, labels)                 # (B, 1, H, W) in [0, 1], or None: flat
    out, params = transform(images, maps, labels, return_params=True)
    soft = source.labels(images, labels, out, params, transform)   # (B, K)

:class:`~salaug.SaliencyAugmenter`, :class:`~salaug.SaliencyAugmentation` and
:class:`~salaug.SaliencyCollate` all draw their saliency through this protocol.

Example:
    >>> import torch, salaug
    >>> from salaug.sources import Flat, ModelFree
    >>> images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    >>> Flat().saliency(images, labels) is None
    True
    >>> ModelFree(salaug.SpectralResidual()).saliency(images, labels).shape
    torch.Size([4, 1, 16, 16])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from salaug.transforms.base import Params, SaliencyTransform, SalientBatch

__all__ = ["Flat", "ModelFree", "SaliencySource", "StoredMasks", "as_source"]


class SaliencySource:
    """Where a transform's saliency comes from (subclass and implement :meth:`saliency`).

    """

    def saliency(self, images: Tensor, labels: Tensor) -> Tensor | None:
        """``(B, 1, H, W)`` maps in ``[0, 1]`` for ``images`` (``(B, C, H, W)``), or ``None`` for flat saliency."""
        raise NotImplementedError

    def labels(self, images: Tensor, labels: Tensor, out: SalientBatch, params: Params,
               transform: SaliencyTransform, step: int | None = None) -> Tensor:
        """The ``(B, K)`` labels to return for the transformed batch (call ``step``): the transform's own by default."""
        return out.labels

    def cancel(self) -> None:
        """Drop any state waiting for a later event (a source that completes labels in a forward)."""

    def on_step(self) -> None:
        """Called once per training step, augmented or not (e.g. a moving average's update)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (nothing by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], owner: str = "SaliencySource") -> None:
        """Restore :meth:`state_dict`."""

    def check_transform(self, transform: SaliencyTransform) -> None:
        """Raise ``ValueError`` when this source cannot serve ``transform`` (every transform by default)."""


class Flat(SaliencySource):
    """No saliency information: every transform becomes its random-placement variant with area labels.

    SaliencyMix becomes CutMix, SnapMix the resized random box with area labels. The box mixes
    read no map at all (``saliency=None``); the matched control of every saliency method.
    """

    def saliency(self, images: Tensor, labels: Tensor) -> None:
        return None

    def __repr__(self) -> str:
        return "Flat()"


class ModelFree(SaliencySource):
    """Saliency from a function of the images alone (e.g. :class:`salaug.SpectralResidual`).

    Args:
        method: a callable ``images (B, C, H, W) -> (B, 1, H, W)`` maps in ``[0, 1]``.
    """

    def __init__(self, method: Callable[[Tensor], Tensor]) -> None:
        if not callable(method):
            raise TypeError(f"method must be callable images -> (B, 1, H, W) maps, got {type(method).__name__}")
        self.method = method

    def saliency(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.method(images)

    def __repr__(self) -> str:
        return f"ModelFree({self.method!r})"


class StoredMasks(SaliencySource):
    """Maps that come with each batch: precomputed CAMs or masks stored with the data.

    The augmenter takes them per call (``aug(images, labels, saliency=masks)``); the collate reads
    them from each sample's field ``key``.

    Args:
        key: position (tuple / list samples) or key (dict samples) of the mask in a sample, for
            :class:`~salaug.SaliencyCollate`; ``None``: its default (the last field of a tuple, where
            :class:`~salaug.MaskedDataset` appends it, ``"saliency"`` in a dict).
    """

    def __init__(self, key: int | str | None = None) -> None:
        self.key = key

    def saliency(self, images: Tensor, labels: Tensor) -> Tensor:
        raise ValueError(
            "StoredMasks: the maps come with the batch; pass them to each call (aug(images, labels, saliency=masks)), "
            "or let SaliencyCollate read them from the samples"
        )

    def __repr__(self) -> str:
        return f"StoredMasks(key={self.key!r})"


class _FromFunction(SaliencySource):
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def saliency(self, images: Tensor, labels: Tensor) -> Tensor | None:
        return self.fn(images, labels)

    def __repr__(self) -> str:
        return repr(self.fn)


def as_source(source: object) -> SaliencySource:
    """A :class:`SaliencySource` as it is; a callable ``(images, labels) -> maps`` wrapped as one.

    Raises:
        TypeError: neither a source nor callable.
    """
    if isinstance(source, SaliencySource):
        return source
    if callable(source):
        return _FromFunction(source)
    raise TypeError(
        f"source must be a salaug.sources.SaliencySource (Flat(), ModelFree(SpectralResidual()), ...) or a callable "
        f"(images, labels) -> (B, 1, H, W) maps, got {type(source).__name__}"
    )
