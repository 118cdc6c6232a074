"""``salaug precompute-masks``: the ``--targets`` spelling (``labels`` / ``predicted``, ``label`` deprecated)."""

from __future__ import annotations

import warnings

import pytest
import torch

from salaug.cli import main
from salaug.cli.precompute_masks import build_parser

_BASE = ["--dataset", "cluttered", "--split", "val", "--limit", "4", "--image-size", "32", "--arch", "resnet18",
         "--num-classes", "3", "--layer", "layer3", "--batch-size", "4"]


def _masks(tmp_path, weights, name, *extra):
    from salaug.data import MaskBank

    out = tmp_path / f"{name}.salm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # none here: weights are given
        rc = main(["precompute-masks", *_BASE, "--weights", str(weights), "--out", str(out), *extra])
    assert rc == 0
    bank = MaskBank(out)
    return bank.get(range(len(bank))), bank.description


@pytest.fixture()
def weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), path)
    return path


def test_targets_defaults_to_labels_and_offers_both_spellings():
    args = ["--arch", "resnet18", "--num-classes", "3", "--out", "m.salm", "--dataset", "cluttered"]
    parser = build_parser()
    assert parser.parse_args(args).targets == "labels"
    assert parser.parse_args([*args, "--targets", "labels"]).targets == "labels"
    assert parser.parse_args([*args, "--targets", "predicted"]).targets == "predicted"
    assert "{labels,predicted}" in parser.format_help()


def test_targets_labels_runs_and_label_is_deprecated_with_the_same_masks(tmp_path, weights, capsys):
    default, description = _masks(tmp_path, weights, "default")
    explicit, _ = _masks(tmp_path, weights, "labels", "--targets", "labels")
    with pytest.warns(DeprecationWarning, match="targets='labels'"):
        old, _ = _masks(tmp_path, weights, "label", "--targets", "label")
    predicted, described = _masks(tmp_path, weights, "predicted", "--targets", "predicted")
    assert torch.equal(default, explicit) and torch.equal(default, old)
    assert description["targets"] == "labels" and described["targets"] == "predicted"
    assert predicted.shape == default.shape


def test_targets_unknown_value_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["--arch", "resnet18", "--num-classes", "3", "--out", "m.salm", "--targets",
                                   "truth"])
    assert err.value.code == 2
    assert "invalid choice 'truth' (choose from 'labels', 'predicted')" in capsys.readouterr().err
