"""The grid_sample resampling of SalientCrop, SalientPaste and SnapMix against the code it replaced.

SalientCrop used kornia's ``crop_and_resize`` (a perspective warp), SalientPaste four flat gathers
and three lerps at patch size, SnapMix a full-size ``grid_sample`` of a permuted copy of the batch
with a grid built by ``torch.stack``. Those references are kept here (kornia's is imported) and the
new paths must give the same pixels on the same params:

* nearest SalientPaste: bit-identical (the same flat gather);
* bilinear: within ``ATOL = 2e-5`` on values in ``[0, 1]`` (``grid_sample`` gets normalised
  coordinates, whose float32 round trip moves a sample by up to ~1e-5 of a pixel at these sizes);
* SalientCrop against kornia: within ``KORNIA_ATOL = 1e-4`` (kornia solves a homography per box in
  float32, the larger error of the two).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from salaug.boxes import boxes_to_corners
from salaug.transforms._ops import (
    axis_pixels,
    flat_index,
    gather,
    inverse,
    paste_plan,
    paste_resampled,
    patch_index,
)
from salaug.transforms.crop import SalientCrop, crop_grid
from salaug.transforms.mix import SnapMix
from salaug.transforms.paste import SalientPaste

ATOL = 2e-5
KORNIA_ATOL = 1e-4


def use_the_full_image_path(monkeypatch) -> None:
    """Make SnapMix / ResizeMix take the accelerators' path (every pixel resampled, then masked) on CPU."""
    from salaug.transforms import mix

    monkeypatch.setattr(mix._ResizedBoxMix, "pixel_plan", lambda self, params, size: mix._snap_plan(
        params["src_boxes"], params["dst_boxes"], params["applied"], size, self.active_interpolation))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_boxes(b: int, size: tuple[int, int], g: torch.Generator, min_side: int = 1) -> torch.Tensor:
    h, w = size
    bw = torch.randint(min_side, w + 1, (b,), generator=g)
    bh = torch.randint(min_side, h + 1, (b,), generator=g)
    x1 = (torch.rand(b, generator=g) * (w - bw + 1)).long()
    y1 = (torch.rand(b, generator=g) * (h - bh + 1)).long()
    return torch.stack((x1, y1, x1 + bw, y1 + bh), 1)


# -- the replaced implementations (references) ----------------------------------------------------
def old_resample(x, uy, ux, mode):
    """Four flat gathers and three lerps at patch size (SalientPaste before)."""
    h, w = x.shape[-2:]
    if mode == "nearest":
        return gather(x, flat_index(uy.round().long(), ux.round().long(), w))
    r0, c0 = uy.floor(), ux.floor()
    wy, wx = uy - r0, ux - c0
    r0, c0 = r0.long(), c0.long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    wx = wx[:, None, :].expand(-1, uy.shape[1], -1).flatten(1)[:, None, :].to(x.dtype)
    wy = wy[:, :, None].expand(-1, -1, ux.shape[1]).flatten(1)[:, None, :].to(x.dtype)
    top = torch.lerp(gather(x, flat_index(r0, c0, w)), gather(x, flat_index(r0, c1, w)), wx)
    bottom = torch.lerp(gather(x, flat_index(r1, c0, w)), gather(x, flat_index(r1, c1, w)), wx)
    return torch.lerp(top, bottom, wy)


def old_paste(x, src, dst, perm, patch, mode):
    """SalientPaste's old image-mode paste: resample in the partners' order, reorder, scatter."""
    h, w = x.shape[-2:]
    rows, cols, ri, ci = patch_index(dst, patch, (h, w))
    uy = axis_pixels(dst[:, 1], dst[:, 3], src[:, 1], src[:, 3], ri)
    ux = axis_pixels(dst[:, 0], dst[:, 2], src[:, 0], src[:, 2], ci)
    inv = inverse(perm)
    values = old_resample(x, uy[inv], ux[inv], mode)[perm]
    idx = flat_index(rows, cols, w)
    out = x.clone()
    b, c = x.shape[:2]
    out.view(b, c, -1).scatter_(2, idx.expand(b, c, -1), values)
    empty = (dst[:, 2] <= dst[:, 0]) | (dst[:, 3] <= dst[:, 1])
    pix = idx[:, :, :1].expand(b, c, 1)
    first = torch.where(empty[:, None, None], x.reshape(b, c, -1).gather(2, pix), out.view(b, c, -1).gather(2, pix))
    out.view(b, c, -1).scatter_(2, pix, first)
    return out


def old_snap_grid(dst, src, size):
    """SnapMix's old full-size grid (torch.stack of expanded axes)."""
    h, w = size
    dst, src = dst.float(), src.float()

    def axis(n, d1, d2, s1, s2):
        pix = torch.arange(n, dtype=torch.float32)
        scale = ((s2 - s1) / (d2 - d1))[:, None]
        coord = (pix[None, :] + 0.5 - d1[:, None]) * scale + s1[:, None] - 0.5
        coord = torch.minimum(torch.maximum(coord, s1[:, None]), (s2 - 1)[:, None])
        return (2 * coord + 1) / n - 1

    gx = axis(w, dst[:, 0], dst[:, 2], src[:, 0], src[:, 2])
    gy = axis(h, dst[:, 1], dst[:, 3], src[:, 1], src[:, 3])
    b = dst.shape[0]
    return torch.stack((gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)), -1)


def old_snapmix(x, params):
    dst, src, perm, applied = params["dst_boxes"], params["src_boxes"], params["perm"], params["applied"]
    h, w = x.shape[-2:]
    warped = F.grid_sample(x[perm], old_snap_grid(dst, src, (h, w)), mode="bilinear", padding_mode="border",
                           align_corners=False)
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    x1, y1, x2, y2 = (v.view(-1, 1, 1) for v in dst.unbind(1))
    mask = ((ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2) & applied.view(-1, 1, 1))[:, None]
    return torch.where(mask, warped, x)


# -- SalientCrop ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,out", [((24, 24), (24, 24)), ((30, 40), (12, 16)), ((17, 23), (31, 9))])
def test_crop_equals_kornia_crop_and_resize(size, out):
    crop_and_resize = pytest.importorskip("kornia.geometry.transform").crop_and_resize  # the test extra's reference

    g = gen(1)
    x = torch.rand(16, 3, *size, generator=g)
    s = torch.rand(16, 1, *size, generator=g)
    boxes = random_boxes(16, size, g, min_side=2)  # kornia's homography is NaN for 1-pixel sides
    params = {"applied": torch.ones(16, dtype=torch.bool), "boxes": boxes}
    got = SalientCrop(size=out, num_classes=2)(x, s, torch.zeros(16, dtype=torch.long), params=params)
    corners = boxes_to_corners(boxes)
    torch.testing.assert_close(got.images, crop_and_resize(x, corners, out, align_corners=True),
                               atol=KORNIA_ATOL, rtol=0)
    torch.testing.assert_close(got.saliency, crop_and_resize(s, corners, out, align_corners=True).clamp(0, 1),
                               atol=KORNIA_ATOL, rtol=0)


def test_crop_corner_pixels_are_the_box_corners_and_degenerate_sides_are_finite():
    x = torch.rand(3, 2, 10, 12, generator=gen(2))
    boxes = torch.tensor([[2, 3, 9, 8], [4, 4, 5, 5], [0, 0, 12, 10]])  # ordinary, 1 pixel, whole image
    params = {"applied": torch.ones(3, dtype=torch.bool), "boxes": boxes}
    t = SalientCrop(size=(5, 6), num_classes=2)
    out = t(x, x[:, :1], torch.zeros(3, dtype=torch.long), params=params).images
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        for r, c, rr, cc in ((0, 0, y1, x1), (0, -1, y1, x2 - 1), (-1, 0, y2 - 1, x1), (-1, -1, y2 - 1, x2 - 1)):
            torch.testing.assert_close(out[i, :, r, c], x[i, :, rr, cc], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, 4:5, 4:5].expand(-1, 5, 6), atol=ATOL, rtol=0)
    # a single output pixel is the box centre (kornia: NaN)
    one = SalientCrop(size=1, num_classes=2)(x, x[:, :1], torch.zeros(3, dtype=torch.long), params=params).images
    assert torch.isfinite(one).all()
    torch.testing.assert_close(one[0, :, 0, 0], x[0, :, 5, 5], atol=ATOL, rtol=0)  # centre of rows 3..7, cols 2..8


def test_crop_grid_maps_output_corners_to_box_corners():
    g = crop_grid(torch.tensor([[1, 2, 5, 9]]), (3, 4), (10, 8))
    px = ((g[..., 0] + 1) * 8 - 1) / 2
    py = ((g[..., 1] + 1) * 10 - 1) / 2
    torch.testing.assert_close(px[0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(py[0, :, 0], torch.tensor([2.0, 5.0, 8.0]), atol=1e-5, rtol=0)


# -- SalientPaste -----------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(24, 24), (40, 56)])
def test_paste_equals_the_old_gather_resampler(interpolation, size):
    x = torch.rand(16, 3, *size, generator=gen(3))
    s = torch.rand(16, 1, *size, generator=gen(4)) ** 3
    t = SalientPaste(interpolation=interpolation, p=0.8, num_classes=2, generator=gen(5))
    out, params = t(x, s, torch.zeros(16, dtype=torch.long), return_params=True)
    assert not params["applied"].all() and params["applied"].any()
    patch = t._patch_size(*size)
    for got, full in ((out.images, x), (out.saliency, s)):
        want = old_paste(full, params["src_boxes"], params["dst_boxes"], params["perm"], patch, interpolation)
        if interpolation == "nearest":
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want.clamp(0, 1) if full is s else want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("background", ["reflect", "constant"])
def test_padded_canvas_equals_the_old_gather_resampler(background):
    h, w = 20, 28
    x = torch.rand(8, 3, h, w, generator=gen(6))
    t = SalientPaste(background=background, fill=0.5, num_classes=2, generator=gen(7))
    out, params = t(x, torch.rand(8, 1, h, w, generator=gen(8)), torch.zeros(8, dtype=torch.long),
                    return_params=True)
    target = params["target_boxes"]
    xs, ys = torch.arange(w)[None, :].expand(8, w), torch.arange(h)[None, :].expand(8, h)
    ux = (xs - target[:, :1]).float().add(0.5).mul(w / (target[:, 2] - target[:, 0]).float()[:, None]).sub(0.5)
    uy = (ys - target[:, 1:2]).float().add(0.5).mul(h / (target[:, 3] - target[:, 1]).float()[:, None]).sub(0.5)
    if background == "reflect":
        def reflect(u, n):
            u = torch.remainder(u, 2 * (n - 1))
            return torch.where(u > n - 1, 2 * (n - 1) - u, u)
        ux, uy = reflect(ux, w), reflect(uy, h)
    else:
        ux, uy = ux.clamp(0, w - 1), uy.clamp(0, h - 1)
    canvas = old_resample(x, uy, ux, "bilinear").view(x.shape)
    if background == "constant":
        inside = ((xs >= target[:, :1]) & (xs < target[:, 2:3]))[:, None, :] & \
                 ((ys >= target[:, 1:2]) & (ys < target[:, 3:4]))[:, :, None]
        canvas = canvas.masked_fill(~inside[:, None], 0.5)
    # outside the pasted strip the output is the canvas
    strip = params["dst_boxes"]
    for i in range(8):
        keep = torch.ones(h, w, dtype=torch.bool)
        x1, y1, x2, y2 = strip[i].tolist()
        keep[y1:y2, x1:x2] = False
        torch.testing.assert_close(out.images[i][:, keep], canvas[i][:, keep], atol=ATOL, rtol=0)


def test_paste_resampled_is_interpolate_of_the_crop_and_empty_boxes_paste_nothing():
    x = torch.rand(4, 3, 16, 20, generator=gen(9))
    src = torch.tensor([[2, 3, 9, 8], [0, 0, 20, 16], [5, 5, 6, 6], [1, 1, 4, 4]])
    dst = torch.tensor([[4, 2, 15, 14], [3, 3, 10, 9], [0, 0, 3, 2], [0, 0, 0, 0]])  # the last is empty
    perm = torch.tensor([1, 2, 3, 0])
    out = paste_resampled(x, paste_plan(src, dst, perm, (16, 20), (16, 20)))
    for i in range(3):
        j = int(perm[i])
        (a1, b1, a2, b2), (x1, y1, x2, y2) = src[i].tolist(), dst[i].tolist()
        want = F.interpolate(x[j:j + 1, :, b1:b2, a1:a2], size=(y2 - y1, x2 - x1), mode="bilinear",
                             align_corners=False)[0]
        torch.testing.assert_close(out[i, :, y1:y2, x1:x2], want, atol=ATOL, rtol=0)
    assert torch.equal(out[3], x[3])


# -- SnapMix ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(20, 28), (33, 17)])
def test_snapmix_equals_the_old_full_size_warp(size):
    x = torch.rand(12, 3, *size, generator=gen(10))
    s = torch.rand(12, 1, *size, generator=gen(11))
    t = SnapMix(alpha=1.0, p=0.7, num_classes=12, generator=gen(12))
    out, params = t(x, s, torch.arange(12), return_params=True)
    assert not params["applied"].all() and params["applied"].any()
    torch.testing.assert_close(out.images, old_snapmix(x, params), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.saliency, old_snapmix(s, params).clamp(0, 1), atol=ATOL, rtol=0)


# -- SnapMix on CPU: only the pasted region is resampled ------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_snapmix_region_path_equals_the_full_image_path(monkeypatch, interpolation, dtype):
    # the CPU path (box by box) against the accelerators' path (every pixel of every sample
    # resampled, then masked), both run here on CPU
    from salaug.transforms import mix

    x = torch.randn(9, 3, 20, 24, generator=gen(13)).to(dtype)
    s = torch.rand(9, 1, 20, 24, generator=gen(14))
    t = SnapMix(alpha=1.0, p=0.6, num_classes=9, generator=gen(15))
    monkeypatch.setattr(mix, "_BOX_PASTE_PIXELS", 0)  # box by box at this size too
    region, params = t(x, s, torch.arange(9), return_params=True, interpolation=interpolation)
    assert isinstance(t.pixel_plan(params, (20, 24)), mix._BoxPlan)
    assert 0 < int(params["applied"].sum()) < 9
    use_the_full_image_path(monkeypatch)
    full = t(x, s, torch.arange(9), params=params, interpolation=interpolation)
    # float64 is resized in float64 on CPU, through a float32 grid on the full-image path
    tol = {torch.float16: 1e-3, torch.float32: 1e-5, torch.float64: 1e-5}[dtype]
    torch.testing.assert_close(region.images, full.images, atol=tol, rtol=0)
    torch.testing.assert_close(region.saliency, full.saliency, atol=1e-5, rtol=0)
    assert torch.equal(region.labels, full.labels)
    not_applied = ~params["applied"]
    assert torch.equal(region.images[not_applied], x[not_applied])  # untouched samples are copied exactly


def test_snapmix_small_corner_box_keeps_the_target_outside_it():
    # a small box in the bottom-right corner next to larger ones: the pixels outside it stay the target's
    x = torch.rand(3, 2, 10, 12, generator=gen(18))
    s = torch.rand(3, 1, 10, 12, generator=gen(19))
    params = {"applied": torch.tensor([True, True, True]), "perm": torch.tensor([1, 2, 0]),
              "src_boxes": torch.tensor([[1, 1, 10, 8], [0, 0, 4, 3], [5, 2, 12, 10]]),
              "dst_boxes": torch.tensor([[2, 1, 11, 8], [9, 8, 12, 10], [0, 6, 2, 10]]),
              "weights": torch.tensor([[0.5, 0.5]] * 3)}
    for grad in (False, True):
        xin = x.clone().requires_grad_(grad)
        out = SnapMix(num_classes=3)(xin, s, torch.arange(3), params=params)
        torch.testing.assert_close(out.images.detach(), old_snapmix(x, params), atol=ATOL, rtol=0)
        outside = torch.ones(10, 12, dtype=torch.bool)
        outside[8:10, 9:12] = False
        assert torch.equal(out.images[1].detach()[:, outside], x[1][:, outside])


def test_snapmix_region_path_edge_cases_and_gradients():
    x = torch.rand(4, 2, 10, 12, generator=gen(16), requires_grad=True)
    s = torch.rand(4, 1, 10, 12, generator=gen(17))
    params = {"applied": torch.tensor([True, True, False, True]), "perm": torch.tensor([1, 2, 3, 0]),
              "src_boxes": torch.tensor([[0, 0, 12, 10], [2, 3, 5, 4], [0, 0, 1, 1], [3, 3, 3, 7]]),
              "dst_boxes": torch.tensor([[0, 0, 12, 10], [4, 4, 9, 9], [0, 0, 4, 4], [5, 5, 5, 8]]),
              "weights": torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])}
    out = SnapMix(num_classes=4)(x, s, torch.arange(4), params=params)
    torch.testing.assert_close(out.images, old_snapmix(x.detach(), params), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.images[0], x[1], atol=1e-6, rtol=0)  # a whole-image box: the partner
    assert torch.equal(out.images[3], x[3])  # an empty destination box pastes nothing
    out.images.sum().backward()
    assert x.grad is not None and bool((x.grad > 0).any())
    nothing = {**params, "applied": torch.zeros(4, dtype=torch.bool)}
    assert torch.equal(SnapMix(num_classes=4)(x.detach(), s, torch.arange(4), params=nothing).images, x.detach())


def test_paste_search_chunks_give_the_one_chunk_boxes(monkeypatch):
    x = torch.rand(9, 3, 64, 64, generator=gen(16))
    s = torch.rand(9, 1, 64, 64, generator=gen(17)) ** 4
    _, one = SalientPaste(source="mass", num_classes=2, generator=gen(18))(x, s, torch.zeros(9, dtype=torch.long),
                                                                          return_params=True)
    import salaug.transforms._ops as ops

    assert ops.serial_step(s, 33 * 33) == 30 and ops.serial_step(s.to("meta"), 33 * 33) == 9
    monkeypatch.setattr(ops, "PARALLEL_GRAIN", 2 * 33 * 33 + 1)  # 2 maps a chunk
    assert ops.serial_step(s, 33 * 33) == 2
    _, many = SalientPaste(source="mass", num_classes=2, generator=gen(18))(x, s, torch.zeros(9, dtype=torch.long),
                                                                           return_params=True)
    assert all(torch.equal(one[k], many[k]) for k in one)


def test_crop_scores_in_chunks_give_the_one_chunk_boxes(monkeypatch):
    import salaug.transforms._ops as ops

    x = torch.rand(9, 3, 24, 24, generator=gen(19))
    s = torch.rand(9, 1, 24, 24, generator=gen(20)) ** 4
    monkeypatch.setattr(ops, "PARALLEL_GRAIN", 1 << 40)  # one chunk
    one, p1 = SalientCrop(keep=0.5, num_classes=2, generator=gen(21))(x, s, torch.zeros(9, dtype=torch.long),
                                                                     return_params=True)
    monkeypatch.setattr(ops, "PARALLEL_GRAIN", 2 * 24 * 16 + 1)  # 2 samples a chunk
    many, p2 = SalientCrop(keep=0.5, num_classes=2, generator=gen(21))(x, s, torch.zeros(9, dtype=torch.long),
                                                                      return_params=True)
    assert all(torch.equal(p1[k], p2[k]) for k in p1) and torch.equal(one.images, many.images)


@pytest.mark.parametrize("size, sigma", [((16, 24), 1.0), ((31, 9), 2.5), ((8, 8), 0.7)])
def test_gaussian_blur_equals_kornia_gaussian_blur2d(size, sigma):
    import math

    from salaug._filters import gaussian_blur

    filters = pytest.importorskip("kornia.filters")  # the test extra's reference
    maps = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(0))
    k = 2 * math.ceil(3 * sigma) + 1
    if k // 2 >= min(size):  # kornia's reflect padding needs the image to be larger than the radius
        pytest.skip("kernel larger than the image")
    expected = filters.gaussian_blur2d(maps, (k, k), (sigma, sigma), border_type="reflect")
    torch.testing.assert_close(gaussian_blur(maps, sigma), expected, atol=1e-5, rtol=1e-5)
