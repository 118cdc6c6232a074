"""Hostile command lines: every bad argument is an argparse usage error (one line, exit code 2),
raised before any training or CAM pass starts."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch

from salaug import cli
from salaug.cli import main


def _usage_error(argv: list[str], capsys) -> str:
    """Run the CLI in-process; assert a one-line argparse error with exit code 2; return that line."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert "Traceback" not in text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], text
    return errors[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if validation lets a command reach training or the CAM pass."""
    import salaug.cli.precompute_masks as precompute_cli
    import salaug.demo as demo

    def forbidden(*args, **kwargs):
        raise AssertionError("argument validation must fail before any work starts")

    monkeypatch.setattr(demo, "run", forbidden)
    monkeypatch.setattr(demo, "run_arms", forbidden)
    monkeypatch.setattr(precompute_cli, "precompute_masks", forbidden)


# ---------------------------------------------------------------------------------------------
# salaug demo
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["--epochs", "0"], "--epochs: must be a positive integer"),
    (["--epochs", "-1"], "--epochs: must be a positive integer"),
    (["--epochs", "two"], "--epochs: expected an integer, got 'two'"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["--train-size", "0"], "--train-size: must be a positive integer"),
    (["--test-size", "-5"], "--test-size: must be a positive integer"),
    (["--size", "8"], "--size: must be an integer in [16, 512]"),
    (["--size", "100000"], "--size: must be an integer in [16, 512]"),
    (["--cam-scale", "0"], "--cam-scale: must be a number in (0, 1]"),
    (["--cam-scale", "1.5"], "--cam-scale: must be a number in (0, 1]"),
    (["--cam-scale", "nan"], "--cam-scale: expected a finite number"),
    (["--size", "16", "--cam-scale", "0.25"], "below the 8 px the network needs"),
    (["--seed", "-1"], "--seed: must be an integer in [0, 4294967295]"),
    (["--device", "gpu9"], "--device: unknown device 'gpu9'"),
    (["--method", "magic"], "--method: invalid choice: 'magic'"),
    (["--compare", "none", "magic"], "--compare: invalid choice: 'magic'"),
    (["--method", "cutmix-flat"], "--method: invalid choice: 'cutmix-flat'"),  # cutmix reads no saliency
    (["--seeds", "0"], "--seeds: must be a positive integer"),
    (["--processes", "0"], "--processes: must be a positive integer"),
    (["--seed", "4294967295", "--seeds", "2"], "runs past the largest seed 4294967295; lower --seed"),
])
def test_demo_bad_arguments(argv, fragment, capsys, no_work):
    assert fragment in _usage_error(["demo", *argv], capsys)


def test_demo_out_is_an_existing_file(tmp_path, capsys, no_work):
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    line = _usage_error(["demo", "--out", str(existing)], capsys)
    assert "--out" in line and "is a file, not a directory" in line
    assert existing.read_text() == "mine"


def test_demo_out_under_a_file(tmp_path, capsys, no_work):
    (tmp_path / "f").write_text("x")
    assert "is a file, not a directory" in _usage_error(["demo", "--out", str(tmp_path / "f" / "d")], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_demo_cuda_without_cuda(capsys, no_work):
    assert "CUDA is not available" in _usage_error(["demo", "--device", "cuda"], capsys)


def test_demo_good_arguments_reach_the_runs(monkeypatch, tmp_path):
    import salaug.demo as demo

    calls = []

    def fake_run_arms(arms, seeds, **kwargs):
        calls.append((arms, seeds, kwargs))
        raise KeyboardInterrupt  # stop right after validation

    monkeypatch.setattr(demo, "run_arms", fake_run_arms)
    with pytest.raises(KeyboardInterrupt):
        main(["demo", "--epochs", "1", "--size", "32", "--cam-scale", "0.5", "--out", str(tmp_path / "o")])
    arms, seeds, kwargs = calls[0]
    assert arms == ["none", "snapmix"] and seeds == [0, 1]  # base only beside the default method, 2 paired seeds
    assert kwargs["epochs"] == 1 and kwargs["cam_scale"] == 0.5 and kwargs["width"] == 16
    assert kwargs["recipe"] is True  # the standard recipe by default
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []  # nothing written before the runs end


@pytest.mark.parametrize("argv, arms, seeds, recipe", [
    ([], ["none", "snapmix"], [0, 1], True),
    (["--compare"], ["none", "cutmix", "snapmix-flat", "snapmix"], [0, 1], True),  # + CutMix and the flat twin
    (["--compare", "none", "--seeds", "1"], ["none", "snapmix"], [0], True),  # none is already there: no more
    (["--compare", "none", "--no-recipe", "--seeds", "2", "--seed", "5"], ["none", "snapmix"], [5, 6], False),
    (["--method", "resizemix", "--compare"], ["none", "cutmix", "resizemix"], [0, 1], True),  # no resizemix-flat
    (["--method", "none", "--seeds", "3"], ["none"], [0, 1, 2], True),
])
def test_demo_arms_and_seeds(argv, arms, seeds, recipe, monkeypatch, tmp_path):
    import salaug.demo as demo

    calls = []

    def fake_run_arms(arms, seeds, **kwargs):
        calls.append((arms, seeds, kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_arms", fake_run_arms)
    with pytest.raises(KeyboardInterrupt):
        main(["demo", *argv, "--epochs", "2", "--out", str(tmp_path / "o")])
    assert calls[0][0] == arms and calls[0][1] == seeds and calls[0][2]["recipe"] is recipe


def test_demo_trains_in_parallel_processes_where_there_are_cores(monkeypatch, tmp_path):
    import salaug.demo as demo

    calls = []

    def fake_run_arms(arms, seeds, **kwargs):
        calls.append(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "plan_processes", lambda runs, device, processes=None: (min(runs, processes or 2), 1))
    monkeypatch.setattr(demo, "run_arms", fake_run_arms)
    for argv in ([], ["--processes", "1"]):
        with pytest.raises(KeyboardInterrupt):
            main(["demo", *argv, "--out", str(tmp_path / "o")])
    assert [kw["processes"] for kw in calls] == [2, 1]


# ---------------------------------------------------------------------------------------------
# salaug precompute-masks
# ---------------------------------------------------------------------------------------------
def _base(tmp_path) -> list[str]:
    return ["precompute-masks", "--dataset", "cluttered", "--arch", "resnet18", "--num-classes", "3",
            "--out", str(tmp_path / "m.salm")]


class _NotTensors:
    pass


def _weights(tmp_path, kind: str):
    path = tmp_path / f"{kind}.pt"
    if kind == "corrupt":
        path.write_bytes(b"\x80\x02garbage that is not a pickle" * 10)
    elif kind == "truncated":
        torch.save({"w": torch.zeros(100, 100)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled-object":  # weights_only=True refuses arbitrary objects
        torch.save({"w": _NotTensors()}, path)
    elif kind == "text":
        path.write_text("weights: none\n")
    elif kind == "a-tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind, fragment", [
    ("corrupt", "not a torch.save file of tensors"),
    ("truncated", "a truncated or corrupt torch.save archive"),
    ("empty", "the file is empty"),
    ("pickled-object", "_NotTensors), not only tensors"),
    ("text", "cannot read"),
    ("a-tensor", "does not hold a state_dict"),
    ("directory", "is a directory"),
    ("missing", "does not exist"),
])
def test_precompute_bad_weights_file(kind, fragment, tmp_path, capsys, no_work):
    line = _usage_error([*_base(tmp_path), "--weights", str(_weights(tmp_path, kind))], capsys)
    assert "--weights" in line and fragment in line
    assert "weights_only=False" not in line  # never advise loading untrusted pickles


@pytest.mark.parametrize("extra, fragment", [
    (["--image-size", "0"], "--image-size: must be an integer >= 16"),
    (["--image-size", "8"], "--image-size: must be an integer >= 16"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["--limit", "0"], "--limit: must be a positive integer"),
    (["--num-workers", "-1"], "--num-workers: must be an integer >= 0"),
    (["--num-classes", "0"], "--num-classes: must be a positive integer"),
    (["--num-classes", "1"], "num_classes must be an int in [2,"),
    (["--split", "nope"], "--dataset cluttered: split must be one of"),
    (["--arch", "resnet9000"], "--arch: unknown torchvision classification architecture"),
    (["--cam", "magic"], "--cam: unknown CAM method 'magic'"),
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--dtype", "float64"], "--dtype: invalid choice"),
])
def test_precompute_bad_arguments(extra, fragment, tmp_path, capsys, no_work):
    assert fragment in _usage_error([*_base(tmp_path), *extra], capsys)


def test_precompute_out_is_a_directory_or_under_a_file(tmp_path, capsys, no_work):
    line = _usage_error([*_base(tmp_path), "--out", str(tmp_path)], capsys)
    assert "--out" in line and "is a directory; give a file name inside it" in line
    (tmp_path / "f").write_text("x")
    line = _usage_error([*_base(tmp_path), "--out", str(tmp_path / "f" / "m.salm")], capsys)
    assert "is a file, not a directory" in line


def test_precompute_root_problems(tmp_path, capsys, no_work):
    folder = ["precompute-masks", "--arch", "resnet18", "--num-classes", "3", "--out", str(tmp_path / "m.salm")]
    assert "does not exist" in _usage_error([*folder, str(tmp_path / "nope")], capsys)
    (tmp_path / "file").write_text("x")
    assert "is a file, not a directory" in _usage_error([*folder, str(tmp_path / "file")], capsys)
    assert "give the image folder ROOT" in _usage_error(folder, capsys)
    line = _usage_error([*_base(tmp_path), str(tmp_path)], capsys)
    assert "only for --dataset folder" in line


def test_precompute_layer_and_weight_mismatch_fail_before_the_cam_pass(tmp_path, capsys, no_work):
    import torchvision

    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=5).state_dict(), weights)
    line = _usage_error([*_base(tmp_path), "--weights", str(weights)], capsys)
    assert "does not match the architecture" in line and "fc.weight" in line
    line = _usage_error([*_base(tmp_path), "--layer", "layer9"], capsys)
    assert "--layer 'layer9' is not a module of resnet18" in line and "layer4" in line
    assert "--layer '' is not a module" in _usage_error([*_base(tmp_path), "--layer", ""], capsys)


# ---------------------------------------------------------------------------------------------
# the typed helpers themselves
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("helper, good, bad", [
    (cli.positive_int, [("1", 1), ("12", 12)], ["0", "-3", "1.5", "", "x"]),
    (cli.nonnegative_int, [("0", 0)], ["-1", "one"]),
    (cli.positive_float, [("0.5", 0.5)], ["0", "-1", "inf", "nan", "x"]),
    (cli.probability, [("0", 0.0), ("1", 1.0)], ["-0.1", "1.01", "nan"]),
    (cli.fraction, [("1", 1.0), ("0.25", 0.25)], ["0", "2", "-inf"]),
    (cli.seed, [("0", 0), ("4294967295", 2**32 - 1)], ["-1", "4294967296"]),
    (cli.int_range(2, 4), [("2", 2), ("4", 4)], ["1", "5"]),
    (cli.cam_name, [("GradCAM", "gradcam"), ("gradcampp", "gradcam++")], ["cam"]),
    (cli.accelerator, [("CPU", "cpu"), ("auto", "auto")], ["tpu", "cuda:0"]),
])
def test_typed_helpers(helper, good, bad):
    for text, value in good:
        assert helper(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            helper(text)


def test_weights_file_loads_a_lightning_checkpoint_state_dict(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "epoch": 3}, path)
    loaded = cli.weights_file(str(path))
    assert loaded.path == str(path) and list(loaded.state) == ["model.w"]
    assert loaded.checkpoint["epoch"] == 3  # the whole file stays available (metadata beside the weights)
    assert pickle.loads(pickle.dumps(loaded)).path == str(path)


def test_precompute_runtime_failure_is_one_line_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["precompute-masks", str(tmp_path / "empty"), "--arch", "resnet18", "--num-classes", "3",
               "--out", str(tmp_path / "m.salm")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("salaug precompute-masks: error:")
    assert not (tmp_path / "m.salm").exists()


# ---------------------------------------------------------------------------------------------
# salaug diagnose
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_diagnosis(monkeypatch):
    """Fail the test if validation lets `salaug diagnose` reach training or the CAM passes."""
    import salaug.diagnosis as diagnosis

    def forbidden(*args, **kwargs):
        raise AssertionError("argument validation must fail before any work starts")

    monkeypatch.setattr(diagnosis, "diagnose", forbidden)
    monkeypatch.setattr(diagnosis, "train_demo_model", forbidden)


def _demo_state(num_classes: int = 6) -> dict:
    from salaug.models import DemoNet

    torch.manual_seed(0)
    return DemoNet(num_classes=num_classes, width=8).state_dict()


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "--epochs: must be an integer >= 0"),
    (["--size", "8"], "--size: must be an integer in [16, 512]"),
    (["--num-images", "x"], "--num-images: expected an integer, got 'x'"),
    (["--examples", "-1"], "--examples: must be an integer >= 0"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--checkpoint", "/nonexistent/model.ckpt"], "does not exist"),
])
def test_diagnose_bad_arguments(argv, message, capsys, no_diagnosis):
    assert message in _usage_error(["diagnose", *argv], capsys)


@pytest.mark.parametrize("kind, fragment", [
    ("text", "cannot read"),
    ("pickled-module", "cannot read"),  # a whole pickled module would run code from the file: refused
    ("other-architecture", "do not fit salaug.models.DemoNet"),
    ("missing-key", "missing key 'features.4.weight'"),
    ("unexpected-key", "unexpected key 'extra.weight'"),
    ("wide", "20 outputs"),
])
def test_diagnose_bad_checkpoints(kind, fragment, tmp_path, capsys, no_diagnosis):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "pickled-module":
        from salaug.models import DemoNet

        torch.save(DemoNet(num_classes=4, width=8), path)
    elif kind == "other-architecture":
        torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)).state_dict(), path)
    elif kind == "missing-key":
        state = _demo_state()
        del state["features.4.weight"]
        torch.save(state, path)
    elif kind == "unexpected-key":
        torch.save({**_demo_state(), "extra.weight": torch.zeros(2)}, path)
    else:
        torch.save(_demo_state(num_classes=20), path)
    line = _usage_error(["diagnose", "--checkpoint", str(path), "--size", "32"], capsys)
    assert "--checkpoint" in line and fragment in line


def test_diagnose_needs_the_checkpoints_image_size(tmp_path, capsys, no_diagnosis):
    from salaug.diagnosis import demo_checkpoint
    from salaug.models import DemoNet

    bare = tmp_path / "bare.pt"
    torch.save(_demo_state(), bare)  # no metadata: the size cannot be checked
    line = _usage_error(["diagnose", "--checkpoint", str(bare)], capsys)
    assert "--size" in line and "does not record" in line
    recorded = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(demo_checkpoint(DemoNet(num_classes=6, width=8), 32), recorded)
    line = _usage_error(["diagnose", "--checkpoint", str(recorded), "--size", "64"], capsys)
    assert "--size 64" in line and "32" in line


def test_diagnose_refuses_a_model_with_nan_logits(tmp_path, capsys):
    state = _demo_state()
    state["head.2.bias"] = torch.full_like(state["head.2.bias"], float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    line = _usage_error(["diagnose", "--checkpoint", str(path), "--size", "32", "--num-images", "8",
                         "--batch-size", "8", "--out", str(tmp_path / "rep")], capsys)
    assert "nan" in line.lower()
    assert not (tmp_path / "rep").exists()


def test_diagnose_out_is_a_file(tmp_path, capsys, no_diagnosis):
    taken = tmp_path / "taken"
    taken.write_text("")
    assert "is a file, not a directory" in _usage_error(["diagnose", "--out", str(taken)], capsys)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _usage_error(["diagnose", "--device", "cuda"], capsys)
