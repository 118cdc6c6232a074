"""Small image filters shared by the saliency sources and the transforms."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["blur_matrix", "gaussian_blur"]


def blur_matrix(n: int, sigma: float, device: torch.device) -> Tensor:
    """``(n, n)`` matrix of a 1-D Gaussian blur with reflect border (kornia's ``gaussian_blur2d``).

    The kernel spans ``+-ceil(3 sigma)`` taps, capped at ``n - 1`` so one reflection suffices;
    row ``i`` holds the weights of output pixel ``i``.

    Example:
        >>> blur_matrix(3, 1.0, torch.device("cpu")).sum(1).tolist()
        [1.0, 1.0, 1.0]
    """
    half = min(max(1, math.ceil(3 * sigma)), n - 1)
    taps = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pos = torch.arange(n, device=device)[:, None] + taps.long()[None, :]
    pos = torch.where(pos < 0, -pos, pos)
    pos = torch.where(pos >= n, 2 * (n - 1) - pos, pos)
    return torch.zeros(n, n, device=device).scatter_add_(1, pos, kernel.expand(n, -1).contiguous())


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Blur ``(..., H, W)`` float maps with a Gaussian of ``sigma`` pixels, reflect border.

    Two matmuls with banded matrices: equal to kornia's ``gaussian_blur2d`` with a
    ``2 * ceil(3 sigma) + 1`` kernel, and several times faster on single-channel maps.
    """
    h, w = maps.shape[-2:]
    if sigma <= 0:
        return maps
    return blur_matrix(h, sigma, maps.device) @ maps @ blur_matrix(w, sigma, maps.device).T
