"""The parts of salaug.diagnosis: the random reference, the reliance images, checkpoints, the package's imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from salaug.diagnosis import (
    VARIANTS,
    check_image_size,
    demo_checkpoint,
    demo_model_from_state,
    load_demo_model,
    random_reference,
    reliance_images,
    same_class_partners,
)
from salaug.diagnosis.reliance import background_black, random_partners, reliance_share, tiled_background
from salaug.models import DemoNet


# ---------------------------------------------------------------------------- random reference
def test_random_reference_redraws_weights_renormalises_bn_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    images = torch.rand(8, 3, 6, 6) * 3 + 1
    model(images)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ref, kept = random_reference(model, images, seed=0)
    assert torch.equal(torch.get_rng_state(), rng) and kept == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(ref[0].weight, model[0].weight) and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    # BatchNorm statistics are those of the re-drawn conv on these images (cumulative, one batch)
    with torch.no_grad():
        z = ref[0](images)
    torch.testing.assert_close(ref[1].running_mean, z.mean((0, 2, 3)))
    again, _ = random_reference(model, images, seed=0)
    other, _ = random_reference(model, images, seed=1)
    assert torch.equal(again[0].weight, ref[0].weight) and not torch.equal(other[0].weight, ref[0].weight)


def test_random_reference_counts_parameters_it_cannot_redraw():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x * self.scale.view(1, 3, 1, 1)).mean((2, 3))

    _, kept = random_reference(Scaled(), torch.rand(2, 3, 4, 4))
    assert kept == 3


# ---------------------------------------------------------------------------- reliance images
def test_same_class_and_random_partners():
    g = torch.Generator().manual_seed(0)
    classes = torch.tensor([0, 1, 0, 1, 2, 0, 1, 0])
    p = same_class_partners(classes, g)
    assert torch.equal(classes[p], classes) and p[4] == 4  # the only image of class 2 keeps itself
    assert bool((p != torch.arange(8))[classes != 2].all())  # the others get another image
    assert sorted(p.tolist()) == list(range(8))  # a permutation: every background used once
    r = random_partners(8, torch.device("cpu"), g)
    assert sorted(r.tolist()) == list(range(8)) and bool((r != torch.arange(8)).all())


def test_reliance_images_are_built_from_object_and_background_under_both_fills():
    ramp = torch.arange(8.0) * 0.01  # a background that varies along x: each fill is visible
    x = torch.stack([(v + ramp).expand(3, 8, 8).clone() for v in (0.2, 0.4, 0.6, 0.8)])
    x[:, :, 2:4, 2:4] = 1.0  # the object: a white 2x2 square in every image
    boxes = torch.tensor([[2.0, 2.0, 4.0, 4.0]]).expand(4, 4)
    classes = torch.tensor([0, 0, 1, 1])
    v = reliance_images(x, classes, boxes, generator=torch.Generator().manual_seed(0))
    assert v.shape == (len(VARIANTS), 4, 3, 8, 8) == (9, 4, 3, 8, 8) and torch.equal(v[0], x)
    base = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(4, 1, 1)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:4, 2:4] = True
    t = {name[:-2]: v[i] for i, name in enumerate(VARIANTS) if name.endswith("_t")}
    b = {name[:-2]: v[i] for i, name in enumerate(VARIANTS) if name.endswith("_b")}
    # fill T: the box tiled from the widest strip beside it (right of the box: columns 4, 5 for 2, 3)
    tiled = t["background_only"][:, :, 2:4, 2:4]
    torch.testing.assert_close(tiled, (base + torch.tensor([0.04, 0.05])).unsqueeze(1).expand(4, 3, 2, 2))
    assert torch.equal(t["background_only"][:, :, ~inside], x[:, :, ~inside])
    own = base + 214 / 60 * 0.01  # the mean of the 60 background pixels (x sums to 214 outside the box)
    torch.testing.assert_close(t["object_only"][:, :, ~inside], own.expand(4, 3, 60))
    # fill B: black is each channel's darkest value of the background (column 0 of the ramp)
    torch.testing.assert_close(b["background_only"][:, :, inside], base.expand(4, 3, 4))
    torch.testing.assert_close(b["object_only"][:, :, ~inside], base.expand(4, 3, 60))
    for fill in (t, b):
        assert torch.equal(fill["object_only"][:, :, inside], x[:, :, inside])  # the object kept
        for mixed in (fill["mixed_same"], fill["mixed_rand"]):
            assert torch.equal(mixed[:, :, inside], x[:, :, inside])
        corner = fill["mixed_same"][:, 0, 0, 0]  # the background colour says whose background it is
        assert bool((corner[:2] < 0.5).all()) and bool((corner[2:] > 0.5).all())  # class 0: 0.2 / 0.4, 1: 0.6 / 0.8
        assert not torch.equal(fill["mixed_rand"][:, 0, 0, 0], x[:, 0, 0, 0])  # a derangement
        partner = fill["mixed_same"][:, 0, 0, 0].sub(x[:, 0, 0, 0]).abs() > 0  # the partner's background_only
        assert bool(partner.all())


def test_fill_b_reads_black_from_the_background_so_a_dark_object_does_not_paint_its_box():
    # dark objects on a light background: class 0 a small square, class 1 a large one. A model
    # that reads only the object (here: the number of dark pixels) must find nothing in the
    # background-only images; with black read over the whole image the box took the object's own
    # colour and its area gave the class away (background-only accuracy 1.00)
    n = 8
    x = torch.full((n, 3, 16, 16), 0.8) + torch.arange(16.0).mul(0.005)  # a light, slightly varying background
    boxes = torch.tensor([[2.0, 2.0, 5.0, 5.0], [2.0, 2.0, 12.0, 12.0]]).repeat(n // 2, 1)
    classes = torch.tensor([0, 1]).repeat(n // 2)
    for i in range(n):
        x1, y1, x2, y2 = boxes[i].long().tolist()
        x[i, :, y1:y2, x1:x2] = 0.05
    v = reliance_images(x, classes, boxes, generator=torch.Generator().manual_seed(0))
    background_b = v[VARIANTS.index("background_only_b")]
    inside = torch.zeros(n, 16, 16, dtype=torch.bool)
    for i in range(n):
        x1, y1, x2, y2 = boxes[i].long().tolist()
        inside[i, y1:y2, x1:x2] = True
    # the box holds the background's darkest value (column 0 of the light ramp), not the object's 0.05
    assert torch.equal(background_b[:, 0][inside], torch.full((int(inside.sum()),), 0.8))

    def reads_the_object(images: torch.Tensor) -> torch.Tensor:  # class 1 when many pixels are dark
        return ((images[:, 0] < 0.3).flatten(1).sum(1) > 20).long()

    assert torch.equal(reads_the_object(x), classes)  # it reads the originals perfectly ...
    assert bool((reads_the_object(background_b) == 0).all())  # ... and finds no class in the background
    old = torch.where(inside.unsqueeze(1), x.amin(dim=(2, 3), keepdim=True), x)  # the whole image's darkest value
    assert torch.equal(reads_the_object(old), classes)  # what fill B gave before: the box's area told the class
    whole = background_black(x, torch.ones(n, 1, 16, 16, dtype=torch.bool))  # no background: the whole image
    assert torch.equal(whole, x.amin(dim=(2, 3), keepdim=True))


def test_reliance_share_is_the_backgrounds_part_of_the_margin_with_a_seeded_interval():
    n = 400
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(len(VARIANTS), n, dtype=torch.bool)
    hits[0] = torch.arange(n) < 236  # original 0.59
    for f, (same, rand) in {"t": (248, 200), "b": (244, 196)}.items():
        order = torch.randperm(n, generator=g)
        hits[VARIANTS.index(f"mixed_same_{f}"), order[:same]] = True
        hits[VARIANTS.index(f"mixed_rand_{f}"), order[:rand]] = True
    r = reliance_share(hits, ("t", "b"), chance=0.12)
    assert r["gap"] == pytest.approx(0.12) and r["margin"] == pytest.approx(0.47)
    assert r["share"] == pytest.approx(0.12 / 0.47) and 0 < r["low"] < r["share"] < r["high"] < 0.5
    assert reliance_share(hits, ("t", "b"), chance=0.12) == r  # seeded: the same interval
    assert reliance_share(hits, ("t", "b"), chance=0.12, seed=1) != r
    wide = reliance_share(hits[:, :40], ("t",), chance=0.12)
    assert wide["high"] - wide["low"] > r["high"] - r["low"]  # fewer images, a wider interval
    narrow = reliance_share(hits, ("t", "b"), chance=0.12, confidence=0.5)
    assert r["low"] < narrow["low"] <= narrow["high"] < r["high"]
    only_t = reliance_share(hits, ("t",), chance=0.12)
    assert only_t["gap"] == pytest.approx(0.12)  # (248 - 200) / 400
    with pytest.raises(ValueError, match="fills must be a non-empty subset"):
        reliance_share(hits, (), chance=0.12)


def test_tiled_background_tiles_from_the_widest_strip_and_leaves_full_boxes_alone():
    x = torch.arange(36.0).view(1, 1, 6, 6).repeat(3, 1, 1, 1)
    boxes = torch.tensor([[1, 1, 3, 5], [0, 0, 6, 2], [0, 0, 6, 6]])
    filled, ok = tiled_background(x, boxes)
    assert ok.tolist() == [True, True, False]
    # image 0: right strip (3 columns) wider than left (1), above (1 row) and below (1 row):
    # box columns 1, 2 take columns 3, 4 of the same row
    assert filled[0, 0, 1:5, 1:3].tolist() == [[r + 3, r + 4] for r in (6.0, 12.0, 18.0, 24.0)]
    # image 1: the strip below (rows 2-5) is the largest; rows 0, 1 take rows 2, 3 of the same column
    assert torch.equal(filled[1, 0, 0:2], x[1, 0, 2:4])
    assert torch.equal(filled[2], x[2])  # nothing outside the box: left as it is
    assert torch.equal(filled[0, :, 0], x[0, :, 0]) and torch.equal(filled[1, :, 2:], x[1, :, 2:])


def test_reliance_images_use_masks_for_the_object():
    x = torch.rand(2, 3, 8, 8)
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    masks[:, :, 3, 3] = True
    boxes = torch.tensor([[1.0, 1.0, 6.0, 6.0]]).expand(2, 4)
    obj = reliance_images(x, torch.tensor([0, 1]), boxes, masks)[1]
    kept = (obj == x).all(1)  # the grown mask (3x3), not the whole 5x5 box
    assert kept[:, 2:5, 2:5].all() and int(kept.sum()) == 2 * 9


# ---------------------------------------------------------------------------- checkpoints
def _demo(num_classes: int = 6) -> DemoNet:
    torch.manual_seed(0)
    return DemoNet(num_classes=num_classes, width=4).eval()


@pytest.mark.parametrize("kind", ["salaug", "lightning", "prefixed", "bare"])
def test_demo_checkpoints_round_trip(kind, tmp_path):
    model = _demo()
    if kind == "salaug":
        ckpt = demo_checkpoint(model, 32)
    elif kind == "lightning":
        ckpt = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "epoch": 3}
    elif kind == "prefixed":
        ckpt = {"module." + k: v for k, v in model.state_dict().items()}
    else:
        ckpt = model.state_dict()
    torch.save(ckpt, tmp_path / "m.pt")
    loaded = load_demo_model(torch.load(tmp_path / "m.pt", weights_only=True))
    assert loaded.num_classes == 6 and loaded.width == 4 and loaded.in_channels == 3
    assert loaded.image_size == (32 if kind == "salaug" else None) and not loaded.model.training
    assert loaded.metadata.get("model") == ("DemoNet" if kind == "salaug" else None)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model(x))
    assert isinstance(demo_model_from_state(ckpt), DemoNet)


def test_bad_checkpoints_name_the_first_wrong_key():
    state = _demo().state_dict()
    missing = {k: v for k, v in state.items() if k != "features.4.weight"}
    with pytest.raises(ValueError, match="missing key 'features.4.weight'"):
        load_demo_model(missing)
    with pytest.raises(ValueError, match="unexpected key 'extra.bias'"):
        load_demo_model({**state, "extra.bias": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing key 'head.2.weight'"):
        load_demo_model({k: v for k, v in state.items() if not k.startswith("head")})
    wrong = dict(state)
    wrong["features.4.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ValueError, match=r"'features.4.weight' has shape \(3, 3, 3, 3\), expected \(8, 4, 3, 3\)"):
        load_demo_model(wrong)
    ckpt = demo_checkpoint(_demo(), 32)
    ckpt["salaug"]["num_classes"] = 5
    with pytest.raises(ValueError, match="metadata says num_classes=5 but its weights have 6"):
        load_demo_model(ckpt)
    with pytest.raises(ValueError, match="'note' is not a tensor"):
        load_demo_model({**state, "note": "hello"})


def test_image_size_is_checked_against_the_checkpoint():
    recorded = load_demo_model(demo_checkpoint(_demo(), 48))
    assert check_image_size(recorded, None) == 48 == check_image_size(recorded, 48)
    with pytest.raises(ValueError, match="--size 32 does not match the checkpoint's training image size 48"):
        check_image_size(recorded, 32)
    bare = load_demo_model(_demo().state_dict())
    assert check_image_size(bare, 40) == 40
    with pytest.raises(ValueError, match="does not record its training image size; pass --size"):
        check_image_size(bare, None)


# ---------------------------------------------------------------------------- structure
def test_the_package_imports_no_lightning_demo_or_cli():
    code = ("import sys, salaug.diagnosis; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning') or m in ('salaug.demo', 'salaug.cli', 'salaug.callback', "
            "'salaug.monitor')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
