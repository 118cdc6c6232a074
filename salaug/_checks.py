"""Input validation shared by every public entry point.

Shape and dtype checks cost nothing and always run. Checks that read tensor *values* (saliency in
``[0, 1]``, label indices in range, soft-label rows) need a host sync when the tensor lives on an
accelerator, which would stall the training loop; so by default they run on CPU tensors only.
``set_value_checks("always")`` turns them on everywhere (debugging), ``"never"`` turns them off.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ValueChecks = Literal["cpu", "always", "never"]
_value_checks: ValueChecks = "cpu"


def set_value_checks(mode: ValueChecks) -> None:
    """Choose when checks that read tensor values (and so sync with the device) run.

    Args:
        mode: ``"cpu"`` (default: only for CPU tensors, where they are free of syncs),
            ``"always"`` or ``"never"``.

    Raises:
        ValueError: for an unknown mode.
    """
    global _value_checks
    if mode not in ("cpu", "always", "never"):
        raise ValueError(f"value checks mode must be 'cpu', 'always' or 'never', got {mode!r}")
    _value_checks = mode


def value_checks_on(tensor: Tensor) -> bool:
    """Whether value-reading checks should run for ``tensor`` under the current mode."""
    if _value_checks == "always":
        return True
    if _value_checks == "never":
        return False
    return tensor.device.type == "cpu"


def check_images(images: object, name: str = "images") -> Tensor:
    """Check that ``images`` is a floating-point ``(B, C, H, W)`` tensor and return it.

    Raises:
        TypeError: if it is not a tensor or not floating point.
        ValueError: if it is not 4-D or the batch is empty.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        hint = " (add a batch dimension with images.unsqueeze(0))" if images.ndim == 3 else ""
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got {images.dtype}; convert with "
            f"images.float() / 255 (or torchvision.transforms.v2.ToDtype(torch.float32, scale=True))"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {tuple(images.shape)}")
    return images


def check_saliency(saliency: object, images: Tensor) -> Tensor:
    """Validate a saliency map against its images and bring it to their size, as float32.

    Args:
        saliency: ``(B, 1, h, w)`` (or ``(B, h, w)``) values in ``[0, 1]``; a map smaller than the
            images is resized bilinearly (``align_corners=False``).
        images: ``(B, C, H, W)``.

    Returns:
        ``(B, 1, H, W)`` float32 on ``images.device``.

    Raises:
        TypeError: if ``saliency`` is not a floating-point tensor.
        ValueError: on a batch or shape mismatch, or values outside ``[0, 1]``.
    """
    if not isinstance(saliency, Tensor):
        raise TypeError(f"saliency must be a torch.Tensor of shape (B, 1, H, W), got {type(saliency).__name__}")
    if saliency.ndim == 3:
        saliency = saliency.unsqueeze(1)
    if saliency.ndim != 4 or saliency.shape[1] != 1:
        raise ValueError(f"saliency must have shape (B, 1, H, W), got {tuple(saliency.shape)}")
    if not saliency.is_floating_point():
        raise TypeError(f"saliency must be floating point in [0, 1], got {saliency.dtype}")
    if saliency.shape[0] != images.shape[0]:
        raise ValueError(
            f"saliency batch size {saliency.shape[0]} does not match images batch size {images.shape[0]}"
        )
    saliency = saliency.to(device=images.device, dtype=torch.float32)
    if value_checks_on(saliency):
        lo, hi = torch.aminmax(saliency)
        if not (lo >= 0 and hi <= 1):  # NaN fails both comparisons
            raise ValueError(
                f"saliency values must lie in [0, 1], got min {float(lo):.4g}, max {float(hi):.4g}; "
                "normalise it per image, e.g. with salaug.normalize_saliency(saliency)"
            )
    if saliency.shape[-2:] != images.shape[-2:]:
        saliency = F.interpolate(saliency, size=images.shape[-2:], mode="bilinear", align_corners=False)
        saliency = saliency.clamp_(0, 1)
    return saliency


def normalize_saliency(saliency: Tensor, eps: float = 1e-7) -> Tensor:
    """Min-max normalise each map of a ``(B, 1, H, W)`` batch to ``[0, 1]``.

    A constant map becomes all zeros (not NaN).

    Example:
        >>> s = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]]])
        >>> normalize_saliency(s).flatten().tolist()
        [0.0, 0.25, 0.5, 1.0]
    """
    flat = saliency.flatten(1)
    lo = flat.amin(dim=1).view(-1, *([1] * (saliency.ndim - 1)))
    hi = flat.amax(dim=1).view(-1, *([1] * (saliency.ndim - 1)))
    span = hi - lo
    return ((saliency - lo) / torch.where(span > eps, span, torch.ones_like(span))).clamp(0, 1) * (span > eps)


def check_class_indices(indices: Tensor, num_classes: int, name: str, context: str) -> None:
    """Raise if ``(B,)`` integer ``indices`` leave ``[0, num_classes)`` (value check: see module doc).

    Raises:
        ValueError: naming ``name``, the valid range, ``context`` and the offending extremes.
    """
    if not value_checks_on(indices):
        return
    lo, hi = torch.aminmax(indices)
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes - 1}] for {context}, got min {int(lo)}, max {int(hi)}"
        )


def to_soft_labels(labels: object, batch_size: int, num_classes: int | None, device: torch.device) -> Tensor:
    """Turn ``(B,)`` class indices or ``(B, K)`` probabilities into ``(B, K)`` float32 soft labels.

    Raises:
        TypeError: if ``labels`` is not a tensor.
        ValueError: integer labels without ``num_classes``, indices out of range, a batch-size
            mismatch, or rows of ``(B, K)`` labels that are negative or do not sum to 1.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (B,) or (B, K), got {type(labels).__name__}")
    if labels.ndim == 0 or labels.shape[0] != batch_size:
        raise ValueError(f"labels must have batch size {batch_size} (shape (B,) or (B, K)), got {tuple(labels.shape)}")
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"(B,) labels must be integer class indices, got {labels.dtype}")
        if num_classes is None:
            raise ValueError(
                "integer labels need num_classes to build soft labels: pass num_classes=K to the "
                "transform (or its call), or pass (B, K) one-hot / probability labels"
            )
        check_class_indices(labels, num_classes, "label indices", f"num_classes={num_classes}")
        return F.one_hot(labels.to(device=device, dtype=torch.long), num_classes).to(torch.float32)
    if labels.ndim == 2:
        if not labels.is_floating_point():
            raise TypeError(f"(B, K) labels must be floating point probabilities, got {labels.dtype}")
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(f"labels have {labels.shape[1]} classes but num_classes={num_classes}")
        labels = labels.to(device=device, dtype=torch.float32)
        if value_checks_on(labels):
            if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()):
                raise ValueError("(B, K) labels must be finite and non-negative")
            if not torch.allclose(labels.sum(1), torch.ones((), device=device), atol=1e-3):
                raise ValueError("(B, K) labels must be probabilities: each row must sum to 1")
        return labels
    raise ValueError(f"labels must have shape (B,) or (B, K), got {tuple(labels.shape)}")
