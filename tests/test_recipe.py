"""salaug.crop_flip: the standard recipe (padded random crop + flip), batched, moving masks and boxes."""

from __future__ import annotations

import pytest
import torch

from salaug import crop_flip
from salaug.datasets.objects import _mask_boxes


def test_masks_move_with_images_and_each_sample_gets_its_own_window(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 3, 16, 16) + 0.1).to(device)  # never 0, so padding is recognisable
    m = (x[:, :1] > 0.6).float()
    cx, cm = crop_flip(x, m, padding=1, generator=g)
    assert cx.shape == x.shape and cm.shape == m.shape and cx.device == x.device
    torch.testing.assert_close(cm, (cx[:, :1] > 0.6).float())  # the same window and flip on both
    padded = (cx == 0).flatten(1).any(1)
    assert 0 < int(padded.sum()) < 64  # per-sample offsets: some shifted, others not
    flipped = [bool(torch.equal(cx[i], x[i].flip(-1))) for i in range(64)]
    same = [bool(torch.equal(cx[i], x[i])) for i in range(64)]
    assert any(flipped) and any(same)
    again = crop_flip(x, m, padding=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], cx)


def test_boxes_stay_the_tight_boxes_of_their_moved_masks():
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(256, 1, 32, 32, dtype=torch.bool)
    x1, y1 = torch.randint(0, 27, (256,), generator=g), torch.randint(0, 23, (256,), generator=g)
    for i in range(256):
        mask[i, 0, y1[i]:y1[i] + 10, x1[i]:x1[i] + 6] = True
    boxes = torch.stack([x1, y1, x1 + 6, y1 + 10], 1)
    _, moved, moved_boxes = crop_flip(mask.float(), mask, boxes=boxes, generator=g)
    assert moved.dtype == torch.bool and moved.flatten(1).any(1).all()
    assert torch.equal(_mask_boxes(moved), moved_boxes)  # shifted, clipped at the border, mirrored


def test_no_padding_and_no_flip_is_the_identity_and_bad_inputs_are_named():
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(crop_flip(x, padding=0, flip=False)[0], x)
    with pytest.raises(ValueError, match="padding"):
        crop_flip(x, padding=-1)
    with pytest.raises(ValueError, match=r"maps\[0\]"):
        crop_flip(x, torch.rand(3, 1, 4, 4))
    with pytest.raises(ValueError, match="boxes"):
        crop_flip(x, boxes=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        crop_flip(x.to(torch.uint8))


def test_a_box_past_the_border_is_clipped_to_the_image_before_the_shift():
    # a box reaching 4 px above a 16-px image: its visible part is rows 0..8; shifted down by the
    # window, the box must cover the shifted visible part (rows dy..8+dy), never the zero padding
    x = torch.rand(1, 3, 16, 16)
    for seed in range(12):
        ox, oy = torch.randint(0, 9, (1, 2), generator=torch.Generator().manual_seed(seed))[0].tolist()
        dx, dy = 4 - ox, 4 - oy
        _, moved = crop_flip(x, boxes=torch.tensor([[11, -4, 12, 9]]), flip=False,
                             generator=torch.Generator().manual_seed(seed))
        want = [min(max(11 + dx, 0), 16), min(max(dy, 0), 16), min(max(12 + dx, 0), 16), min(max(9 + dy, 0), 16)]
        assert moved[0].tolist() == want, (seed, dx, dy)


def test_boxes_past_the_border_match_their_moved_masks():
    # reference: the box drawn as a mask (which the image clips), moved as a map; the moved box
    # must be the moved mask's tight box, whatever the box reached outside the image
    g = torch.Generator().manual_seed(3)
    n, s = 256, 16
    xy = torch.randint(-8, s, (n, 2), generator=g)
    wh = torch.randint(2, 12, (n, 2), generator=g)
    boxes = torch.cat((xy, xy + wh), 1)
    rows, cols = torch.arange(s).view(1, s, 1), torch.arange(s).view(1, 1, s)
    mask = ((cols >= boxes[:, 0, None, None]) & (cols < boxes[:, 2, None, None])
            & (rows >= boxes[:, 1, None, None]) & (rows < boxes[:, 3, None, None])).unsqueeze(1)
    keep = mask.flatten(1).any(1)
    _, moved, moved_boxes = crop_flip(mask.float(), mask, boxes=boxes, padding=3, generator=g)
    visible = moved.flatten(1).any(1) & keep
    assert int(visible.sum()) > n // 2
    assert torch.equal(_mask_boxes(moved[visible]), moved_boxes[visible])


def test_flipped_boxes_are_mirrored_by_hand():
    # no padding: a sample is either untouched or mirrored; an asymmetric box [2, 3, 7, 5] of a
    # 10-px-wide image mirrors to [10 - 7, 3, 10 - 2, 5] = [3, 3, 8, 5]
    x = torch.arange(10.0).expand(32, 1, 6, 10).contiguous()
    out, moved = crop_flip(x, boxes=torch.tensor([[2, 3, 7, 5]]).expand(32, 4), padding=0,
                           generator=torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, 0] == 9
    assert 0 < int(flipped.sum()) < 32
    assert moved[flipped].tolist() == [[3.0, 3.0, 8.0, 5.0]] * int(flipped.sum())
    assert moved[~flipped].tolist() == [[2.0, 3.0, 7.0, 5.0]] * int((~flipped).sum())
