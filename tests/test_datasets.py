"""The embedded ClutteredObjects dataset: determinism, splits, labels, boxes, masks, classes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from salaug.datasets import CLASS_NAMES, ClutteredObjects, Silhouettes, TexturedBlobs, draw_shapes


@pytest.fixture(scope="module")
def val_batch() -> dict[str, torch.Tensor]:
    return ClutteredObjects("val", size=48, length=200, return_mask=True).render(range(200))


def test_item_types_shapes_and_ranges() -> None:
    ds = ClutteredObjects("train", size=40, length=7, return_mask=True)
    assert len(ds) == 7 and "ClutteredObjects(split='train'" in repr(ds)
    image, label, box, mask = ds[5]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    torch.testing.assert_close(image * 255, (image * 255).round(), rtol=0, atol=1e-4)  # 8-bit levels
    assert isinstance(label, int) and 0 <= label < 10
    assert box.shape == (4,) and box.dtype == torch.float32
    assert mask.shape == (1, 40, 40) and mask.dtype == torch.bool
    assert len(ClutteredObjects("train", size=40, length=3)[0]) == 3  # no mask by default
    assert torch.equal(ds[-1][0], ds[6][0])
    with pytest.raises(IndexError):
        ds[7]


def test_default_lengths_and_classes() -> None:
    assert [len(ClutteredObjects(s)) for s in ("train", "val", "test")] == [5000, 1000, 1000]
    assert ClutteredObjects(num_classes=12).classes == CLASS_NAMES
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES) >= 12


def test_deterministic_per_seed_split_index_whatever_the_batch() -> None:
    a = ClutteredObjects("train", size=32, length=50, return_mask=True)
    b = ClutteredObjects("train", size=32, length=50, return_mask=True)
    batch = a.render([3, 17, 42])
    for j, i in enumerate([3, 17, 42]):
        image, label, box, mask = b[i]
        assert torch.equal(batch["image"][j], image)
        assert int(batch["label"][j]) == label
        assert torch.equal(batch["box"][j], box) and torch.equal(batch["mask"][j], mask)
    other_seed = ClutteredObjects("train", size=32, length=50, seed=1)
    assert not torch.equal(other_seed[3][0], b[3][0])


def test_splits_are_disjoint_streams() -> None:
    n = 120
    images = {s: ClutteredObjects(s, size=32, length=n).render(range(n))["image"] for s in ("train", "val", "test")}
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        dist = torch.cdist(images[s1].flatten(1), images[s2].flatten(1))
        assert float(dist.min()) > 1.0, (s1, s2)  # no image repeats across splits
    within = torch.cdist(images["train"].flatten(1), images["train"].flatten(1))
    assert float((within + torch.eye(n) * 1e9).min()) > 1.0  # nor within one


def test_labels_balanced_and_cheap_to_query() -> None:
    ds = ClutteredObjects("train", length=1000, num_classes=10)
    labels = ds.labels()
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 100))
    assert torch.equal(labels[:30], ds.render(range(30))["label"])
    assert not torch.equal(labels[:10], labels[10:20])  # the order within blocks is random
    eight = ClutteredObjects("val", length=64, num_classes=8).labels()
    assert int(eight.max()) == 7 and torch.bincount(eight).min() == 8


def test_box_is_tight_around_mask_and_inside_image(val_batch: dict[str, torch.Tensor]) -> None:
    mask, box = val_batch["mask"], val_batch["box"]
    n, _, h, w = mask.shape
    assert bool(mask.flatten(1).any(1).all())
    ys = torch.arange(h).view(1, 1, h, 1)
    xs = torch.arange(w).view(1, 1, 1, w)
    x1, y1, x2, y2 = (box[:, i].view(n, 1, 1, 1) for i in range(4))
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    assert not bool((mask & ~inside).any())  # box contains the mask
    # Tight: every edge row/column of the box holds a mask pixel.
    idx = torch.arange(n)
    assert bool(mask[idx, 0, :, box[:, 0].long()].any(1).all())
    assert bool(mask[idx, 0, :, box[:, 2].long() - 1].any(1).all())
    assert bool(mask[idx, 0, box[:, 1].long(), :].any(1).all())
    assert bool(mask[idx, 0, box[:, 3].long() - 1, :].any(1).all())
    assert float(box.min()) >= 0 and float(box[:, 2].max()) <= w and float(box[:, 3].max()) <= h
    # Objects are whole (never touch the border) and sizeable.
    assert float(box[:, :2].min()) >= 1 and float(box[:, 2:].max()) <= w - 1
    side = torch.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    assert float(side.min()) >= 0.1 * w


def test_object_is_visible_against_its_surroundings(val_batch: dict[str, torch.Tensor]) -> None:
    image, mask = val_batch["image"], val_batch["mask"]
    luma = (image * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    inside = (luma * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    ring = torch.nn.functional.max_pool2d(mask.float(), 7, 1, 3).bool() & ~mask
    around = (luma * ring).sum((1, 2, 3)) / ring.sum((1, 2, 3))
    assert float((inside - around).abs().median()) > 0.2


def test_clutter_adds_fragments_and_texture_but_not_to_clean_images() -> None:
    clean = ClutteredObjects("train", size=48, length=32, clutter=0.0, return_mask=True).render(range(32))
    busy = ClutteredObjects("train", size=48, length=32, clutter=1.0, return_mask=True).render(range(32))
    assert torch.equal(clean["mask"], busy["mask"]) and torch.equal(clean["label"], busy["label"])

    def background_roughness(batch: dict[str, torch.Tensor]) -> float:
        img, bg = batch["image"], ~batch["mask"]
        dx = (img[..., 1:] - img[..., :-1]).abs() * bg[..., 1:] * bg[..., :-1]
        return float(dx.sum() / (bg[..., 1:] & bg[..., :-1]).sum())

    assert background_roughness(busy) > 4 * background_roughness(clean)
    with pytest.raises(ValueError, match="clutter"):
        ClutteredObjects(clutter=-1.0)


def test_classes_are_visually_distinct_shapes() -> None:
    # Every pair of classes differs a lot at the same pose, even after any allowed rotation.
    k, size = len(CLASS_NAMES), 48
    angles = torch.tensor([-20.0, 0.0, 20.0]) * math.pi / 180
    ids = torch.arange(k).repeat_interleave(len(angles))
    ang = angles.repeat(k)
    cov = draw_shapes(ids, torch.full((len(ids), 2), 24.0), torch.full((len(ids),), 20.0), ang, size)
    m = (cov >= 0.5).flatten(1).float()
    inter = m @ m.T
    iou = inter / (m.sum(1, keepdim=True) + m.sum(1) - inter)
    same = ids.view(-1, 1) == ids.view(1, -1)
    assert float(iou[~same].max()) < 0.8
    assert float(m.sum(1).min()) > 100  # no degenerate shape


def test_label_conditional_images_differ_and_nearest_template_classifies() -> None:
    # Nearest template on clean renders: a bank of templates over the allowed rotations and a few
    # scales per class recognises random poses, so the shapes alone identify the class.
    k, size = 10, 48
    scales = torch.tensor([16.0, 18.0, 20.0])
    rots = torch.linspace(-20, 20, 5) * math.pi / 180
    bank_ids = torch.arange(k).repeat_interleave(len(scales) * len(rots))
    bank_r = scales.repeat_interleave(len(rots)).repeat(k)
    bank_a = rots.repeat(k * len(scales))
    templates = draw_shapes(bank_ids, torch.full((len(bank_ids), 2), 24.0), bank_r, bank_a, size)
    g = torch.Generator().manual_seed(0)
    n = 200
    labels = torch.randint(0, k, (n,), generator=g)
    radii = 16.0 + 4.0 * torch.rand(n, generator=g)
    angles = (torch.rand(n, generator=g) * 2 - 1) * 20 * math.pi / 180
    shifted = 24.0 + (torch.rand(n, 2, generator=g) - 0.5)
    renders = draw_shapes(labels, shifted, radii, angles, size)
    dist = torch.cdist(renders.flatten(1), templates.flatten(1))
    assert float((bank_ids[dist.argmin(1)] == labels).float().mean()) > 0.95

    # Label-conditional mean masks of the dataset itself differ between classes.
    batch = ClutteredObjects("train", size=32, length=400, return_mask=True).render(range(400))
    obj = batch["mask"].float()
    fill = obj.sum((1, 2, 3)) / ((batch["box"][:, 2] - batch["box"][:, 0]) * (batch["box"][:, 3] - batch["box"][:, 1]))
    per_class = torch.stack([fill[batch["label"] == c].mean() for c in range(k)])
    assert float(per_class.max() - per_class.min()) > 0.3  # e.g. square ~1 vs ring/cross much less


def test_cache_returns_identical_samples() -> None:
    lazy = ClutteredObjects("test", size=32, length=40, return_mask=True)
    cached = ClutteredObjects("test", size=32, length=40, return_mask=True, cache=True)
    for i in (0, 13, 39):
        for a, b in zip(lazy[i], cached[i]):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    ra, rb = lazy.render([5, 1]), cached.render([5, 1])
    assert all(torch.equal(ra[key], rb[key]) for key in ra)
    assert ClutteredObjects("val", size=32, length=0, cache=True).render([])["image"].shape == (0, 3, 32, 32)


def test_dataloader_uses_batched_getitems() -> None:
    ds = ClutteredObjects("val", size=32, length=20)
    images, labels, boxes = next(iter(DataLoader(ds, batch_size=8)))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64 and boxes.shape == (8, 4)
    expected = ds.render(range(8))
    assert torch.equal(images, expected["image"]) and torch.equal(labels, expected["label"])


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        ClutteredObjects("training")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        ClutteredObjects(num_classes=13)
    with pytest.raises(ValueError, match="size"):
        ClutteredObjects(size=8)
    with pytest.raises(ValueError, match="seed"):
        ClutteredObjects(seed=-1)
    with pytest.raises(TypeError, match="size"):
        ClutteredObjects(size="32")  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        ClutteredObjects(length=5).render([0, 5])
    with pytest.raises(ValueError, match="draw_shapes"):
        draw_shapes(torch.tensor([0]), torch.zeros(2), torch.ones(1), torch.zeros(1), 8)


# --------------------------------------------------------------------------- shift splits
def _digest(ds: ClutteredObjects) -> str:
    import hashlib

    b = ds.render(range(len(ds)))
    h = hashlib.sha256(torch.round(b["image"] * 255).to(torch.uint8).numpy().tobytes())
    for key in ("label", "box", "mask"):
        h.update(b[key].to(torch.int64 if key == "box" else b[key].dtype).numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("kwargs", "digest"),
    [
        (dict(split="train", size=32, length=64), "d49fbd2570d8ee1c"),
        (dict(split="test", size=48, length=64, seed=3, clutter=1.5), "6e197bb7c333f855"),
        (dict(split="val", size=64, length=32, num_classes=12, clutter=0.0), "a84a378fa3f10942"),
    ],
)
def test_default_samples_are_bit_identical_to_the_recorded_ones(kwargs: dict, digest: str) -> None:
    # Digests recorded before the shift options existed: the defaults must never change samples.
    assert _digest(ClutteredObjects(**kwargs)) == digest
    explicit = dict(kwargs, background="default", occlusion=0.0, object_scale=(0.14, 0.26))
    assert _digest(ClutteredObjects(**explicit)) == digest


def test_shifted_background_changes_only_the_background() -> None:
    kw = dict(split="test", size=48, length=48, return_mask=True)
    base = ClutteredObjects(**kw).render(range(48))
    shifted = ClutteredObjects(**kw, background="shifted").render(range(48))
    assert torch.equal(base["label"], shifted["label"]) and torch.equal(base["mask"], shifted["mask"])
    assert torch.equal(base["box"], shifted["box"])
    bg = ~base["mask"]
    differs = ((base["image"] - shifted["image"]).abs().amax(1, keepdim=True) > 0.1) & bg
    assert float(differs.sum() / bg.sum()) > 0.3  # most of the background is redrawn

    def orientation_energy(img: torch.Tensor) -> torch.Tensor:
        # A checkerboard has edges along two perpendicular directions; a grating along one.
        gx = (img[..., :, 1:] - img[..., :, :-1]).abs().mean((1, 2, 3))
        gy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean((1, 2, 3))
        return torch.minimum(gx, gy) / torch.maximum(gx, gy)

    clean_kw = dict(kw, clutter=1.0)
    assert float(orientation_energy(shifted["image"]).mean()) > float(orientation_energy(base["image"]).mean())
    flat = ClutteredObjects(**dict(clean_kw, clutter=0.0), background="shifted").render(range(8))
    assert torch.equal(flat["image"], ClutteredObjects(**dict(clean_kw, clutter=0.0)).render(range(8))["image"])
    with pytest.raises(ValueError, match="background"):
        ClutteredObjects(background="textured")  # type: ignore[arg-type]


@pytest.mark.parametrize("occlusion", [0.1, 0.3, 0.6])
def test_occlusion_hides_the_requested_fraction_and_masks_stay_true(occlusion: float) -> None:
    kw = dict(split="val", size=48, length=64, return_mask=True)
    base = ClutteredObjects(**kw).render(range(64))
    hidden = ClutteredObjects(**kw, occlusion=occlusion).render(range(64))
    assert torch.equal(base["label"], hidden["label"])
    before, after = base["mask"], hidden["mask"]
    assert not bool((after & ~before).any())  # visible pixels are object pixels
    area = before.flatten(1).sum(1).float()
    kept = after.flatten(1).sum(1).float()
    assert torch.allclose(1 - kept / area, torch.full_like(area, occlusion), atol=0.5 / float(area.min()) + 1e-6)
    # Hidden object pixels show the occluder, not the object; visible ones are unchanged.
    gone = before & ~after
    assert float((hidden["image"] - base["image"]).abs().amax(1, keepdim=True)[gone].mean()) > 0.1
    assert torch.equal(hidden["image"].masked_select(after), base["image"].masked_select(after))
    # The box is the tight box of the visible pixels.
    n, _, h, w = after.shape
    ys, xs = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
    x1, y1, x2, y2 = (hidden["box"][:, i].view(n, 1, 1, 1) for i in range(4))
    assert not bool((after & ~((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2))).any())
    idx = torch.arange(n)
    assert bool(after[idx, 0, :, hidden["box"][:, 0].long()].any(1).all())
    assert bool(after[idx, 0, hidden["box"][:, 3].long() - 1, :].any(1).all())


def test_occlusion_and_cache_agree_and_bad_values_raise() -> None:
    kw = dict(split="test", size=32, length=10, return_mask=True, occlusion=0.4, background="shifted")
    lazy, cached = ClutteredObjects(**kw), ClutteredObjects(**kw, cache=True)
    assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(lazy[7], cached[7]))
    assert "occlusion=0.4" in repr(lazy) and "background='shifted'" in repr(lazy)
    for bad in (-0.1, 0.95):
        with pytest.raises(ValueError, match="occlusion"):
            ClutteredObjects(occlusion=bad)
    with pytest.raises(TypeError, match="occlusion"):
        ClutteredObjects(occlusion=True)


def test_object_scale_makes_smaller_objects_with_true_masks() -> None:
    kw = dict(split="test", size=48, length=64, return_mask=True)
    small = ClutteredObjects(**kw, object_scale=(0.08, 0.12)).render(range(64))
    base = ClutteredObjects(**kw).render(range(64))
    assert torch.equal(small["label"], base["label"])
    side = torch.maximum(small["box"][:, 2] - small["box"][:, 0], small["box"][:, 3] - small["box"][:, 1])
    assert float(side.max()) <= 2 * 0.12 * 48 + 2  # inside the circumscribed disc
    def mean_area(masks):
        return float(masks.flatten(1).sum(1).float().mean())

    assert mean_area(small["mask"]) < 0.4 * mean_area(base["mask"])
    # The mask is the object: its pixels carry the object colour, uniform within each image.
    img, m = small["image"], small["mask"]
    inner = m & torch.nn.functional.max_pool2d((~m).float(), 3, 1, 1).eq(0)
    spread = ((img - (img * inner).sum((2, 3), keepdim=True) / inner.sum((2, 3), keepdim=True).clamp(min=1)).abs()
              .amax(1, keepdim=True) * inner).amax((1, 2, 3))
    assert float(spread[inner.flatten(1).any(1)].max()) < 0.02
    assert "object_scale=(0.08, 0.12)" in repr(ClutteredObjects(object_scale=(0.08, 0.12)))
    for bad in ((0.2, 0.1), (0.0, 0.1), (0.1, 0.5)):
        with pytest.raises(ValueError, match="object_scale"):
            ClutteredObjects(object_scale=bad)  # type: ignore[arg-type]
    for bad in ((0.1,), "small"):
        with pytest.raises(TypeError, match="object_scale"):
            ClutteredObjects(object_scale=bad)  # type: ignore[arg-type]


# --- TexturedBlobs: the held-out dataset -------------------------------------------------------------

def test_textured_blobs_samples_do_not_depend_on_the_batch_and_splits_differ():
    from salaug.datasets import TexturedBlobs

    ds = TexturedBlobs("train", size=24, length=300, return_mask=True)
    whole = ds.render(range(300))
    picked = ds.render([299, 3, 257, 3])
    for key in whole:
        assert torch.equal(picked[key], whole[key][[299, 3, 257, 3]]), key
    image, label, box, mask = ds[257]
    assert torch.equal(image, whole["image"][257]) and label == int(whole["label"][257]) and mask.dtype == torch.bool
    other = TexturedBlobs("test", size=24, length=300).render(range(300))
    assert not torch.equal(other["image"], whole["image"])
    assert torch.equal(TexturedBlobs("train", size=24, length=300).render(range(300))["image"], whole["image"])


def test_textured_blobs_labels_boxes_and_masks_are_consistent():
    from salaug.datasets import TEXTURE_NAMES, TexturedBlobs

    ds = TexturedBlobs("val", size=32, length=40, num_classes=4, return_mask=True)
    b = ds.render(range(40))
    assert b["image"].shape == (40, 3, 32, 32) and 0 <= b["image"].min() and b["image"].max() <= 1
    for start in range(0, 40, 4):  # balanced within every block of num_classes indices
        assert sorted(b["label"][start:start + 4].tolist()) == [0, 1, 2, 3]
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    for i in range(40):
        m = b["mask"][i, 0]
        x1, y1, x2, y2 = b["box"][i].long().tolist()
        assert m.any() and int(xs[m].min()) == x1 and int(xs[m].max()) + 1 == x2
        assert int(ys[m].min()) == y1 and int(ys[m].max()) + 1 == y2
    area = b["mask"].float().mean((1, 2, 3))
    assert 0.04 < float(area.min()) and float(area.max()) < 0.5
    assert ds.classes == TEXTURE_NAMES[:4]


def test_textured_blobs_shift_options_keep_the_labels():
    from salaug.datasets import TexturedBlobs

    base = TexturedBlobs("test", size=32, length=20, return_mask=True).render(range(20))
    shifted = TexturedBlobs("test", size=32, length=20, background="shifted", return_mask=True).render(range(20))
    small = TexturedBlobs("test", size=32, length=20, object_scale=(0.1, 0.12), return_mask=True).render(range(20))
    assert torch.equal(base["label"], shifted["label"]) and torch.equal(base["label"], small["label"])
    assert not torch.equal(base["image"], shifted["image"])
    assert small["mask"].float().mean() < base["mask"].float().mean()


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "dev"}, "split"), ({"size": 8}, "size"), ({"num_classes": 11}, "num_classes"),
    ({"length": -1}, "length"), ({"seed": -2}, "seed"), ({"background": "plain"}, "background"),
    ({"object_scale": (0.3, 0.2)}, "object_scale"), ({"object_scale": (0.1, 0.6)}, "object_scale"),
])
def test_textured_blobs_bad_arguments_are_named(kwargs, match):
    from salaug.datasets import TexturedBlobs

    with pytest.raises((ValueError, TypeError), match=match):
        TexturedBlobs(**kwargs)
    with pytest.raises(IndexError):
        TexturedBlobs(length=3)[3]


@pytest.mark.parametrize("scale", [(0.16, 0.26), (0.3, 0.3)])
@pytest.mark.parametrize("size", [16, 32])
def test_textured_blobs_objects_lie_fully_inside_over_the_documented_range(scale, size):
    # the promise of the docstring, over many samples: no object pixel (not even its anti-aliased
    # edge) on the border rows / columns, up to the largest documented scale and the smallest size
    from salaug.datasets import TexturedBlobs

    b = TexturedBlobs("train", size=size, length=512, object_scale=scale, return_mask=True).render(range(512))
    m = b["mask"][:, 0]
    on_border = m[:, 0].any(1) | m[:, -1].any(1) | m[:, :, 0].any(1) | m[:, :, -1].any(1)
    assert int(on_border.sum()) == 0
    box = b["box"]
    assert bool((box[:, :2] >= 1).all()) and bool((box[:, 2:] <= size - 1).all())


def test_textured_blobs_refuse_a_scale_that_cannot_fit():
    from salaug.datasets import TexturedBlobs

    with pytest.raises(ValueError, match=r"object_scale\[1\] must be a number in \(0, 0.3\]"):
        TexturedBlobs(object_scale=(0.2, 0.4))


@pytest.mark.parametrize("name", ["TexturedBlobs", "ClutteredObjects"])
def test_negative_index_out_of_range_names_the_index_given(name):
    from salaug import datasets

    ds = getattr(datasets, name)(length=4, size=16)
    with pytest.raises(IndexError, match=r"index -5 out of range for a dataset of length 4 \(valid: -4 to 3\)"):
        ds[-5]
    with pytest.raises(IndexError, match="index 4 out of range"):
        ds[4]
    assert torch.equal(ds[-4][0], ds[0][0]) and torch.equal(ds[torch.tensor(-1)][0], ds[3][0])
    with pytest.raises(TypeError, match="must be integers"):
        ds[1.0]


@pytest.mark.parametrize("cls", [ClutteredObjects, TexturedBlobs])
def test_shift_splits_are_constructor_options_that_change_the_images(cls):
    base = cls("test", size=32, length=4, seed=3)[0][0]
    assert cls.SHIFTS and "background" in cls.SHIFTS
    for name, options in cls.SHIFTS.items():
        shifted = cls("test", size=32, length=4, seed=3, **options)[0][0]
        assert shifted.shape == base.shape and not torch.equal(shifted, base), name
    with pytest.raises(TypeError):
        cls.SHIFTS["new"] = {}  # type: ignore[index]  # one definition, read-only


@pytest.mark.parametrize("cls", [ClutteredObjects, Silhouettes, TexturedBlobs])
@pytest.mark.parametrize("seed", [1_700_000_000_000_000_000, 2**63, 2**200])
def test_any_non_negative_seed_renders(cls, seed) -> None:
    # a nanosecond timestamp or a seed past int64 overflowed the generator's seed before
    a = cls("train", size=32, length=4, seed=seed)[1][0]
    b = cls("train", size=32, length=4, seed=seed)[1][0]
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert not torch.equal(a, cls("train", size=32, length=4, seed=seed + 1)[1][0])
