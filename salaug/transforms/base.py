"""The contract every saliency transform shares.

A transform is called ``t(images, saliency, labels)`` and returns a :class:`SalientBatch`. The base
class validates inputs, turns labels into ``(B, K)`` soft labels, samples the per-sample
application mask (``p`` is applied exactly once) and, for mixes, a partner permutation, and lets the
sampled parameters be returned and replayed.

Randomness comes from ``generator`` when one is given (reproducible, its state can be saved) and
from the global stream of the images' device otherwise. Parameters are sampled on the generator's
device and moved to the images' device, which is an asynchronous copy, not a host sync.
"""

from __future__ import annotations

from typing import NamedTuple, overload, Literal

import torch
from torch import Tensor, nn

from salaug._checks import check_images, check_saliency, to_soft_labels

Params = dict[str, Tensor]

__all__ = ["Params", "SalientBatch", "SaliencyTransform", "sample_uniform", "sample_beta", "sample_perm"]


class SalientBatch(NamedTuple):
    """What every transform returns.

    Attributes:
        images: ``(B, C, H, W)``, same dtype and device as the input images.
        saliency: ``(B, 1, H, W)`` float32 in ``[0, 1]``, transformed together with the images.
        labels: ``(B, K)`` float32 soft labels, rows summing to 1.
    """

    images: Tensor
    saliency: Tensor
    labels: Tensor


def _on(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def sample_uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None,
                   low: float | Tensor = 0.0, high: float | Tensor = 1.0) -> Tensor:
    """Uniform samples in ``[low, high)`` of ``shape`` on ``device`` (float32)."""
    u = torch.rand(shape, generator=generator, device=_on(generator, device)).to(device)
    return low + (high - low) * u if not (isinstance(low, float) and low == 0.0 and high == 1.0) else u


def sample_beta(alpha: float, beta: float, shape: tuple[int, ...], device: torch.device,
                generator: torch.Generator | None = None) -> Tensor:
    """``Beta(alpha, beta)`` samples of ``shape`` on ``device``, drawn from ``generator``."""
    conc = torch.tensor([alpha, beta], dtype=torch.float32, device=_on(generator, device))
    draws = torch._sample_dirichlet(conc.expand(*shape, 2).contiguous(), generator=generator)
    return draws[..., 0].to(device)


def sample_perm(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of ``range(n)`` on ``device`` (partners for mixing)."""
    return torch.randperm(n, generator=generator, device=_on(generator, device)).to(device)


class SaliencyTransform(nn.Module):
    """Base class of the saliency-guided transforms.

    Subclasses implement :meth:`generate_parameters` (sample everything random, as tensors, and
    the ``"applied"`` mask) and :meth:`apply_transform` (deterministic given the parameters).

    Args:
        num_classes: number of classes K, needed when labels are ``(B,)`` class indices.
        p: probability that each sample is transformed (drawn once per sample).
        generator: optional ``torch.Generator`` for reproducible sampling.

    Raises:
        ValueError: if ``p`` is outside ``[0, 1]`` or ``num_classes`` < 1.
    """

    def __init__(self, num_classes: int | None = None, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = num_classes
        self.p = float(p)
        self.generator = generator

    # -- to implement ---------------------------------------------------------------------------
    def generate_parameters(self, images: Tensor, saliency: Tensor) -> Params:
        """Sample the random parameters for this batch; must include ``"applied"`` ``(B,)`` bool."""
        raise NotImplementedError

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        """Apply the transform with fixed ``params``; ``labels`` are already ``(B, K)`` soft."""
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------------
    def sample_applied(self, batch_size: int, device: torch.device) -> Tensor:
        """``(B,)`` bool: which samples are transformed (probability ``p`` each, drawn once)."""
        return sample_uniform((batch_size,), device, self.generator) < self.p

    def sample_partners(self, batch_size: int, device: torch.device) -> Tensor:
        """``(B,)`` long: each sample's mixing partner, a random permutation of the batch."""
        return sample_perm(batch_size, device, self.generator)

    # -- the call -------------------------------------------------------------------------------
    @overload
    def forward(self, images: Tensor, saliency: Tensor, labels: Tensor, *, num_classes: int | None = ...,
                params: Params | None = ..., return_params: Literal[False] = ...) -> SalientBatch: ...

    @overload
    def forward(self, images: Tensor, saliency: Tensor, labels: Tensor, *, num_classes: int | None = ...,
                params: Params | None = ..., return_params: Literal[True]) -> tuple[SalientBatch, Params]: ...

    def forward(self, images: Tensor, saliency: Tensor, labels: Tensor, *, num_classes: int | None = None,
                params: Params | None = None, return_params: bool = False):
        """Transform a batch.

        Args:
            images: ``(B, C, H, W)`` floating point, any normalisation.
            saliency: ``(B, 1, H, W)`` (or lower resolution ``(B, 1, h, w)``) in ``[0, 1]``.
            labels: ``(B,)`` class indices (needs ``num_classes``) or ``(B, K)`` probabilities.
            num_classes: overrides the constructor's ``num_classes`` for this call.
            params: parameters returned by an earlier call (``return_params=True``) to replay the
                same transform on another batch of the same size (e.g. segmentation masks).
            return_params: also return the sampled parameters.

        Returns:
            :class:`SalientBatch` ``(images, saliency, labels)``, and the parameters if asked.

        Raises:
            TypeError, ValueError: on malformed inputs or parameters (see messages).
        """
        images = check_images(images)
        saliency = check_saliency(saliency, images)
        k = num_classes if num_classes is not None else self.num_classes
        soft = to_soft_labels(labels, images.shape[0], k, images.device)
        if params is None:
            params = self.generate_parameters(images, saliency)
        else:
            self._check_params(params, images.shape[0])
        out = self.apply_transform(images, saliency, soft, params)
        return (out, params) if return_params else out

    def _check_params(self, params: Params, batch_size: int) -> None:
        applied = params.get("applied") if isinstance(params, dict) else None
        if applied is None:
            raise ValueError("params must be the dict returned by a call with return_params=True")
        if applied.shape[0] != batch_size:
            raise ValueError(
                f"params were sampled for a batch of {applied.shape[0]} but this batch has {batch_size}; "
                "replay parameters only on batches of the same size"
            )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, p={self.p}"
