"""Round-2 bad inputs of SaliencyAugmenter: each gives a correct result or a clear error naming the fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import salaug
from salaug.augmenter import SaliencyAugmenter

K = 4


def net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    model.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, K))
    return model


def batch(n: int = 6, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n) % K


def make(model: nn.Module | None = None, **kw) -> SaliencyAugmenter:
    kw.setdefault("seed", 0)
    kw.setdefault("target_layer", "features")
    return SaliencyAugmenter(model if model is not None else net(), salaug.SaliencyMix(num_classes=K, p=1.0), **kw)


# -- load_state_dict ---------------------------------------------------------------------------------
@pytest.mark.parametrize("state, error, match", [
    ({}, ValueError, r"no 'seed', 'steps', 'augmented' entries"),
    ({"seed": 3, "augmented": 0}, ValueError, r"no 'steps' entry"),  # truncated
    ({"seed": "abc", "steps": 1, "augmented": 0}, TypeError, r"state_dict\['seed'\] must be an int"),
    ({"seed": 3, "steps": -4, "augmented": 0}, ValueError, r"state_dict\['steps'\] must be an int >= 0"),
    ({"seed": 3, "steps": 2, "augmented": 5}, ValueError, r"'augmented'\]=5 exceeds"),
    (None, TypeError, "needs the dict its state_dict"),
    ([1, 2], TypeError, "needs the dict its state_dict"),
])
def test_load_state_dict_refuses_foreign_or_broken_states(state, error, match):
    aug = make(seed=4)
    aug(*batch())
    with pytest.raises(error, match=match):
        aug.load_state_dict(state)
    assert (aug.seed, aug.steps, aug.augmented) == (4, 1, 1)  # nothing half-restored


def test_load_state_dict_refuses_a_models_state_dict():
    model = net()
    aug = make(model)
    with pytest.raises(ValueError, match="not another object's state"):
        aug.load_state_dict(model.state_dict())


def test_ema_state_of_another_architecture_is_refused_at_load():
    small = make(net(8), ema_decay=0.9)
    small(*batch())
    state = small.state_dict()
    wide = make(net(12), ema_decay=0.9)
    with pytest.raises(ValueError, match=r"state_dict\['ema'\].*does not fit.*shape of 'features.0.weight'"):
        wide.load_state_dict(state)
    same = make(net(8), ema_decay=0.9)
    same.load_state_dict(state)  # the matching architecture resumes
    same(*batch(seed=1))
    torch.testing.assert_close(same.source.ema_model.features[0].weight, small.source.ema_model.features[0].weight,
                               rtol=0.2, atol=0.05)


def test_ema_with_a_first_call_under_inference_mode():
    aug = make(ema_decay=0.9)
    with torch.inference_mode():
        first, _ = aug(*batch())
    later, soft = aug(*batch(seed=1))  # the EMA copy holds ordinary tensors: its CAM backward works
    with torch.inference_mode():
        aug(*batch(seed=2))
    assert aug.steps == 3 and soft.shape == (6, K)
    assert not any(p.is_inference() for p in aug.source.ema_model.parameters())
    flat = aug.last.saliency.flatten(1)
    assert int((flat.amax(1) > flat.amin(1)).sum()) >= 4  # real CAMs (an untrained net may give a zero map)


# -- every new image size is checked as the first one -------------------------------------------------
def test_a_later_smaller_size_that_leaves_a_1x1_map_is_refused():
    aug = make()
    aug(*batch(size=16))  # "features" gives 4x4 maps
    with pytest.raises(ValueError, match="outputs a 1x1 feature map"):
        aug(*batch(size=4))  # 1x1: every map would be flat
    aug(*batch(size=16))  # the checked size still runs


def test_a_later_size_that_cam_scale_shrinks_to_nothing_is_refused():
    aug = make(cam_scale=0.25, target_layer="features.2")
    aug(*batch(size=16))
    with pytest.raises(ValueError, match="shrinks the 3x3 images to nothing"):
        aug(*batch(size=3))


# -- models and CAMs ---------------------------------------------------------------------------------
def test_a_model_on_the_meta_device_is_named():
    with torch.device("meta"):
        model = net()
    aug = make(model)
    with pytest.raises(ValueError, match=r"Sequential\) has parameters on the 'meta' device.*to_empty"):
        aug(*batch())


def test_a_cam_built_on_another_model_is_refused():
    other = net()
    with pytest.raises(ValueError, match="built on another model"):
        SaliencyAugmenter(net(), salaug.SaliencyMix(num_classes=K), cam=salaug.GradCAM(other, "features"))
    model = net()
    SaliencyAugmenter(model, salaug.SaliencyMix(num_classes=K), cam=salaug.GradCAM(model, "features"))
    # a CAM built on a wrapper's inner module (its weights are the model's) is accepted
    wrapped = nn.DataParallel(model)
    SaliencyAugmenter(wrapped, salaug.SaliencyMix(num_classes=K), cam=salaug.GradCAM(model, "features"))


def test_saliency_at_four_times_the_resolution_keeps_its_mass():
    # p=0: no sample is mixed, so the output saliency is the given map at the images' size.
    aug = SaliencyAugmenter(net(), salaug.SaliencyMix(num_classes=K, p=0.0), target_layer="features", seed=0)
    x, y = batch(size=16)
    big = torch.zeros(6, 1, 64, 64)
    big[:, :, 7:9, 43:45] = 1.0  # a 2x2 spot between the pixels that 4x bilinear sampling reads
    aug(x, y, saliency=big)
    used = aug.last.output.saliency
    assert used.shape == (6, 1, 16, 16)
    torch.testing.assert_close(used, F.avg_pool2d(big, 4))  # area resize: the spot's mass is kept
    assert bool((used.flatten(1).sum(1) > 0).all())  # bilinear sampling gave all-zero maps here


# -- early input checks, under the default (forward labels) and the CAM path --------------------------
@pytest.mark.parametrize("labels_from", ["auto", "cam"])
def test_channel_count_against_the_first_convolution(labels_from):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, K))
    aug = SaliencyAugmenter(net, salaug.SnapMix(num_classes=K), target_layer="1", labels_from=labels_from)
    with pytest.raises(ValueError, match=r"1 channel\(s\).*first convolution takes 3.*expand\(-1, 3, -1, -1\)"):
        aug(torch.rand(4, 1, 16, 16), torch.arange(4) % K)
    with pytest.raises(ValueError, match=r"channels-last, \(B, H, W, C\).*permute\(0, 3, 1, 2\)"):
        aug(torch.rand(4, 16, 16, 3), torch.arange(4) % K)
    assert aug.steps == 0


def test_channels_last_batch_is_named_without_a_convolution_to_compare():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 3, K))
    aug = SaliencyAugmenter(net, salaug.SnapMix(num_classes=K), source=salaug.sources.Flat())
    with pytest.raises(ValueError, match="channels-last"):
        aug(torch.rand(4, 16, 16, 3), torch.arange(4) % K)


@pytest.mark.parametrize("labels_from", ["auto", "cam"])
def test_a_model_on_the_meta_device_is_named_under_every_source(labels_from):
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(4, K))
    aug = SaliencyAugmenter(net, salaug.SnapMix(num_classes=K), target_layer="1", labels_from=labels_from)
    with pytest.raises(ValueError, match="'meta' device.*to_empty"):
        aug(torch.rand(4, 3, 16, 16), torch.arange(4) % K)


def test_cam_options_with_a_source_are_refused():
    with pytest.raises(ValueError, match="source= gives the saliency, so target_layer, cam_scale cannot apply"):
        SaliencyAugmenter(net(), salaug.SnapMix(num_classes=K), source=salaug.sources.Flat(), cam_scale=0.5,
                          target_layer="features")
    with pytest.raises(TypeError, match="SaliencySource"):
        SaliencyAugmenter(net(), salaug.SnapMix(num_classes=K), source=3)
    with pytest.raises(ValueError, match="box mix"):
        SaliencyAugmenter(net(), salaug.GuidedMixup(num_classes=K),
                          source=salaug.sources.ForwardEvidence(net(), "features"))
