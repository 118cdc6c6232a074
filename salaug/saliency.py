"""Model-free saliency: the spectral residual of Hou & Zhang (CVPR 2007).

This is the saliency SaliencyMix (Uddin et al., ICLR 2021) computes with OpenCV's
``StaticSaliencySpectralResidual``; here it is batched, differentiable-free torch code that runs
on the images' device (one ``torch.fft.fft2`` for the whole batch).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._checks import (
    check_choice,
    check_finite,
    check_float,
    check_image_extent,
    check_images,
    check_int,
    zero_nonfinite_maps,
)
from salaug._filters import gaussian_blur

__all__ = ["SpectralResidual", "normalize_saliency"]

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


class SpectralResidual(nn.Module):
    """Spectral-residual saliency (Hou & Zhang 2007), batched.

    Per image: grayscale → resize so the long side is ``size`` → FFT → log amplitude ``L`` and
    phase ``P`` → residual ``R = L - box(L)`` (``avg_kernel`` x ``avg_kernel`` mean, replicate
    border) → ``|IFFT(exp(R + iP))|²`` → Gaussian blur (``sigma``, kernel radius ``ceil(3 sigma)``,
    reflect border) → bilinear resize back to ``(H, W)`` → per-image min-max to ``[0, 1]``.

    Downsampling uses area averaging (``F.interpolate(mode="area")``); an image smaller than
    ``size`` is upsampled bilinearly. A constant image has no salient region and gives an
    all-zero map. The map does not depend on the images' scale or dtype (they are read as
    float32). Non-finite images raise a ``ValueError`` where value checks run (CPU tensors by
    default, see :func:`salaug.set_value_checks`); elsewhere such an image gets an all-zero map,
    as in the CAM engine: never a NaN map. The module has no parameters or buffers.

    Args:
        size: long side, in pixels, of the working resolution (the paper uses 64); ``None``
            keeps the input resolution.
        avg_kernel: side of the box filter that estimates the average log spectrum (odd, the
            paper uses 3).
        sigma: standard deviation, in working-resolution pixels, of the final Gaussian blur;
            ``None`` means ``2.5 * size / 64`` (the authors' 2.5 at 64 px), ``0`` disables it.
        grayscale: ``"mean"`` over channels, or ``"luma"`` (BT.601, needs 3 channels).
        eps: added to the amplitude before the logarithm, relative to each image's mean
            amplitude (so the map does not depend on the value range). Without it, the exact
            zeros in the spectrum of synthetic images (a flat background with a square) dominate
            the log spectrum.

    Shape:
        - Input: ``(B, C, H, W)`` floating point, any value range.
        - Output: ``(B, 1, H, W)`` float32 in ``[0, 1]`` on the input's device.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> images = 0.4 + 0.2 * torch.rand(2, 3, 48, 48, generator=g)  # noise background
        >>> images[:, :, 30:36, 8:14] = 1.0  # a bright patch
        >>> s = SpectralResidual()(images)
        >>> s.shape, s.dtype
        (torch.Size([2, 1, 48, 48]), torch.float32)
        >>> bool(s[:, :, 30:36, 8:14].mean() > 5 * s.mean())
        True
    """

    def __init__(
        self,
        size: int | None = 64,
        avg_kernel: int = 3,
        sigma: float | None = None,
        grayscale: Literal["mean", "luma"] = "mean",
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        check_int("size", size, low=4, optional=True)
        check_int("avg_kernel", avg_kernel, low=1)
        if avg_kernel % 2 == 0:
            raise ValueError(f"avg_kernel must be a positive odd int (the paper uses 3), got {avg_kernel!r}")
        if sigma is not None:
            sigma = check_float("sigma", sigma, low=0)
        check_choice("grayscale", grayscale, ("mean", "luma"))
        self.size = size
        self.avg_kernel = avg_kernel
        self.sigma = sigma
        self.grayscale = grayscale
        self.eps = check_float("eps", eps, low=0, low_open=True)

    def extra_repr(self) -> str:
        return f"size={self.size}, avg_kernel={self.avg_kernel}, sigma={self.sigma}, grayscale={self.grayscale!r}"

    def _gray(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, 1, H, W)`` float32, each image scaled to a peak ``|x|`` of 1."""
        # the map is scale-invariant; scaling in the input dtype first keeps huge values (float64
        # 1e300, float32 1e38) from overflowing in the cast or the FFT
        peak = images.abs().amax(dim=(1, 2, 3), keepdim=True)
        x = (images / torch.where(peak > 0, peak, torch.ones_like(peak))).to(torch.float32)
        if self.grayscale == "luma":
            if x.shape[1] != 3:
                raise ValueError(
                    f"grayscale='luma' needs RGB images with 3 channels, got {x.shape[1]}; "
                    "use SpectralResidual(grayscale='mean')"
                )
            w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            return (x * w).sum(dim=1, keepdim=True)
        return x.mean(dim=1, keepdim=True)

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` the spectrum is computed at for an ``(H, W)`` image (long side ``size``)."""
        if self.size is None:
            return height, width
        scale = self.size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def forward(self, images: Tensor) -> Tensor:
        """Compute saliency maps.

        Args:
            images: ``(B, C, H, W)`` floating-point images.

        Returns:
            ``(B, 1, H, W)`` float32 saliency in ``[0, 1]``, on ``images.device``.

        Raises:
            TypeError: for a non-tensor or an integer (e.g. uint8) tensor.
            ValueError: for a tensor that is not ``(B, C, H, W)`` or has no channel or pixel, or
                for NaN / inf values (value checks).
        """
        images = check_images(images)
        check_image_extent(images)
        check_finite(images, "images", "replace or drop them first (e.g. torch.nan_to_num(images))")
        height, width = images.shape[-2:]
        gray = self._gray(images)
        h, w = self.working_size(height, width)
        if (h, w) != (height, width):
            mode = "area" if h <= height and w <= width else "bilinear"
            kwargs = {} if mode == "area" else {"align_corners": False}
            gray = F.interpolate(gray, size=(h, w), mode=mode, **kwargs)
        # flat at the working size (a constant image, or detail finer than it): no saliency
        flat = gray.flatten(1)
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)  # 6x faster than aminmax on CPU
        not_constant = (hi - lo > 1e-6).view(-1, 1, 1, 1)

        spectrum = torch.fft.fft2(gray)
        amplitude = spectrum.abs()
        log_amp = torch.log((amplitude + self.eps * amplitude.mean(dim=(-2, -1), keepdim=True)).clamp(min=1e-30))
        k = self.avg_kernel
        if k > 1:
            padded = F.pad(log_amp, (k // 2, k // 2, k // 2, k // 2), mode="replicate")
            residual = log_amp - F.avg_pool2d(padded, kernel_size=k, stride=1)
        else:
            residual = torch.zeros_like(log_amp)
        # keep the phase, replace the amplitude: spectrum / |spectrum| * exp(residual) (a zero
        # coefficient has no phase and stays zero)
        gain = torch.exp(residual) / amplitude.clamp(min=1e-30)
        saliency = torch.fft.ifft2(spectrum * gain).abs().square()

        sigma = 2.5 * max(h, w) / 64 if self.sigma is None else float(self.sigma)
        saliency = gaussian_blur(saliency, sigma)  # reflect border, as kornia's gaussian_blur2d
        if (h, w) != (height, width):
            saliency = F.interpolate(saliency, size=(height, width), mode="bilinear", align_corners=False)
        saliency = normalize_saliency(saliency)
        return zero_nonfinite_maps(torch.where(not_constant, saliency, torch.zeros_like(saliency)))


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
