"""A small, fast version of benchmarks/diagnosis_matrix.py: one fault on data the thresholds never saw."""

from __future__ import annotations

import importlib.util
import os
from argparse import Namespace

import pytest

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


def test_a_background_colour_shortcut_on_textured_blobs_is_called_background_reliance(matrix):
    row = matrix.cell(("textures", 0, "background_colour"))
    assert row["fault_took"] > 0.5  # the model learned the colour ...
    assert row["kind"] == "background" and row["right"] and row["bg_gap"] > 0.3  # ... and the verdict says so
    args = Namespace(datasets=["textures"], faults=["background_colour"], seeds=[0], workers=1)
    text = matrix.report([row], args)
    assert "| background_colour (background) | 1/1 |" in text and "Right verdicts: 1/1 = 100%" in text


def test_faulty_images_change_only_what_the_fault_says(matrix):
    import torch

    d = matrix.load("objects", 0)
    x, y, b, m = d["test_image"][:8], d["test_label"][:8], d["test_box"][:8], d["test_mask"][:8]
    assert torch.equal(matrix.faulty_images("healthy", x, y, b, m, 6), x)
    tinted = matrix.faulty_images("background_colour", x, y, b, m, 6)
    assert torch.equal(tinted[m.expand_as(x)], x[m.expand_as(x)]) and not torch.equal(tinted, x)
    marked = matrix.faulty_images("mark_strong", x, y, b, m, 6)
    changed = (marked != x).any(1)
    assert bool((changed & m[:, 0]).sum() == 0) and int(changed.sum()) <= 8 * 16  # 4x4 per image, off the object
