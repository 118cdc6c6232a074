"""The demo: the transform registry it builds from, its arms, its statistics and its report."""

from __future__ import annotations

import inspect
import itertools
import os

import pytest
import torch

import salaug.transforms
from salaug.transforms import (
    AttentiveCutMix,
    GuidedMixup,
    KeepCutout,
    PuzzleMix,
    ResizeMix,
    SaliencyMix,
    SalientCrop,
    SalientPaste,
    SnapMix,
)
from salaug.transforms.registry import SALIENCY_FREE, TRANSFORM_NAMES, TRANSFORMS, create_transform


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls", "defaults"), [
    ("saliencymix", SaliencyMix, {}), ("snapmix", SnapMix, {}), ("guidedmixup", GuidedMixup, {}),
    ("salientpaste", SalientPaste, {}), ("attentivecutmix", AttentiveCutMix, {}), ("puzzlemix", PuzzleMix, {}),
    ("cutmix", SaliencyMix, {}), ("resizemix", ResizeMix, {}),
    ("salientcrop", SalientCrop, {"p": 0.5}), ("keepcutout", KeepCutout, {"p": 0.5}),
])
def test_each_name_builds_its_class_with_the_library_defaults(name, cls, defaults) -> None:
    built = create_transform(name, 10)
    assert type(built) is cls and repr(built) == repr(cls(num_classes=10, **defaults))


def test_options_override_the_defaults_of_a_name() -> None:
    crop = create_transform("salientcrop", 4, p=1.0, keep=0.5)
    assert repr(crop) == repr(SalientCrop(num_classes=4, p=1.0, keep=0.5))
    assert create_transform("puzzlemix", 4, transport=True).transport is True


def test_names_cover_every_transform_and_say_which_read_no_saliency() -> None:
    assert TRANSFORM_NAMES[-1] == "none" and set(TRANSFORM_NAMES) == {*TRANSFORMS, "none"}
    assert SALIENCY_FREE == ("cutmix", "resizemix")
    assert create_transform("none") is None
    exported = {c for _, c in inspect.getmembers(salaug.transforms, inspect.isclass)}
    concrete = {c for c in exported if c.__module__.split(".")[-1] in ("crop", "erase", "mix", "paste", "puzzle")
                and not c.__name__.startswith("_")}
    assert concrete == {spec.cls for spec in TRANSFORMS.values()}  # every transform has a name


@pytest.mark.parametrize(("call", "match"), [
    (lambda: create_transform("magic", 10), r"unknown transform 'magic'; choose one of saliencymix, .*none"),
    (lambda: create_transform("guidedmixup", 10, labels="area"),
     r"'guidedmixup' \(GuidedMixup\) has no option labels; its options are .*sigma"),
    (lambda: create_transform("snapmix", 10, speed=2, colour=1), "has no option colour, speed"),
    (lambda: create_transform("none", p=0.5), "transform 'none' takes no options"),
])
def test_bad_names_and_options_are_refused_with_the_choices(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# the demo's statistics and report
# ---------------------------------------------------------------------------------------------
def _result(method: str, seed: int, **accuracy: float):
    from salaug.demo import RunResult

    return RunResult(method, accuracy["id"], 0.5, 0.3, None if method == "none" else 0.9, 10.0, seed=seed,
                     accuracy=accuracy, curve=[0.5, 0.6])


RESULTS_2_SEEDS = [
    _result("none", 0, id=0.80, background=0.60, occlusion=0.40, small=0.40),
    _result("snapmix", 0, id=0.79, background=0.65, occlusion=0.45, small=0.50),
    _result("none", 1, id=0.82, background=0.62, occlusion=0.44, small=0.40),
    _result("snapmix", 1, id=0.84, background=0.61, occlusion=0.47, small=0.46),
]


def test_paired_differences_pair_each_seed_with_its_own_baseline() -> None:
    from salaug.demo import paired_differences

    diffs = paired_differences([*RESULTS_2_SEEDS, _result("cutmix", 2, id=0.9, background=0, occlusion=0, small=0)])
    assert set(diffs) == {"snapmix"}  # cutmix ran seed 2 only, which has no base-only run
    expected = {"id": [-0.01, 0.02], "background": [0.05, -0.01], "occlusion": [0.05, 0.03], "small": [0.10, 0.06]}
    for split, values in expected.items():
        assert diffs["snapmix"][split] == pytest.approx(values)


def test_the_verdict_names_the_splits_won_in_every_seed_and_says_when_there_is_none() -> None:
    from salaug.demo import paired_differences, verdict

    text = verdict(paired_differences(RESULTS_2_SEEDS)["snapmix"], "snapmix")
    assert text == ("snapmix beat base only on occlusion (+0.040), small (+0.080); "
                    "not on id (+0.005), background (+0.020).")
    assert verdict({"id": [-0.02], "small": [0.0]}, "snapmix").startswith(
        "snapmix did not beat base only on any split")


def test_the_report_gives_each_seed_and_the_spread_of_one_seed_from_the_evidence() -> None:
    from salaug.demo import EVIDENCE_REGIME, format_report

    two = format_report(RESULTS_2_SEEDS, "snapmix", EVIDENCE_REGIME)
    assert "| arm | seeds | test id | test background | test occlusion | test small |" in two
    assert "| snapmix | 2 | 0.815 | 0.630 | 0.460 | 0.480 |" in two
    assert "| snapmix | +0.005 (-0.010, +0.020) | +0.020 (+0.050, -0.010) |" in two
    assert "Verdict: snapmix beat base only on occlusion" in two and "2 paired seeds" in two
    one = format_report(RESULTS_2_SEEDS[:2], "snapmix", EVIDENCE_REGIME)
    assert "| snapmix | -0.010 | +0.050 | +0.050 | +0.100 |" in one
    assert "with a standard deviation of 0.009 (id), 0.010 (background), 0.015 (occlusion)" in one
    assert one.count("+0.008 (id), +0.053 (background)") == 1 and "--seeds 2" in one
    assert "outside the regime of the committed evidence" in format_report(
        RESULTS_2_SEEDS[:2], "snapmix", {**EVIDENCE_REGIME, "epochs": 40})
    assert "Verdict" not in format_report(RESULTS_2_SEEDS[:1], "none", EVIDENCE_REGIME)  # base only alone


def test_pictures_put_the_differences_beside_the_accuracies_and_no_cam_row_in_augmented(tmp_path, monkeypatch) -> None:
    from PIL import Image

    import salaug.viz
    from salaug.demo import write_pictures
    from salaug.models import DemoNet

    rows_of: dict[str, list[str]] = {}
    real = salaug.viz.save_grid

    def spy(rows, path, **kwargs):
        rows_of[os.path.basename(path)] = list(rows)
        return real(rows, path, **kwargs)

    monkeypatch.setattr(salaug.viz, "save_grid", spy)
    paths = write_pictures(DemoNet(num_classes=10, width=8).eval(), "snapmix", RESULTS_2_SEEDS, str(tmp_path), 32, 0)
    assert sorted(os.path.basename(p) for p in paths) == ["accuracy.png", "augmented.png", "cam_overlays.png"]
    assert any("GradCAM" in r for r in rows_of["cam_overlays.png"])
    assert rows_of["augmented.png"] == ["images", "snapmix (soft labels below)"]  # the CAM row is in cam_overlays
    with Image.open(tmp_path / "accuracy.png") as beside:
        assert beside.size[0] > 1.8 * beside.size[1]  # two panels side by side
    alone = write_pictures(DemoNet(num_classes=10, width=8).eval(), "none", RESULTS_2_SEEDS[:1:], str(tmp_path / "n"),
                           32, 0)
    assert sorted(os.path.basename(p) for p in alone) == ["accuracy.png", "cam_overlays.png"]


# ---------------------------------------------------------------------------------------------
# runs: the shifted test sets, the parallel path, bad arms
# ---------------------------------------------------------------------------------------------
TINY = {"epochs": 1, "train_size": 20, "val_size": 10, "test_size": 12, "batch_size": 10, "width": 4,
        "progress": False, "fidelity": False}


def test_a_run_is_measured_on_every_test_split_and_a_custom_dataset_on_its_own(tmp_path) -> None:
    from salaug.datasets import ClutteredObjects
    from salaug.demo import SPLITS, run

    result = run("cutmix", out=str(tmp_path), **TINY)
    assert tuple(result.accuracy) == SPLITS and result.accuracy["id"] == result.test_acc
    assert type(result.model).__module__ == "salaug.models" and not result.model.training
    custom = run("none", out=str(tmp_path), make_dataset=lambda split, size, n, seed: ClutteredObjects(
        split, size=size, length=n, seed=seed), **TINY)
    assert list(custom.accuracy) == ["id"]
    with pytest.raises(ValueError, match="unknown arm 'cutmix-flat'; choose one of saliencymix"):
        run("cutmix-flat", out=str(tmp_path), **TINY)


def test_parallel_processes_give_the_results_of_the_same_runs_in_this_process(tmp_path) -> None:
    from salaug.demo import run_arms

    seen = []
    here = run_arms(["none", "snapmix"], [0], processes=1, out=str(tmp_path / "a"), **TINY)
    spawned = run_arms(["none", "snapmix"], [0], processes=2, threads=1, report=seen.append, out=str(tmp_path / "b"),
                       **TINY)
    assert [r.method for r in spawned] == ["none", "snapmix"] and sorted(r.method for r in seen) == ["none", "snapmix"]
    for a, b in zip(here, spawned, strict=True):
        assert a.accuracy == b.accuracy  # the same seed: the same run, wherever it runs
        # one torch thread there, torch's default here: the same weights up to the order of float sums
        torch.testing.assert_close(a.model.state_dict(), b.model.state_dict(), rtol=1e-4, atol=1e-5)


def test_parallel_runs_start_with_the_longest_arms() -> None:
    from salaug.demo import _cost

    ranks = {arm: _cost(arm) for arm in ("snapmix", "guidedmixup", "snapmix-flat", "cutmix", "resizemix", "none")}
    assert ranks == {"snapmix": 0, "guidedmixup": 0, "snapmix-flat": 1, "cutmix": 1, "resizemix": 1, "none": 2}


def test_a_rerun_into_the_same_out_leaves_only_its_own_files(tmp_path) -> None:
    from salaug.cli import main

    out = tmp_path / "demo"
    (out / "runs" / "snapmix" / "version_0").mkdir(parents=True)
    (out / "runs" / "none-seed3").mkdir()
    (out / "runs" / "tensorboard").mkdir()  # not the demo's: kept
    for stale in ("augmented.png", "results.md", "model.pt"):
        (out / stale).write_text("from an earlier demo")
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--method", "none", "--epochs", "1", "--train-size", "20", "--val-size", "10",
                 "--test-size", "10", "--batch-size", "10", "--width", "4", "--seeds", "1", "--no-progress",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "cam_overlays.png", "model.pt", "notes.txt",
                                                     "results.json", "results.md", "runs"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["none", "tensorboard"]
    assert (out / "notes.txt").read_text() == "mine"
    assert "earlier" not in (out / "results.md").read_text()


# ---------------------------------------------------------------------------------------------
# what the demo prints, where; its schedule; what its picture reads
# ---------------------------------------------------------------------------------------------
def test_progress_goes_to_stderr_and_the_results_to_stdout_from_parallel_workers_too(tmp_path, capfd) -> None:
    """Progress lines come from the spawned workers while they train (file descriptor 2, flushed), so
    `salaug demo > results.txt` still shows them; stdout gets the report and nothing of the progress."""
    from salaug.cli import main

    assert main(["demo", "--epochs", "5", "--train-size", "20", "--val-size", "10", "--test-size", "10",
                 "--batch-size", "10", "--width", "4", "--seeds", "1", "--processes", "2", "--no-progress",
                 "--out", str(tmp_path / "demo")]) == 0
    out, err = capfd.readouterr()
    for run in ("seed 0 none", "seed 0 snapmix"):
        assert f"  {run}: training, 5 epochs" in err and f"  {run}: epoch 1/5, " in err, err
        assert f"  {run}: epoch 4/5, " in err and f"  {run}: trained in " in err
    assert err.index("seed 0 snapmix: training") < err.index("seed 0 snapmix: epoch 4/5")
    assert "salaug demo: none, snapmix x 1 seed(s)" in err and "writing the report" in err
    assert "Verdict: snapmix" in out and "| arm | seeds |" in out
    assert "training, 5 epochs" not in out and "so far" not in out and "salaug demo:" not in out


def test_the_seeds_values_are_in_parentheses_and_the_text_says_so() -> None:
    """Brackets are the 95 % intervals of the README and the evidence page: each seed's value is not one."""
    from salaug.demo import EVIDENCE_REGIME, format_report

    report = format_report(RESULTS_2_SEEDS, "snapmix", EVIDENCE_REGIME)
    table = [line for line in report.splitlines() if line.startswith("| snapmix | +0.005")]
    assert table == ["| snapmix | +0.005 (-0.010, +0.020) | +0.020 (+0.050, -0.010) | +0.040 (+0.050, +0.030) "
                     "| +0.080 (+0.100, +0.060) |"]
    assert "in parentheses, each seed's" in report and "brackets" not in report.replace("brackets would be", "")


@pytest.mark.parametrize(("epochs", "expected"), [(150, (5, 7)), (60, (2, 7)), (40, (1, 10)), (4, (1, 1)), (1, (1, 1))])
def test_the_monitor_watches_about_four_validating_epochs(epochs, expected) -> None:
    """Lightning validates after epochs e with (e + 1) % every == 0; the monitor runs where e % its period
    == 0 too: the schedule makes those meet about 4 times, evenly spaced."""
    from salaug.demo import schedule

    every, monitor = schedule(epochs)
    assert (every, monitor) == expected
    validating = [e for e in range(epochs) if (e + 1) % every == 0]
    watched = [e for e in validating if e % monitor == 0]
    assert len(validating) >= min(epochs, 30) and 1 <= len(watched) <= 5
    if epochs >= 40:
        assert len(watched) >= 4 and len({b - a for a, b in itertools.pairwise(watched)}) == 1


def test_the_accuracy_picture_plots_what_the_verdict_reads(tmp_path, monkeypatch) -> None:
    """Left: each arm's final test accuracy per split (not the in-distribution validation curve);
    right: the paired differences the verdict reads."""
    import matplotlib.figure

    from salaug.demo import _comparison_figure

    drawn = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        drawn.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    _comparison_figure(RESULTS_2_SEEDS, str(tmp_path / "accuracy.png"))
    left, right = drawn[0].axes
    assert left.get_title() == "test accuracy per split" and "final-epoch test accuracy" in left.get_xlabel()
    assert [t.get_text() for t in left.get_yticklabels()] == ["id", "background", "occlusion", "small"]
    assert "verdict" in right.get_title() and [t.get_text() for t in right.get_yticklabels()][2] == "occlusion"
    means = [tuple(c.get_offsets()[0]) for c in left.collections if len(c.get_offsets()) == 1]
    assert any(x == pytest.approx(0.46) and y == pytest.approx(2.1) for x, y in means)  # snapmix, occlusion


def test_batched_reads_give_the_batches_of_a_per_sample_loader() -> None:
    """The demo reads each ClutteredObjects split a batch at a time: the same images, labels, boxes and
    recipe, in the same shuffled order, as DataLoader(shuffle=True, collate_fn=crop_flip_collate)."""
    from torch.utils.data import DataLoader

    from salaug.datasets import ClutteredObjects
    from salaug.demo import crop_flip_collate, make_data

    train, _, _ = make_data(32, 40, 8, 8, 3, 16, 0)
    per_sample = DataLoader(ClutteredObjects("train", size=32, length=40, seed=3, cache=True), batch_size=16,
                            shuffle=True, collate_fn=crop_flip_collate)

    def two_epochs(loader):
        torch.manual_seed(5)
        return [batch for _ in range(2) for batch in loader]

    ours, theirs = two_epochs(train), two_epochs(per_sample)
    assert len(ours) == len(theirs) == 6 and len(train) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(a, list) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
