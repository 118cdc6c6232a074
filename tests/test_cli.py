"""The `salaug` console script: dispatch, lazy imports, and each subcommand end to end (small).

Hostile command lines are in ``test_cli_bad_input.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from salaug.cli import main

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def test_help_and_usage(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main([]) == 2


def test_unknown_command_is_an_argparse_error():
    with pytest.raises(SystemExit) as err:
        main(["train"])
    assert err.value.code == 2


@pytest.mark.parametrize("command, text", [
    ("demo", "--method"), ("precompute-masks", "--arch"), ("diagnose", "--checkpoint"),
])
def test_subcommand_help(command, text, capsys):
    with pytest.raises(SystemExit) as err:
        main([command, "--help"])
    assert err.value.code == 0
    assert text in capsys.readouterr().out


@pytest.mark.parametrize("command, shown", [
    ("demo", ["(default: 150)", "(default: snapmix)", "(default: salaug_demo)", "(default: 32)"]),
    ("diagnose", ["(default: 300)", "(default: salaug_diagnosis)", "(default: cpu)"]),
    ("precompute-masks", ["(default: gradcam)", "(default: uint8)", "(default: 64)"]),
])
def test_help_shows_the_defaults(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(s in out for s in shown), out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_help_lists_every_command(capsys):
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "precompute-masks", "diagnose"))


def test_python_dash_m_salaug_runs_the_cli(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["salaug", "--help"])
    with pytest.raises(SystemExit) as err:
        runpy.run_module("salaug", run_name="__main__")
    assert err.value.code == 0 and "precompute-masks" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["diagnose", "demo", "precompute-masks"])
def test_each_command_is_dispatched_lazily_with_the_remaining_arguments(command, monkeypatch):
    import types

    from salaug.cli import COMMANDS

    seen = []
    fake = types.ModuleType(COMMANDS[command][0])
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, COMMANDS[command][0], fake)
    assert main([command, "--x", "1"]) == 7
    assert seen == [["--x", "1"]]


# ---------------------------------------------------------------------------------------------
# layering: the CLI sits on top; the library never loads it; diagnose never loads Lightning
# ---------------------------------------------------------------------------------------------
_SCRIPT = """
import contextlib, io, sys
import salaug, salaug.data, salaug.diagnosis
print(' '.join(sorted(sys.modules)))
from salaug.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(['diagnose', '--help'])
    except SystemExit:
        pass
print(' '.join(sorted(sys.modules)))
"""


def test_import_salaug_loads_no_cli_code_and_diagnose_no_lightning():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    library, diagnose = (set(line.split()) for line in done.stdout.strip().splitlines())
    assert "salaug.diagnosis" in library and not {m for m in library if m.startswith("salaug.cli")}
    assert "salaug.cli.diagnose" in diagnose and "salaug.demo" not in diagnose
    assert not {m for m in diagnose if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")}


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in (ROOT / "salaug").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "salaug").parts[:1] or path.name == "__main__.py":
            continue
        text = path.read_text()
        if "salaug.cli" in text.replace("``salaug.cli", "").replace(":mod:`salaug.cli", ""):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# ---------------------------------------------------------------------------------------------
# salaug precompute-masks
# ---------------------------------------------------------------------------------------------
def test_precompute_masks_end_to_end(tmp_path, capsys):
    import numpy as np
    import torchvision
    from PIL import Image

    from salaug.data import MaskBank

    model = torchvision.models.resnet18(weights=None, num_classes=3)
    weights = tmp_path / "r18.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "cluttered.salm"
    rc = main(["precompute-masks", "--dataset", "cluttered", "--split", "val", "--limit", "6", "--image-size", "32",
               "--arch", "resnet18", "--weights", str(weights), "--num-classes", "3", "--layer", "layer3",
               "--out", str(out), "--batch-size", "4"])
    assert rc == 0
    assert "wrote 6 masks of 2x2" in capsys.readouterr().out
    bank = MaskBank(out, length=6)
    assert bank.description["arch"] == "resnet18" and bank.description["target_layer"] == "layer3"
    assert bank.description["image_size"] == [32, 32]

    # an image folder of mixed sizes, resized for the CAM
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for k, size in enumerate([(40, 30), (24, 36)]):
            Image.fromarray(np.random.RandomState(k).randint(0, 255, (*size, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{k}.png")
    out2 = tmp_path / "folder.salm"
    rc = main(["precompute-masks", str(tmp_path / "imgs"), "--image-size", "32", "--arch", "resnet18",
               "--weights", str(weights), "--num-classes", "3", "--layer", "layer2", "--normalize", "imagenet",
               "--dtype", "float16", "--out", str(out2)])
    assert rc == 0 and MaskBank(out2).mask_size == (4, 4) and len(MaskBank(out2)) == 4


# ---------------------------------------------------------------------------------------------
# salaug demo: the standard recipe, the checkpoint with its metadata
# ---------------------------------------------------------------------------------------------
def test_validation_and_test_splits_stay_unaugmented():
    from salaug.datasets import ClutteredObjects
    from salaug.demo import TEST_SEED, make_data

    train, val, tests = make_data(32, 8, 8, 8, 0, 8, 0)
    train_plain, _, _ = make_data(32, 8, 8, 8, 0, 8, 0, recipe=False)
    assert list(tests) == ["id", "background", "occlusion", "small"]
    torch.manual_seed(1)
    batch = next(iter(train))
    torch.manual_seed(1)
    plain = next(iter(train_plain))
    assert isinstance(batch, list)  # the callback rewrites the batch in place
    images, labels, boxes = batch
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,) and boxes.shape == (8, 4)
    raw = ClutteredObjects("train", size=32, length=8, seed=0).render(range(8))["image"]
    # the same shuffled samples; the recipe crops and flips them, recipe=False leaves them as they are
    assert torch.equal(labels, plain[1]) and not torch.equal(images, plain[0])
    assert all(any(torch.equal(image, r) for r in raw) for image in plain[0])
    assert torch.equal(next(iter(val))[0], ClutteredObjects("val", size=32, length=8, seed=0).render(range(8))["image"])
    for split, loader in tests.items():
        options = ClutteredObjects.SHIFTS.get(split, {})
        expected = ClutteredObjects("test", size=32, length=8, seed=TEST_SEED, **options).render(range(8))["image"]
        assert torch.equal(next(iter(loader))[0], expected), split


def test_soft_label_captions_name_the_classes():
    from salaug.demo import soft_label_captions

    labels = torch.tensor([[0.0, 0.62, 0.38], [0.0, 0.0, 1.0]])
    assert soft_label_captions(labels, ("disc", "ring", "star")) == ["ring .62 star .38", "star 1.00"]
    assert soft_label_captions(labels) == ["1 .62 2 .38", "2 1.00"]


def test_lightning_demonet_is_the_plain_demonet():
    from salaug import models
    from salaug.demo import DemoNet

    torch.manual_seed(3)
    plain = models.DemoNet(num_classes=5, width=8)
    torch.manual_seed(3)
    lit = DemoNet(num_classes=5, width=8)
    assert isinstance(lit, models.DemoNet) and list(lit.state_dict()) == list(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(lit.eval()(x), plain.eval()(x))
    assert dict(lit.named_modules())["features"] is lit.features


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """One tiny `salaug demo` run (1 epoch, 40 images), in-process."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    rc = main(["demo", "--epochs", "1", "--train-size", "40", "--val-size", "16", "--test-size", "16",
               "--batch-size", "20", "--no-progress", "--processes", "1", "--seeds", "1", "--out", str(out)])
    assert rc == 0
    return out


def test_demo_writes_its_files_and_a_checkpoint_with_metadata(demo_out):
    import salaug
    from salaug.datasets import CLASS_NAMES
    from salaug.models import DemoNet

    names = sorted(p.name for p in demo_out.iterdir())
    assert names == ["accuracy.png", "augmented.png", "cam_overlays.png", "model.pt", "results.json", "results.md",
                     "runs"]
    assert (demo_out / "runs" / "snapmix" / "version_0" / "salaug_monitor" / "epoch0000.png").is_file()
    assert sorted(p.name for p in (demo_out / "runs").iterdir()) == ["none", "snapmix"]
    report = (demo_out / "results.md").read_text()
    assert "standard recipe" in report and "## What the columns mean" in report and "**label fidelity**" in report
    assert "| arm − none | id | background | occlusion | small |" in report and "Verdict: snapmix" in report
    runs = json.loads((demo_out / "results.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["none", "snapmix"] and all(r["recipe"] for r in runs)
    assert set(runs[1]["accuracy"]) == {"id", "background", "occlusion", "small"}
    assert runs[1]["test_acc"] == runs[1]["accuracy"]["id"]
    saved = torch.load(demo_out / "model.pt", weights_only=True)
    meta = saved["salaug"]
    assert meta["image_size"] == 32 and meta["in_channels"] == 3 and meta["num_classes"] == 10
    assert meta["width"] == 16 and meta["target_layer"] == "features" and meta["version"] == salaug.__version__
    assert meta["class_names"] == list(CLASS_NAMES[:10])
    net = DemoNet(num_classes=10, width=16)
    net.load_state_dict(saved["state_dict"])  # the plain network reads the demo's weights


def test_diagnose_reads_the_demo_checkpoint_and_refuses_another_size(demo_out, tmp_path, capsys):
    small = ["--num-images", "20", "--batch-size", "20", "--examples", "0"]
    assert main(["diagnose", "--checkpoint", str(demo_out / "model.pt"), "--out", str(tmp_path / "rep"), *small]) == 0
    out = capsys.readouterr().out
    assert "| **all** | 20 |" in out
    assert sorted(os.listdir(tmp_path / "rep")) == ["report.md"]
    line = _usage_error(["diagnose", "--checkpoint", str(demo_out / "model.pt"), "--size", "64", *small], capsys)
    assert "--size" in line and "64" in line and "32" in line
    assert not (tmp_path / "rep2").exists()


# ---------------------------------------------------------------------------------------------
# salaug diagnose
# ---------------------------------------------------------------------------------------------
SMALL = ["--num-images", "20", "--batch-size", "20", "--examples", "1", "--no-progress"]


def _usage_error(argv: list[str], capsys) -> str:
    """Run the CLI; assert argparse's exit code 2 and no traceback; return the last stderr line."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    assert sum(": error:" in line for line in lines) == 1 and ": error:" in lines[-1]
    return lines[-1]


def test_diagnose_trains_the_demo_model_prints_the_table_and_writes_only_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["diagnose", "--epochs", "1", "--train-size", "40", "--size", "32", "--out", "rep", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| **all** | 20 |" in out and "backbone (EigenCAM)" in out and "report: rep" in out
    assert out.count("\n- ") >= 1  # the verdict
    assert sorted(os.listdir(tmp_path)) == ["rep"]
    assert sorted(os.listdir(tmp_path / "rep")) == ["report.md", "report.png"]


def _demo_net(num_classes: int = 6):
    from salaug.models import DemoNet

    torch.manual_seed(0)
    return DemoNet(num_classes=num_classes, width=8).eval()


def _lightning_checkpoint(path: Path, num_classes: int = 6):
    import pytorch_lightning as pl

    from salaug.demo import DemoNet

    torch.manual_seed(0)
    model = DemoNet(num_classes=num_classes, width=8)
    x = torch.rand(4, 3, 32, 32)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(path.parent))
    trainer.fit(model, DataLoader(TensorDataset(x, torch.arange(4) % num_classes), batch_size=4))
    trainer.save_checkpoint(str(path))
    return model.eval()


@pytest.mark.parametrize("kind", ["metadata", "state_dict", "lightning", "prefixed"])
def test_diagnose_loads_checkpoints(kind, tmp_path, monkeypatch):
    import salaug.diagnosis as diagnosis
    from salaug.diagnosis import demo_checkpoint

    path = tmp_path / "model.ckpt"
    size: list[str] = ["--size", "32"]
    if kind == "lightning":
        model = _lightning_checkpoint(path)
    else:
        model = _demo_net()
        if kind == "metadata":
            torch.save(demo_checkpoint(model, 32), path)
            size = []  # the checkpoint records its size
        elif kind == "state_dict":
            torch.save(model.state_dict(), path)
        else:
            torch.save({"model." + k: v for k, v in model.state_dict().items()}, path)
    seen = {}

    class Stop(Exception):
        pass

    def fake_diagnose(net, loader, target_layer, **kwargs):
        seen.update(net=net, loader=loader, layer=target_layer)
        raise Stop

    monkeypatch.setattr(diagnosis, "diagnose", fake_diagnose)
    with pytest.raises(Stop):
        main(["diagnose", "--checkpoint", str(path), "--out", str(tmp_path / "rep"), *size, *SMALL])
    images, labels, boxes, masks = next(iter(seen["loader"]))
    assert images.shape == (20, 3, 32, 32) and int(labels.max()) < 6  # the checkpoint's size and 6 classes
    assert seen["layer"] == "features" and not seen["net"].training
    torch.testing.assert_close(seen["net"](images), model(images))  # the same weights
