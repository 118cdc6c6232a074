"""Hostile inputs to the data path: mask files, MaskBank, MaskedDataset, precompute_masks,
SaliencyCollate and CAMSaliency. Each ends in a correct result or an error naming the problem and
the fix."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from salaug.data import CAMSaliency, MaskBank, MaskedDataset, SaliencyCollate, precompute_masks, save_masks
from salaug.transforms import SaliencyMix, SaliencyTransform, SalientBatch


def mean_source(images):
    return images.mean(1, keepdim=True).clamp(0, 1)


class Identity(SaliencyTransform):
    def generate_parameters(self, images, saliency):
        return {"applied": self.sample_applied(images.shape[0], images.device)}

    def apply_transform(self, images, saliency, labels, params):
        return SalientBatch(images, saliency, labels)


class Pairs(Dataset):
    def __init__(self, n=4, size=8):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3, self.size, self.size), i / self.n), i % 2


class CountingNet(nn.Module):
    """A tiny CNN that counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.features(x))


@pytest.fixture
def good_file(tmp_path):
    return save_masks(tmp_path / "good.salm", torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0)))


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


# ---------------------------------------------------------------------------------------------
# file modes: the umask, as for any other written file
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mask_files_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = save_masks(tmp_path / "m.salm", torch.rand(2, 1, 2, 2))
    assert stat.S_IMODE(path.stat().st_mode) == mode
    out = precompute_masks(CountingNet(), Pairs(n=2), tmp_path / "p.salm", target_layer="features.0")
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_overwriting_a_mask_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = save_masks(tmp_path / "m.salm", torch.rand(2, 1, 2, 2))
    path.chmod(0o640)
    save_masks(path, torch.rand(3, 1, 2, 2))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and len(MaskBank(path)) == 3


# ---------------------------------------------------------------------------------------------
# opening mask files: say what is wrong
# ---------------------------------------------------------------------------------------------
def test_mask_path_none_or_not_a_path(good_file):
    with pytest.raises(TypeError, match="must be a file path.*got None"):
        MaskedDataset(Pairs(), None)
    with pytest.raises(TypeError, match="must be a file path.*got 3"):
        MaskBank(3)
    with pytest.raises(ValueError, match="empty string"):
        MaskBank("")


def test_mask_path_is_a_directory(tmp_path, good_file):
    with pytest.raises(IsADirectoryError, match=r"is a directory, not a mask file.*good\.salm"):
        MaskedDataset(Pairs(), tmp_path)  # it also names the mask files inside
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory, not a mask file; pass the file written by"):
        MaskBank(tmp_path / "sub")


def test_mask_path_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; write it first with salaug.data.precompute_masks"):
        MaskBank(tmp_path / "nope.salm")


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"SALMA", "truncated"),  # a prefix of the magic: a cut-off mask file
    (b"PK\x03\x04" + b"\x00" * 60, "looks like a zip archive, e.g. a torch.save checkpoint"),
    (b"\x93NUMPY" + b"\x00" * 60, "looks like a numpy .npy file"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 60, "looks like a PNG image"),
    (b"hello world, not masks at all" * 3, "unknown format"),
])
def test_files_of_another_format_or_cut_short(tmp_path, content, fragment):
    path = tmp_path / "x.salm"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="x.salm") as err:
        MaskBank(path)
    assert fragment in str(err.value)


def test_real_foreign_files_are_recognised(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(ValueError, match="torch.save checkpoint.*precompute_masks"):
        MaskBank(tmp_path / "w.pt")
    with pytest.raises(ValueError, match="numpy"):
        MaskBank(tmp_path / "a.npy")


def test_corrupt_data_length_and_mismatched_dataset(good_file):
    raw = good_file.read_bytes()
    good_file.with_name("cut.salm").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="is truncated: its header declares 4 masks of 2x2"):
        MaskBank(good_file.with_name("cut.salm"))
    with pytest.raises(ValueError, match="holds 4 masks but the dataset has 5 samples; recompute"):
        MaskedDataset(Pairs(n=5), good_file)
    with pytest.raises(ValueError, match="holds 4 masks but the dataset has 3 samples"):
        MaskedDataset(Pairs(n=3), MaskBank(good_file))


def test_masked_dataset_bad_arguments(good_file):
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([])

    with pytest.raises(TypeError, match="map-style dataset"):
        MaskedDataset(Stream(), good_file)
    with pytest.raises(TypeError, match="transforms must be a torchvision v2 transform"):
        MaskedDataset(Pairs(), good_file, transforms="flip")
    with pytest.raises(TypeError, match="mask_key must be a str"):
        MaskedDataset(Pairs(), good_file, mask_key=3)


def test_masked_dataset_image_of_a_wrong_kind(good_file):
    class Named(Pairs):
        def __getitem__(self, i):
            return "cat.png", 0

    class Flat(Pairs):
        def __getitem__(self, i):
            return torch.zeros(1, 3, 8, 8), 0

    with pytest.raises(TypeError, match="image_key=0; pass image_key="):
        MaskedDataset(Named(), good_file)[0]
    with pytest.raises(ValueError, match=r"images must be \(C, H, W\) or \(H, W\), got \(1, 3, 8, 8\)"):
        MaskedDataset(Flat(), good_file)[0]


def test_masked_dataset_grayscale_2d_image_is_accepted(good_file):
    class Gray(Pairs):
        def __getitem__(self, i):
            return torch.rand(8, 8), 0

    image, label, mask = MaskedDataset(Gray(), good_file)[1]
    assert image.shape == (1, 8, 8) and mask.shape == (1, 8, 8)
    assert 0 <= float(mask.min()) and float(mask.max()) <= 1


@pytest.mark.parametrize("indices, error", [
    ([0.5, 1.0], TypeError), (torch.tensor([0.0]), TypeError), (torch.tensor([True, False]), TypeError),
    ([[0, 1]], TypeError), ([0, 4], IndexError), ([-5], IndexError),
])
def test_mask_bank_get_refuses_non_integer_or_out_of_range_indices(good_file, indices, error):
    with pytest.raises(error):
        MaskBank(good_file).get(indices)


def test_mask_bank_item_refuses_bool_and_float(good_file):
    bank = MaskBank(good_file)
    for index in (True, 1.0, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="integers"):
            bank[index]
    assert bank[np.int64(-1)].shape == (1, 2, 2) and bank.get([]).shape == (0, 1, 2, 2)


# ---------------------------------------------------------------------------------------------
# save_masks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_save_masks_refuses_non_finite_values(tmp_path, bad):
    masks = torch.rand(2, 1, 2, 2)
    masks[1, 0, 0, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf; replace them first"):
        save_masks(tmp_path / "m.salm", masks)
    assert not (tmp_path / "m.salm").exists()


def test_save_masks_clamps_huge_and_negative_values(tmp_path):
    path = save_masks(tmp_path / "m.salm", torch.tensor([[[1e30, -1e30], [0.5, 2.0]]]))
    assert MaskBank(path)[0].flatten().tolist() == pytest.approx([1.0, 0.0, 128 / 255, 1.0])


def test_save_masks_description_must_be_json_and_cannot_lie_about_the_file(tmp_path):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_masks(tmp_path / "m.salm", torch.rand(1, 2, 2), description={"model": nn.Linear(1, 1)})
    with pytest.raises(TypeError, match="dict of JSON values"):
        save_masks(tmp_path / "m.salm", torch.rand(1, 2, 2), description=["a"])
    path = save_masks(tmp_path / "m.salm", torch.rand(3, 2, 2), description={"mask_size": [9, 9], "note": "x"})
    desc = MaskBank(path).description
    assert desc["mask_size"] == [2, 2] and desc["num_samples"] == 3 and desc["note"] == "x"


def test_save_masks_output_path_problems(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name inside it"):
        save_masks(tmp_path, torch.rand(1, 2, 2))
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        save_masks(tmp_path / "f" / "m.salm", torch.rand(1, 2, 2))


# ---------------------------------------------------------------------------------------------
# precompute_masks: check everything before the first forward
# ---------------------------------------------------------------------------------------------
def test_precompute_output_is_checked_before_any_mask_is_computed(tmp_path):
    net = CountingNet()
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name inside it"):
        precompute_masks(net, Pairs(), tmp_path, target_layer="features.0")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        precompute_masks(net, Pairs(), tmp_path / "f" / "m.salm", target_layer="features.0")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        precompute_masks(net, Pairs(), tmp_path / "m.salm", target_layer="features.0",
                         description={"bad": object()})
    assert net.calls == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_precompute_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    net = CountingNet()
    try:
        with pytest.raises(PermissionError, match="no write permission"):
            precompute_masks(net, Pairs(), locked / "m.salm", target_layer="features.0")
    finally:
        locked.chmod(0o700)
    assert net.calls == 0


def test_precompute_missing_parent_is_created(tmp_path):
    out = precompute_masks(CountingNet(), Pairs(), tmp_path / "a" / "b" / "m.salm", target_layer="features.0")
    assert len(MaskBank(out)) == 4


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"batch_size": True}, TypeError, "batch_size must be an int >= 1"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int >= 1"),
    ({"num_workers": -1}, ValueError, "num_workers must be an int >= 0"),
    ({"dtype": "float32"}, ValueError, r"dtype must be one of \('uint8', 'float16'\)"),
    ({"targets": "truth"}, ValueError, r"targets must be one of \('labels', 'predicted'\)"),
    ({"label_key": None}, ValueError, "targets='labels' needs label_key"),
    ({"image_key": 1.5}, TypeError, "image_key must be an int position"),
])
def test_precompute_bad_arguments(tmp_path, kwargs, error, fragment):
    net = CountingNet()
    with pytest.raises(error, match=fragment):
        precompute_masks(net, Pairs(), tmp_path / "m.salm", target_layer="features.0", **kwargs)
    assert net.calls == 0


def test_precompute_bad_model_or_dataset(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([])

    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        precompute_masks(lambda x: x, Pairs(), tmp_path / "m.salm")
    with pytest.raises(TypeError, match="map-style dataset"):
        precompute_masks(CountingNet(), Stream(), tmp_path / "m.salm")


@pytest.mark.parametrize("label", ["cat", 1.0, torch.tensor(1.5), None])
def test_precompute_labels_must_be_class_indices(tmp_path, label):
    class Labelled(Pairs):
        def __getitem__(self, i):
            return torch.rand(3, 8, 8), label

    with pytest.raises(TypeError, match="integer class-index labels.*targets='predicted'"):
        precompute_masks(CountingNet(), Labelled(), tmp_path / "m.salm", target_layer="features.0")
    assert not (tmp_path / "m.salm").exists()


# ---------------------------------------------------------------------------------------------
# SaliencyCollate
# ---------------------------------------------------------------------------------------------
def _collate(**kwargs):
    return SaliencyCollate(Identity(), kwargs.pop("saliency", mean_source), num_classes=2, **kwargs)


@pytest.mark.parametrize("samples", [[], (), torch.zeros(2, 3, 8, 8), "ab", iter([1])])
def test_collate_needs_a_non_empty_list(samples):
    with pytest.raises(ValueError, match="non-empty list of samples"):
        _collate()(samples)


def test_collate_one_element_batch_is_correct():
    images = torch.rand(1, 3, 8, 8)
    out_images, labels = SaliencyCollate(SaliencyMix(num_classes=3), mean_source, seed=0)([(images[0], 2)])
    assert out_images.shape == (1, 3, 8, 8) and labels.tolist() == [[0.0, 0.0, 1.0]]
    torch.testing.assert_close(out_images, images)  # its only partner is itself


def test_collate_mixed_sample_kinds():
    with pytest.raises(TypeError, match="sample 1 is a tuple but sample 0 is a dict"):
        _collate(image_key=0, label_key=1)([{0: torch.rand(3, 8, 8), 1: 0}, (torch.rand(3, 8, 8), 1)])
    with pytest.raises(TypeError, match="sample 0 is a int"):
        _collate()([1, 2])
    with pytest.raises(ValueError, match="sample 1 has 3 fields but sample 0 has 2"):
        _collate()([(torch.rand(3, 8, 8), 0), (torch.rand(3, 8, 8), 1, "x")])


def test_collate_images_of_different_sizes_or_not_tensors():
    from PIL import Image

    with pytest.raises(ValueError, match=r"share one shape: sample 0 is \(3, 8, 8\), sample 1 is \(3, 9, 8\); resize"):
        _collate()([(torch.rand(3, 8, 8), 0), (torch.rand(3, 9, 8), 1)])
    with pytest.raises(TypeError, match="is a Image, not a tensor.*v2.ToImage"):
        _collate()([(Image.new("RGB", (8, 8)), 0)])
    with pytest.raises(TypeError, match="floating-point"):
        _collate()([(torch.zeros(3, 8, 8, dtype=torch.uint8), 0)])


def test_collate_string_labels():
    with pytest.raises(TypeError, match="label_key=1 collate to (list|tuple).*class indices"):
        _collate()([(torch.rand(3, 8, 8), "cat"), (torch.rand(3, 8, 8), "dog")])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_collate_non_finite_pixels_are_named(bad):
    samples = [(torch.rand(3, 8, 8), 0) for _ in range(3)]
    samples[2][0][1, 2, 3] = bad
    message = r"images contain \d+ NaN or inf value\(s\) of \d+ in sample\(s\) \[2\]; fix the dataset"
    with pytest.raises(ValueError, match=message):
        _collate()(samples)


def test_collate_huge_pixel_values_give_a_correct_batch():
    samples = [(torch.full((3, 8, 8), 1e30), 0), (torch.zeros(3, 8, 8), 1)]
    images, labels = SaliencyCollate(SaliencyMix(num_classes=2), lambda x: torch.rand(2, 1, 8, 8), seed=0)(samples)
    assert torch.isfinite(images).all() and torch.allclose(labels.sum(1), torch.ones(2))


@pytest.mark.parametrize("source, error, fragment", [
    (lambda x: x, ValueError, r"returned shape \(2, 3, 8, 8\).*\(2, 1, h, w\), one map per image"),
    (lambda x: x[:1, :1], ValueError, r"returned shape \(1, 1, 8, 8\)"),
    (lambda x: x[:, :1].numpy(), TypeError, "must return a float .* tensor, got ndarray"),
    (lambda x: (x[:, :1] * 255).to(torch.uint8), TypeError, "got a torch.uint8 tensor"),
    (lambda x: torch.full_like(x[:, :1], float("nan")), ValueError, "maps of the saliency source .* NaN or inf"),
])
def test_collate_saliency_source_returns_something_wrong(source, error, fragment):
    samples = [(torch.rand(3, 8, 8), 0), (torch.rand(3, 8, 8), 1)]
    with pytest.raises(error, match=fragment):
        _collate(saliency=source)(samples)


def test_collate_low_resolution_source_is_resized():
    samples = [(torch.rand(3, 8, 8), 0), (torch.rand(3, 8, 8), 1)]
    out = _collate(saliency=lambda x: torch.rand(2, 2, 2), return_saliency=True)(samples)
    assert out[-1].shape == (2, 1, 8, 8)


def test_collate_masks_of_a_wrong_shape_kind_or_value():
    good = [(torch.rand(3, 8, 8), 0, torch.rand(1, 4, 4)), (torch.rand(3, 8, 8), 1, torch.rand(1, 4, 4))]
    images, labels = _collate(saliency="mask")(good)
    assert images.shape == (2, 3, 8, 8)
    three = [(s[0], s[1], torch.rand(3, 4, 4)) for s in good]
    message = r"mask at mask_key=-1 must be \(1, h, w\) or \(h, w\) per sample, got \(3, 4, 4\)"
    with pytest.raises(ValueError, match=message):
        _collate(saliency="mask")(three)
    listed = [(s[0], s[1], [0.5]) for s in good]
    with pytest.raises(TypeError, match="must be a tensor"):
        _collate(saliency="mask")(listed)
    nan = [(s[0], s[1], torch.full((1, 4, 4), float("nan"))) for s in good]
    message = r"masks at mask_key=-1 contain 32 NaN or inf value\(s\) of 32 in sample\(s\) \[0, 1\]; recompute"
    with pytest.raises(ValueError, match=message):
        _collate(saliency="mask")(nan)
    over = [(s[0], s[1], torch.full((1, 4, 4), 255.0)) for s in good]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _collate(saliency="mask")(over)


def test_collate_boolean_masks_are_read_as_zero_one():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    out = _collate(saliency="mask", return_saliency=True)([(torch.rand(3, 8, 8), 0, mask)])
    assert torch.equal(out[-1][0], mask.float())


def test_collate_keys_naming_the_same_field_or_of_a_wrong_type():
    samples = [(torch.rand(3, 8, 8), 0), (torch.rand(3, 8, 8), 1)]
    with pytest.raises(ValueError, match="image_key=-1 and label_key=1 name the same field"):
        _collate(image_key=-1, label_key=1)(samples)
    with pytest.raises(TypeError, match="image_key must be an int position"):
        _collate(image_key=0.0)
    with pytest.raises(TypeError, match="label_key must be an int position"):
        _collate(label_key=True)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_classes": True}, TypeError, "num_classes must be an int >= 1"),
    ({"num_classes": 2.5}, TypeError, "num_classes must be an int >= 1"),
    ({"num_classes": 0}, ValueError, "num_classes must be an int >= 1"),
    ({"seed": True}, TypeError, "seed must be an int"), ({"seed": 1.5}, TypeError, "seed must be an int"),
    ({"return_saliency": "yes"}, TypeError, "return_saliency must be True or False"),
    ({"mask_key": 1.5}, TypeError, "mask_key must be an int position"),
])
def test_collate_constructor_types(kwargs, error, match):
    with pytest.raises(error, match=match):
        SaliencyCollate(Identity(), mean_source, **kwargs)


def test_collate_transform_returning_something_else():
    with pytest.raises(TypeError, match="must return a SalientBatch"):
        SaliencyCollate(lambda images, saliency, labels, **kw: images, mean_source, num_classes=2)(
            [(torch.rand(3, 8, 8), 0)])


def test_collate_passes_its_stream_at_call_time_and_never_touches_the_transform():
    class Watched(Identity):
        def __setattr__(self, name, value):
            if name == "generator" and "generator" in self.__dict__:
                raise AssertionError("the collate must not swap the transform's generator")
            super().__setattr__(name, value)

        def forward(self, *args, generator=None, **kwargs):
            seen.append(generator)
            return super().forward(*args, generator=generator, **kwargs)

    seen: list = []
    collate = SaliencyCollate(Watched(num_classes=2), mean_source, seed=3)
    collate([(torch.rand(3, 8, 8), 0)])
    assert isinstance(seen[0], torch.Generator) and seen[0] is collate.stream()


def test_collate_from_several_threads_gives_each_its_own_stream():
    # one transform object shared by collates with different seeds, called concurrently
    t = SaliencyMix(num_classes=2)
    samples = [(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)), i % 2) for i in range(8)]
    sal = lambda x: torch.rand(x.shape[0], 1, 16, 16, generator=torch.Generator().manual_seed(0))  # noqa: E731
    expected = {s: SaliencyCollate(SaliencyMix(num_classes=2), sal, seed=s)(samples)[0] for s in range(4)}
    results: dict = {}

    def work(s):
        results[s] = SaliencyCollate(t, sal, seed=s)(samples)[0]

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for s in range(4):
        assert torch.equal(results[s], expected[s])


def test_collate_legacy_callable_without_a_generator_argument_still_gets_the_stream():
    class Legacy:
        generator = None

        def __call__(self, images, saliency, labels, num_classes=None):
            draws.append(torch.rand(1, generator=self.generator))
            return SalientBatch(images, saliency, torch.nn.functional.one_hot(labels, num_classes).float())

    draws: list = []
    legacy = Legacy()
    samples = [(torch.rand(3, 8, 8), 0)]
    SaliencyCollate(legacy, mean_source, num_classes=2, seed=1)(samples)
    SaliencyCollate(Legacy(), mean_source, num_classes=2, seed=1)(samples)
    assert torch.equal(draws[0], draws[1]) and legacy.generator is None


# ---------------------------------------------------------------------------------------------
# CAMSaliency
# ---------------------------------------------------------------------------------------------
def test_cam_saliency_label_targets_without_labels():
    source = CAMSaliency(CountingNet(), target_layer="features.0", targets="labels")
    with pytest.raises(ValueError, match="needs the batch's labels"):
        source(torch.rand(2, 3, 8, 8))
    maps = source(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 8, 8) and torch.isfinite(maps).all()


def test_cam_saliency_bad_device_and_images():
    with pytest.raises(ValueError, match="device must be a torch device"):
        CAMSaliency(CountingNet(), target_layer="features.0", device="gpu0")
    source = CAMSaliency(CountingNet(), target_layer="features.0")
    with pytest.raises(TypeError, match="floating-point"):
        source(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"add a batch dimension"):
        source(torch.rand(3, 8, 8))


def test_collate_masks_of_different_sizes_and_dict_samples_without_the_mask():
    samples = [(torch.rand(3, 8, 8), 0, torch.rand(1, 4, 4)), (torch.rand(3, 8, 8), 1, torch.rand(1, 2, 2))]
    with pytest.raises(ValueError, match=r"masks of a batch must share one shape: sample 0 is \(1, 4, 4\)"):
        _collate(saliency="mask")(samples)
    with pytest.raises(KeyError, match=r"mask.*'saliency'.*keys \['image', 'label'\].*pass mask_key="):
        _collate(saliency="mask", image_key="image", label_key="label")([{"image": torch.rand(3, 8, 8), "label": 0}])


def test_collate_other_fields_that_cannot_be_batched():
    samples = [(torch.rand(3, 8, 8), 0, torch.zeros(1, 4)), (torch.rand(3, 8, 8), 1, torch.zeros(2, 4))]
    with pytest.raises(RuntimeError, match="cannot batch the samples' other fields.*pad variable-size fields"):
        _collate()(samples)


def test_mask_file_changed_or_removed_after_opening(good_file):
    bank = MaskBank(good_file)
    save_masks(good_file, torch.rand(6, 1, 2, 2))  # rewritten with more masks before the first read
    with pytest.raises(ValueError, match="changed after the MaskBank was opened"):
        bank[0]
    bank = MaskBank(good_file)
    good_file.unlink()
    with pytest.raises(FileNotFoundError, match="was removed after the MaskBank was opened"):
        bank.get([0])


def test_mask_file_whose_description_is_not_an_object(tmp_path):
    import struct

    text = b"[1, 2]"
    head = struct.pack("<8sHBBQIII", b"SALMASK\x00", 1, 1, 0, 1, 1, 1, len(text)) + text
    head += b"\x00" * ((-len(head)) % 64)
    (tmp_path / "d.salm").write_bytes(head + b"\x00")
    with pytest.raises(ValueError, match="corrupt description: a JSON list"):
        MaskBank(tmp_path / "d.salm")
