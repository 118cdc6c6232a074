"""Tests of the DataLoader path: SaliencyCollate, mask files, MaskedDataset, precompute CLI."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

import salaug
from salaug.data import (
    MaskBank,
    MaskedDataset,
    SaliencyCollate,
    read_mask_header,
    save_masks,
)
from salaug.transforms import SaliencyTransform, SalientBatch
from salaug.transforms.base import sample_uniform


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class AddNoise(SaliencyTransform):
    """Adds one random offset per sample: the output images reveal the sampled parameters."""

    def generate_parameters(self, images, saliency):
        b = images.shape[0]
        return {"applied": self.sample_applied(b, images.device),
                "offset": sample_uniform((b,), images.device, self.active_generator)}

    def apply_transform(self, images, saliency, labels, params):
        return SalientBatch(images + params["offset"].view(-1, 1, 1, 1), saliency, labels)


class Identity(SaliencyTransform):
    def generate_parameters(self, images, saliency):
        return {"applied": self.sample_applied(images.shape[0], images.device)}

    def apply_transform(self, images, saliency, labels, params):
        return SalientBatch(images, saliency, labels)


def mean_source(images):
    return images.mean(1, keepdim=True).clamp(0, 1)


class Constant(Dataset):
    """Every sample identical: (zeros image, label 1, a box)."""

    def __init__(self, n=16, size=8):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(3, self.size, self.size), 1, torch.tensor([0.0, 0.0, 2.0, 2.0])


def _outputs(loader):
    return torch.cat([images for images, *_ in loader])


# ---------------------------------------------------------------------------------------------
# SaliencyCollate
# ---------------------------------------------------------------------------------------------
def test_collate_tuple_samples_with_saliencymix_and_spectral_residual():
    from salaug.saliency import SpectralResidual
    from salaug.transforms.mix import SaliencyMix

    g = torch.Generator().manual_seed(0)
    samples = [(torch.rand(3, 32, 32, generator=g), i % 3, torch.tensor([1.0, 2.0, 3.0, 4.0]) * i)
               for i in range(6)]
    collate = SaliencyCollate(SaliencyMix(num_classes=3), SpectralResidual(size=32), seed=1)
    images, labels, boxes = collate(samples)
    assert images.shape == (6, 3, 32, 32)
    assert labels.shape == (6, 3) and labels.dtype == torch.float32
    torch.testing.assert_close(labels.sum(1), torch.ones(6))
    # the mix changed some pixels and the labels are no longer all one-hot
    stacked = torch.stack([s[0] for s in samples])
    assert not torch.equal(images, stacked)
    assert (labels.max(1).values < 1).any()
    # extra fields are collated and passed through untouched, in order
    torch.testing.assert_close(boxes, torch.stack([s[2] for s in samples]))


def test_collate_dict_samples_replaces_image_and_label_keys():
    samples = [{"img": torch.rand(3, 8, 8), "y": i, "id": i} for i in range(4)]
    collate = SaliencyCollate(AddNoise(), mean_source, image_key="img", label_key="y",
                              num_classes=4, seed=0, return_saliency=True)
    out = collate(samples)
    assert set(out) == {"img", "y", "id", "saliency"}
    assert out["y"].shape == (4, 4) and torch.equal(out["y"].argmax(1), torch.arange(4))
    assert torch.equal(out["id"], torch.arange(4))
    assert out["saliency"].shape == (4, 1, 8, 8)
    assert not torch.allclose(out["img"], torch.stack([s["img"] for s in samples]))


def test_collate_clear_errors():
    samples = [(torch.rand(3, 8, 8), 0), (torch.rand(3, 8, 8), 1)]
    with pytest.raises(ValueError, match="'mask'"):
        SaliencyCollate(Identity(), "spectral")
    with pytest.raises(TypeError, match="callable source"):
        SaliencyCollate(Identity(), 3)
    with pytest.raises(IndexError, match="image_key"):
        SaliencyCollate(Identity(), mean_source, image_key=5, num_classes=2)(samples)
    with pytest.raises(KeyError, match="label_key"):
        SaliencyCollate(Identity(), mean_source, image_key="image", label_key="label")(
            [{"image": torch.rand(3, 8, 8), "target": 0}])
    with pytest.raises(ValueError, match="num_classes"):
        SaliencyCollate(Identity(), mean_source)(samples)
    with pytest.raises(TypeError, match="floating-point"):
        SaliencyCollate(Identity(), mean_source, num_classes=2)(
            [(torch.zeros(3, 8, 8, dtype=torch.uint8), 0)])
    with pytest.raises(IndexError, match="mask_key"):  # saliency="mask" but the samples carry none
        SaliencyCollate(Identity(), "mask", mask_key=2, num_classes=2)(samples)
    with pytest.raises(ValueError, match="MaskedDataset"):  # default mask_key -1 would hit the label
        SaliencyCollate(Identity(), "mask", num_classes=2)(samples)


def test_collate_seed_reproducible_in_main_process_and_transform_untouched():
    samples = [(torch.zeros(3, 4, 4), 0) for _ in range(5)]
    own = torch.Generator().manual_seed(123)
    t = AddNoise(num_classes=2, generator=own)
    a = SaliencyCollate(t, mean_source, seed=7)
    b = SaliencyCollate(AddNoise(num_classes=2), mean_source, seed=7)
    c = SaliencyCollate(AddNoise(num_classes=2), mean_source, seed=8)
    ra, rb, rc = a(samples)[0], b(samples)[0], c(samples)[0]
    assert torch.equal(ra, rb)
    assert not torch.equal(ra, rc)
    assert not torch.equal(a(samples)[0], ra)  # the stream advances
    assert t.generator is own  # the stream is passed at call time, the transform is not modified
    assert torch.equal(own.get_state(), torch.Generator().manual_seed(123).get_state())


def test_collate_is_picklable():
    from salaug.saliency import SpectralResidual
    from salaug.transforms.mix import SaliencyMix

    collate = SaliencyCollate(SaliencyMix(num_classes=2, generator=torch.Generator().manual_seed(0)),
                              SpectralResidual(), seed=3)
    samples = [(torch.rand(3, 16, 16), i % 2) for i in range(4)]
    collate(samples)  # creates the internal generator
    clone = pickle.loads(pickle.dumps(collate))
    assert clone.seed == 3 and clone._generator is None
    images, labels = clone(samples)
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4, 2)


def test_workers_get_different_streams_and_runs_are_reproducible():
    ds = Constant(n=16)

    def run(loader_seed, seed=5, workers=2, persistent=False):
        collate = SaliencyCollate(AddNoise(num_classes=2), mean_source, seed=seed)
        loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate,
                            generator=torch.Generator().manual_seed(loader_seed), persistent_workers=persistent)
        return _outputs(loader)[:, 0, 0, 0].view(4, 4)  # (batch, sample) offsets

    out = run(0)
    images = _outputs(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=SaliencyCollate(
        AddNoise(num_classes=2), mean_source, seed=5), generator=torch.Generator().manual_seed(0)))
    flat = images.flatten(1)
    torch.testing.assert_close(flat, flat[:, :1].expand_as(flat))  # zeros + one offset per sample
    torch.testing.assert_close(flat[:, 0].view(4, 4), out)
    # batches 0 and 1 are identical inputs handled by workers 0 and 1: different parameters
    assert not torch.allclose(out[0], out[1])
    # batches 0 and 2 come from the same worker: its stream advances
    assert not torch.allclose(out[0], out[2])
    # all 16 offsets are distinct: no worker repeats another's stream
    assert out.flatten().unique().numel() == 16
    # reproducible given seed + DataLoader generator; either one changes the stream
    assert torch.equal(run(0), out)
    assert not torch.allclose(run(1), out)
    assert not torch.allclose(run(0, seed=6), out)


class Indexed(Dataset):
    """Sample ``i``: an image of constant value ``i`` (so a mix shows which partner it took), label ``i % 2``."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.full((3, 8, 8), float(i)), i % 2


def test_worker_streams_are_those_of_their_worker_seeds_with_a_real_transform(monkeypatch):
    # reference without workers: the DataLoader gives worker w the seed base + w (base drawn from
    # its generator) and hands it batches w, w + 2, ...; the collate in the main process, told it
    # is worker w, must draw exactly what that worker drew
    import types

    import salaug.data.collate as collate_module
    from salaug.transforms import SaliencyMix

    def collate():
        return SaliencyCollate(SaliencyMix(num_classes=2, p=1.0), mean_source, seed=11)

    def workers(loader_seed):
        return [b for b, *_ in DataLoader(Indexed(), batch_size=4, num_workers=2, collate_fn=collate(),
                                          generator=torch.Generator().manual_seed(loader_seed))]

    out = workers(3)
    base = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(3)))
    samples = [Indexed()[i] for i in range(16)]
    for w in range(2):
        main = collate()
        monkeypatch.setattr(collate_module, "get_worker_info", lambda w=w: types.SimpleNamespace(seed=base + w, id=w))
        for k in range(w, 4, 2):
            assert torch.equal(main(samples[4 * k:4 * k + 4])[0], out[k]), (w, k)
    monkeypatch.undo()
    # batch 1 is batch 0 plus 4 everywhere: the same mix would give the same picture, the other
    # worker's stream another; and a run reproduces, another DataLoader seed does not
    assert not torch.equal(out[0], out[1] - 4)
    assert all(torch.equal(a, b) for a, b in zip(workers(3), out))
    assert not all(torch.equal(a, b) for a, b in zip(workers(4), out))


def test_workers_differ_even_when_transform_has_its_own_generator():
    ds = Constant(n=8)
    t = AddNoise(num_classes=2, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=SaliencyCollate(t, mean_source))
    out = _outputs(loader)[:, 0, 0, 0].view(2, 4)
    assert not torch.allclose(out[0], out[1])


# ---------------------------------------------------------------------------------------------
# mask files
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [("uint8", 0.5 / 255 + 1e-6), ("float16", 1e-3)])
def test_save_and_read_masks_roundtrip(tmp_path, dtype, tol):
    masks = torch.rand(5, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    path = save_masks(tmp_path / "m.salm", masks, dtype=dtype, description={"note": "x"})
    bank = MaskBank(path, length=5, mask_size=(3, 4))
    assert len(bank) == 5 and bank.mask_size == (3, 4) and bank.dtype == dtype
    assert bank.description["note"] == "x"
    assert bank[2].shape == (1, 3, 4) and bank[2].dtype == torch.float32
    assert (bank[2] - masks[2]).abs().max() <= tol
    assert (bank.get([4, 0]) - masks[[4, 0]]).abs().max() <= tol
    assert bank[-1].shape == (1, 3, 4)
    itemsize = 1 if dtype == "uint8" else 2
    header = read_mask_header(path)
    assert os.path.getsize(path) == header["offset"] + 5 * 3 * 4 * itemsize  # compact: no overhead
    assert header["offset"] % 64 == 0
    with pytest.raises(IndexError, match="out of range"):
        bank[5]
    # pickles as a path, not as data
    assert len(pickle.dumps(bank)) < 2000
    assert torch.equal(pickle.loads(pickle.dumps(bank))[1], bank[1])


def _good_file(tmp_path, n=4, h=2, w=3):
    return save_masks(tmp_path / "good.salm", torch.rand(n, h, w))


def test_mask_file_bad_magic(tmp_path):
    path = _good_file(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[:8] = b"NOTMASKS"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"good\.salm.*not a salaug mask file"):
        MaskBank(path)


def test_mask_file_truncated_and_extra_bytes(tmp_path):
    path = _good_file(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"good\.salm.*truncated"):
        MaskBank(path)
    path.write_bytes(raw + b"\x00" * 3)
    with pytest.raises(ValueError, match=r"good\.salm.*longer than its header says"):
        MaskBank(path)
    path.write_bytes(raw[:10])
    with pytest.raises(ValueError, match=r"good\.salm.*truncated.*header"):
        MaskBank(path)


def test_mask_file_wrong_shape_in_header(tmp_path):
    path = _good_file(tmp_path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 20, 0)  # h = 0
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"good\.salm.*wrong shape"):
        MaskBank(path)
    raw = bytearray(_good_file(tmp_path).read_bytes())
    struct.pack_into("<I", raw, 24, 4)  # w = 4 instead of 3: the data no longer fits
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"good\.salm.*declares 4 masks of 2x4"):
        MaskBank(path)


def test_mask_file_mismatches_and_other_corruption(tmp_path):
    path = _good_file(tmp_path)
    with pytest.raises(ValueError, match=r"good\.salm.*holds 4 masks but the dataset has 5"):
        MaskBank(path, length=5)
    with pytest.raises(ValueError, match=r"good\.salm.*2x3 masks but 7x7"):
        MaskBank(path, mask_size=(7, 7))
    with pytest.raises(ValueError, match=r"good\.salm.*holds 4 masks but the dataset has 16"):
        MaskedDataset(Constant(n=16), path)
    with pytest.raises(FileNotFoundError, match="nope.salm"):
        MaskBank(tmp_path / "nope.salm")
    raw = bytearray(path.read_bytes())
    raw[8] = 9  # version
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="version 9"):
        MaskBank(path)
    raw = bytearray(_good_file(tmp_path).read_bytes())
    raw[32] = ord("}")  # JSON starts with '}'
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"good\.salm.*corrupt JSON"):
        MaskBank(path)


def test_no_pickle_in_mask_file(tmp_path):
    path = _good_file(tmp_path)
    header = read_mask_header(path)
    raw = path.read_bytes()
    text = raw[32:32 + struct.unpack_from("<I", raw, 28)[0]]
    assert json.loads(text) == header["description"]
    assert b"\x80\x04" not in raw[:header["offset"]]  # no pickle protocol marker in the header


# ---------------------------------------------------------------------------------------------
# MaskedDataset
# ---------------------------------------------------------------------------------------------
class Asymmetric(Dataset):
    """Image whose channel 0 *is* the (asymmetric) mask; a stored mask at the same size."""

    def __init__(self, n=3, size=16):
        self.n, self.size = n, size
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        m = ((xx + 2 * yy) % 7).float() / 6  # no flip / crop symmetry
        m[:, : size // 4] = 0.0
        self.mask = m[None]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = torch.cat([self.mask, torch.rand(2, self.size, self.size)])
        return img, i


def test_masked_dataset_transforms_move_image_and_mask_together(tmp_path):
    base = Asymmetric()
    path = save_masks(tmp_path / "a.salm", base.mask.expand(3, -1, -1), dtype="float16")
    ds = MaskedDataset(base, path)
    image, label, mask = ds[1]
    assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
    assert mask.dtype == torch.float32 and mask.shape == (1, 16, 16) and label == 1
    torch.testing.assert_close(mask.as_subclass(torch.Tensor), base.mask, atol=1e-3, rtol=0)

    flip = MaskedDataset(base, path, transforms=v2.RandomHorizontalFlip(p=1.0))
    image, _, mask = flip[0]
    torch.testing.assert_close(mask.as_subclass(torch.Tensor), base.mask.flip(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(image[0:1].as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor),
                               atol=1e-3, rtol=0)

    torch.manual_seed(0)
    crop = MaskedDataset(base, path, transforms=v2.Compose([
        v2.RandomResizedCrop(12, scale=(0.2, 0.5), interpolation=v2.InterpolationMode.NEAREST),
        v2.RandomHorizontalFlip(p=0.5),
        v2.ColorJitter(brightness=0.0),
    ]))
    plain = v2.functional.resize(base.mask, [12, 12], interpolation=v2.InterpolationMode.NEAREST)
    for i in range(3):
        image, _, mask = crop[i]
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.float32 and mask.shape == (1, 12, 12)
        # the mask went through the same crop/flip as the image's channel 0 (which equals the mask)
        torch.testing.assert_close(image[0:1].as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor),
                                   atol=1e-3, rtol=0)
        assert not torch.allclose(mask, plain, atol=1e-2)  # it really was cropped
        assert 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0


def test_masked_dataset_upsamples_low_res_masks_bilinearly(tmp_path):
    low = torch.zeros(3, 1, 4, 4)
    low[:, :, 0, 3] = 1.0  # top-right cell
    path = save_masks(tmp_path / "low.salm", low)
    ds = MaskedDataset(Constant(n=3, size=16), path)
    image, label, box, mask = ds[0]
    assert mask.shape == (1, 16, 16)
    assert torch.equal(box, torch.tensor([0.0, 0.0, 2.0, 2.0]))
    assert float(mask[0, 1, 14]) > 0.9 and float(mask[0, 14, 1]) == 0.0
    expected = torch.nn.functional.interpolate(low[:1], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mask[None].as_subclass(torch.Tensor), expected.clamp(0, 1))
    # the batched path (__getitems__) gives the same samples
    for a, b in zip(ds.__getitems__([2, 0]), [ds[2], ds[0]]):
        for x, y in zip(a, b):
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))


def test_masked_dataset_dict_samples(tmp_path):
    class Dicts(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": torch.rand(3, 8, 8), "label": i}

    path = save_masks(tmp_path / "d.salm", torch.rand(2, 2, 2))
    sample = MaskedDataset(Dicts(), path, image_key="image")[0]
    assert set(sample) == {"image", "label", "saliency"}
    assert isinstance(sample["saliency"], tv_tensors.Mask) and sample["saliency"].shape == (1, 8, 8)
    collate = SaliencyCollate(Identity(num_classes=2), "mask", image_key="image", label_key="label")
    out = collate([MaskedDataset(Dicts(), path, image_key="image")[i] for i in range(2)])
    assert set(out) == {"image", "label"} and out["label"].shape == (2, 2)


def test_stored_masks_through_dataloader_workers_reach_the_transform(tmp_path):
    base = Asymmetric(n=8)
    path = save_masks(tmp_path / "a.salm", base.mask.expand(8, -1, -1))
    ds = MaskedDataset(base, path, transforms=v2.RandomHorizontalFlip(p=0.5))
    collate = SaliencyCollate(Identity(num_classes=8), "mask", seed=0, return_saliency=True)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    n = 0
    for images, _, saliency in loader:
        assert type(images) is torch.Tensor and images.shape == (4, 3, 16, 16)
        assert saliency.shape == (4, 1, 16, 16)
        # the transform received the (flipped-with-the-image) stored mask
        torch.testing.assert_close(saliency, images[:, :1], atol=1.0 / 255, rtol=0)
        n += len(images)
    assert n == 8


# ---------------------------------------------------------------------------------------------
# frozen model + CAM, precompute_masks, the CLI
# ---------------------------------------------------------------------------------------------
def _tiny_net(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


class RandomImages(Dataset):
    def __init__(self, n=8, size=16, num_classes=4):
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.arange(n) % num_classes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def test_cam_saliency_side_effect_free_and_in_workers():
    from salaug.cam import GradCAM
    from salaug.data import CAMSaliency

    net = _tiny_net().train()
    bn_mean = net[1].running_mean.clone()
    ds = RandomImages()
    src = CAMSaliency(net, "gradcam", target_layer="4", targets="labels")
    sal = src(ds.images, ds.labels)
    assert sal.shape == (8, 1, 16, 16) and sal.dtype == torch.float32
    assert all(m.training for m in net.modules())  # modes restored
    assert torch.equal(net[1].running_mean, bn_mean)  # eval-mode forward: BN statistics untouched
    net.eval()
    expected = GradCAM(net, "4")(ds.images, targets=ds.labels)
    net.train()
    torch.testing.assert_close(sal, expected)
    # predicted-class targets differ from label targets for at least some images
    pred = CAMSaliency(net, "gradcam", target_layer="4")(ds.images)
    assert not torch.allclose(pred, sal)

    clone = pickle.loads(pickle.dumps(src))
    torch.testing.assert_close(clone(ds.images, ds.labels), expected)
    collate = SaliencyCollate(Identity(num_classes=4), src, seed=0, return_saliency=True)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    got = torch.cat([s for *_, s in loader])
    torch.testing.assert_close(got, expected)


def test_precompute_masks_matches_the_cam_and_feeds_masked_dataset(tmp_path):
    from salaug.cam import GradCAM
    from salaug.data import precompute_masks

    net = _tiny_net().train()
    ds = RandomImages(n=10)
    path = precompute_masks(net, ds, tmp_path / "m.salm", target_layer="4", batch_size=4)
    assert all(m.training for m in net.modules())
    bank = MaskBank(path, length=10)
    assert bank.mask_size == (8, 8)  # feature-map resolution of layer "4" (16 / 2)
    d = bank.description
    assert (d["cam"], d["target_layer"], d["image_size"], d["model"]) == ("gradcam", "4", [16, 16], "Sequential")
    net.eval()
    expected = GradCAM(net, "4")(ds.images, targets=ds.labels, output_size="feature")
    assert (bank.get(range(10)) - expected).abs().max() <= 0.5 / 255 + 1e-6
    assert os.path.getsize(path) == read_mask_header(path)["offset"] + 10 * 8 * 8
    path16 = precompute_masks(net, ds, tmp_path / "m16.salm", target_layer="4", dtype="float16",
                              targets="predicted")
    assert MaskBank(path16).dtype == "float16"
    assert (MaskBank(path16).get(range(10)) - GradCAM(net, "4")(ds.images, output_size="feature")).abs().max() < 1e-3

    masked = MaskedDataset(ds, path)
    _, _, mask = masked[3]
    assert mask.shape == (1, 16, 16)

    class Mixed(RandomImages):
        def __getitem__(self, i):
            img, y = super().__getitem__(i)
            return (img if i < 5 else img[:, :8]), y

    with pytest.raises(ValueError, match="one size"):
        precompute_masks(net, Mixed(n=10), tmp_path / "bad.salm", target_layer="4", batch_size=3)
    assert not (tmp_path / "bad.salm").exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []  # no partial file left


def test_precompute_cli_usage_errors_come_before_any_cam_pass(tmp_path, capsys):
    # (the end-to-end runs of the command are in test_cli.py)
    import torchvision

    from salaug.cli.precompute_masks import main as precompute_main

    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), weights)
    # weights for another architecture / class count: a usage error (exit code 2)
    with pytest.raises(SystemExit) as err:
        precompute_main(["--dataset", "cluttered", "--limit", "2", "--image-size", "32", "--arch", "resnet18",
                         "--weights", str(weights), "--num-classes", "5", "--out", str(tmp_path / "x.salm")])
    assert err.value.code == 2 and "does not match the architecture" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        precompute_main(["--dataset", "cluttered", "--limit", "2", "--arch", "resnet18", "--weights",
                         str(weights), "--num-classes", "3", "--layer", "nope", "--out", str(tmp_path / "y.salm")])
    assert err.value.code == 2 and "--layer 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.salm").exists() and not (tmp_path / "y.salm").exists()


def test_cam_saliency_bad_arguments():
    from salaug.data import CAMSaliency

    with pytest.raises(ValueError, match="nope"):
        CAMSaliency(_tiny_net(), target_layer="nope")
    with pytest.raises(ValueError, match="unknown CAM"):
        CAMSaliency(_tiny_net(), cam="magic")
    with pytest.raises(ValueError, match="targets"):
        CAMSaliency(_tiny_net(), targets="truth")
    with pytest.raises(TypeError, match="nn.Module"):
        CAMSaliency(lambda x: x)


def test_label_spelling_is_labels_and_label_is_deprecated(tmp_path):
    from salaug.data import CAMSaliency, precompute_masks

    net, ds = _tiny_net(), RandomImages()
    with pytest.warns(DeprecationWarning, match="targets='labels'"):
        old = CAMSaliency(net, "gradcam", target_layer="4", targets="label")
    assert old.targets == "labels" and old.uses_labels
    torch.testing.assert_close(old(ds.images, ds.labels),
                               CAMSaliency(net, "gradcam", target_layer="4", targets="labels")(ds.images, ds.labels))
    with pytest.warns(DeprecationWarning, match="targets='labels'"):
        precompute_masks(net, ds, tmp_path / "old.salm", target_layer="4", targets="label")
    assert MaskBank(tmp_path / "old.salm").description["targets"] == "labels"


def test_cam_saliency_and_precompute_leave_the_callers_model_where_it_was(tmp_path):
    from salaug.data import CAMSaliency, precompute_masks

    net, ds = _tiny_net().train(), RandomImages()
    to_calls = []
    net.to = lambda *a, **k: to_calls.append((a, k))  # type: ignore[method-assign]
    src = CAMSaliency(net, "gradcam", target_layer="4", device="cpu", targets="labels")  # the model's device
    src(ds.images, ds.labels)
    precompute_masks(net, ds, tmp_path / "m.salm", target_layer="4", device="cpu")
    assert to_calls == [] and all(m.training for m in net.modules())
    # another device: the source runs its own copy there; the caller's model is not moved
    del net.to
    elsewhere = CAMSaliency(net, "gradcam", target_layer="4", device="meta")
    cam = elsewhere._get_cam()
    assert cam.model is not net and next(cam.model.parameters()).is_meta
    assert all(p.device.type == "cpu" for p in net.parameters())


# -- the same saliency sources as the augmenter -------------------------------------------------------
def test_collate_takes_the_saliency_sources():
    from salaug.sources import Flat, ForwardEvidence, ModelFree, StoredMasks

    samples = [(torch.rand(3, 16, 16), i % 4, torch.rand(1, 16, 16)) for i in range(8)]
    snap = salaug.SnapMix(num_classes=4, p=1.0)
    for source in (Flat(), ModelFree(salaug.SpectralResidual()), StoredMasks()):
        collate = salaug.SaliencyCollate(snap, saliency=source, seed=0, return_saliency=True)
        images, labels, saliency = collate(samples)[:3] if not isinstance(source, StoredMasks) else collate(samples)
        assert images.shape == (8, 3, 16, 16) and labels.shape == (8, 4) and saliency.shape == (8, 1, 16, 16)
    # StoredMasks is saliency="mask": the same batch from the same seed
    by_name = salaug.SaliencyCollate(snap, saliency="mask", seed=0)(samples)
    by_source = salaug.SaliencyCollate(snap, saliency=StoredMasks(), seed=0)(samples)
    for a, b in zip(by_name, by_source, strict=True):
        torch.testing.assert_close(a, b)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="model being trained.*CAMSaliency"):
        salaug.SaliencyCollate(snap, saliency=ForwardEvidence(net, "0"))
    assert isinstance(salaug.CAMSaliency(net, target_layer="0"), salaug.sources.SaliencySource)
