"""The CPU paths of SnapMix, ResizeMix (box by box from 48² pixels) and SalientCrop (box by box from
192² output pixels), at one and two threads, against a per-sample float64 ``F.interpolate`` reference
(values and gradients) and against the accelerators' path run on CPU; the size thresholds; SalientPaste's
gradients against the same reference; SalientCrop's full-box samples; the grid built without a ``cat``.

Tolerances: the pasted pixels are a bilinear resize of the source box, in float32 (``F.interpolate``
box by box, or ``grid_sample`` from normalised coordinates, where a sample moves by up to ~1e-5 of a
pixel), so on values in ``[0, 1]`` the float32 result is within ``2e-5`` of the float64 reference;
float16 / bfloat16 images are resampled in float32 and rounded once to their dtype (half an ulp at 1:
``2**-11`` / ``2**-8``). Pixels that receive no paste must be bit-exact copies.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import salaug.transforms._ops as ops
from salaug.transforms import ResizeMix, SalientCrop, SalientPaste, SnapMix, mix
from salaug.transforms._ops import grid_axis, separable_grid
from salaug.transforms.crop import crop_resize

ATOL = {torch.float32: 2e-5, torch.float64: 2e-5, torch.float16: 2.0 ** -11 + 2e-5, torch.bfloat16: 2.0 ** -8 + 2e-5}


def use_the_full_image_path(monkeypatch) -> None:
    """Make SnapMix / ResizeMix take the accelerators' path (every pixel resampled, then masked) on CPU."""
    from salaug.transforms import mix

    monkeypatch.setattr(mix._ResizedBoxMix, "pixel_plan", lambda self, params, size: mix._snap_plan(
        params["src_boxes"], params["dst_boxes"], params["applied"], size, self.active_interpolation))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_paste(x: torch.Tensor, params: dict[str, torch.Tensor], mode: str = "bilinear") -> torch.Tensor:
    """Each applied target's ``dst`` box filled with its partner's ``src`` box resized by ``F.interpolate``
    (``align_corners=False``, float64; nearest: the centre-aligned nearest pixel), one sample at a time."""
    out = x.double().clone()
    for i in range(x.shape[0]):
        x1, y1, x2, y2 = params["dst_boxes"][i].tolist()
        if not bool(params["applied"][i]) or x2 <= x1 or y2 <= y1:
            continue
        j = int(params["perm"][i])
        a1, b1, a2, b2 = params["src_boxes"][i].tolist()
        crop = x[j:j + 1, :, b1:b2, a1:a2].double()  # (a differentiable reference: out is a clone)
        if mode == "nearest":
            out[i, :, y1:y2, x1:x2] = F.interpolate(crop, size=(y2 - y1, x2 - x1), mode="nearest-exact")[0]
        else:
            out[i, :, y1:y2, x1:x2] = F.interpolate(crop, size=(y2 - y1, x2 - x1), mode="bilinear",
                                                    align_corners=False)[0]
    return out


def pasted_mask(params: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, H, W)`` bool, the pixels of the applied destination boxes."""
    h, w = size
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    x1, y1, x2, y2 = (v.view(-1, 1, 1) for v in params["dst_boxes"].unbind(1))
    return ((ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2) & params["applied"].view(-1, 1, 1))[:, None]


def edge_params(b: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Hand-made boxes: borders, whole image, 1-pixel destination and source boxes, empty, not applied."""
    h, w = size
    dst = [[0, 0, w, h], [w - 5, h - 4, w, h], [3, 2, 4, 3], [0, h - 1, w, h], [2, 2, 2, 6], [0, 0, 1, h],
           [1, 1, w - 1, h - 1], [w - 1, 0, w, 1]]
    src = [[0, 0, w, h], [0, 0, 1, 1], [1, 1, w, h], [w - 3, 0, w, h], [0, 0, 4, 4], [w - 1, h - 1, w, h],
           [0, 0, 2, 3], [4, 5, 9, 7]]
    dst, src = torch.tensor(dst[:b]), torch.tensor(src[:b])
    applied = torch.ones(b, dtype=torch.bool)
    applied[-1] = False
    return {"applied": applied, "perm": torch.roll(torch.arange(b), 1), "src_boxes": src, "dst_boxes": dst,
            "weights": torch.tensor([[0.5, 0.5]] * b)}


@pytest.fixture(params=[1, 2])
def cpu_path(request, monkeypatch):
    """The CPU paste of SnapMix / ResizeMix (box by box, at any image size here) with one and with two
    threads."""
    monkeypatch.setattr(mix, "_BOX_PASTE_PIXELS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- SnapMix and ResizeMix ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [(17, 23), (12, 12), (9, 30)])
@pytest.mark.parametrize("cls", [SnapMix, ResizeMix])
def test_resized_box_mixes_equal_a_per_sample_interpolate(cpu_path, cls, size, dtype):
    x = torch.rand(14, 3, *size, generator=gen(1)).to(dtype)
    s = torch.rand(14, 1, *size, generator=gen(2))
    t = cls(num_classes=14, p=0.8, generator=gen(3))
    out, params = t(x, s, torch.arange(14), return_params=True)
    assert 0 < int(params["applied"].sum()) < 14
    plan = t.pixel_plan(params, size)
    assert isinstance(plan, mix._BoxPlan)
    assert out.images.dtype == dtype and out.images.is_contiguous()
    ref = reference_paste(x, params)
    torch.testing.assert_close(out.images.double(), ref, atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(out.saliency.double(), reference_paste(s, params), atol=2e-5, rtol=0)
    keep = ~pasted_mask(params, size).expand_as(x)
    assert torch.equal(out.images[keep], x[keep])  # what is not pasted is copied bit for bit
    assert float(out.saliency.min()) >= 0 and float(out.saliency.max()) <= 1



@pytest.mark.parametrize("cls", [SnapMix, ResizeMix])
def test_small_cpu_images_are_pasted_in_one_pass_larger_ones_box_by_box(cls):
    for side, plan_type in ((32, mix._SnapPlan), (47, mix._SnapPlan), (48, mix._BoxPlan), (64, mix._BoxPlan)):
        x = torch.rand(6, 3, side, side, generator=gen(40))
        t = cls(num_classes=6, p=1.0, generator=gen(41))
        out, params = t(x, None, torch.arange(6), return_params=True)
        assert isinstance(t.pixel_plan(params, (side, side)), plan_type), side
        torch.testing.assert_close(out.images.double(), reference_paste(x, params), atol=2e-5, rtol=0)

@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(11, 13), (10, 16)])
def test_snapmix_edge_boxes_equal_the_reference(monkeypatch, cpu_path, size, interpolation):
    # boxes on every border, the whole image, 1-pixel destination and source boxes, an empty box and a
    # sample not applied; channels-last input

    x = torch.rand(8, 3, *size, generator=gen(4)).to(memory_format=torch.channels_last)
    s = torch.rand(8, 1, *size, generator=gen(5))
    params = edge_params(8, size)
    out = SnapMix(num_classes=8)(x, s, torch.arange(8), params=params, interpolation=interpolation)
    if interpolation == "bilinear":
        torch.testing.assert_close(out.images.double(), reference_paste(x, params), atol=2e-5, rtol=0)
    assert torch.equal(out.images[4], x[4]) and torch.equal(out.images[7], x[7])  # empty box, not applied
    keep = ~pasted_mask(params, size).expand_as(x)
    assert torch.equal(out.images[keep], x[keep])
    none = SnapMix(num_classes=8)(x, s, torch.arange(8), params={**params, "applied": torch.zeros(8, dtype=torch.bool)})
    assert torch.equal(none.images, x)
    use_the_full_image_path(monkeypatch)
    full = SnapMix(num_classes=8)(x, s, torch.arange(8), params=params, interpolation=interpolation)
    torch.testing.assert_close(out.images, full.images, atol=0 if interpolation == "nearest" else 2e-5, rtol=0)


def test_nearest_paste_takes_input_pixels_and_the_full_image_path_agrees(monkeypatch, cpu_path):

    x = torch.rand(10, 2, 15, 19, generator=gen(6))
    s = torch.rand(10, 1, 15, 19, generator=gen(7))
    t = SnapMix(num_classes=10, p=0.9, alpha=1.0, generator=gen(8))
    region, params = t(x, s, torch.arange(10), return_params=True, interpolation="nearest")
    use_the_full_image_path(monkeypatch)
    full = t(x, s, torch.arange(10), params=params, interpolation="nearest")
    assert torch.equal(region.images, full.images) and torch.equal(region.saliency, full.saliency)
    masks = torch.randint(0, 5, (10, 1, 15, 19), generator=gen(9))
    moved = t(masks, s, torch.arange(10), params=params)
    assert moved.images.dtype == torch.int64 and set(moved.images.unique().tolist()) <= set(range(5))


@pytest.mark.parametrize("cls", [SnapMix, ResizeMix])
def test_gradients_equal_the_full_image_path(monkeypatch, cpu_path, cls):
    # a patch larger than its box repeats the box's last row / column: the repeats must not pass
    # their gradient a second time

    x = torch.rand(9, 2, 13, 17, generator=gen(13))
    s = torch.rand(9, 1, 13, 17, generator=gen(14))
    weight = torch.randn(9, 2, 13, 17, generator=gen(15))
    _, params = cls(num_classes=9, p=0.8, generator=gen(16))(x, s, torch.arange(9), return_params=True)
    grads = []
    for full in (False, True):
        if full:
            use_the_full_image_path(monkeypatch)
        xin = x.clone().requires_grad_(True)
        out = cls(num_classes=9)(xin, s, torch.arange(9), params=params)
        (out.images * weight).sum().backward()
        grads.append(xin.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("labels", ["area", "saliency"])
@pytest.mark.parametrize("cls", [SnapMix, ResizeMix])
def test_labels_follow_the_pasted_area(cls, labels):
    # constant images 0, 1, ..., B - 1: the pixels showing the partner's value are the pasted area
    b, h, w = 12, 16, 20
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()
    s = torch.ones(b, 1, h, w)  # flat: saliency labels fall back to the area share
    out, params = cls(num_classes=b, p=0.75, labels=labels, generator=gen(17))(x, s, torch.arange(b),
                                                                             return_params=True)
    shows = (out.images[:, 0] - params["perm"].view(b, 1, 1).float()).abs() < 1e-4
    own = (out.images[:, 0] - torch.arange(b).view(b, 1, 1).float()).abs() < 1e-4
    area = shows.flatten(1).float().mean(1)
    moved = params["perm"] != torch.arange(b)
    partner_share = out.labels.gather(1, params["perm"][:, None])[:, 0]
    torch.testing.assert_close(partner_share[moved], area[moved], atol=1e-6, rtol=0)
    assert bool((shows | own).all())
    torch.testing.assert_close(out.labels.sum(1), torch.ones(b))


@pytest.mark.parametrize("cls", [SnapMix, ResizeMix])
def test_gradients_equal_the_per_sample_interpolate(cpu_path, cls):
    x = torch.rand(9, 2, 14, 15, generator=gen(30))
    s = torch.rand(9, 1, 14, 15, generator=gen(31))
    weight = torch.randn(9, 2, 14, 15, generator=gen(32), dtype=torch.float64)
    t = cls(num_classes=9, p=0.8, generator=gen(33))
    _, params = t(x, s, torch.arange(9), return_params=True)
    xin, xref = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    (t(xin, s, torch.arange(9), params=params).images * weight).sum().backward()
    (reference_paste(xref, params) * weight).sum().backward()
    torch.testing.assert_close(xin.grad.double(), xref.grad, atol=1e-4, rtol=0)


# -- SalientPaste ------------------------------------------------------------------------------------
def test_salient_paste_gradients_equal_the_per_sample_interpolate():
    # its paste (paste_plan at the largest possible box) repeats each box's last row / column up to
    # the patch size: the repeats pass no gradient, so a pasted pixel passes its gradient once
    x = torch.rand(8, 2, 16, 16, generator=gen(21))
    s = torch.rand(8, 1, 16, 16, generator=gen(22))
    weight = torch.randn(8, 2, 16, 16, generator=gen(23), dtype=torch.float64)
    t = SalientPaste(num_classes=8, p=0.8, scale=(0.05, 0.5), generator=gen(24))
    _, params = t(x, s, torch.arange(8), return_params=True)
    xin, xref = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    out = t(xin, s, torch.arange(8), params=params)
    torch.testing.assert_close(out.images.detach().double(), reference_paste(x, params), atol=2e-5, rtol=0)
    (out.images * weight).sum().backward()
    (reference_paste(xref, params) * weight).sum().backward()
    torch.testing.assert_close(xin.grad.double(), xref.grad, atol=1e-4, rtol=0)


# -- SalientCrop and the grid ------------------------------------------------------------------------
@pytest.mark.parametrize("grad", [False, True])
def test_crop_keeps_full_box_samples_bit_exact(grad):
    x = torch.rand(6, 3, 14, 18, generator=gen(25))
    s = torch.rand(6, 1, 14, 18, generator=gen(26))
    t = SalientCrop(num_classes=2, p=1.0, keep=0.3, generator=gen(27))
    _, params = t(x, s, torch.zeros(6, dtype=torch.long), return_params=True)
    boxes = params["boxes"].clone()
    boxes[1] = torch.tensor([0, 0, 18, 14])
    boxes[4] = torch.tensor([0, 0, 18, 14])
    boxes[2] = torch.tensor([2, 3, 10, 9])
    xin = x.clone().requires_grad_(grad)
    out = t(xin, s, torch.zeros(6, dtype=torch.long), params={**params, "boxes": boxes})
    for i in (1, 4):
        assert torch.equal(out.images[i].detach(), x[i]) and torch.equal(out.saliency[i], s[i])
    ys = torch.linspace(3, 8, 14, dtype=torch.float64)
    xs = torch.linspace(2, 9, 18, dtype=torch.float64)
    ref = F.grid_sample(x[2:3].double(), torch.stack(torch.meshgrid((2 * xs + 1) / 18 - 1, (2 * ys + 1) / 14 - 1,
                                                                    indexing="xy"), -1)[None],
                        mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.images[2:3].detach().double(), ref, atol=2e-5, rtol=0)
    if grad:
        out.images.sum().backward()
        assert torch.equal(xin.grad[1], torch.ones_like(x[1]))  # a kept sample passes its gradient as is
    none = t(x, s, torch.zeros(6, dtype=torch.long), params={**params, "boxes": torch.tensor([[0, 0, 18, 14]] * 6)})
    assert torch.equal(none.images, x)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, size", [((13, 17), None), ((12, 12), (7, 9)), ((9, 20), (16, 16))])
def test_crop_on_cpu_equals_the_grid_path(monkeypatch, shape, size, dtype):
    # the CPU crop (one F.interpolate per box, here at any size) against the accelerators'
    # grid_sample of crop_grid, values and gradients; a 1-pixel box and a whole-image box included
    from salaug.transforms import crop
    from salaug.transforms.crop import crop_grid

    monkeypatch.setattr(crop, "_CROP_BY_BOX_PIXELS", 0)
    calls = []
    monkeypatch.setattr(crop, "crop_resize", lambda *a: calls.append(1) or crop_resize(*a))

    x = torch.rand(8, 3, *shape, generator=gen(30)).to(dtype)
    s = torch.rand(8, 1, *shape, generator=gen(31))
    out_size = size or shape
    weight = torch.randn(8, 3, *out_size, generator=gen(32))
    t = SalientCrop(num_classes=2, p=0.9, keep=0.2, size=size, generator=gen(33))
    _, params = t(x, s, torch.zeros(8, dtype=torch.long), return_params=True)
    calls.clear()
    boxes = params["boxes"].clone()
    boxes[0] = torch.tensor([4, 5, 5, 6])  # one pixel
    boxes[1] = torch.tensor([0, 0, shape[1], shape[0]])
    grad = dtype in (torch.float32, torch.float64)
    xin, xref = x.clone().requires_grad_(grad), x.clone().requires_grad_(grad)
    out = t(xin, s, torch.zeros(8, dtype=torch.long), params={**params, "boxes": boxes})
    grid = crop_grid(boxes, out_size, shape)
    ref = ops.warp(xref, grid).to(dtype)
    torch.testing.assert_close(out.images.detach().double(), ref.detach().double(), atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(out.saliency, ops.warp(s, grid).clamp(0, 1), atol=2e-5, rtol=0)
    assert calls == [1, 1]  # images and saliency, box by box
    if size is None:
        assert torch.equal(out.images[1].detach(), x[1])  # a whole-image box is copied bit for bit
    if grad:
        (out.images * weight).sum().backward()
        (ref * weight).sum().backward()
        torch.testing.assert_close(xin.grad, xref.grad, atol=1e-4, rtol=0)

def test_separable_grid_equals_the_concatenated_axes():
    uy = torch.rand(5, 7, generator=gen(28)) * 12
    ux = torch.rand(5, 9, generator=gen(29)) * 20
    grid = separable_grid(uy, ux, (13, 21), torch.float32)
    gx = grid_axis(ux, 21)[:, None, :, None].expand(5, 7, 9, 1)
    gy = grid_axis(uy, 13)[:, :, None, None].expand(5, 7, 9, 1)
    assert grid.shape == (5, 7, 9, 2) and torch.equal(grid, torch.cat((gx, gy), -1))


def test_crop_takes_the_box_path_on_cpu_from_192_squared_pixels(monkeypatch):
    from salaug.transforms import crop

    calls = []
    monkeypatch.setattr(crop, "crop_resize", lambda *a: calls.append(a[2]) or crop_resize(*a))
    t = SalientCrop(num_classes=2, p=1.0, generator=gen(50))
    for side in (64, 191, 192):
        x, s = torch.rand(2, 3, side, side, generator=gen(51)), torch.rand(2, 1, side, side, generator=gen(52))
        t(x, s, torch.zeros(2, dtype=torch.long))
    assert calls == [(192, 192), (192, 192)]
