"""The maths of the mixing transforms: labels must describe what the mixed images contain.

References are brute-force per-sample loops written here, independent of the batched code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from salaug.transforms.mix import AttentiveCutMix, GuidedMixup, ResizeMix, SaliencyMix, SnapMix, greedy_pairing

ALL = [SaliencyMix, AttentiveCutMix, SnapMix, GuidedMixup, ResizeMix]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(cls, seed: int = 0, **kw):
    kw.setdefault("p", 1.0)  # the maths tests mix every sample unless they say otherwise
    if cls is AttentiveCutMix:
        kw.setdefault("grid", (4, 4))
        kw.setdefault("k", 5)
    if cls is GuidedMixup:
        kw.setdefault("sigma", 1.0)
    return cls(generator=gen(seed), **kw)


def constant_batch(b: int, c: int = 3, h: int = 32, w: int = 32):
    """Sample i is the constant ``v_i`` (all distinct, 0 and 1 included), of class i."""
    v = torch.linspace(0, 1, b)
    return v.view(b, 1, 1, 1).expand(b, c, h, w).clone(), v, torch.arange(b)


def blob_saliency(b: int, h: int, w: int, seed: int = 0, size: int = 4):
    """One bright square per map at a random place (peak at its top-left pixel), a weak ramp elsewhere."""
    g = gen(seed)
    s = torch.rand(b, 1, h, w, generator=g) * 0.1
    xy = torch.stack((torch.randint(0, w - size, (b,), generator=g), torch.randint(0, h - size, (b,), generator=g)), 1)
    for i, (x, y) in enumerate(xy.tolist()):
        s[i, 0, y:y + size, x:x + size] = 0.8
        s[i, 0, y, x] = 1.0
    return s, xy


# --- labels are true: the label weight of each class equals its share of the pixels ---------------

@pytest.mark.parametrize("cls", [SaliencyMix, AttentiveCutMix, GuidedMixup, ResizeMix])
@pytest.mark.parametrize("seed", [0, 1])
def test_label_equals_pixel_content(cls, seed):
    x, v, y = constant_batch(8)
    s = torch.rand(8, 1, 32, 32, generator=gen(100 + seed))
    out, params = make(cls, seed, num_classes=8, p=0.75)(x, s, y, return_params=True)
    # mean pixel of sample i = sum_k label_ik * v_k: the soft label is the pixel composition.
    assert torch.allclose(out.images.mean((1, 2, 3)), out.labels @ v, atol=1e-5)
    assert params["applied"].any() and (params["perm"] != torch.arange(8)).any()


def test_label_equals_pixel_content_zeros_ones():
    # the literal check: zeros mixed with ones, the partner's label weight is the mean pixel.
    x = torch.zeros(6, 3, 24, 24)
    x[3:] = 1.0
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    for cls in (SaliencyMix, AttentiveCutMix, GuidedMixup):
        out = make(cls, 3, num_classes=2)(x, torch.rand(6, 1, 24, 24, generator=gen(9)), y)
        assert torch.allclose(out.images.mean((1, 2, 3)), out.labels[:, 1], atol=1e-5), cls.__name__


def test_snapmix_pixel_content_is_target_box_area():
    x, v, y = constant_batch(8)
    out, params = make(SnapMix, 0, num_classes=8)(x, torch.rand(8, 1, 32, 32), y, return_params=True)
    b = params["dst_boxes"]
    area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).float() / (32 * 32)
    expected = v + (v[params["perm"]] - v) * area
    assert torch.allclose(out.images.mean((1, 2, 3)), expected, atol=1e-5)


# --- SaliencyMix ---------------------------------------------------------------------------------

def test_saliencymix_box_on_partner_peak_and_paste():
    b, h, w = 8, 32, 40
    s, peaks = blob_saliency(b, h, w, seed=1)
    x = torch.randn(b, 3, h, w, generator=gen(2))
    out, params = make(SaliencyMix, 4, num_classes=b)(x, s, torch.arange(b), return_params=True)
    perm, boxes = params["perm"], params["boxes"]
    assert sorted(perm.tolist()) == list(range(b))
    expected_img, expected_sal = x.clone(), s.clone()
    for i in range(b):
        x1, y1, x2, y2 = boxes[i].tolist()
        px, py = peaks[perm[i]].tolist()
        assert x1 <= px < x2 and y1 <= py < y2, "box must contain the partner's peak"
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        expected_img[i, :, y1:y2, x1:x2] = x[perm[i], :, y1:y2, x1:x2]
        expected_sal[i, :, y1:y2, x1:x2] = s[perm[i], :, y1:y2, x1:x2]
        share = (x2 - x1) * (y2 - y1) / (h * w)
        want = torch.zeros(b)
        want[i] += 1 - share
        want[perm[i]] += share
        assert torch.allclose(out.labels[i], want, atol=1e-6)
    assert torch.equal(out.images, expected_img)
    assert torch.equal(out.saliency, expected_sal)


def test_saliencymix_boxes_differ_per_sample_and_flat_maps_are_cutmix():
    b = 16
    t = make(SaliencyMix, 0, num_classes=b)
    x = torch.rand(b, 3, 32, 32)
    for s in (torch.zeros(b, 1, 32, 32), torch.full((b, 1, 32, 32), 0.3)):
        out, params = t(x, s, torch.arange(b), return_params=True)
        boxes = params["boxes"]
        assert len({tuple(r) for r in boxes.tolist()}) > b // 2
        centres = (boxes[:, :2] + boxes[:, 2:]) // 2
        assert len({tuple(r) for r in centres.tolist()}) > b // 2, "flat maps must get random centres"
        assert torch.isfinite(out.labels).all() and torch.allclose(out.labels.sum(1), torch.ones(b))


# --- AttentiveCutMix -----------------------------------------------------------------------------

def test_attentive_cutmix_pastes_partners_top_k_cells():
    b, h, w, grid, k = 6, 24, 30, (3, 5), 4  # cells 8 x 6 pixels
    g = gen(5)
    cell_vals = torch.rand(b, *grid, generator=g)  # distinct per cell -> unambiguous top-k
    s = cell_vals.repeat_interleave(8, 1).repeat_interleave(6, 2).unsqueeze(1)
    x = torch.randn(b, 3, h, w, generator=g)
    out, params = make(AttentiveCutMix, 2, grid=grid, k=k, num_classes=b)(x, s, torch.arange(b), return_params=True)
    perm = params["perm"]
    expected = x.clone()
    for i in range(b):
        j = int(perm[i])
        top = sorted(range(15), key=lambda c: -float(cell_vals[j].flatten()[c]))[:k]
        assert sorted(params["cells"][i].nonzero().flatten().tolist()) == sorted(top)
        for c in top:
            r, q = divmod(c, grid[1])
            expected[i, :, r * 8:(r + 1) * 8, q * 6:(q + 1) * 6] = x[j, :, r * 8:(r + 1) * 8, q * 6:(q + 1) * 6]
    assert torch.equal(out.images, expected)
    share = k / 15
    for i in range(b):
        want = torch.zeros(b)
        want[i] += 1 - share
        want[perm[i]] += share
        assert torch.allclose(out.labels[i], want, atol=1e-6)


def test_attentive_cutmix_uneven_grid_label_is_pixel_area():
    x, v, y = constant_batch(5, h=10, w=13)
    out = make(AttentiveCutMix, 1, grid=(3, 4), k=5, num_classes=5)(x, torch.rand(5, 1, 10, 13), y)
    assert torch.allclose(out.images.mean((1, 2, 3)), out.labels @ v, atol=1e-5)


def test_attentive_cutmix_flat_map_random_cells():
    t = make(AttentiveCutMix, 0, grid=(4, 4), k=3, num_classes=8)
    _, params = t(torch.rand(8, 3, 16, 16), torch.zeros(8, 1, 16, 16), torch.arange(8), return_params=True)
    assert (params["cells"].sum(1) == 3).all()
    assert len({tuple(r) for r in params["cells"].int().tolist()}) > 4


# --- SnapMix -------------------------------------------------------------------------------------

def _mass(sal: torch.Tensor, box) -> float:
    x1, y1, x2, y2 = box
    total = float(sal.sum())
    if total == 0:
        return (x2 - x1) * (y2 - y1) / sal.numel()
    return float(sal[..., y1:y2, x1:x2].sum()) / total


@pytest.mark.parametrize("normalize", [True, False])
def test_snapmix_weights_are_saliency_masses(normalize):
    b, h, w = 8, 20, 28
    s, _ = blob_saliency(b, h, w, seed=3, size=6)
    s[5] = 0.0  # an all-zero CAM: uniform in the raw weights, area labels for its pairs
    x = torch.randn(b, 3, h, w, generator=gen(1))
    t = make(SnapMix, 6, alpha=1.0, normalize=normalize, num_classes=b, p=0.8)
    out, params = t(x, s, torch.arange(b), return_params=True)
    perm, applied = params["perm"], params["applied"]
    assert not applied.all() and applied.any()
    for i in range(b):
        j = int(perm[i])
        tb, sb = params["dst_boxes"][i].tolist(), params["src_boxes"][i].tolist()
        if not applied[i]:
            assert params["weights"][i].tolist() == [1.0, 0.0]
            assert torch.equal(out.images[i], x[i])
            assert torch.equal(out.labels[i], F.one_hot(torch.tensor(i), b).float())
            continue
        wt, wp = 1 - _mass(s[i], tb), _mass(s[j], sb)
        assert params["weights"][i].tolist() == pytest.approx([wt, wp], abs=1e-5)
        area = (tb[2] - tb[0]) * (tb[3] - tb[1]) / (h * w)
        share = (wp / (wt + wp) if wt + wp > 1e-6 else area) if normalize else wp
        if 5 in (i, j):  # raw weights treat the zero map as uniform; its labels are the area's
            share = area
        want = torch.zeros(b)
        want[i] += 1 - share
        want[j] += share
        assert torch.allclose(out.labels[i], want, atol=1e-5)
        # the pasted content is the bilinear resize of the partner's source box
        crop = x[j:j + 1, :, sb[1]:sb[3], sb[0]:sb[2]]
        resized = F.interpolate(crop, size=(tb[3] - tb[1], tb[2] - tb[0]), mode="bilinear", align_corners=False)
        assert torch.allclose(out.images[i, :, tb[1]:tb[3], tb[0]:tb[2]], resized[0], atol=1e-4)
        outside = torch.ones(h, w, dtype=torch.bool)
        outside[tb[1]:tb[3], tb[0]:tb[2]] = False
        assert torch.equal(out.images[i][:, outside], x[i][:, outside])


def test_snapmix_paste_is_bilinear_resize_of_source_box():
    # hand-set boxes: upsampling, downsampling, 1-pixel source, same size, whole image
    b, h, w = 5, 12, 16
    x, s = torch.randn(b, 3, h, w, generator=gen(4)), torch.rand(b, 1, h, w, generator=gen(5))
    boxes = torch.tensor([[2, 1, 14, 11], [5, 4, 8, 6], [0, 0, 3, 2], [3, 3, 9, 9], [0, 0, 16, 12]])
    src = torch.tensor([[6, 5, 10, 8], [1, 1, 15, 12], [7, 7, 8, 8], [9, 2, 15, 8], [4, 3, 9, 7]])
    params = {"applied": torch.ones(b, dtype=torch.bool), "perm": torch.tensor([1, 2, 3, 4, 0]), "dst_boxes": boxes,
              "src_boxes": src, "weights": torch.tensor([[0.5, 0.5]] * b)}
    out = SnapMix(num_classes=b)(x, s, torch.arange(b), params=params)
    for i in range(b):
        j = int(params["perm"][i])
        (x1, y1, x2, y2), (a1, b1, a2, b2) = boxes[i].tolist(), src[i].tolist()
        for got, full in ((out.images, x), (out.saliency, s)):
            want = F.interpolate(full[j:j + 1, :, b1:b2, a1:a2], size=(y2 - y1, x2 - x1), mode="bilinear",
                                 align_corners=False)[0]
            assert torch.allclose(got[i, :, y1:y2, x1:x2], want, atol=1e-5), i


def test_snapmix_both_zero_falls_back_to_area_and_paper_loss():
    b, h, w = 2, 16, 16
    x, s = torch.rand(b, 3, h, w), torch.rand(b, 1, h, w)
    params = {"applied": torch.tensor([True, True]), "perm": torch.tensor([1, 0]),
              "dst_boxes": torch.tensor([[0, 0, 8, 8], [0, 0, 16, 4]]), "src_boxes": torch.tensor([[0, 0, 4, 4]] * 2),
              "weights": torch.tensor([[0.0, 0.0], [0.6, 0.2]])}
    out = SnapMix(num_classes=2)(x, s, torch.tensor([0, 1]), params=params)
    assert torch.allclose(out.labels, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    raw = SnapMix(normalize=False, num_classes=2)(x, s, torch.tensor([0, 1]), params=params)
    assert torch.allclose(raw.labels, torch.tensor([[1.0, 0.0], [0.2, 0.8]]))
    logits = torch.randn(2, 2)
    logp = logits.log_softmax(1)
    want = (-(0.0 * logp[0, 0] + 0.0 * logp[0, 1]) - (0.6 * logp[1, 1] + 0.2 * logp[1, 0])) / 2
    assert SnapMix.paper_loss(logits, torch.tensor([0, 1]), params).item() == pytest.approx(float(want), abs=1e-6)


def test_snapmix_both_masses_zero_in_a_sampled_call_gets_the_area_share():
    # one-pixel maps: the target keeps its mass unless the destination box covers its pixel, the
    # partner gives mass only if the source box holds its pixel; so both are zero in about a quarter
    # of the pairs of a real sampled call, and every label is known by hand
    b, h, w = 256, 16, 16
    g = gen(21)
    where = torch.randint(0, h * w, (b,), generator=g)
    s = torch.zeros(b, h * w)
    s[torch.arange(b), where] = 1.0
    s = s.view(b, 1, h, w)
    out, params = SnapMix(num_classes=b, p=1.0, generator=gen(22))(torch.rand(b, 3, h, w), s, torch.arange(b),
                                                                     return_params=True)
    perm, dst, src = params["perm"], params["dst_boxes"], params["src_boxes"]
    py, px = where // w, where % w

    def inside(box, y, x):
        return (box[:, 0] <= x) & (x < box[:, 2]) & (box[:, 1] <= y) & (y < box[:, 3])

    kept = 1.0 - inside(dst, py, px).float()  # the target's pixel stays visible
    pasted = inside(src, py[perm], px[perm]).float()  # the partner's pixel is in the source box
    area = ((dst[:, 2] - dst[:, 0]) * (dst[:, 3] - dst[:, 1])).float() / (h * w)
    both_zero = (kept == 0) & (pasted == 0)
    assert 20 < int(both_zero.sum()) < b - 20  # the fallback and the rule are both exercised
    share = torch.where(both_zero, area, pasted / (kept + pasted).clamp(min=1))
    torch.testing.assert_close(params["weights"], torch.stack((kept, pasted), 1))
    rows = torch.arange(b)[perm != torch.arange(b)]  # a sample that is its own partner keeps its label
    torch.testing.assert_close(out.labels[rows, perm[rows]], share[rows])
    torch.testing.assert_close(out.labels[rows, rows], 1 - share[rows])
    assert torch.isfinite(out.labels).all()


# --- GuidedMixup ---------------------------------------------------------------------------------

def test_guided_mixup_pixel_weights_are_saliency_ratio():
    b, h, w, sigma = 6, 20, 24, 1.5
    s = torch.rand(b, 1, h, w, generator=gen(7)) ** 4
    s[2] = 0.0
    x = torch.randn(b, 3, h, w, generator=gen(8))
    out, params = GuidedMixup(sigma=sigma, pairing="random", num_classes=b, p=1.0, generator=gen(1))(
        x, s, torch.arange(b), return_params=True)
    k = 2 * math.ceil(3 * sigma) + 1
    sm = TF.gaussian_blur(s, [k, k], [sigma, sigma])  # torchvision: an independent blur
    sm = sm / sm.sum((2, 3), keepdim=True)
    sm[2] = 1.0 / (h * w)  # the zero map counts as uniform
    perm = params["perm"]
    wa = sm / (sm + sm[perm])
    assert torch.allclose(params["own_weight"], wa, atol=1e-4)
    assert torch.allclose(out.images, wa * x + (1 - wa) * x[perm], atol=1e-4)
    share = (1 - wa).mean((1, 2, 3))
    want = torch.eye(b) * (1 - share)[:, None]
    want[torch.arange(b), perm] += share
    assert torch.allclose(out.labels, want, atol=1e-4)
    assert torch.allclose(out.saliency, wa * s + (1 - wa) * s[perm], atol=1e-5)


def test_guided_mixup_zero_pair_is_half():
    x = torch.rand(2, 3, 8, 8)
    out, params = GuidedMixup(num_classes=2, sigma=1.0, p=1.0)(x, torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]),
                                                         return_params=True)
    assert torch.allclose(params["own_weight"], torch.full_like(params["own_weight"], 0.5))
    assert torch.allclose(out.labels, torch.full((2, 2), 0.5))


def test_guided_mixup_pairs_disjoint_blobs():
    b, h, w = 8, 32, 32
    s = torch.zeros(b, 1, h, w)
    quadrant = torch.arange(b) % 4  # two samples per quadrant, interleaved
    for i, q in enumerate(quadrant.tolist()):
        r, c = divmod(q, 2)
        s[i, 0, r * 16 + 4:r * 16 + 12, c * 16 + 4:c * 16 + 12] = 1.0
    for seed in range(3):
        _, params = GuidedMixup(sigma=1.0, num_classes=b, generator=gen(seed))(
            torch.rand(b, 3, h, w), s, torch.arange(b), return_params=True)
        perm = params["perm"]
        assert (quadrant[perm] != quadrant).all(), "partners must have non-overlapping salient regions"
        assert sorted(perm.tolist()) == list(range(b))
        assert (perm[perm] != torch.arange(b)).all(), "no 2-cycles: pairwise mixes would be duplicates"
    # random pairing does not care about overlap
    _, params = GuidedMixup(sigma=1.0, pairing="random", num_classes=b, generator=gen(0))(
        torch.rand(b, 3, h, w), s, torch.arange(b), return_params=True)
    assert sorted(params["perm"].tolist()) == list(range(b))


def _walk(sim: torch.Tensor, crowding: float = 0.05) -> list[int]:
    """The greedy walk, written out sample by sample in plain Python."""
    b = sim.shape[0]
    s = sim.tolist()
    crowd = [sum(s[c][u] for u in range(b) if u != c) for c in range(b)]
    first = max(range(b), key=lambda c: (crowd[c], -c))
    perm, used, row = [-1] * b, {first}, first
    for _ in range(b - 1):
        col = min((c for c in range(b) if c not in used), key=lambda c: (s[row][c] - crowding / b * crowd[c], c))
        perm[row], row = col, col
        used.add(col)
        crowd = [crowd[c] - (s[c][col] if c != col else 0.0) for c in range(b)]
    perm[row] = first
    return perm


@pytest.mark.parametrize("b", [1, 2, 3, 7, 16])
def test_greedy_pairing_matches_sequential_walk(b):
    sim = torch.rand(b, b, generator=gen(b), dtype=torch.float64)
    sim = sim + sim.T
    perm = greedy_pairing(sim)
    assert sorted(perm.tolist()) == list(range(b))
    if b > 1:
        assert perm.tolist() == _walk(sim)
        cycle, i = 1, int(perm[0])
        while i != 0:
            cycle, i = cycle + 1, int(perm[i])
        assert cycle == b, "one cycle through the whole batch"


def test_greedy_pairing_avoids_same_kind_whenever_possible():
    g = gen(0)
    checked = 0
    for _ in range(150):
        b = int(torch.randint(3, 25, (1,), generator=g))
        kinds = torch.randint(0, int(torch.randint(2, 7, (1,), generator=g)), (b,), generator=g)
        if torch.bincount(kinds).max() > b // 2:
            continue  # no cycle without same-kind neighbours exists
        sim = (kinds[:, None] == kinds[None, :]).float() + 1e-5 * torch.rand(b, b, generator=g)
        perm = greedy_pairing(sim)
        assert (kinds[perm] != kinds).all(), (kinds.tolist(), perm.tolist())
        checked += 1
    assert checked > 50


# --- shared behaviour, checked for every mix -------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
def test_replay_seed_and_partial_application(cls):
    b = 8
    x, s = torch.rand(b, 3, 16, 16, generator=gen(1)), torch.rand(b, 1, 16, 16, generator=gen(2))
    y = torch.arange(b)
    out, params = make(cls, 11, num_classes=b, p=0.5)(x, s, y, return_params=True)
    again = make(cls, 11, num_classes=b, p=0.5)(x, s, y)
    for a, c in zip(out, again):
        assert torch.equal(a, c), "same generator seed -> same output"
    other = make(cls, 12, num_classes=b, p=0.5)(x, s, y)
    assert not torch.equal(other.images, out.images)
    replay = make(cls, 99, num_classes=b, p=0.5)(x, s, y, params=params)
    for a, c in zip(out, replay):
        assert torch.equal(a, c), "replaying params reproduces the output"
    applied = params["applied"]
    assert applied.any() and not applied.all()
    assert torch.equal(out.images[~applied], x[~applied])
    assert torch.equal(out.saliency[~applied], s[~applied])
    assert torch.equal(out.labels[~applied], F.one_hot(y, b).float()[~applied])
    assert sorted(params["perm"].tolist()) == list(range(b))
    # replay on a mask-like second input (sample i is the constant i + 1) moves it the same way
    v = torch.arange(b, dtype=torch.float32) + 1
    moved = make(cls, 0, num_classes=b)(v.view(b, 1, 1, 1).expand(b, 1, 16, 16), s, y, params=params).images
    if cls is SnapMix:  # labels follow saliency mass; pixels follow the target box area
        bx = params["dst_boxes"]
        area = ((bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])).float() / 256 * applied
        expected = v + (v[params["perm"]] - v) * area
    else:
        expected = out.labels @ v
    assert torch.allclose(moved.mean((1, 2, 3)), expected, atol=1e-4)


@pytest.mark.parametrize("cls", ALL)
def test_one_sample_batch_mixes_with_itself(cls):
    # (p, replay, flat maps, dtypes, soft labels: the contract in test_transform_contract.py)
    x, s = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    one = make(cls, num_classes=3)(x, s, torch.tensor([2]))  # B=1: the partner is itself
    assert one.labels.tolist() == [[0.0, 0.0, 1.0]] and torch.isfinite(one.images).all()
    if cls not in (SnapMix, ResizeMix):  # they resize (part of) itself into a box; the others are the identity
        assert torch.allclose(one.images, x, atol=1e-6)


def test_constructor_errors():
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            SaliencyMix(alpha=bad)
        with pytest.raises(ValueError, match="alpha"):
            SnapMix(alpha=bad)
    with pytest.raises(ValueError, match="grid"):
        AttentiveCutMix(grid=(0, 7))
    with pytest.raises(ValueError, match="k must"):
        AttentiveCutMix(grid=(2, 2), k=5)
    with pytest.raises(ValueError, match="k must"):
        AttentiveCutMix(k=0)
    with pytest.raises(ValueError, match="grid needs"):
        AttentiveCutMix(grid=(7, 7), num_classes=2)(
            torch.rand(2, 3, 5, 5), torch.rand(2, 1, 5, 5), torch.tensor([0, 1])
        )
    with pytest.raises(ValueError, match="sigma"):
        GuidedMixup(sigma=-1)
    with pytest.raises(ValueError, match="pairing"):
        GuidedMixup(pairing="hungarian")
    with pytest.raises(ValueError, match="missing"):
        SaliencyMix(num_classes=2)(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]),
                                   params={"applied": torch.tensor([True, True])})


# --- ResizeMix -------------------------------------------------------------------------------------

def test_resizemix_pastes_the_whole_partner_resized_into_the_box():
    x = torch.rand(6, 3, 24, 24, generator=gen(4))
    out, params = make(ResizeMix, 2, num_classes=6, p=1.0)(x, torch.zeros(6, 1, 24, 24), torch.arange(6),
                                                          return_params=True)
    assert (params["src_boxes"] == torch.tensor([0, 0, 24, 24])).all()
    for i in range(6):
        x1, y1, x2, y2 = params["dst_boxes"][i].tolist()
        j = int(params["perm"][i])
        resized = F.interpolate(x[j:j + 1], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out.images[i, :, y1:y2, x1:x2], resized, atol=1e-5, rtol=0)
        outside = torch.ones(24, 24, dtype=torch.bool)
        outside[y1:y2, x1:x2] = False
        assert torch.equal(out.images[i][:, outside], x[i][:, outside])
        share = (x2 - x1) * (y2 - y1) / 576
        if j != i:
            assert math.isclose(out.labels[i, j].item(), share, abs_tol=1e-6)


def test_resizemix_box_side_follows_scale():
    t = make(ResizeMix, 0, num_classes=4, p=1.0, scale=(0.25, 0.5))
    _, params = t(torch.rand(256, 1, 32, 32), torch.zeros(256, 1, 32, 32), torch.zeros(256, dtype=torch.long),
                  return_params=True)
    side = (params["dst_boxes"][:, 2] - params["dst_boxes"][:, 0]).float() / 32
    assert side.min() >= 0.25 - 1 / 32 and side.max() <= 0.5 + 1 / 32 and side.std() > 0.05
    with pytest.raises(ValueError, match="scale"):
        ResizeMix(scale=(0.0, 0.5))
    with pytest.raises(ValueError, match="scale"):
        ResizeMix(scale=(0.6, 0.3))


def test_resizemix_saliency_labels_count_the_whole_partner_and_what_the_box_hides():
    s = torch.zeros(2, 1, 16, 16)
    s[:, :, :8] = 1.0  # the object is the top half of each image
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    t = make(ResizeMix, 0, num_classes=2, p=1.0, labels="saliency")
    out, params = t(x, s, y, return_params=True)
    x1, y1, x2, y2 = params["dst_boxes"][0].tolist()
    hidden = max(0, min(y2, 8) - y1) * (x2 - x1) / 128  # share of sample 0's top half under the box
    partner = 1.0 / ((1 - hidden) + 1.0)
    assert math.isclose(out.labels[0, 1].item(), partner, abs_tol=1e-5)
    flat = t(x, torch.zeros(2, 1, 16, 16), y, params=params)
    area = make(ResizeMix, 0, num_classes=2, p=1.0)(x, s, y, params=params)
    torch.testing.assert_close(flat.labels, area.labels)  # flat saliency gives the area labels


def test_defaults_are_the_benchmarks_choice():
    # What the with-recipe benchmark chose (README, "Which method, which defaults"): every mix mixes
    # half the samples; SnapMix keeps its paper's Beta(5, 5) boxes and saliency-mass labels.
    t = SnapMix(num_classes=10)
    assert (t.p, t.alpha, t.labels, t.normalize) == (0.5, 5.0, "saliency", True)
    from salaug import PuzzleMix, SalientPaste

    for cls in (SaliencyMix, AttentiveCutMix, GuidedMixup, ResizeMix, SalientPaste, PuzzleMix):
        assert cls(num_classes=10).p == 0.5, cls.__name__
    r = ResizeMix(num_classes=10)
    assert (r.scale, r.labels) == ((0.1, 0.8), "area")
    # In the loop and the callback, SnapMix's labels come from the training forward (labels_from="auto"):
    # the forward-label cells kept the CAM's gain without the CAM pass (docs/evidence.md).
    import inspect

    from salaug import SaliencyAugmentation, SaliencyAugmenter
    from salaug.sources.forward import CAM_BLEND

    for cls in (SaliencyAugmenter, SaliencyAugmentation):
        params = inspect.signature(cls).parameters
        assert (params["labels_from"].default, params["label_blend"].default) == ("auto", None), cls.__name__
    assert CAM_BLEND == 1.0
    aug = SaliencyAugmenter(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                                torch.nn.Flatten(), torch.nn.Linear(4, 10)), SnapMix(num_classes=10))
    assert aug.labels_from == "forward"


# -- flat saliency without a map (saliency=None) -------------------------------------------------------
@pytest.mark.parametrize("cls", [SnapMix, SaliencyMix, ResizeMix, GuidedMixup, AttentiveCutMix])
def test_saliency_none_is_flat_saliency(cls):
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    t = cls(num_classes=4, p=1.0)
    want = t(x, torch.ones(8, 1, 16, 16), y, generator=torch.Generator().manual_seed(3))
    got = t(x, None, y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got.images, want.images)
    torch.testing.assert_close(got.labels, want.labels)
    assert got.saliency is None


@pytest.mark.parametrize("cls", [SnapMix, SaliencyMix, ResizeMix])
def test_box_mixes_read_no_map_when_flat(cls, monkeypatch):
    import salaug.transforms.mix as mix_module

    def no_map(*args, **kwargs):
        raise AssertionError("a saliency map was read on the flat path")

    for name in ("box_mass", "partner_box_mass", "row_prefix", "peak"):
        monkeypatch.setattr(mix_module, name, no_map)
    monkeypatch.setattr("salaug.transforms.base.is_flat", no_map)
    from salaug.transforms.labels import mix_soft_labels

    t = cls(num_classes=4, p=1.0)
    y = torch.arange(8) % 4
    out, params = t(torch.rand(8, 3, 16, 16), None, y, return_params=True)
    area = t.area_share(params, (16, 16))
    torch.testing.assert_close(out.labels, mix_soft_labels(F.one_hot(y, 4).float(), params["perm"], area))
