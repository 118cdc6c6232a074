"""Bad inputs to salaug.diagnose and its report: refused with a message naming the problem and the fix.

Each case was found by fuzzing the diagnosis: before, it was scored into a verdict (or crashed late).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from salaug.diagnosis import Budget, diagnose


def net(outputs: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, outputs)).eval()


X = torch.rand(4, 3, 16, 16)
Y = torch.tensor([0, 1, 2, 3])
BOX = torch.tensor([[2.0, 2.0, 10.0, 10.0]]).expand(4, 4).clone()


def boxed(boxes: torch.Tensor, model: nn.Module | None = None, **kw):
    return diagnose(model or net(), [(X, Y, boxes)], "0", box_key=2, budget=Budget(examples_per_class=0), **kw)


def test_boxes_reaching_past_the_border_count_their_in_image_share():
    big = torch.tensor([[-8.0, -8.0, 24.0, 24.0]]).expand(4, 4)  # covers the whole image and more
    assert boxed(big).chance == pytest.approx(1.0)  # the whole image: chance 1, not 4
    half = BOX.clone()
    half[:, 0] = -8.0  # x from -8 to 10: only 0..10 is in the image
    assert boxed(half).chance == pytest.approx(10 * 8 / 256)


@pytest.mark.parametrize("edit, match", [
    ((1, 2, 1.0), r"samples \[1\] are empty or inverted"),  # x2 < x1
    ((2, 3, 2.0), r"samples \[2\] are empty or inverted"),  # y2 == y1: empty
    ((3, slice(None), torch.tensor([20.0, 20.0, 30.0, 30.0])), r"samples \[3\] lie wholly outside the 16x16"),
    ((0, 0, float("nan")), r"samples \[0\] hold NaN"),
])
def test_empty_inverted_and_outside_boxes_are_refused_naming_the_samples(edit, match):
    boxes = BOX.clone()
    row, col, value = edit
    boxes[row, col] = value
    with pytest.raises(ValueError, match=match):
        boxed(boxes)


def test_a_model_with_one_output_is_refused():
    with pytest.raises(ValueError, match=r"one output.*torch.cat\(\[-z, z\], dim=1\)"):
        boxed(BOX, net(outputs=1))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_logits_are_refused_naming_the_samples(value):
    model = net()
    with torch.no_grad():
        model[5].bias[2] = value  # every sample's logit 2
    with pytest.raises(ValueError, match=r"NaN or inf logits for samples \[0, 1, 2, 3\]"):
        boxed(BOX, model)


def test_nan_images_are_refused():
    x = X.clone()
    x[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values \(samples \[2\]"):
        diagnose(net(), [(x, Y)], "0")


def test_masks_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"masks must be \(4, 1, 16, 16\)"):
        diagnose(net(), [(X, Y, BOX, torch.ones(4, 1, 8, 8, dtype=torch.bool))], "0", box_key=2, mask_key=3)


def test_save_examples_zero_writes_only_the_markdown_and_negative_is_refused(tmp_path):
    d = diagnose(net(), [(X, Y, BOX)], "0", box_key=2, budget=Budget(examples_per_class=1))
    assert [p.name for p in d.save(tmp_path / "a", examples=0)] == ["report.md"]
    assert os.listdir(tmp_path / "a") == ["report.md"]
    for bad, error in ((-1, ValueError), (1.5, TypeError), ("2", TypeError)):
        with pytest.raises(error, match="examples must be an int >= 0"):
            d.save(tmp_path / "b", examples=bad)
    assert not (tmp_path / "b").exists()  # refused before anything is written


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x: diagnose("net", [x]), TypeError, "nn.Module"),
    (lambda m, x: diagnose(m, x[0]), TypeError, "got a tensor"),
    (lambda m, x: diagnose(m, TensorDataset(*x)), TypeError, "DataLoader"),
    (lambda m, x: diagnose(m, []), ValueError, "no batches"),
    (lambda m, x: diagnose(m, [x], budget=Budget(max_batches=0)), ValueError, "Budget.max_batches"),
    (lambda m, x: diagnose(m, [x], box_key=3), IndexError, "not at position 3.*pass box_key="),
    (lambda m, x: diagnose(m, [{"x": x[0]}]), KeyError, "pass image_key="),
    (lambda m, x: diagnose(m, [(x[0], x[1][:3])]), ValueError, "label_key"),
    (lambda m, x: diagnose(m, [(x[0], x[1], x[2][:, :2])], box_key=2), ValueError, r"\(4, 4\)"),
    (lambda m, x: diagnose(m, [(x[0], x[1] + 10)]), ValueError, "labels must lie in"),
    (lambda m, x: diagnose(m, [x], num_classes=9), ValueError, "only 4 outputs"),
    (lambda m, x: diagnose(m, [x], budget=Budget(references=True)), TypeError,
     "Budget.references must be an int >= 0"),
    (lambda m, x: diagnose(m, [x], budget=Budget(reliance=1)), TypeError,
     "Budget.reliance must be True or False"),
    (lambda m, x: diagnose(m, [x], seed=-1), ValueError, "seed must be an int >= 0"),
    (lambda m, x: diagnose(m, [x], budget=Budget(examples_per_class=-1)), ValueError,
     "Budget.examples_per_class"),
])
def test_bad_arguments_name_the_problem(call, error, match):
    with pytest.raises(error, match=match):
        call(net(), (X, Y, BOX))


# ---------------------------------------------------------------------------- one image-size rule
@pytest.mark.parametrize("size", [8, 15, 513, True, 32.0])
def test_demo_checkpoints_and_their_metadata_obey_the_command_lines_size_rule(size):
    from salaug.diagnosis import demo_checkpoint, load_demo_model
    from salaug.models import DemoNet

    rule = r"must be an integer in \[16, 512\] \(ClutteredObjects draws 16 to 512 px images here\)"
    with pytest.raises(ValueError, match="image_size " + rule):
        demo_checkpoint(DemoNet(num_classes=4, width=8), size)
    ckpt = demo_checkpoint(DemoNet(num_classes=4, width=8), 16)
    ckpt["salaug"]["image_size"] = size
    with pytest.raises(ValueError, match="the checkpoint's metadata image_size " + rule):
        load_demo_model(ckpt)


def test_diagnose_cli_refuses_a_checkpoint_recording_a_size_the_data_cannot_be_drawn_at(tmp_path, capsys):
    # before: demo_checkpoint accepted 8, and the command died with a traceback building the dataset
    from salaug.cli.diagnose import main
    from salaug.diagnosis import demo_checkpoint
    from salaug.models import DemoNet

    ckpt = demo_checkpoint(DemoNet(num_classes=4, width=8), 32)
    ckpt["salaug"]["image_size"] = 8
    torch.save(ckpt, tmp_path / "model.pt")
    for argv in (["--checkpoint", str(tmp_path / "model.pt")], ["--size", "8"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--out", str(tmp_path / "rep")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "must be an integer in [16, 512] (ClutteredObjects draws 16 to 512 px images here), got" in err
    assert not (tmp_path / "rep").exists()
