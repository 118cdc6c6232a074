"""benchmarks/payoff/: arm parsing, paired statistics, label error, reuse of the committed results, and a
tiny end-to-end preset."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


RESULTS = os.path.join(ROOT, "benchmarks", "results")


@pytest.fixture(scope="module")
def payoff():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    return importlib.import_module("benchmarks.payoff")


def test_parse_arm_reads_options_and_rejects_unknown_ones(payoff) -> None:
    arm = payoff.parse_arm("snapmix:warmup=40,ema=0.99,alpha=1,p=1.0,off=3")
    assert (arm.kind, arm.saliency, arm.warmup, arm.ema, arm.alpha, arm.p, arm.off) == \
        ("snapmix", "cam", 40, 0.99, 1.0, 1.0, 3)
    assert payoff.parse_arm("cutmix").saliency == "flat" and payoff.parse_arm("oracle").saliency == "mask"
    assert payoff.parse_arm("snapmix:ema=none").ema is None
    with pytest.raises(ValueError, match="unknown arm"):
        payoff.parse_arm("fancymix")
    with pytest.raises(ValueError, match="key=value"):
        payoff.parse_arm("snapmix:speed=3")


def test_sweep_varies_one_knob_at_a_time_around_the_method(payoff) -> None:
    arms = payoff.sweep_arms("snapmix", 8)
    assert arms[:3] == ["none", "cutmix", "snapmix"] and len(set(arms)) == len(arms)
    parsed = [payoff.parse_arm(a) for a in arms[3:]]
    assert {a.kind for a in parsed} == {"snapmix"}
    assert {(a.warmup, a.ema is not None, a.p, a.off, a.alpha) for a in parsed} >= {(8, False, None, None, None),
                                                                                    (40, False, None, None, None),
                                                                                    (0, True, None, None, None)}
    assert "saliencymix:alpha=0.4" in payoff.sweep_arms("saliencymix", 8)


def test_paired_interval_matches_a_hand_computed_t_interval(payoff) -> None:
    a, b = [0.60, 0.55, 0.62, 0.58], [0.50, 0.50, 0.50, 0.50]
    d = payoff.paired(a, b)
    diffs = [0.10, 0.05, 0.12, 0.08]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 3)
    assert d["mean"] == pytest.approx(mean) and d["se"] == pytest.approx(sd / 2)
    assert d["lo"] == pytest.approx(mean - 3.182 * sd / 2) and d["hi"] == pytest.approx(mean + 3.182 * sd / 2)
    assert payoff.t975(4) == 2.776 and payoff.t975(1000) == 1.96


def test_gate_passes_only_beyond_two_standard_errors(payoff) -> None:
    def summary(diffs: list[float]) -> dict:
        return {"oracle": {"vs_none": {"id": payoff.paired([0.5 + d for d in diffs], [0.5] * len(diffs))}}}

    assert "PASSED" in payoff.gate(summary([0.10, 0.12, 0.09, 0.11, 0.10]))
    assert "FAILED" in payoff.gate(summary([0.10, -0.08, 0.02, -0.05, 0.03]))
    assert "not evaluated" in payoff.gate({})


def test_label_error_is_zero_for_the_truth_and_sees_a_cut_out_object(payoff) -> None:
    from salaug import SaliencyMix

    # Two 8x8 images; object 0 fills the left half, object 1 a 2x2 square at the top right.
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    masks[0, :, :, :4] = True
    masks[1, :, :2, 6:] = True
    labels = torch.tensor([0, 1])
    # Paste sample 1's bottom-right quarter (no object there) into sample 0, and the reverse.
    params = {"applied": torch.tensor([True, True]), "perm": torch.tensor([1, 0]),
              "boxes": torch.tensor([[4, 4, 8, 8], [4, 4, 8, 8]])}
    t = SaliencyMix(num_classes=2)
    images = torch.rand(2, 3, 8, 8)
    out = t(images, torch.zeros(2, 1, 8, 8), labels, params=params)
    err, valid = payoff.label_error(t, params, out.labels, labels, masks, 2)
    assert valid.tolist() == [True, True]
    # The area label gives the partner 1/4, but none of object 1 is visible in image 0: error +1/4.
    assert err[0].item() == pytest.approx(0.25)
    # Image 1 keeps all of object 1 (not in the box) and shows none of object 0: error +1/4 too.
    assert err[1].item() == pytest.approx(0.25)
    # A label that says what is visible has no error.
    truth = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    err, _ = payoff.label_error(t, params, truth, labels, masks, 2)
    assert torch.allclose(err, torch.zeros(2), atol=1e-6)


def test_label_error_counts_a_shrunk_paste_at_the_source_scale(payoff) -> None:
    from salaug import SnapMix

    masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    masks[0, :, 12:, :4] = True  # object 0: bottom left, away from the pasted box
    masks[1, :, :4, :4] = True  # object 1: top left, inside the source box
    labels = torch.tensor([0, 1])
    t = SnapMix(num_classes=2)
    x, sal = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    _, params = t(x, sal, labels, return_params=True)
    dst = "dst_boxes" if "dst_boxes" in params else "boxes"  # the name of the destination boxes
    params = dict(params, applied=torch.tensor([True, True]), perm=torch.tensor([1, 0]),
                  src_boxes=torch.tensor([[0, 0, 8, 8], [0, 0, 8, 8]]))
    params[dst] = torch.tensor([[8, 8, 12, 12], [8, 8, 12, 12]])
    # Image 0 shows all of its own object and all of object 1, shrunk to a quarter: truth 1/2 each.
    truth = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    err, valid = payoff.label_error(t, params, truth, labels, masks, 2)
    assert valid.tolist() == [True, True]
    assert torch.allclose(err, torch.zeros(2), atol=1e-6), err


def test_mixup_is_per_sample_and_its_labels_follow_the_blend(payoff) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 4, 4)
    y = torch.arange(64) % 4
    mixed, soft, perm, w = payoff.mixup(x, y, 4, 0.5, 1.0, g)
    applied = w > 0
    assert 16 < int(applied.sum()) < 48  # p = 0.5 per sample, not per batch
    assert torch.equal(mixed[~applied], x[~applied])
    torch.testing.assert_close(mixed, x + w.view(-1, 1, 1, 1) * (x[perm] - x))
    torch.testing.assert_close(soft.sum(1), torch.ones(64))
    masks = torch.ones(64, 1, 4, 4, dtype=torch.bool)
    err, valid = payoff.label_error(None, {"perm": perm, "applied": applied, "weight": w}, soft, y, masks, 4)
    assert bool(valid.any()) and not bool(valid[~applied].any())
    assert float(err[valid].abs().max()) < 1e-5


def test_tiny_preset_runs_end_to_end_and_writes_only_where_told(payoff, tmp_path) -> None:
    out = tmp_path / "results"
    rc = payoff.main(["--preset", "smoke", "--arms", "none,cutmix,oracle", "--seeds", "2",
                      "--out", str(out), "--name", "t"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["payoff_t.json", "payoff_t.md", "payoff_t.png"]
    data = json.loads((out / "payoff_t.json").read_text())
    assert len(data["runs"]) == 6 and "gate" in data["gate"]
    summary = data["summary"]
    assert set(summary) == {"none", "cutmix", "oracle"}
    for split in ("id", "background", "occlusion", "small"):
        assert 0.0 <= summary["oracle"][f"acc_{split}"] <= 1.0
        assert summary["oracle"]["vs_none"][split]["n"] == 2 and "vs_cutmix" in summary["oracle"]
    assert summary["none"].get("label_mae") is None and summary["cutmix"]["label_mae"] > 0
    table = (out / "payoff_t.md").read_text()
    assert "Paired difference in test accuracy to **cutmix**" in table and "| oracle |" in table
    (out / "payoff_t.png").unlink()
    assert payoff.main(["--replot", str(out / "payoff_t.json")]) == 0 and (out / "payoff_t.png").is_file()
    # Runs are deterministic per (config, arm, seed): --reuse takes them instead of training again.
    rc = payoff.main(["--preset", "smoke", "--arms", "none,cutmix", "--seeds", "2", "--reuse",
                      str(out / "payoff_t.json"), "--out", str(out), "--name", "r"])
    again = json.loads((out / "payoff_r.json").read_text())
    assert all(r["reused_from"] == "payoff_t.json" for r in again["runs"]) and len(again["runs"]) == 4
    assert again["summary"]["cutmix"]["acc_id"] == summary["cutmix"]["acc_id"]
    other = payoff.load_reusable([str(out / "payoff_t.json")], payoff.Config(**payoff.PRESETS["quick"]))
    assert other == {}  # another config's runs are never mixed in


def test_runs_are_reproducible_and_arms_share_data_and_init(payoff) -> None:
    cfg = payoff.Config(**payoff.PRESETS["smoke"])
    a = payoff.run_one(cfg, "cutmix", 0)
    b = payoff.run_one(cfg, "cutmix", 0)
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    c = payoff.run_one(cfg, "none", 0)
    assert "label_mae" not in c and c["augmenter"] == "-"
    assert a["augmenter"] == "salaug.SaliencyAugmenter"


def test_models_are_the_library_networks(payoff) -> None:
    from salaug.models import DemoNet, ResNet8

    cfg = payoff.Config(**payoff.PRESETS["smoke"])
    assert type(payoff.build_model(cfg)) is DemoNet and payoff.target_layer(cfg) == "features"
    cfg.arch = "resnet8"
    assert type(payoff.build_model(cfg)) is ResNet8
    cfg.arch = "resnet18"
    net = payoff.build_model(cfg)
    assert payoff.target_layer(cfg) == "layer4" and net(torch.rand(2, 3, 32, 32)).shape == (2, cfg.num_classes)


def test_every_arm_of_a_seed_gets_the_same_base_augmentation(payoff, monkeypatch) -> None:
    from benchmarks.payoff import training

    seen: dict[str, list[torch.Tensor]] = {}
    real = payoff.apply_base

    def spy(cfg, x, m, generator, step_seed):
        out = real(cfg, x, m, generator, step_seed)
        seen.setdefault(current, []).append(out[0].clone())
        return out

    monkeypatch.setattr(training, "apply_base", spy)
    cfg = payoff.Config(**payoff.PRESETS["smoke"])
    for current in ("none", "snapmix"):
        payoff.run_one(cfg, current, 0)
    assert len(seen["none"]) == len(seen["snapmix"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(seen["none"], seen["snapmix"]))
    cfg.base = "trivialaugment"
    x0 = torch.rand(4, 3, 32, 32)
    x, m = payoff.apply_base(cfg, x0, torch.rand(4, 1, 32, 32) > 0.5, torch.Generator().manual_seed(0), 5)
    y, _ = payoff.apply_base(cfg, x0, None, torch.Generator().manual_seed(0), 5)
    assert x.shape == (4, 3, 32, 32) and m is None and torch.equal(x, y)  # seeded per batch
    with pytest.raises(SystemExit, match="trivialaugment"):
        payoff.main(["--preset", "smoke", "--base", "trivialaugment", "--arms", "none,oracle"])


def test_resizemix_and_cam_scale_arms_build(payoff) -> None:
    import salaug

    cfg = payoff.Config(**payoff.PRESETS["smoke"])
    t = payoff.build_transform(payoff.parse_arm("resizemix"), cfg)
    assert isinstance(t, salaug.ResizeMix) and payoff.parse_arm("resizemix").saliency == "flat"
    assert payoff.parse_arm("snapmix:cam_scale=0.5").cam_scale == 0.5
    result = payoff.run_one(cfg, "snapmix:cam_scale=0.5", 0)
    assert 0 <= result["acc_id"] <= 1


def test_folder_dataset_with_the_cifar_preset(payoff, tmp_path) -> None:
    from torchvision.utils import save_image

    for split in ("train", "test"):
        for k in range(3):
            (tmp_path / split / f"class{k}").mkdir(parents=True)
            for i in range(4):
                image = torch.full((3, 20, 20), k / 2) + 0.05 * torch.rand(3, 20, 20)
                save_image(image, tmp_path / split / f"class{k}" / f"{i}.png")
    data = payoff.load_folder(str(tmp_path), "train", 16, limit_per_class=2)
    assert data["image"].shape == (6, 3, 16, 16) and data["image"].dtype == torch.uint8
    assert data["label"].tolist() == [0, 0, 1, 1, 2, 2] and data["classes"] == ["class0", "class1", "class2"]
    out = tmp_path / "out"
    rc = payoff.main(["--dataset", "folder", "--root", str(tmp_path), "--preset", "cifar100", "--arms",
                      "none,snapmix", "--seeds", "1", "--epochs", "1", "--out", str(out), "--name", "f"])
    assert rc == 0
    result = json.loads((out / "payoff_f.json").read_text())
    assert result["config"]["num_classes"] == 3 and result["config"]["arch"] == "resnet18"
    assert {r["arm"] for r in result["runs"]} == {"none", "snapmix"}
    with pytest.raises(SystemExit, match="--root"):
        payoff.main(["--dataset", "folder", "--arms", "none"])
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        payoff.load_folder(str(tmp_path), "val2", 16)


def test_bad_arms_and_datasets_fail_clearly(payoff) -> None:
    with pytest.raises(ValueError, match="unknown arm"):
        payoff.main(["--preset", "smoke", "--arms", "none,bogus"])
    with pytest.raises(SystemExit, match="masks"):
        payoff.main(["--preset", "smoke", "--dataset", "digits", "--arms", "none,oracle"])


def test_regime_table_reads_the_gate_and_the_best_saliency_free_mix(payoff, tmp_path) -> None:
    accs = {"none": [0.50, 0.52, 0.54], "cutmix": [0.49, 0.50, 0.53], "mixup": [0.53, 0.55, 0.56],
            "snapmix": [0.56, 0.57, 0.60], "snapmix-flat": [0.52, 0.53, 0.55], "oracle": [0.60, 0.62, 0.65]}
    runs = [{"arm": a, "seed": s, "acc_id": v[s]} for a, v in accs.items() for s in range(3)]
    cfg = dataclasses.asdict(payoff.Config(dataset="digits", epochs=150))
    path = tmp_path / "payoff_x.json"
    path.write_text(json.dumps({"config": cfg, "runs": runs}))
    table = payoff.regime_table([str(path)])
    row = table.splitlines()[2]
    assert "digits, DemoNet, 50/class, 150 ep, base cropflip | 3 | 0.520" in row
    assert "+0.103" in row and "passed" in row  # oracle - none
    assert "id vs mixup +0.030" in row  # the best saliency-free mix is mixup here, not cutmix
    assert "+0.043" in row  # snapmix - snapmix-flat


@pytest.mark.parametrize(("name", "argv", "runs"), [
    ("objects_recipe150", ["--epochs", "150", "--seeds", "5"], 35),
    ("objects200_recipe150", ["--train-per-class", "200", "--epochs", "150", "--seeds", "2"], 6),
    # written before the fields base / arch / optimizer / root existed (the no-recipe table)
    ("objects_final", ["--base", "none", "--seeds", "5"], 25),
])
def test_reuse_finds_the_runs_of_a_committed_results_file(payoff, name, argv, runs) -> None:
    path = os.path.join(RESULTS, f"payoff_{name}.json")
    cfg = payoff.cli.make_config(payoff.cli.build_parser().parse_args(argv), "full")
    found = payoff.load_reusable([path], cfg)
    with open(path) as f:
        committed = json.load(f)
    assert len(found) == runs == len(committed["runs"])
    assert {arm for arm, _ in found} == set(committed["arms"])
    cfg.epochs += 1
    assert payoff.load_reusable([path], cfg) == {}


def test_vit_arch_takes_the_vit_recipe_unless_told(payoff) -> None:
    def config(*argv: str):
        return payoff.cli.make_config(payoff.cli.build_parser().parse_args(list(argv)), "full")

    assert (config("--arch", "vit").lr, config("--arch", "vit").weight_decay) == (1e-3, 0.05)
    assert (config().lr, config().weight_decay) == (3e-3, 5e-4)
    assert config("--arch", "vit", "--lr", "5e-4").lr == 5e-4


def test_reuse_skips_runs_of_another_in_loop_path(payoff) -> None:
    # the 400-epoch cell ran its mixing arms through an older stand-in of the augmenter
    cfg = payoff.cli.make_config(payoff.cli.build_parser().parse_args(["--epochs", "400", "--seeds", "2"]), "full")
    found = payoff.load_reusable([os.path.join(RESULTS, "payoff_objects_recipe400.json")], cfg)
    assert {arm for arm, _ in found} == {"none", "mixup"} and len(found) == 4  # no augmenter: "-"


def test_arms_build_their_transforms_through_the_registry(payoff) -> None:
    from salaug.transforms.registry import create_transform

    cfg = payoff.Config(**payoff.PRESETS["smoke"])
    for spec, name, options in [("cutmix", "cutmix", {}),
                                ("snapmix:p=1.0,alpha=1", "snapmix", {"p": 1.0, "alpha": 1.0}),
                                ("puzzlemix-transport", "puzzlemix", {"transport": True}),
                                ("saliencymix-mass", "saliencymix", {"labels": "saliency"})]:
        built = payoff.build_transform(payoff.parse_arm(spec), cfg)
        assert repr(built) == repr(create_transform(name, cfg.num_classes, **{"p": cfg.p, **options}))
    assert payoff.build_transform(payoff.parse_arm("mixup"), cfg) is None
    with pytest.raises(ValueError, match="guidedmixup:labels=area.*no option labels"):
        payoff.build_transform(payoff.parse_arm("guidedmixup:labels=area"), cfg)
    with pytest.raises(ValueError, match="no option labels"):  # refused before any training
        payoff.main(["--preset", "smoke", "--arms", "none,guidedmixup:labels=area"])


@pytest.mark.parametrize("how", [["-m", "benchmarks.payoff"], [os.path.join("benchmarks", "payoff")]])
def test_the_command_line_runs_as_a_module_and_as_a_directory(how) -> None:
    out = subprocess.run([sys.executable, *how, "--regimes", os.path.join(RESULTS, "payoff_objects_recipe150.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "objects, DemoNet, 50/class, 150 ep, base cropflip | 5 | 0.896" in out.stdout


# --------------------------------------------------------------------------- the fine-tuning regime
def test_finegrained_classes_differ_only_in_a_small_mark(payoff) -> None:
    from benchmarks.payoff.data import MARKS, finegrained

    d = finegrained("test", 32, 40, 5, 7)
    assert d["image"].shape == (40, 3, 32, 32) and d["mask"].shape == (40, 1, 32, 32)
    assert torch.bincount(d["label"], minlength=5).tolist() == [8] * 5  # balanced
    assert (d["mask"].flatten(1).sum(1) == 25).all()  # a whole 5 x 5 mark, inside the image
    box = d["box"]
    assert ((box[:, 2] - box[:, 0]) == 5).all() and ((box[:, 3] - box[:, 1]) == 5).all()
    again = finegrained("test", 32, 40, 5, 7)
    assert torch.equal(again["image"], d["image"])  # a function of (seed, split, length)
    # the shift splits keep the labels and the mark's place; occlusion hides part of some marks
    hidden = finegrained("test", 32, 40, 5, 7, occlusion=0.4)
    assert torch.equal(hidden["label"], d["label"]) and bool((hidden["mask"] <= d["mask"]).all())
    assert hidden["mask"].sum() < d["mask"].sum()
    other = finegrained("test", 32, 40, 5, 7, background="shifted")
    assert torch.equal(other["mask"], d["mask"]) and not torch.equal(other["image"], d["image"])
    outside = ~d["mask"].expand_as(d["image"])  # outside the mark, an image is a ClutteredObjects image
    assert not torch.equal(d["image"][outside], torch.zeros_like(d["image"][outside]))
    with pytest.raises(ValueError, match="mark classes"):
        finegrained("test", 32, 8, len(MARKS) + 1, 0)


def test_source_classes_are_disjoint_from_the_targets(payoff) -> None:
    from benchmarks.payoff.data import SOURCE_FIRST_CLASS, source_set

    cfg = payoff.Config(**{**payoff.PRESETS["finetune"], "source_per_class": 3})
    src = source_set(cfg)
    assert src["image"].shape == (21, 3, 32, 32) and sorted(src["label"].unique().tolist()) == list(range(7))
    assert SOURCE_FIRST_CLASS >= payoff.PRESETS["finetune"]["num_classes"]  # the objects target's shapes come first


def test_finetune_pretrains_once_loads_the_backbone_and_a_new_head(payoff, tmp_path) -> None:
    from benchmarks.payoff import training

    cfg = payoff.Config(**{**payoff.PRESETS["smoke"], "finetune": "whole", "source_per_class": 4,
                           "pretrain_epochs": 1, "cache_dir": str(tmp_path)})
    first = training.pretrain(cfg, log=lambda *a, **k: None)
    assert os.path.isfile(first["path"]) and first["path"].startswith(str(tmp_path))
    again = training.pretrain(cfg, log=lambda *a, **k: pytest.fail("pretrained twice"))  # from the cache
    assert all(torch.equal(first["state_dict"][k], again["state_dict"][k]) for k in first["state_dict"])
    torch.manual_seed(0)
    model = training.load_backbone(training.build_model(cfg), cfg)
    state = model.state_dict()
    assert torch.equal(state["features.0.weight"], first["state_dict"]["features.0.weight"])
    assert state["head.2.weight"].shape[0] == cfg.num_classes  # a new head for the target's classes
    frozen = dataclasses.replace(cfg, finetune="frozen")
    model = training.load_backbone(training.build_model(frozen), frozen)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.2.weight", "head.2.bias"}
    training.set_train_mode(model, frozen)
    assert model.head.training and not model.features.training  # frozen BatchNorm statistics too


def test_finetune_cell_runs_end_to_end_and_start_delays_the_mixing(payoff, tmp_path) -> None:
    argv = ["--preset", "smoke", "--dataset", "finegrained", "--finetune", "whole", "--source-per-class", "4",
            "--pretrain-epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--seeds", "2",
            "--arms", "none,cutmix,snapmix-fwd,snapmix-fwd:start=2", "--out", str(tmp_path), "--name", "ft"]
    assert payoff.main(argv) == 0
    data = json.loads((tmp_path / "payoff_ft.json").read_text())
    assert data["config"]["finetune"] == "whole" and data["config"]["num_classes"] == 4
    assert set(data["summary"]["cutmix"]["vs_none"]) == {"id", "background", "occlusion"}
    table = (tmp_path / "payoff_ft.md").read_text()
    assert "then fine-tuned whole with a new head" in table
    by = {(r["arm"], r["seed"]): r for r in data["runs"]}
    # start=2 of a 2-epoch run never mixes: the base-only run, bit for bit (same data, init and order)
    for seed in (0, 1):
        late, none = by[("snapmix-fwd:start=2", seed)], by[("none", seed)]
        assert late["acc_id"] == none["acc_id"] and late["train_acc"] == none["train_acc"]
        assert late.get("label_samples", 0) == 0
    assert payoff.parse_arm("snapmix:start=40").start == 40
    regimes = payoff.regime_table([str(tmp_path / "payoff_ft.json")])
    assert "| finegrained, DemoNet, fine-tuned whole, 4/class, 2 ep" in regimes


def test_gpu_check_dry_run_writes_the_table(tmp_path) -> None:
    out = tmp_path / "gpu.md"
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--skip", "tests"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    assert "**DRY RUN** on the CPU" in table
    assert "| section | check | measured | goal | met | section time (s) | section peak memory (MiB) |" in table
    for check in ("pytorch-grad-cam / salaug", "SnapMix, B=4 32²: per-sample loop / batched", "batched / v2.CutMix",
                  "default step / plain step, ResNet-18 B=4 64²", "peak memory: plain step / default step"):
        assert check in table, table
    assert "| NO |" not in table and "error:" not in table


def test_gpu_check_refuses_cuda_without_a_gpu_and_collects_the_cuda_tests() -> None:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    gpu_check = importlib.import_module("benchmarks.gpu_check")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.main(["--skip", "tests", "cam", "transforms", "step"])
    rows = gpu_check.cuda_tests(dry_run=True, workers=1)
    assert len(rows) == 1 and "device tests collected" in rows[0].measured and rows[0].met != "NO"


def test_cam_numerics_compares_every_layout_against_float64(capsys) -> None:
    from benchmarks import cam_numerics

    cam_numerics.main(["--arch", "resnet18", "--layer", "layer4", "--size", "64", "--batch", "2"])
    table = capsys.readouterr().out.splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[0][2:] for row in rows] == cam_numerics.METHODS
    for row in rows:
        default, contiguous, channels_last = (float(cell.split()[0]) for cell in row.split(" | ")[1:4])
        # the default layout holds 1e-4 on any CPU (channels-last is kept only where it agrees);
        # the forced channels-last column is this CPU's own figure
        assert 0 <= default <= 1e-4 and 0 <= contiguous <= 1e-4 and channels_last >= 0, row
    assert "relative norm" in table[0]


def test_transform_speed_reports_per_mixed_sample_at_each_thread_count(capsys) -> None:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    ts = importlib.import_module("benchmarks.transform_speed")
    assert all(t.p == 1.0 for t, _, _ in ts.make_cases(10).values())  # every sample mixed
    threads = torch.get_num_threads()
    try:
        ts.main(["--batch", "4", "--size", "16", "--rounds", "1", "--threads", "1", "2",
                 "--only", "SnapMix", "ResizeMix"])
        with pytest.raises(SystemExit):
            ts.main(["--only", "NoSuchMix"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count("every sample mixed (p=1)") == 2 and ", 1 threads;" in out and ", 2 threads;" in out
    assert "| batched (us / mixed sample) | per-sample loop (us / mixed sample) | batched / loop |" in out
    assert out.count("| ResizeMix |") == 2 and out.count("| SnapMix |") == 2 and "| SalientCrop |" not in out
