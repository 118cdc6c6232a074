"""Localisation and label metrics on hand-made tensors whose answers are known."""

from __future__ import annotations

import pytest
import torch

from salaug.metrics import (
    box_iou,
    cam_box_iou,
    label_fidelity,
    mix_visibility,
    pointing_game,
    saliency_box,
    visible_fraction,
)


def _peaks(points: list[tuple[int, int]], h: int = 10, w: int = 12) -> torch.Tensor:
    """Maps with a single peak at each (x, y), on a low non-zero background."""
    s = torch.full((len(points), 1, h, w), 0.1)
    for i, (x, y) in enumerate(points):
        s[i, 0, y, x] = 1.0
    return s


def test_pointing_game_half_open_boxes() -> None:
    box = [2.0, 3.0, 6.0, 7.0]  # columns 2..5, rows 3..6
    s = _peaks([(2, 3), (5, 6), (6, 6), (5, 7), (1, 3), (4, 5)])
    hits = pointing_game(s, torch.tensor([box] * 6))
    assert hits.tolist() == [True, True, False, False, False, True]
    assert hits.dtype == torch.bool and hits.shape == (6,)


def test_pointing_game_tolerance_is_euclidean_pixel_distance() -> None:
    box = torch.tensor([[2.0, 3.0, 6.0, 7.0]] * 3)
    # Pixel (8, 3): centre x=8.5 is 2.5 px right of x2=6. Pixel (8, 9): centres (8.5, 9.5), 2.5 px
    # from the box in both axes, so 3.54 px away.
    s = _peaks([(8, 3), (8, 9), (0, 0)])
    assert pointing_game(s, box, tolerance=2.5).tolist() == [True, False, False]
    assert pointing_game(s, box, tolerance=3.6).tolist() == [True, True, True]
    assert pointing_game(s, box, tolerance=2.4).tolist() == [False, False, False]
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(s, box, tolerance=-1)


def test_pointing_game_constant_map_misses_and_resizes_low_res_maps() -> None:
    flat = torch.zeros(2, 1, 8, 8)
    everything = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    assert pointing_game(flat, everything).tolist() == [False, False]
    low = torch.zeros(1, 1, 4, 4)
    low[0, 0, 3, 3] = 1.0  # bottom-right cell: pixels 24..31 of a 32 px image
    assert pointing_game(low, torch.tensor([[24.0, 24.0, 32.0, 32.0]]), image_size=(32, 32)).tolist() == [True]
    assert pointing_game(low[:, 0], torch.tensor([[24.0, 24.0, 32.0, 32.0]]), image_size=(32, 32)).tolist() == [True]


def test_saliency_box_threshold_and_fallback() -> None:
    s = torch.zeros(3, 1, 6, 8)
    s[0, 0, 1:3, 2:5] = 1.0
    s[1, 0, 4, 1] = 0.4  # below half of the peak
    s[1, 0, 2, 6] = 1.0
    s[1, 0, 5, 7] = 0.6  # above half of the peak
    boxes = saliency_box(s, threshold=0.5)
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 3.0], [6.0, 2.0, 8.0, 6.0], [0.0, 0.0, 8.0, 6.0]]
    assert boxes.dtype == torch.float32
    assert saliency_box(s, threshold=0.3)[1].tolist() == [1.0, 2.0, 8.0, 6.0]
    assert saliency_box(s, threshold=0.0).tolist() == [[0.0, 0.0, 8.0, 6.0]] * 3
    with pytest.raises(ValueError, match="threshold"):
        saliency_box(s, threshold=1.5)


def test_saliency_box_matches_masks_to_boxes_on_random_maps() -> None:
    from torchvision.ops import masks_to_boxes

    g = torch.Generator().manual_seed(0)
    s = torch.rand(16, 1, 20, 30, generator=g) ** 8
    mask = s >= 0.5 * s.flatten(1).amax(1).view(-1, 1, 1, 1)
    ref = masks_to_boxes(mask[:, 0]) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # inclusive → half-open
    torch.testing.assert_close(saliency_box(s), ref)


def test_box_iou_aligned_pairs() -> None:
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 0, 0], [0, 0, 4, 4]])
    b = torch.tensor([[1.0, 0, 3, 2], [0, 0, 1, 1], [5, 5, 6, 6], [0, 0, 0, 0], [1, 1, 3, 3]])
    iou = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([1 / 3, 1.0, 0.0, 0.0, 0.25]))
    torch.testing.assert_close(box_iou(b, a), iou)
    from torchvision.ops import box_iou as all_pairs

    g = torch.Generator().manual_seed(1)
    xy = torch.rand(10, 2, generator=g) * 10
    c = torch.cat([xy, xy + 1 + torch.rand(10, 2, generator=g) * 5], 1)
    d = torch.cat([xy + 1, xy + 3 + torch.rand(10, 2, generator=g) * 5], 1)
    torch.testing.assert_close(box_iou(c, d), all_pairs(c, d).diagonal())
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        box_iou(a, b[:2])


def test_cam_box_iou() -> None:
    s = torch.zeros(2, 1, 8, 8)
    s[0, 0, 2:6, 2:6] = 1.0
    s[1, 0, 0:2, 0:2] = 1.0
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [4.0, 4.0, 8.0, 8.0]])
    assert cam_box_iou(s, boxes).tolist() == [1.0, 0.0]
    low = torch.zeros(1, 1, 4, 4)
    low[0, 0, 1:3, 1:3] = 1.0
    assert cam_box_iou(low, torch.tensor([[8.0, 8.0, 24.0, 24.0]]), image_size=(32, 32)).item() > 0.5
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        cam_box_iou(s, boxes[:1])


def test_label_fidelity_known_cases() -> None:
    k = 4
    labels = torch.tensor(
        [
            [0.7, 0.3, 0.0, 0.0],  # matches the visible fractions exactly
            [0.5, 0.5, 0.0, 0.0],  # area label, but the partner's object was missed entirely
            [0.0, 0.0, 0.0, 1.0],  # all mass on a class that is not in the image
            [0.5, 0.0, 0.5, 0.0],  # both objects hidden: uniform over the two is the truth
            [1.0, 0.0, 0.0, 0.0],  # same class twice: all weight on it
            [0.6, 0.4, 0.0, 0.0],  # 0.1 off
        ]
    )
    classes = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 2], [0, 0], [0, 1]])
    visible = torch.tensor([[0.7, 0.3], [0.9, 0.0], [1.0, 1.0], [0.0, 0.0], [0.3, 0.8], [0.35, 0.15]])
    fid = label_fidelity(labels, classes, visible)
    torch.testing.assert_close(fid, torch.tensor([1.0, 0.5, 0.0, 1.0, 1.0, 0.9]))
    assert fid.shape == (6,) and fid.dtype == torch.float32
    assert labels.shape[1] == k


def test_label_fidelity_validates_inputs() -> None:
    p = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ValueError, match="classes must lie"):
        label_fidelity(p, torch.tensor([[0, 2]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="probability"):
        label_fidelity(torch.tensor([[0.5, 0.6]]), torch.tensor([[0, 1]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="non-negative"):
        label_fidelity(p, torch.tensor([[0, 1]]), torch.tensor([[-0.1, 1.0]]))
    with pytest.raises(ValueError, match=r"integer \(1, 2\)"):
        label_fidelity(p, torch.tensor([[0.0, 1.0]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="visible"):
        label_fidelity(p, torch.tensor([[0, 1]]), torch.ones(2))
    with pytest.raises(TypeError, match="soft_labels"):
        label_fidelity([[0.5, 0.5]], torch.tensor([[0, 1]]), torch.ones(1, 2))  # type: ignore[arg-type]


def test_visible_fraction_and_mix_visibility() -> None:
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True  # 4 px, top-left
    masks[1, 0, 2:, :] = True  # 8 px, bottom half
    # masks[2] empty
    keep = torch.ones(3, 1, 4, 4, dtype=torch.bool)
    keep[:, :, :, :1] = False
    assert visible_fraction(masks, keep).tolist() == [0.5, 0.75, 0.0]
    assert visible_fraction(masks, keep.float() * 0.5).tolist() == [0.25, 0.375, 0.0]

    m = torch.zeros(3, 1, 4, 4)
    m[:, :, 2:, 2:] = 1.0  # paste the bottom-right quarter of the partner
    partner = torch.tensor([1, 0, 1])
    vis = mix_visibility(masks, partner, m)
    # 0: own top-left untouched; partner's bottom half shows its right half → 0.5
    # 1: own bottom half loses its right half → 0.5; partner's top-left quarter → not shown
    # 2: own empty → 0; partner bottom half → 0.5
    assert vis.tolist() == [[1.0, 0.5], [0.5, 0.0], [0.0, 0.5]]
    soft = torch.tensor([[2 / 3, 1 / 3], [0.0, 1.0], [0.0, 1.0]])
    classes = torch.tensor([[0, 1], [1, 0], [0, 1]])
    torch.testing.assert_close(label_fidelity(soft, classes, vis), torch.ones(3))
    with pytest.raises(ValueError, match="partner"):
        mix_visibility(masks, torch.tensor([0, 1]), m)
    with pytest.raises(ValueError, match="must match"):
        visible_fraction(masks, keep[:2])


def test_bad_map_inputs() -> None:
    with pytest.raises(TypeError, match="floating point"):
        pointing_game(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        saliency_box(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        pointing_game(torch.zeros(1, 1, 4, 4), torch.zeros(4))


# ----------------------------------------------------------------- hostile inputs
BOXES = torch.tensor([[2.0, 1.0, 5.0, 4.0], [0.0, 0.0, 3.0, 3.0]])


@pytest.mark.parametrize(
    "tolerance, exc, match",
    [(float("nan"), ValueError, "got nan"), (float("inf"), ValueError, "got inf"), ("3", TypeError, "a number"),
     (-1, ValueError, ">= 0"), (None, TypeError, "a number")],
)
def test_pointing_game_bad_tolerance(tolerance, exc, match) -> None:
    with pytest.raises(exc, match=f"tolerance.*{match}"):
        pointing_game(_peaks([(3, 2), (1, 1)]), BOXES, tolerance=tolerance)


@pytest.mark.parametrize("image_size", [(0, 5), (10,), 5.5, "10x12", (10, -12), (True, 4)])
def test_bad_image_size(image_size) -> None:
    with pytest.raises(ValueError, match=r"image_size must be None or the \(H, W\)"):
        pointing_game(_peaks([(3, 2), (1, 1)]), BOXES, image_size=image_size)
    with pytest.raises(ValueError, match="image_size"):
        cam_box_iou(_peaks([(3, 2), (1, 1)]), BOXES, image_size=image_size)


def test_int_image_size_is_a_square() -> None:
    s = _peaks([(3, 2), (1, 1)], h=10, w=10)
    square = pointing_game(s, BOXES * 2, image_size=(20, 20))
    assert pointing_game(s, BOXES * 2, image_size=20).tolist() == square.tolist()


@pytest.mark.parametrize("threshold, exc", [("0.5", TypeError), (float("nan"), ValueError), (1.5, ValueError)])
def test_saliency_box_bad_threshold(threshold, exc) -> None:
    with pytest.raises(exc, match="threshold"):
        saliency_box(_peaks([(3, 2)]), threshold=threshold)


@pytest.mark.parametrize("fn", [lambda s: pointing_game(s, BOXES), saliency_box, lambda s: cam_box_iou(s, BOXES)])
def test_nonfinite_maps_raise_or_count_as_flat(fn, no_value_checks) -> None:
    import salaug

    s = _peaks([(3, 2), (1, 1)])
    s[0, 0, 5, 5] = float("nan")
    out = fn(s)  # value checks off: a NaN map has no peak
    if out.dtype == torch.bool:
        assert out.tolist() == [False, True]
    elif out.ndim == 2:
        assert out[0].tolist() == [0.0, 0.0, 12.0, 10.0]
    salaug.set_value_checks("cpu")
    with pytest.raises(ValueError, match="saliency contain 1 NaN or inf"):
        fn(s)


def test_nonfinite_or_bool_boxes() -> None:
    bad = BOXES.clone()
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="boxes contain 1 NaN or inf"):
        pointing_game(_peaks([(3, 2), (1, 1)]), bad)
    with pytest.raises(ValueError, match="boxes_b contain"):
        box_iou(BOXES, bad)
    with pytest.raises(TypeError, match="real pixel coordinates"):
        box_iou(BOXES, BOXES > 1)


def test_maps_without_pixels_are_refused() -> None:
    with pytest.raises(ValueError, match="saliency has no pixels"):  # the shared check of salaug._checks
        saliency_box(torch.zeros(2, 1, 0, 4))
    assert pointing_game(torch.zeros(0, 1, 4, 4), torch.zeros(0, 4)).shape == (0,)  # empty batch: empty result


def test_visible_fraction_hostile_masks() -> None:
    before = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"masks_after must have shape \(B, 1, H, W\)"):
        visible_fraction(before, torch.ones(2, 3, 4, 4))  # broadcast to 3 channels: fractions of 3
    with pytest.raises(TypeError, match="masks_before must be a torch.Tensor"):
        visible_fraction([[1]], before)
    with pytest.raises(ValueError, match=r"masks_after values must lie in \[0, 1\]"):
        visible_fraction(before, torch.full((2, 1, 4, 4), 2.0))
    with pytest.raises(ValueError, match="must match"):
        visible_fraction(before, before[:1])


def test_mix_visibility_hostile_inputs() -> None:
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    masks[:, :, :2] = True
    m = torch.zeros(2, 1, 4, 4)
    with pytest.raises(TypeError, match="object_masks must be a torch.Tensor"):
        mix_visibility(masks.numpy(), torch.tensor([1, 0]), m)
    with pytest.raises(TypeError, match="mix_weight must be a torch.Tensor"):
        mix_visibility(masks, torch.tensor([1, 0]), 0.5)
    with pytest.raises(TypeError, match="integer indices"):
        mix_visibility(masks, torch.tensor([1.0, 0.0]), m)
    with pytest.raises(ValueError, match=r"partner indices must lie in \[0, 1\]"):
        mix_visibility(masks, torch.tensor([2, 0]), m)
    with pytest.raises(ValueError, match="resize it"):
        mix_visibility(masks, torch.tensor([1, 0]), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"mix_weight values must lie in \[0, 1\]"):
        mix_visibility(masks, torch.tensor([1, 0]), m - 0.5)
    assert mix_visibility(masks, torch.tensor([1, 0]), m).tolist() == [[1.0, 0.0], [1.0, 0.0]]


# ---------------------------------------------------------------------------- the diagnosis' box scores
def test_box_share_counts_only_the_in_image_part() -> None:
    from salaug.metrics import box_share

    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [-4.0, 0.0, 4.0, 8.0], [-10.0, -10.0, 20.0, 20.0]])
    assert box_share(boxes, (8, 8)).tolist() == [0.25, 0.5, 1.0]  # never above 1
    assert box_share(boxes[:1], 4).tolist() == [1.0]
    with pytest.raises(ValueError, match="image_size"):
        box_share(boxes, (0, 8))
    with pytest.raises(ValueError, match="NaN or inf"):
        box_share(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), (8, 8))


def test_box_energy_and_localisation_score_resize_and_check() -> None:
    from salaug.metrics import box_energy, localisation_score

    s = torch.zeros(2, 1, 4, 4)
    s[0, 0, 0, 0] = 1.0  # a peak in the top-left cell
    s[1] = 1.0  # uniform: scores the box share
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(2, 4)
    energy = box_energy(s, boxes, image_size=(16, 16))  # maps upsampled to the boxes' 16x16 grid
    assert energy[0] > 0.9 and energy[1] == pytest.approx(0.25)
    score, hit, e = localisation_score(s, boxes, image_size=16)
    assert hit.tolist() == [1.0, 0.0] and torch.equal(e, energy) and torch.allclose(score, (hit + e) / 2)
    assert box_energy(-s, boxes[:, :] / 4).tolist() == [0.0, 0.0]  # negative maps count as zero mass
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        box_energy(s, boxes[:1])
    with pytest.raises(ValueError, match="NaN or inf"):
        localisation_score(torch.full((1, 1, 4, 4), float("nan")), boxes[:1])
