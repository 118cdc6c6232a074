"""A small, fast version of benchmarks/diagnosis_matrix.py: its faults, its data, its report."""

from __future__ import annotations

import importlib.util
import os
from argparse import Namespace

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture()
def matrix(monkeypatch):
    path = os.path.join(HERE, "..", "benchmarks", "diagnosis_matrix.py")
    spec = importlib.util.spec_from_file_location("diagnosis_matrix", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    monkeypatch.setattr(module, "TRAIN", 480)
    monkeypatch.setattr(module, "TEST", 120)
    monkeypatch.setattr(module, "EPOCHS", 4)
    module.load.cache_clear()
    return module


def test_a_full_mark_on_cluttered_objects_is_called_background_reliance(matrix):
    row, diag = matrix.cell(("objects", 0, "mark_full"))
    assert row["mark_worth"] > 0.3  # the model learned the mark ...
    assert row["kind"] == "background" and row["right"] and row["share"] > 0.3  # ... and the verdict says so
    assert row["share_low"] > 0 and not row["held_out"] and diag.background_share["share"] == row["share"]
    text = matrix.report([row], Namespace(workers=1))
    assert "| mark_full (background) | 1/1; worth" in text and "Right verdicts: 1/1 = 100%" in text


def test_faulty_images_and_the_datasets(matrix):
    d = matrix.load("objects", 0)
    x, y, b, m = d["test_image"][:8], d["test_label"][:8], d["test_box"][:8], d["test_mask"][:8]
    assert torch.equal(matrix.faulty_images("healthy", x, y, b, 6), x)
    marked = matrix.faulty_images("mark_10", x, y, b, 6)
    changed = (marked != x).any(1)
    assert bool((changed & m[:, 0]).sum() == 0) and int(changed.sum()) <= 8 * 16  # 4x4 per image, off the object
    codes = matrix.mark_codes("mark_10", d["train_label"], 6, 0)
    assert 0.45 < (codes == d["train_label"]).float().mean() < 0.65  # true on half, random (1/6 right) on the rest
    light, dark = matrix.load("silhouettes", 0), matrix.load("dark_on_light", 0)
    for data, obj_darker in ((light, False), (dark, True)):
        img, mask = data["test_image"], data["test_mask"].expand_as(data["test_image"])
        assert img.shape[1:] == (3, 32, 32) and int(data["test_label"].max()) < 12
        assert (img[mask].mean() < img[~mask].mean()) == obj_darker  # dark objects on light, and the reverse


def test_the_report_counts_tuning_and_held_out_rows_apart_and_flags_a_passed_mark(matrix):
    def row(dataset, fault, kind, worth, state="independent"):
        held = matrix.held_out(dataset, fault)
        right = matrix.expected_kind(fault, worth)
        return {"dataset": dataset, "seed": 0, "fault": fault, "held_out": held, "mark_worth": worth, "seconds": 1.0,
                "expected": " or ".join(right), "kind": kind, "right": kind in right,
                "passed_a_mark": worth is not None and worth >= matrix.MUST and kind == "healthy",
                "accuracy": 0.8, "chance_accuracy": 0.1, "backbone_margin": 0.2, "head_margin": 0.2,
                "reliance_state": state, "share": 0.05, "share_low": -0.01, "share_high": 0.1, "share_fills": ["t"],
                "bg_gap_t": 0.0, "bg_gap_b": 0.0, "mixed_same_t": 0.8, "mixed_same_b": 0.8, "background_only_t": 0.1,
                "background_only_b": 0.1, "object_only_t": 0.7, "object_only_b": 0.7, "thresholds": {}}

    assert matrix.expected_kind("mark_5", 0.02) == ("healthy", "background")
    assert matrix.expected_kind("mark_5", 0.06) == ("background",) and matrix.expected_kind("healthy", None) == (
        "healthy",)
    rows = [row("objects", "healthy", "healthy", None), row("objects", "mark_10", "healthy", 0.12),
            row("dark_on_light", "healthy", "healthy", None), row("silhouettes", "finetune", "backbone", None)]
    assert [r["held_out"] for r in rows] == [False, False, True, True]
    text = matrix.report(rows, Namespace(workers=1))
    assert "**Right verdicts: 2/4 = 50%** (tuning rows 1/2 = 50%; held-out rows 1/2 = 50%)" in text
    assert "Marks worth >= 0.10 called healthy or independent: 1." in text
    assert "| mark_10 (by worth) | 0/1 (wrong: healthy); worth +0.12 to +0.12 |" in text
    assert "*1/1" in text  # a held-out cell is starred
