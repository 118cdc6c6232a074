"""Behaviour of SalientCrop, KeepCutout and SalientPaste on hand-made saliency."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from salaug.boxes import box_mass, integral_image
from salaug.transforms._ops import rrc_boxes
from salaug.transforms.crop import SalientCrop
from salaug.transforms.erase import KeepCutout
from salaug.transforms.paste import SalientPaste


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def blob(b, size, box, value=1.0):
    """Saliency of zeros with ``value`` inside the half-open ``box`` (x1, y1, x2, y2)."""
    s = torch.zeros(b, 1, *size)
    x1, y1, x2, y2 = box
    s[:, :, y1:y2, x1:x2] = value
    return s


def ref_mass(s, box):
    x1, y1, x2, y2 = [int(v) for v in box]
    total = float(s.double().sum())
    return float(s[..., y1:y2, x1:x2].double().sum()) / total if total > 0 else (x2 - x1) * (y2 - y1) / s[0].numel()


# -- shared helpers ----------------------------------------------------------------------------------------------
def _sat_mass(s, boxes):
    """Box mass from a float64 summed-area table: an independent reference."""
    t = integral_image(s)
    b = torch.arange(s.shape[0])[:, None]
    x1, y1, x2, y2 = boxes.unbind(-1)
    sums = t[b, y2, x2] - t[b, y1, x2] - t[b, y2, x1] + t[b, y1, x1]
    total = t[:, -1, -1][:, None]
    area = ((x2 - x1) * (y2 - y1)).double() / s[0, 0].numel()
    return torch.where(total > 0, sums / total.clamp(min=1e-300), area).float()


def test_rrc_boxes_inside_and_box_mass_agrees_with_summed_area_table():
    g = gen(1)
    s = torch.rand(4, 1, 23, 31, generator=g) ** 3
    s[1] = 0.0
    boxes = rrc_boxes(4, 20, (23, 31), (0.01, 1.0), (0.2, 5.0), torch.device("cpu"), g)
    assert (boxes[..., 2] <= 31).all() and (boxes[..., 3] <= 23).all() and (boxes[..., :2] >= 0).all()
    assert ((boxes[..., 2:] - boxes[..., :2]) >= 1).all()
    torch.testing.assert_close(box_mass(s, boxes), _sat_mass(s, boxes), atol=1e-5, rtol=0)


def test_sample_boxes_follow_scale_and_ratio():
    boxes = rrc_boxes(64, 32, (100, 100), (0.1, 0.3), (0.5, 2.0), torch.device("cpu"), gen(2))
    wh = (boxes[..., 2:] - boxes[..., :2]).float()
    area = wh[..., 0] * wh[..., 1] / 1e4
    r = wh[..., 0] / wh[..., 1]
    assert area.min() > 0.09 and area.max() < 0.31
    assert r.min() > 0.45 and r.max() < 2.2
    assert area.std() > 0.04 and r.log().std() > 0.2  # actually spread over the ranges


# -- SalientCrop ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.8, 0.95])
def test_salient_crop_keeps_the_blob(keep):
    box = (20, 6, 30, 14)
    s = blob(64, (32, 40), box)
    x = s.expand(-1, 3, -1, -1).clone()
    t = SalientCrop(keep=keep, scale=(0.05, 0.6), num_classes=4, generator=gen(3))
    out, params = t(x, s, torch.arange(64) % 4, return_params=True)
    boxes = params["boxes"]
    for b in range(64):
        assert ref_mass(s[b], boxes[b]) >= keep - 1e-6
        assert params["mass"][b] == pytest.approx(ref_mass(s[b], boxes[b]), abs=1e-5)
    full = (boxes == torch.tensor([0, 0, 40, 32])).all(1)
    assert (~full).sum() > 32  # mostly real crops, not the fallback
    assert len({tuple(b) for b in boxes.tolist()}) > 20  # per-sample boxes
    # images and saliency cropped alike; labels unchanged
    torch.testing.assert_close(out.images[:, :1], out.saliency, atol=1e-6, rtol=0)
    assert torch.equal(out.labels, F.one_hot(torch.arange(64) % 4, 4).float())


def test_salient_crop_output_is_the_resized_box():
    crop_and_resize = pytest.importorskip("kornia.geometry.transform").crop_and_resize  # the test extra's reference
    from salaug.boxes import boxes_to_corners

    x = torch.rand(8, 3, 24, 24, generator=gen(4))
    s = torch.rand(8, 1, 24, 24, generator=gen(5))
    t = SalientCrop(size=(12, 16), keep=0.3, num_classes=2, generator=gen(6))
    out, params = t(x, s, torch.zeros(8, dtype=torch.long), return_params=True)
    assert out.images.shape == (8, 3, 12, 16) and out.saliency.shape == (8, 1, 12, 16)
    ref = crop_and_resize(x, boxes_to_corners(params["boxes"]), (12, 16), align_corners=True)
    torch.testing.assert_close(out.images, ref)
    # a box of exactly the output size is a plain slice
    x1, y1 = 3, 5
    p2 = {"applied": torch.ones(8, dtype=torch.bool), "boxes": torch.tensor([[x1, y1, x1 + 16, y1 + 12]]).repeat(8, 1)}
    out2 = t(x, s, torch.zeros(8, dtype=torch.long), params=p2)
    torch.testing.assert_close(out2.images, x[:, :, y1:y1 + 12, x1:x1 + 16], atol=1e-5, rtol=0)


def test_salient_crop_fallback_is_the_full_image():
    s = torch.zeros(4, 1, 30, 30)
    s[:, :, 0, 0] = 1.0
    s[:, :, 29, 29] = 1.0  # mass in opposite corners: no small box keeps 90 %
    x = torch.rand(4, 3, 30, 30, generator=gen(7))
    out, params = SalientCrop(keep=0.9, scale=(0.05, 0.2), num_classes=2, generator=gen(8))(
        x, s, torch.zeros(4, dtype=torch.long), return_params=True)
    assert params["boxes"].tolist() == [[0, 0, 30, 30]] * 4
    assert torch.equal(out.images, x) and torch.equal(out.saliency, s)


# -- KeepCutout ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.02, 0.1, 0.3])
def test_keep_cutout_removes_less_than_threshold(threshold):
    s = blob(64, (32, 32), (8, 8, 20, 20))
    s += 0.05 * torch.rand(64, 1, 32, 32, generator=gen(9))  # some mass everywhere
    s = s.clamp(0, 1)
    x = torch.rand(64, 3, 32, 32, generator=gen(10)) + 1.0  # never 0
    out, params = KeepCutout(threshold=threshold, value=0.0, num_classes=3, generator=gen(11))(
        x, s, torch.zeros(64, dtype=torch.long), return_params=True)
    boxes = params["boxes"]
    erased = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    assert erased.sum() > 40
    for b in range(64):
        x1, y1, x2, y2 = boxes[b].tolist()
        if erased[b]:
            assert ref_mass(s[b], boxes[b]) < threshold
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert (out.images[b][:, inside] == 0).all() and torch.equal(out.images[b][:, ~inside], x[b][:, ~inside])
        assert (out.saliency[b, 0][inside] == 0).all() and torch.equal(out.saliency[b, 0][~inside], s[b, 0][~inside])
        # the saliency that remains is at least 1 - threshold of the original
        assert float(out.saliency[b].sum() / s[b].sum()) > 1 - threshold
    assert torch.equal(out.labels, F.one_hot(torch.zeros(64, dtype=torch.long), 3).float())


def test_keep_cutout_no_candidate_means_no_erase():
    s = torch.ones(8, 1, 16, 16)  # every box holds at least its area
    x = torch.rand(8, 3, 16, 16, generator=gen(12))
    out, params = KeepCutout(scale=(0.2, 0.25), threshold=0.1, num_classes=2, generator=gen(13))(
        x, s, torch.zeros(8, dtype=torch.long), return_params=True)
    assert (params["boxes"] == 0).all() and torch.equal(out.images, x) and torch.equal(out.saliency, s)


def test_keep_cutout_random_fill_is_replayable_noise():
    s = blob(16, (24, 24), (0, 0, 8, 8))
    x = torch.full((16, 2, 24, 24), 7.0)
    t = KeepCutout(threshold=0.05, value="random", num_classes=2, generator=gen(14))
    out, params = t(x, s, torch.zeros(16, dtype=torch.long), return_params=True)
    noise = params["noise"]
    for b in range(16):
        x1, y1, x2, y2 = params["boxes"][b].tolist()
        region = out.images[b, :, y1:y2, x1:x2]
        assert torch.equal(region, noise[b, :, : y2 - y1, : x2 - x1])
        rest = out.images[b].clone()
        rest[:, y1:y2, x1:x2] = 7.0
        assert (rest == 7.0).all()
    again = t(x, s, torch.zeros(16, dtype=torch.long), params=params)
    assert torch.equal(again.images, out.images)


# -- SalientPaste ------------------------------------------------------------------------------------------------------
def zeros_ones(b, size):
    """Even samples all zeros (class 0), odd samples all ones (class 1)."""
    x = torch.zeros(b, 3, *size)
    x[1::2] = 1.0
    return x, torch.arange(b) % 2


@pytest.mark.parametrize("background", ["image", "reflect", "constant"])
@pytest.mark.parametrize("size", [(32, 32), (40, 56), (70, 50)])
def test_salient_paste_area_labels_are_visible_fractions(background, size):
    x, y = zeros_ones(32, size)
    s = torch.rand(32, 1, *size, generator=gen(15))
    t = SalientPaste(p=1.0, background=background, fill=-1.0, num_classes=2, generator=gen(16))
    out, params = t(x, s, y, return_params=True)
    ones = (out.images - 1).abs().lt(1e-4).float().mean((1, 2, 3))
    zeros = out.images.abs().lt(1e-4).float().mean((1, 2, 3))
    fill = (out.images + 1).abs().lt(1e-4).float().mean((1, 2, 3))
    assert torch.allclose(ones + zeros + fill, torch.ones(32))  # nothing blended across images
    if background != "constant":
        assert (fill == 0).all()
    # the label's class-1 weight is the share of the visible image pixels that are ones
    torch.testing.assert_close(out.labels[:, 1], ones / (ones + zeros), atol=1e-5, rtol=0)
    assert ((out.labels[:, 1] > 0) & (out.labels[:, 1] < 1)).sum() > 8  # real mixes happened


def test_salient_paste_lands_on_least_salient_region():
    size = (28, 28)
    s = torch.ones(16, 1, *size)
    # each target has a different empty rectangle, big enough for any pasted box
    g = gen(17)
    holes = []
    for b in range(16):
        x1, y1 = int(torch.randint(0, 10, (1,), generator=g)), int(torch.randint(0, 10, (1,), generator=g))
        s[b, :, y1:y1 + 18, x1:x1 + 18] = 0.0
        holes.append((x1, y1))
    x = torch.rand(16, 3, *size, generator=g)
    _, params = SalientPaste(p=1.0, scale=(0.1, 0.4), num_classes=2, generator=gen(18))(
        x, s, torch.zeros(16, dtype=torch.long), return_params=True)
    for b, (hx, hy) in enumerate(holes):
        x1, y1, x2, y2 = params["dst_boxes"][b].tolist()
        assert hx <= x1 and hy <= y1 and x2 <= hx + 18 and y2 <= hy + 18


@pytest.mark.parametrize("size", [(64, 64), (100, 75)])
def test_salient_paste_least_salient_on_pooled_search(size):
    # larger images are searched on a pooled map; an empty region is still found
    h, w = size
    s = torch.ones(8, 1, h, w)
    s[:, :, h // 2:, : w // 2] = 0.0  # bottom-left quarter empty
    x = torch.rand(8, 3, h, w, generator=gen(19))
    _, params = SalientPaste(p=1.0, scale=(0.05, 0.12), num_classes=2, generator=gen(20))(
        x, s, torch.zeros(8, dtype=torch.long), return_params=True)
    for b in range(8):
        assert ref_mass(s[b], params["dst_boxes"][b]) == 0.0


def test_salient_paste_pastes_the_partner_source_box():
    x = torch.rand(12, 3, 30, 30, generator=gen(21))
    s = torch.rand(12, 1, 30, 30, generator=gen(22))
    for interpolation in ("bilinear", "nearest"):
        t = SalientPaste(p=1.0, zoom=(1.0, 1.0), interpolation=interpolation, num_classes=2, generator=gen(23))
        out, params = t(x, s, torch.zeros(12, dtype=torch.long), return_params=True)
        perm = params["perm"]
        assert sorted(perm.tolist()) == list(range(12))
        for i in range(12):
            sx1, sy1, sx2, sy2 = params["src_boxes"][i].tolist()
            dx1, dy1, dx2, dy2 = params["dst_boxes"][i].tolist()
            assert (sx2 - sx1, sy2 - sy1) == (dx2 - dx1, dy2 - dy1)  # zoom 1: same size
            torch.testing.assert_close(out.images[i, :, dy1:dy2, dx1:dx2], x[perm[i], :, sy1:sy2, sx1:sx2],
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(out.saliency[i, :, dy1:dy2, dx1:dx2], s[perm[i], :, sy1:sy2, sx1:sx2],
                                       atol=1e-5, rtol=0)
            rest = torch.ones(30, 30, dtype=torch.bool)
            rest[dy1:dy2, dx1:dx2] = False
            assert torch.equal(out.images[i][:, rest], x[i][:, rest])


def test_salient_paste_source_box_holds_partner_peak_or_mass():
    s = torch.zeros(16, 1, 24, 24)
    g = gen(24)
    peaks = torch.randint(0, 24, (16, 2), generator=g)
    for b, (px, py) in enumerate(peaks.tolist()):
        s[b, 0, py, px] = 1.0
        s[b, 0, max(py - 2, 0):py + 3, max(px - 2, 0):px + 3] += 0.5
    s = s.clamp(0, 1)
    x = torch.rand(16, 3, 24, 24, generator=g)
    _, params = SalientPaste(p=1.0, num_classes=2, generator=gen(25))(x, s, torch.zeros(16, dtype=torch.long),
                                                               return_params=True)
    for i, j in enumerate(params["perm"].tolist()):
        x1, y1, x2, y2 = params["src_boxes"][i].tolist()
        assert x1 <= peaks[j, 0] < x2 and y1 <= peaks[j, 1] < y2
    _, params = SalientPaste(p=1.0, source="mass", num_classes=2, generator=gen(26))(
        x, s, torch.zeros(16, dtype=torch.long), return_params=True)
    for i, j in enumerate(params["perm"].tolist()):
        x1, y1, x2, y2 = params["src_boxes"][i].tolist()
        bw, bh = x2 - x1, y2 - y1
        best = max(ref_mass(s[j], (a, c, a + bw, c + bh)) for c in range(24 - bh + 1) for a in range(24 - bw + 1))
        assert ref_mass(s[j], (x1, y1, x2, y2)) == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("background", ["constant", "reflect"])
def test_salient_paste_padded_canvas_geometry(background):
    h, w = 36, 48
    x = torch.rand(32, 3, h, w, generator=gen(27))
    s = torch.rand(32, 1, h, w, generator=gen(28))
    t = SalientPaste(p=1.0, background=background, fill=5.0, num_classes=2, generator=gen(29))
    out, params = t(x, s, torch.zeros(32, dtype=torch.long), return_params=True)
    sides = set()
    for i in range(32):
        sx1, sy1, sx2, sy2 = params["dst_boxes"][i].tolist()
        tx1, ty1, tx2, ty2 = params["target_boxes"][i].tolist()
        # the strip runs along a whole side of the canvas
        along_top_or_bottom = (sy1, sy2) == (0, h) and sx1 in (0, w - sx2 + sx1)
        along_left_or_right = (sx1, sx2) == (0, w) and sy1 in (0, h - sy2 + sy1)
        assert along_top_or_bottom or along_left_or_right
        sides.add((sx1 == 0 and sx2 < w, sx2 == w and sx1 > 0, sy1 == 0 and sy2 < h, sy2 == h and sy1 > 0))
        # the shrunk target fills the rest of the canvas along the strip's axis and keeps its shape
        assert tx2 <= w and ty2 <= h and tx1 >= 0 and ty1 >= 0
        disjoint = tx2 <= sx1 or sx2 <= tx1 or ty2 <= sy1 or sy2 <= ty1
        assert disjoint
        assert abs((tx2 - tx1) / w - (ty2 - ty1) / h) <= 1.0 / min(h, w) + 1e-6
        # the target's content is the target, downscaled
        ref = F.interpolate(x[i:i + 1], size=(ty2 - ty1, tx2 - tx1), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out.images[i:i + 1, :, ty1:ty2, tx1:tx2], ref, atol=1e-4, rtol=0)
        pad = torch.ones(h, w, dtype=torch.bool)
        pad[ty1:ty2, tx1:tx2] = False
        pad[sy1:sy2, sx1:sx2] = False
        if background == "constant":
            assert (out.images[i][:, pad] == 5.0).all() and (out.saliency[i][:, pad] == 0).all()
        else:
            assert (out.images[i][:, pad] != 5.0).all()
    assert len(sides) == 4  # all four sides are used


def test_salient_paste_mass_rule():
    x = torch.rand(16, 3, 24, 24, generator=gen(30))
    s = torch.rand(16, 1, 24, 24, generator=gen(31)) ** 4
    for background in ("image", "constant"):
        t = SalientPaste(p=1.0, labels="saliency", background=background, num_classes=16, generator=gen(32))
        out, params = t(x, s, torch.arange(16), return_params=True)
        for i, j in enumerate(params["perm"].tolist()):
            m_p = ref_mass(s[j], params["src_boxes"][i])
            m_t = 1.0 - ref_mass(s[i], params["dst_boxes"][i]) if background == "image" else 1.0
            want = m_p / (m_p + m_t) if i != j else 0.0
            assert float(out.labels[i, j]) == pytest.approx(want, abs=1e-5)


def test_salient_paste_flat_maps_get_random_positions():
    x = torch.rand(32, 3, 40, 40, generator=gen(33))
    for s in (torch.zeros(32, 1, 40, 40), torch.full((32, 1, 40, 40), 0.5)):
        _, params = SalientPaste(p=1.0, scale=(0.1, 0.1), num_classes=2, generator=gen(34))(
            x, s, torch.zeros(32, dtype=torch.long), return_params=True)
        assert len({tuple(b) for b in params["dst_boxes"][:, :2].tolist()}) > 10
