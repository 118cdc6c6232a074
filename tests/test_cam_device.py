"""The CAM engine and the augmenter on every ``--device`` and image dtype (``pytest --device cuda``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import salaug
from salaug.cam import CAM_METHODS, create_cam

K = 4


def net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    model.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, K))
    return model.eval()


def images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1, eps=1e-8)


@pytest.mark.parametrize("name", sorted(CAM_METHODS))
def test_cam_engine_on_the_device_and_dtype(name, device, dtype):
    model, x, labels = net(), images(), torch.arange(4) % K
    reference = create_cam(name, model, "features")(x, labels)  # CPU, float32
    live = net().to(device)
    maps = create_cam(name, live, "features")(x.to(device=device, dtype=dtype), labels.to(device))
    assert maps.shape == (4, 1, 16, 16) and maps.dtype == torch.float32 and maps.device.type == device.type
    assert bool(torch.isfinite(maps).all()) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    # the same maps up to the input's rounding (half precision) and the device's arithmetic
    same = cosine(maps.cpu(), reference)
    both_zero = (maps.cpu().flatten(1).amax(1) == 0) & (reference.flatten(1).amax(1) == 0)
    assert bool(((same > 0.98) | both_zero).all()), same


def test_augmenter_on_the_device_and_dtype(device, dtype):
    def run(dev: torch.device, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        model = net().to(dev)
        aug = salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=K, p=1.0), target_layer="features", seed=3)
        out, soft = aug(images(8).to(device=dev, dtype=dt), (torch.arange(8) % K).to(dev))
        model(out.to(next(model.parameters()).dtype))  # the forward fills the labels (a dtype copy is the batch)
        return out, soft

    out, soft = run(device, dtype)
    assert out.shape == (8, 3, 16, 16) and out.dtype == dtype and out.device.type == device.type
    assert soft.shape == (8, K) and soft.dtype == torch.float32 and soft.device.type == device.type
    torch.testing.assert_close(soft.sum(1), torch.ones(8, device=soft.device))
    ref_out, ref_soft = run(torch.device("cpu"), torch.float32)
    # one random stream (a CPU generator) on every device: the same boxes and labels
    mixed = (soft.cpu() - ref_soft).abs().amax(1) < 0.05
    assert float(mixed.float().mean()) >= 0.75, (soft.cpu(), ref_soft)
