"""Every deprecated spelling salaug still accepts, through the public API, in one place.

For each one: it warns with a ``DeprecationWarning`` that names the new spelling, the warning points
at the caller's line (not at salaug's internals, so ``python -W error::DeprecationWarning`` and
pytest's summary show the user where to change their code), it behaves exactly as the new spelling,
and CHANGELOG.md lists it with the version that removes it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import salaug

REMOVED_IN = "0.5.0"
CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"
K = 3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, K))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def _warns_at_caller(make: Callable[[], object], new_spelling: str) -> object:
    """``make()``, which must warn once, naming ``new_spelling``, at the line in this file that called salaug."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make()
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1, [str(w.message) for w in caught]
    assert new_spelling in str(deprecations[0].message)
    assert Path(deprecations[0].filename).resolve() == Path(__file__).resolve(), deprecations[0].filename
    return result


def _augment(aug: salaug.SaliencyAugmenter, calls: int = 3) -> list[torch.Tensor]:
    images, labels = _batch()
    out: list[torch.Tensor] = []
    for _ in range(calls):
        mixed, soft = aug(images, labels)
        out += [mixed, soft]
    return out


def test_augmenter_p_is_batch_p():
    def make(**kw: object) -> salaug.SaliencyAugmenter:
        return salaug.SaliencyAugmenter(_net(), salaug.SnapMix(num_classes=K, p=1.0), target_layer="0", seed=0,
                                        labels_from="cam", **kw)

    old = _warns_at_caller(lambda: make(p=0.5), "batch_p")
    new = make(batch_p=0.5)
    assert isinstance(old, salaug.SaliencyAugmenter)
    assert old.batch_p == 0.5
    for a, b in zip(_augment(old), _augment(new), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_augmenter_p_attribute_reads_and_sets_batch_p():
    aug = salaug.SaliencyAugmenter(_net(), salaug.SnapMix(num_classes=K), target_layer="0", batch_p=0.25)
    assert _warns_at_caller(lambda: aug.p, "batch_p") == 0.25

    def switch_off() -> None:
        aug.p = 0.0  # timm-style "mixup off" still works

    _warns_at_caller(switch_off, "batch_p")
    assert aug.batch_p == 0.0
    _augment(aug, calls=1)
    assert aug.last is not None and not aug.last.augmented


def test_callback_p_is_batch_p():
    old = _warns_at_caller(lambda: salaug.SaliencyAugmentation(salaug.SnapMix(num_classes=K), p=0.5), "batch_p")
    assert isinstance(old, salaug.SaliencyAugmentation)
    assert old.batch_p == 0.5
    assert _warns_at_caller(lambda: old.p, "batch_p") == 0.5


def test_augmenter_targets_label_is_labels():
    def make(targets: str) -> salaug.SaliencyAugmenter:
        return salaug.SaliencyAugmenter(_net(), salaug.SnapMix(num_classes=K, p=1.0), target_layer="0", seed=0,
                                        targets=targets, labels_from="cam")  # type: ignore[arg-type]

    old = _warns_at_caller(lambda: make("label"), "targets='labels'")
    assert isinstance(old, salaug.SaliencyAugmenter)
    assert old.source.targets == "labels"
    for a, b in zip(_augment(old), _augment(make("labels")), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_callback_targets_label_is_labels():
    old = _warns_at_caller(lambda: salaug.SaliencyAugmentation(salaug.SnapMix(num_classes=K), targets="label"),
                           "targets='labels'")
    assert isinstance(old, salaug.SaliencyAugmentation)
    assert old.targets == "labels"


def test_cam_saliency_targets_label_is_labels():
    net = _net()
    old = _warns_at_caller(lambda: salaug.CAMSaliency(net, "gradcam", target_layer="0", targets="label"),
                           "targets='labels'")
    assert isinstance(old, salaug.CAMSaliency)
    new = salaug.CAMSaliency(net, "gradcam", target_layer="0", targets="labels")
    images, labels = _batch()
    torch.testing.assert_close(old(images, labels), new(images, labels), rtol=0, atol=0)


def test_precompute_masks_targets_label_is_labels(tmp_path: Path):
    net = _net()
    images, labels = _batch()
    data = torch.utils.data.TensorDataset(images, labels)
    old = tmp_path / "old.salm"
    _warns_at_caller(lambda: salaug.precompute_masks(net, data, old, target_layer="0", targets="label"),
                     "targets='labels'")
    new = salaug.precompute_masks(net, data, tmp_path / "new.salm", target_layer="0", targets="labels")
    assert salaug.MaskBank(old).description["targets"] == "labels"
    torch.testing.assert_close(torch.as_tensor(salaug.MaskBank(old).array.copy()),
                               torch.as_tensor(salaug.MaskBank(new).array.copy()), rtol=0, atol=0)


@pytest.mark.parametrize(("label_rule", "labels"), [("mass", "saliency"), ("saliency", "saliency"), ("area", "area")])
def test_salient_paste_label_rule_is_labels(label_rule: str, labels: str):
    old = _warns_at_caller(lambda: salaug.SalientPaste(K, p=1.0, label_rule=label_rule), "labels=")
    assert isinstance(old, salaug.SalientPaste)
    assert old.labels == labels
    new = salaug.SalientPaste(K, p=1.0, labels=labels)  # type: ignore[arg-type]
    images, classes = _batch()
    saliency = torch.zeros(6, 1, 16, 16)
    saliency[..., 2:7, 3:9] = 1.0
    a = old(images, saliency, classes, generator=torch.Generator().manual_seed(2))
    b = new(images, saliency, classes, generator=torch.Generator().manual_seed(2))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_cam_record_is_deprecated_and_still_gives_the_fused_maps():
    net = _net()
    images, classes = _batch()
    cam = salaug.GradCAM(net, "0")

    def record() -> torch.Tensor:
        with cam.record():
            logits = net(images)
        return logits

    logits = _warns_at_caller(record, "labels_from='forward'")
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(cam.from_logits(logits, classes), cam(images, classes), atol=1e-5, rtol=0)


@pytest.mark.parametrize("spelling", ["SaliencyAugmenter(p=", "SaliencyAugmentation(p=", "SaliencyAugmenter.p",
                                      "targets=\"label\"", "SalientPaste(label_rule=", "BaseCAM.record()",
                                      "SaliencyAugmentation.compute_saliency", "diagnose(references=",
                                      "salaug.diagnosis.BACKBONE_MARGIN"])
def test_changelog_names_each_deprecation_and_its_removal(spelling: str):
    text = CHANGELOG.read_text(encoding="utf-8")
    sections = re.findall(r"^### Deprecated\n(.*?)(?=^##)", text, flags=re.MULTILINE | re.DOTALL)
    assert sections, "CHANGELOG.md has no '### Deprecated' section"
    entries = [entry for section in sections for entry in re.split(r"\n(?=- )", section) if f"`{spelling}" in entry]
    assert entries, f"no entry of CHANGELOG.md's Deprecated sections names `{spelling}`"
    assert all(f"removed in {REMOVED_IN}" in " ".join(e.lower().split()) for e in entries), entries
