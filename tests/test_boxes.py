"""salaug.boxes against brute-force references (loops are fine here) and hypothesis properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salaug.boxes import (
    box_area,
    box_around,
    box_mask,
    box_mass,
    box_size,
    boxes_to_corners,
    cells_mask,
    grid_cells,
    integral_image,
    least_salient_box,
    peak,
    row_prefix,
    top_k_cells,
)

FAST = settings(max_examples=25, deadline=None)


def ref_mask(box, h, w):
    x1, y1, x2, y2 = box
    m = torch.zeros(h, w, dtype=torch.bool)
    for y in range(h):
        for x in range(w):
            m[y, x] = x1 <= x < x2 and y1 <= y < y2
    return m


def ref_mass(s, box):
    """Brute-force mass of one (H, W) map in one box; all-zero maps are uniform."""
    h, w = s.shape
    x1, y1, x2, y2 = box
    total = float(s.double().sum())
    if total == 0:
        return max(x2 - x1, 0) * max(y2 - y1, 0) / (h * w)
    return float(s[y1:y2, x1:x2].double().sum()) / total


def random_box(g, h, w, allow_empty=True):
    x1 = int(torch.randint(0, w + 1, (1,), generator=g))
    y1 = int(torch.randint(0, h + 1, (1,), generator=g))
    x2 = int(torch.randint(x1 if allow_empty else min(x1 + 1, w), w + 1, (1,), generator=g))
    y2 = int(torch.randint(y1 if allow_empty else min(y1 + 1, h), h + 1, (1,), generator=g))
    return [x1, y1, x2, y2]


# -- box_area / box_mask / boxes_to_corners -----------------------------------------------------------------
def test_box_area_matches_loops():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([random_box(g, 7, 9) for _ in range(50)])
    ref = [float(ref_mask(b.tolist(), 7, 9).sum()) for b in boxes]
    assert box_area(boxes).tolist() == ref
    assert box_area(boxes.view(5, 10, 4)).shape == (5, 10)
    assert box_area(torch.tensor([[3, 3, 1, 1]])).tolist() == [0.0]  # inverted box: no area


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 3)])
def test_box_mask_matches_loops(size):
    h, w = size
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([random_box(g, h, w) for _ in range(20)] + [[0, 0, w, h], [w - 1, h - 1, w, h]])
    m = box_mask(boxes, size)
    assert m.shape == (len(boxes), 1, h, w) and m.dtype == torch.bool
    for i, b in enumerate(boxes.tolist()):
        assert torch.equal(m[i, 0], ref_mask(b, h, w)), b


def test_boxes_to_corners_inclusive_and_crop_exact():
    crop_and_resize = pytest.importorskip("kornia.geometry.transform").crop_and_resize  # the test extra's reference

    g = torch.Generator().manual_seed(2)
    boxes = torch.tensor([random_box(g, 10, 12, allow_empty=False) for _ in range(8)])
    c = boxes_to_corners(boxes)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        assert c[i].tolist() == [[x1, y1], [x2 - 1, y1], [x2 - 1, y2 - 1], [x1, y2 - 1]]
    # a crop at the box's own size reproduces the pixels exactly (corners are inclusive)
    x = torch.arange(2 * 10 * 12, dtype=torch.float32).view(2, 1, 10, 12)
    box = torch.tensor([[2, 3, 7, 9], [0, 0, 12, 10]])
    for i, (x1, y1, x2, y2) in enumerate(box.tolist()):
        out = crop_and_resize(x[i:i + 1], boxes_to_corners(box[i:i + 1]), (y2 - y1, x2 - x1), align_corners=True)
        torch.testing.assert_close(out[0], x[i, :, y1:y2, x1:x2], atol=1e-3, rtol=0)


# -- integral_image / box_mass -------------------------------------------------------------------------------
def test_integral_image_matches_loops():
    s = torch.rand(3, 1, 5, 6, generator=torch.Generator().manual_seed(3))
    t = integral_image(s)
    assert t.shape == (3, 6, 7) and t.dtype == torch.float64
    for b in range(3):
        for y in range(6):
            for x in range(7):
                assert math.isclose(float(t[b, y, x]), float(s[b, 0, :y, :x].double().sum()), abs_tol=1e-9)


@pytest.mark.parametrize("size", [(6, 6), (7, 11), (1, 5)])
def test_box_mass_matches_loops(size):
    h, w = size
    g = torch.Generator().manual_seed(4)
    s = torch.rand(3, 1, h, w, generator=g) ** 4
    s[1] = 0.0  # all-zero map: uniform
    s[2] = 0.0
    s[2, 0, 0, w - 1] = 1.0  # single pixel at a corner
    boxes = torch.tensor([[random_box(g, h, w) for _ in range(12)] + [[0, 0, w, h]] for _ in range(3)])
    got = box_mass(s, boxes)
    assert got.shape == (3, 13) and got.dtype == torch.float32
    for b in range(3):
        for n in range(13):
            assert math.isclose(float(got[b, n]), ref_mass(s[b, 0], boxes[b, n].tolist()), abs_tol=1e-6)
    assert torch.allclose(got[:, -1], torch.ones(3))  # the full box has all the mass
    # (B, 4) boxes give (B,); a precomputed table gives the same
    flat = box_mass(s, boxes[:, 0], prefix=row_prefix(s))
    assert torch.allclose(flat, got[:, 0])


@FAST
@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 10_000), zero=st.booleans())
def test_box_mass_property(h, w, seed, zero):
    g = torch.Generator().manual_seed(seed)
    s = torch.zeros(2, 1, h, w) if zero else torch.rand(2, 1, h, w, generator=g)
    boxes = torch.tensor([[random_box(g, h, w) for _ in range(4)] for _ in range(2)])
    m = box_mass(s, boxes)
    assert torch.isfinite(m).all() and (m >= 0).all() and (m <= 1).all()
    for b in range(2):
        for n in range(4):
            assert math.isclose(float(m[b, n]), ref_mass(s[b, 0], boxes[b, n].tolist()), abs_tol=1e-5)


# -- peak ------------------------------------------------------------------------------------------------------
def test_peak_matches_loops_and_fallback():
    g = torch.Generator().manual_seed(5)
    s = torch.rand(4, 1, 5, 7, generator=g)
    s[2] = 0.3  # flat -> centre
    s[3] = 0.0
    fb = torch.tensor([[1, 1], [1, 1], [6, 4], [0, 2]])
    got = peak(s)
    got_fb = peak(s, fallback=fb)
    for b in range(2):
        best = max((float(s[b, 0, y, x]), -(y * 7 + x), x, y) for y in range(5) for x in range(7))
        assert got[b].tolist() == [best[2], best[3]]
        assert got_fb[b].tolist() == [best[2], best[3]]
    assert got[2:].tolist() == [[3, 2], [3, 2]]
    assert got_fb[2:].tolist() == [[6, 4], [0, 2]]
    # first maximum in row-major order wins a tie
    t = torch.zeros(1, 1, 3, 3)
    t[0, 0, 2, 0] = t[0, 0, 1, 2] = 1.0
    assert peak(t).tolist() == [[2, 1]]


# -- box_size / box_around -------------------------------------------------------------------------------------
@FAST
@given(h=st.integers(1, 64), w=st.integers(1, 64), area=st.floats(0.0, 1.0), log_r=st.floats(-1.5, 1.5))
def test_box_size_property(h, w, area, log_r):
    r = math.exp(log_r)
    bw, bh = box_size(torch.tensor([area]), (h, w), torch.tensor([r]))[0].tolist()
    assert 1 <= bw <= w and 1 <= bh <= h
    assert bw == min(max(round(w * math.sqrt(area * r)), 1), w) or abs(bw - w * math.sqrt(area * r)) <= 0.5 + 1e-3
    assert bh == min(max(round(h * math.sqrt(area / r)), 1), h) or abs(bh - h * math.sqrt(area / r)) <= 0.5 + 1e-3
    if r == 1.0 or log_r == 0.0:
        # image-shaped boxes: the realised area is within rounding of the asked area
        assert abs(bw * bh / (h * w) - area) <= (bw + bh + 1) / min(h, w) ** 2 + (1 / h + 1 / w) + 1e-6 or bw in (1, w)


@FAST
@given(h=st.integers(1, 30), w=st.integers(1, 30), data=st.data())
def test_box_around_property(h, w, data):
    bw = data.draw(st.integers(1, w))
    bh = data.draw(st.integers(1, h))
    cx = data.draw(st.integers(0, w - 1))
    cy = data.draw(st.integers(0, h - 1))
    box = box_around(torch.tensor([[cx, cy]]), torch.tensor([[bw, bh]]), (h, w))[0].tolist()
    x1, y1, x2, y2 = box
    assert (x2 - x1, y2 - y1) == (bw, bh)  # exact size
    assert 0 <= x1 and 0 <= y1 and x2 <= w and y2 <= h  # inside
    assert x1 <= cx < x2 and y1 <= cy < y2  # contains the centre
    # not shifted more than needed: centred when it fits
    if cx - bw // 2 >= 0 and cx - bw // 2 + bw <= w:
        assert x1 == cx - bw // 2


# -- grid_cells / top_k_cells / cells_mask -----------------------------------------------------------------------
@FAST
@given(h=st.integers(1, 20), w=st.integers(1, 20), gh=st.integers(1, 6), gw=st.integers(1, 6))
def test_grid_cells_tile_exactly(h, w, gh, gw):
    if gh > h or gw > w:
        return
    cells = grid_cells((h, w), (gh, gw))
    assert cells.shape == (gh * gw, 4)
    cover = torch.zeros(h, w, dtype=torch.long)
    for i, (x1, y1, x2, y2) in enumerate(cells.tolist()):
        assert x2 > x1 and y2 > y1
        assert (x1, y1) == (((i % gw) * w) // gw, ((i // gw) * h) // gh)  # row-major, floor edges
        cover[y1:y2, x1:x2] += 1
    assert (cover == 1).all()


def ref_top_k(s, grid, k, tie=None):
    h, w = s.shape
    cells = grid_cells((h, w), grid).tolist()
    mass = [ref_mass(s, c) + (1e-4 * float(tie[i]) if tie is not None else 0.0) for i, c in enumerate(cells)]
    order = sorted(range(len(cells)), key=lambda i: (-mass[i], i))
    return set(order[:k]), mass


@pytest.mark.parametrize("size,grid", [((8, 8), (2, 2)), ((7, 10), (3, 4)), ((5, 5), (5, 5))])
def test_top_k_cells_matches_loops(size, grid):
    g = torch.Generator().manual_seed(6)
    s = torch.rand(3, 1, *size, generator=g) ** 3
    n = grid[0] * grid[1]
    for k in (1, n // 2 or 1, n):
        sel = top_k_cells(s, grid, k)
        assert sel.shape == (3, n) and (sel.sum(1) == k).all()
        for b in range(3):
            ref, mass = ref_top_k(s[b, 0], grid, k)
            got = set(torch.nonzero(sel[b]).flatten().tolist())
            # equal-mass cells may swap; compare the selected masses
            assert sorted(mass[i] for i in got) == pytest.approx(sorted(mass[i] for i in ref), abs=1e-6)


def test_top_k_cells_tie_break_random_on_flat_maps():
    s = torch.zeros(64, 1, 8, 8)
    tie = torch.rand(64, 16, generator=torch.Generator().manual_seed(7))
    sel = top_k_cells(s, (4, 4), 2, tie_break=tie)
    for b in range(64):
        assert set(torch.nonzero(sel[b]).flatten().tolist()) == set(tie[b].topk(2).indices.tolist())
    assert len({tuple(r) for r in sel.int().tolist()}) > 10  # not the same cells for every sample


def test_top_k_cells_first_cells_win_without_tie_break():
    s = torch.zeros(1, 1, 8, 8)
    assert torch.nonzero(top_k_cells(s, (4, 4), 2)[0]).flatten().tolist() == [0, 1]


@FAST
@given(h=st.integers(1, 16), w=st.integers(1, 16), gh=st.integers(1, 5), gw=st.integers(1, 5), seed=st.integers(0, 999))
def test_cells_mask_matches_grid_cells(h, w, gh, gw, seed):
    if gh > h or gw > w:
        return
    sel = torch.rand(2, gh * gw, generator=torch.Generator().manual_seed(seed)) < 0.5
    m = cells_mask(sel, (gh, gw), (h, w))
    assert m.shape == (2, 1, h, w)
    cells = grid_cells((h, w), (gh, gw))
    for b in range(2):
        ref = torch.zeros(h, w, dtype=torch.bool)
        for i, c in enumerate(cells.tolist()):
            if sel[b, i]:
                ref |= ref_mask(c, h, w)
        assert torch.equal(m[b, 0], ref)


# -- least_salient_box -----------------------------------------------------------------------------------------
def ref_least(s, bw, bh):
    h, w = s.shape
    return min(ref_mass(s, [x, y, x + bw, y + bh]) for y in range(h - bh + 1) for x in range(w - bw + 1))


@pytest.mark.parametrize("size", [(6, 6), (5, 9), (9, 4)])
def test_least_salient_box_matches_loops(size):
    h, w = size
    g = torch.Generator().manual_seed(8)
    s = torch.rand(4, 1, h, w, generator=g) ** 3
    sizes = torch.tensor([[1, 1], [w, h], [max(w // 2, 1), max(h // 3, 1)], [w, 1]])
    boxes = least_salient_box(s, sizes)
    for b in range(4):
        x1, y1, x2, y2 = boxes[b].tolist()
        assert (x2 - x1, y2 - y1) == tuple(sizes[b].tolist())
        assert 0 <= x1 and 0 <= y1 and x2 <= w and y2 <= h
        assert ref_mass(s[b, 0], [x1, y1, x2, y2]) == pytest.approx(ref_least(s[b, 0], *sizes[b].tolist()), abs=1e-6)


def test_least_salient_box_border_and_flat_maps():
    s = torch.ones(2, 1, 8, 8)
    s[0, 0, 5:, 6:] = 0.0  # empty corner at the bottom-right border
    boxes = least_salient_box(s, torch.tensor([[2, 3], [3, 3]]))
    assert boxes[0].tolist() == [6, 5, 8, 8]
    # a flat map: top-left without tie-break, random positions with one
    flat = torch.zeros(32, 1, 8, 8)
    sizes = torch.full((32, 2), 3)
    assert (least_salient_box(flat, sizes)[:, :2] == 0).all()
    tie = torch.rand(32, 8, 8, generator=torch.Generator().manual_seed(9))
    rb = least_salient_box(flat, sizes, tie_break=tie)
    assert (rb[:, 2:] <= 8).all() and len({tuple(b) for b in rb.tolist()}) > 5


@FAST
@given(h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 9999), data=st.data())
def test_least_salient_box_property(h, w, seed, data):
    bw = data.draw(st.integers(1, w))
    bh = data.draw(st.integers(1, h))
    s = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(seed)).round()  # many ties and zeros
    box = least_salient_box(s, torch.tensor([[bw, bh]]))[0].tolist()
    assert box[2] <= w and box[3] <= h
    assert ref_mass(s[0, 0], box) == pytest.approx(ref_least(s[0, 0], bw, bh), abs=1e-6)
