"""``labels="area" | "saliency"``: labels that follow what is visible.

The truth is measured as salaug.demo measures label fidelity: the sampled params are replayed on a
two-channel "image" holding each object's true mask and each pixel's source index, which tells
which fraction of each object stays visible; the mean total variation between the mixed label and
the label those fractions imply is the label's mean absolute error (MAE).
"""

from __future__ import annotations

import pytest
import torch

import salaug
from salaug.metrics import label_fidelity
from salaug.transforms import AttentiveCutMix, SaliencyMix, SalientPaste, SnapMix

K = 10
BOX_MIXES = {  # p=1: every sample mixed, the labels under test are those of mixed samples
    "SaliencyMix": lambda **kw: SaliencyMix(K, p=1.0, **kw),
    "AttentiveCutMix": lambda **kw: AttentiveCutMix(K, p=1.0, **kw),
    "SalientPaste": lambda **kw: SalientPaste(K, p=1.0, **kw),
    "SnapMix": lambda **kw: SnapMix(K, p=1.0, **kw),
}
PAPER_RULE = {"SaliencyMix": "area", "AttentiveCutMix": "area", "SalientPaste": "area", "SnapMix": "saliency"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cluttered():
    n = 96
    batch = salaug.ClutteredObjects(split="train", size=48, length=n, seed=0, return_mask=True).render(range(n))
    return batch["image"], batch["label"], batch["mask"]


def visible_fractions(transform, masks, saliency, labels, params):
    """``(B, 2)`` visible fraction of each sample's object and of its partner's, from a replay."""
    n = masks.shape[0]
    index = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand_as(masks)
    replay = transform(torch.cat([masks.float(), index], 1), saliency, labels, params=params).images
    shown, source = replay[:, :1] > 0.5, replay[:, 1:].round().long()
    own = torch.arange(n).view(n, 1, 1, 1)
    partner = params["perm"]
    from_partner = (source == partner.view(n, 1, 1, 1)) & (source != own)
    area = masks.flatten(1).sum(1).clamp(min=1)
    return torch.stack([(shown & (source == own)).flatten(1).sum(1) / area,
                        (shown & from_partner).flatten(1).sum(1) / area[partner]], 1).clamp(max=1)


def label_mae(transform, images, labels, masks, flat: bool = False) -> float:
    saliency = torch.zeros(masks.shape) if flat else masks.float()
    out, params = transform(images, saliency, labels, return_params=True)
    vis = visible_fractions(transform, masks, saliency, labels, params)
    classes = torch.stack([labels, labels[params["perm"]]], 1)
    return float((1 - label_fidelity(out.labels, classes, vis)).mean())


@pytest.mark.parametrize("name", list(BOX_MIXES))
def test_saliency_labels_are_30_percent_closer_to_the_truth_than_cutmix(name, cluttered):
    images, labels, masks = cluttered
    cutmix = label_mae(SaliencyMix(K, p=1.0, generator=gen()), images, labels, masks, flat=True)
    saliency = label_mae(BOX_MIXES[name](labels="saliency", generator=gen()), images, labels, masks)
    area = label_mae(BOX_MIXES[name](labels="area", generator=gen()), images, labels, masks)
    assert cutmix > 0.1  # the baseline really is wrong on small objects in clutter
    assert saliency / cutmix <= 0.7, (saliency, cutmix)
    assert saliency < area  # and the option is what makes the difference


@pytest.mark.parametrize("name", list(BOX_MIXES))
def test_default_is_the_papers_rule_and_flat_maps_give_area_labels(name):
    assert BOX_MIXES[name]().labels == PAPER_RULE[name]
    x, y = torch.rand(8, 3, 16, 16, generator=gen(1)), torch.arange(8)
    for flat in (torch.zeros(8, 1, 16, 16), torch.full((8, 1, 16, 16), 0.3)):
        by_area, params = BOX_MIXES[name](labels="area", generator=gen(2))(x, flat, y, return_params=True)
        by_mass = BOX_MIXES[name](labels="saliency")(x, flat, y, params=params)
        torch.testing.assert_close(by_mass.labels, by_area.labels)
        torch.testing.assert_close(by_mass.images, by_area.images)


@pytest.mark.parametrize("name", list(BOX_MIXES))
def test_saliency_labels_never_nan_and_follow_the_mass(name):
    b = 8
    x, y = torch.rand(b, 3, 16, 16, generator=gen(3)), torch.arange(b)
    s = torch.zeros(b, 1, 16, 16)
    s[::2, :, 4:8, 4:8] = 1.0  # half the maps are empty: pairs of an empty and a blob map
    out = BOX_MIXES[name](labels="saliency", generator=gen(4))(x, s, y)
    assert torch.isfinite(out.labels).all()
    torch.testing.assert_close(out.labels.sum(1), torch.ones(b))
    # one blob map everywhere: a paste of the blob is worth the blob, whatever its area
    s = torch.zeros(b, 1, 16, 16)
    s[:, :, 6:10, 6:10] = 1.0
    out, params = BOX_MIXES[name](labels="saliency", generator=gen(5))(x, s, y, return_params=True)
    assert torch.isfinite(out.labels).all() and (out.labels >= 0).all()


def test_labels_option_is_checked():
    for make in BOX_MIXES.values():
        with pytest.raises(ValueError, match="labels must be one of"):
            make(labels="mass")
        with pytest.raises(ValueError, match="labels must be one of"):
            make(labels=True)
    with pytest.warns(DeprecationWarning, match="labels="):
        old = SalientPaste(K, label_rule="mass")
    assert old.labels == "saliency"
