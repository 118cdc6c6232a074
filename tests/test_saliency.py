"""SpectralResidual against an independent per-image numpy implementation of Hou & Zhang (2007)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from salaug.saliency import SpectralResidual


# ----------------------------------------------------------------- independent numpy reference
def _np_box_replicate(a: np.ndarray, k: int) -> np.ndarray:
    p = k // 2
    padded = np.pad(a, p, mode="edge")
    out = np.zeros_like(a)
    for dy in range(k):
        for dx in range(k):
            out += padded[dy : dy + a.shape[0], dx : dx + a.shape[1]]
    return out / (k * k)


def _np_gauss_reflect(a: np.ndarray, sigma: float) -> np.ndarray:
    r = math.ceil(3 * sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    padded = np.pad(a, r, mode="reflect")  # mirror without repeating the edge
    rows = sum(g[i] * padded[i : i + a.shape[0], :] for i in range(2 * r + 1))
    return sum(g[i] * rows[:, i : i + a.shape[1]] for i in range(2 * r + 1))


def _np_upsample_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    def weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = weights(a.shape[0], out_h)
    x0, x1, fx = weights(a.shape[1], out_w)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def _np_spectral_residual(image: np.ndarray, size: int, k: int, sigma: float, eps: float = 1e-3) -> np.ndarray:
    """The paper's recipe for one (C, H, W) image whose side is an integer multiple of ``size``."""
    gray = image.astype(np.float64).mean(axis=0)
    h, w = gray.shape
    f = h // size
    small = gray.reshape(h // f, f, w // f, f).mean(axis=(1, 3))  # area downsampling
    spectrum = np.fft.fft2(small)
    amplitude = np.abs(spectrum)
    log_amp = np.log(amplitude + eps * amplitude.mean())
    residual = log_amp - _np_box_replicate(log_amp, k)
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = _np_gauss_reflect(sal, sigma)
    if f > 1:
        sal = _np_upsample_bilinear(sal, h, w)
    return (sal - sal.min()) / (sal.max() - sal.min())


def _textured_batch(b: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random backgrounds with a few blobs: natural-ish images with structure."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.1 * torch.rand(b, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(3):
        c = torch.rand(b, 2, generator=g) * size
        r = 2 + torch.rand(b, generator=g) * size / 8
        blob = ((xx - c[:, :1, None]) ** 2 + (yy - c[:, 1:, None]) ** 2 < r[:, None, None] ** 2).float()
        img = img + blob.unsqueeze(1) * torch.rand(b, 3, 1, 1, generator=g)
    return img.clamp(0, 1.5)


@pytest.mark.parametrize(
    ("side", "size", "k", "sigma"),
    [(64, 64, 3, 2.5), (128, 64, 3, 2.0), (96, 32, 5, 1.0)],
)
def test_matches_independent_numpy_reference(side: int, size: int, k: int, sigma: float) -> None:
    images = _textured_batch(4, side, seed=side + k)
    out = SpectralResidual(size=size, avg_kernel=k, sigma=sigma)(images)
    for i in range(images.shape[0]):
        ref = _np_spectral_residual(images[i].numpy(), size, k, sigma)
        corr = np.corrcoef(out[i, 0].numpy().ravel(), ref.ravel())[0, 1]
        assert corr >= 0.99, f"image {i}: correlation {corr:.4f}"
        assert np.abs(out[i, 0].numpy() - ref).max() < 0.05


def test_default_sigma_is_authors_2p5_at_64px() -> None:
    images = _textured_batch(2, 64, seed=3)
    default = SpectralResidual()(images)
    explicit = SpectralResidual(sigma=2.5)(images)
    torch.testing.assert_close(default, explicit)
    assert not torch.allclose(default, SpectralResidual(sigma=1.0)(images))


def test_highlights_odd_patch_on_regular_background() -> None:
    size = 64
    x = torch.arange(size, dtype=torch.float32)
    stripes = 0.5 + 0.25 * torch.sin(2 * math.pi * x / 6)  # a regular vertical grating
    images = stripes.expand(3, 3, size, size).clone()
    patches = [(10, 40), (44, 12), (30, 30)]  # (row, col) of a 6x6 patch per image
    for i, (r, c) in enumerate(patches):
        images[i, :, r : r + 6, c : c + 6] = torch.tensor([1.0, 0.2, 0.2]).view(3, 1, 1)
    s = SpectralResidual()(images)
    for i, (r, c) in enumerate(patches):
        peak = int(s[i, 0].flatten().argmax())
        py, px = divmod(peak, size)
        assert r - 3 <= py < r + 9 and c - 3 <= px < c + 9, (i, py, px)
        inside = s[i, 0, r : r + 6, c : c + 6].mean()
        outside = torch.cat([s[i, 0, :, : max(c - 8, 0)].flatten(), s[i, 0, :, c + 14 :].flatten()]).mean()
        assert inside > 4 * outside


def test_shapes_dtype_range_and_non_square() -> None:
    images = torch.rand(3, 4, 40, 100, dtype=torch.float64)
    sr = SpectralResidual(size=50)
    assert sr.working_size(40, 100) == (20, 50)
    s = sr(images)
    assert s.shape == (3, 1, 40, 100)
    assert s.dtype == torch.float32 and s.device == images.device
    assert float(s.min()) == 0.0 and float(s.max()) == 1.0
    small = SpectralResidual(size=64)(torch.rand(2, 1, 16, 24))  # upsampled working size
    assert small.shape == (2, 1, 16, 24) and torch.isfinite(small).all()
    keep = SpectralResidual(size=None)(torch.rand(1, 3, 20, 30))
    assert keep.shape == (1, 1, 20, 30)
    tiny = SpectralResidual(size=None)(torch.rand(1, 3, 2, 50))  # blur radius capped by the side
    assert torch.isfinite(tiny).all()


def test_value_range_does_not_matter() -> None:
    images = _textured_batch(2, 64, seed=5)
    a = SpectralResidual()(images)
    b = SpectralResidual()(images * 255 - 30)  # e.g. unnormalised 8-bit range, shifted
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)


def test_constant_images_give_zero_maps_without_nan() -> None:
    images = torch.rand(3, 3, 32, 32)
    images[1] = 0.7
    images[2] = 0.0
    s = SpectralResidual()(images)
    assert torch.isfinite(s).all()
    assert float(s[1].abs().max()) == 0.0 and float(s[2].abs().max()) == 0.0
    assert float(s[0].max()) == 1.0


def test_grayscale_luma_option() -> None:
    images = torch.rand(2, 3, 32, 32)
    images[:, 1, 8:14, 8:14] = 1.0  # green patch: luma weighs it more than the mean does
    mean = SpectralResidual(grayscale="mean")(images)
    luma = SpectralResidual(grayscale="luma")(images)
    assert mean.shape == luma.shape and not torch.allclose(mean, luma)
    with pytest.raises(ValueError, match="3 channels"):
        SpectralResidual(grayscale="luma")(torch.rand(1, 1, 16, 16))


def test_batch_items_are_independent() -> None:
    images = _textured_batch(4, 48, seed=9)
    batched = SpectralResidual()(images)
    single = torch.cat([SpectralResidual()(images[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        SpectralResidual()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unsqueeze"):
        SpectralResidual()(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        SpectralResidual()(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="odd"):
        SpectralResidual(avg_kernel=4)
    with pytest.raises(ValueError, match="size"):
        SpectralResidual(size=2)
    with pytest.raises(ValueError, match="sigma"):
        SpectralResidual(sigma=-1.0)
    with pytest.raises(ValueError, match="grayscale"):
        SpectralResidual(grayscale="hsv")  # type: ignore[arg-type]


def test_no_parameters_and_works_under_no_grad_and_module_api() -> None:
    sr = SpectralResidual()
    assert list(sr.parameters()) == [] and "size=64" in repr(sr)
    with torch.no_grad():
        s = sr(torch.rand(1, 3, 32, 32))
    assert s.shape == (1, 1, 32, 32)


# ----------------------------------------------------------------- hostile inputs
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"sigma": "1"}, TypeError, "sigma must be a number"),
        ({"sigma": float("nan")}, ValueError, "sigma must be a number >= 0, got"),
        ({"sigma": float("inf")}, ValueError, "sigma must be a number >= 0, got"),
        ({"eps": float("nan")}, ValueError, "eps must be a number > 0, got nan"),
        ({"eps": 0.0}, ValueError, "eps.*> 0"),
        ({"eps": "small"}, TypeError, "eps must be a number"),
        ({"avg_kernel": True}, TypeError, "avg_kernel must be an int >= 1"),
        ({"avg_kernel": 3.0}, TypeError, "avg_kernel must be an int >= 1"),
        ({"size": True}, TypeError, "size must be an int >= 4 or None"),
        ({"size": 64.0}, TypeError, "size must be an int >= 4 or None"),
        ({"grayscale": 3}, ValueError, "grayscale"),
        ({"grayscale": "Luma"}, ValueError, "grayscale"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        SpectralResidual(**kwargs)


def test_numeric_sigma_types_are_accepted() -> None:
    assert SpectralResidual(sigma=2).sigma == 2.0
    with pytest.raises(TypeError, match="sigma must be a number"):  # one rule for every constructor
        SpectralResidual(sigma=torch.tensor(1.5))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_images_raise_or_give_zero_maps(value, no_value_checks) -> None:
    import salaug

    images = _textured_batch(3, 32, seed=2)
    clean = SpectralResidual()(images)
    bad = images.clone()
    bad[1, 0, 5, 5] = value
    out = SpectralResidual()(bad)  # value checks off: the rule of the CAM engine
    assert bool(torch.isfinite(out).all()) and float(out[1].abs().max()) == 0.0
    torch.testing.assert_close(out[[0, 2]], clean[[0, 2]])
    salaug.set_value_checks("cpu")
    with pytest.raises(ValueError, match="images contain 1 NaN or inf.*nan_to_num"):
        SpectralResidual()(bad)


def test_images_without_channels_or_pixels_are_refused() -> None:
    for shape in ((1, 0, 8, 8), (1, 3, 0, 8), (1, 3, 8, 0)):
        with pytest.raises(ValueError, match="pixel"):
            SpectralResidual()(torch.zeros(shape))
    with pytest.raises(ValueError, match="empty batch"):
        SpectralResidual()(torch.zeros(0, 3, 8, 8))


def test_huge_values_and_dtypes_give_the_same_map() -> None:
    images = _textured_batch(2, 48, seed=4)
    ref = SpectralResidual()(images)
    torch.testing.assert_close(SpectralResidual()(images * 1e30), ref, atol=1e-4, rtol=0)  # FFT would overflow
    torch.testing.assert_close(SpectralResidual()(images.double() * 1e300), ref, atol=1e-4, rtol=0)  # cast would
    torch.testing.assert_close(SpectralResidual()(images * 1e-30), ref, atol=1e-4, rtol=0)
    for dtype in (torch.float16, torch.bfloat16):
        out = SpectralResidual()(images.to(dtype))
        assert out.dtype == torch.float32 and float((out - ref).abs().mean()) < 0.05


def test_layouts_tiny_images_and_grad_inputs() -> None:
    images = _textured_batch(2, 32, seed=6)
    ref = SpectralResidual()(images)
    torch.testing.assert_close(SpectralResidual()(images.contiguous(memory_format=torch.channels_last)), ref)
    wide = torch.rand(2, 3, 32, 64)
    wide[..., ::2] = images
    torch.testing.assert_close(SpectralResidual()(wide[..., ::2]), ref)  # non-contiguous
    torch.testing.assert_close(SpectralResidual()(images.clone().requires_grad_(True)).detach(), ref)
    for shape in ((2, 3, 1, 1), (2, 1, 1, 7), (1, 3, 2, 2)):
        out = SpectralResidual()(torch.rand(shape))
        assert out.shape == (shape[0], 1, *shape[2:]) and bool(torch.isfinite(out).all())
        assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert float(SpectralResidual()(torch.rand(2, 3, 1, 1)).abs().max()) == 0.0  # one pixel: nothing salient
