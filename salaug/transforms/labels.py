"""Soft labels: the label rules every transform follows.

Every transform returns ``(B, K)`` float32 rows summing to 1, so ``F.cross_entropy(logits, y)``
works unchanged and transforms chain. A mix with partner weight ``w`` gives
``(1 - w) * y + w * y[perm]`` (timm's and torchvision's convention, with ``w`` the partner's share).
"""

from __future__ import annotations

from torch import Tensor

from salaug._checks import to_soft_labels

__all__ = ["mix_soft_labels", "to_soft_labels"]


def mix_soft_labels(labels: Tensor, perm: Tensor, weight: Tensor) -> Tensor:
    """Mix each row with its partner's.

    Args:
        labels: ``(B, K)`` soft labels.
        perm: ``(B,)`` partner index of each sample.
        weight: ``(B,)`` share of the partner in ``[0, 1]``.

    Returns:
        ``(B, K)`` soft labels; rows still sum to 1.

    Example:
        >>> import torch
        >>> y = torch.eye(2)
        >>> mix_soft_labels(y, torch.tensor([1, 0]), torch.tensor([0.25, 0.0])).tolist()
        [[0.75, 0.25], [0.0, 1.0]]
    """
    w = weight.to(labels.dtype).clamp(0, 1).unsqueeze(1)
    return labels.lerp(labels[perm], w)
