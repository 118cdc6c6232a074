"""salaug.diagnose tells the truth: models with known faults, trained in-process on ClutteredObjects.

Three tiny CNNs on 32-pixel images (4 classes), each trained in a few seconds and shared across the
tests: a healthy one, one whose head learned a class-coded mark in the background (a shortcut
outside the object), and a random frozen backbone under a fitted linear head. The numbers the
module docstring quotes for the verdict thresholds come from these models.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import salaug
from salaug.datasets import ClutteredObjects
from salaug.diagnosis import BACKBONE_THRESHOLD, HEAD_THRESHOLD, Diagnosis, box_energy, diagnose, main

S, K = 32, 4
PALETTE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


class Tiny(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        w = width
        self.features = nn.Sequential(*block(3, w, True), *block(w, 2 * w, True), *block(2 * w, 2 * w, False))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def add_mark(images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """A 4x4 patch in the class's colour, in the image corner farthest from the object."""
    n = images.shape[0]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    x0 = torch.where(cx > S / 2, 1, S - 5)
    y0 = torch.where(cy > S / 2, 1, S - 5)
    ar = torch.arange(S)
    in_x = (ar.view(1, -1) >= x0.view(-1, 1)) & (ar.view(1, -1) < x0.view(-1, 1) + 4)
    in_y = (ar.view(1, -1) >= y0.view(-1, 1)) & (ar.view(1, -1) < y0.view(-1, 1) + 4)
    patch = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1)
    mark = torch.where(patch, PALETTE[labels].view(n, 3, 1, 1), images)
    assert not (patch & (box_mask(boxes) > 0)).any()  # the mark lies outside every object box
    return mark


def box_mask(boxes: torch.Tensor) -> torch.Tensor:
    ar = torch.arange(S) + 0.5
    in_x = (ar.view(1, -1) >= boxes[:, 0:1]) & (ar.view(1, -1) < boxes[:, 2:3])
    in_y = (ar.view(1, -1) >= boxes[:, 1:2]) & (ar.view(1, -1) < boxes[:, 3:4])
    return (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1).float()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 8, lr: float = 1e-2,
          params: list | None = None) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(params or list(model.parameters()), lr=lr, weight_decay=5e-4)
    steps = epochs * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    tr = ClutteredObjects("train", size=S, length=768, num_classes=K).render(range(768))
    te = ClutteredObjects("test", size=S, length=128, num_classes=K).render(range(128))
    return {"x": tr["image"], "y": tr["label"], "b": tr["box"], "tx": te["image"], "ty": te["label"],
            "tb": te["box"], "tx_mark": add_mark(te["image"], te["label"], te["box"])}


@pytest.fixture(scope="module")
def healthy(data) -> nn.Module:
    torch.manual_seed(0)
    return train(Tiny(), data["x"], data["y"])


@pytest.fixture(scope="module")
def shortcut(data) -> nn.Module:
    torch.manual_seed(0)
    return train(Tiny(), add_mark(data["x"], data["y"], data["b"]), data["y"])


@pytest.fixture(scope="module")
def random_backbone(data) -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    model.features.requires_grad_(False)
    return train(model, data["x"], data["y"], params=list(model.head.parameters()))


def loader(images, labels, boxes=None, batch_size=64) -> DataLoader:
    tensors = (images, labels) if boxes is None else (images, labels, boxes)
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


def run(model, data, marked=True, **kw) -> Diagnosis:
    x = data["tx_mark"] if marked else data["tx"]
    return diagnose(model, loader(x, data["ty"], data["tb"]), "features", box_key=2, **kw)


# ------------------------------------------------------------------------------------ the proofs
def test_healthy_model_scores_high_and_is_called_healthy(healthy, data):
    d = run(healthy, data)
    print("healthy (marked images):", d.backbone_score, d.head_score, d.gradcam_score, d.accuracy)
    assert d.accuracy > 0.6
    assert d.backbone_score >= BACKBONE_THRESHOLD + 0.1 and d.head_score >= HEAD_THRESHOLD + 0.1
    assert d.healthy and d.verdict[0].startswith("healthy")
    assert d.backbone_score > 2 * d.chance and d.head_score > 2 * d.chance
    clean = run(healthy, data, marked=False)
    print("healthy (clean images):", clean.backbone_score, clean.head_score, clean.gradcam_score, clean.accuracy)
    assert clean.healthy


def test_shortcut_head_scores_clearly_below_the_healthy_head(healthy, shortcut, data):
    good, bad = run(healthy, data), run(shortcut, data)
    print("shortcut (marked images):", bad.backbone_score, bad.head_score, bad.gradcam_score, bad.accuracy)
    assert bad.accuracy > 0.9  # the mark gives the label away ...
    assert bad.head_score < good.head_score - 0.3  # ... and the head relies on it, outside the object
    assert bad.head_score < HEAD_THRESHOLD
    assert not bad.healthy and "head ignores object features" in bad.verdict[0]
    # Without the mark the same model has to look at the object again.
    assert run(shortcut, data, marked=False).head_score > bad.head_score + 0.3


def test_random_backbone_scores_below_the_trained_backbone(healthy, random_backbone, data):
    good, bad = run(healthy, data, marked=False), run(random_backbone, data, marked=False)
    print("random backbone (clean images):", bad.backbone_score, bad.head_score, bad.gradcam_score, bad.accuracy)
    assert bad.backbone_score < good.backbone_score - 0.15
    assert bad.backbone_score < BACKBONE_THRESHOLD
    assert "backbone features miss the object" in bad.verdict[0]
    marked = run(random_backbone, data)
    print("random backbone (marked images):", marked.backbone_score, marked.head_score, marked.accuracy)
    assert marked.backbone_score < BACKBONE_THRESHOLD


def test_box_free_evidence_score_separates_the_random_backbone(healthy, random_backbone, data):
    good = diagnose(healthy, loader(data["tx"], data["ty"]), "features")
    bad = diagnose(random_backbone, loader(data["tx"], data["ty"]), "features")
    print("evidence healthy:", good.backbone_score, good.head_score, "random:", bad.backbone_score, bad.head_score)
    assert good.measure == "evidence" and good.chance is None
    assert "pointing" not in good.scores["eigencam"]
    assert good.backbone_score > bad.backbone_score
    assert any("without boxes" in v for v in good.verdict)


# ------------------------------------------------------------------------------------ the API
def test_per_class_scores_report_and_json(healthy, data, tmp_path):
    names = ("disc", "ring", "square", "frame")
    ds = TensorDataset(data["tx"], data["ty"], data["tb"])
    ds.classes = names  # like ClutteredObjects.classes: the table names the classes
    d = diagnose(healthy, DataLoader(ds, batch_size=50), "features", box_key=2, examples_per_class=2)
    assert d.num_images == 128 and d.num_classes == K and d.target_layer == "features"
    assert sorted(d.per_class) == [0, 1, 2, 3] and sum(d.counts.values()) == 128
    counts = torch.bincount(data["ty"], minlength=K)
    assert [d.counts[k] for k in range(K)] == counts.tolist()
    # The overall score is the image-weighted mean of the per-class scores.
    mean = sum(d.per_class[k]["head_score"] * d.counts[k] for k in range(K)) / 128
    assert abs(mean - d.head_score) < 1e-5
    for method in ("gradcam", "eigencam", "ablationcam"):
        s = d.scores[method]
        assert abs(s["score"] - (s["pointing"] + s["energy"]) / 2) < 1e-6
    assert 0.05 < d.chance < 0.3  # objects cover 5-30 % of the image
    assert d.examples["images"].shape == (8, 3, S, S) and d.examples["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert "1 (ring)" in d.table() and "| **all** | 128 |" in d.table()
    blob = json.loads(json.dumps(d.to_dict()))
    assert blob["healthy"] is True and blob["backbone_score"] == d.backbone_score
    assert set(blob["per_class"]) == {"0", "1", "2", "3"} and blob["thresholds"]["head"] == HEAD_THRESHOLD
    paths = d.save(tmp_path / "report")
    assert sorted(p.name for p in paths) == ["report.md", "report.png"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert d.verdict[0] in md and "![examples](report.png)" in md and d.table(details=True) in md
    assert "EigenCAM pointing" in md and "EigenCAM pointing" not in d.table() and d.table() in str(d)
    width, height = Image.open(tmp_path / "report" / "report.png").size
    assert width > height > 0  # 4 class rows of 2 examples x (image, GradCAM, EigenCAM, AblationCAM)
    assert sorted(os.listdir(tmp_path)) == ["report"]  # nothing else written


def test_diagnose_is_side_effect_free(healthy, data):
    model = healthy
    model.train()
    model.features[1].eval()  # mixed modes come back exactly
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    try:
        diagnose(model, loader(data["tx"][:16], data["ty"][:16], data["tb"][:16]), "features", box_key=2)
        diagnose(model, loader(data["tx"][:16], data["ty"][:16]), "features")  # the evidence forwards too
        assert [m.training for m in model.modules()] == modes
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN statistics too
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    finally:
        for p in model.parameters():
            p.grad = None
        model.eval()


def test_dict_batches_predicted_classes_caps_and_auto_layer(healthy, data):
    batches = [{"img": data["tx"][i : i + 16], "box": data["tb"][i : i + 16]} for i in range(0, 64, 16)]
    d = diagnose(healthy, batches, image_key="img", label_key=None, box_key="box", max_batches=2,
                 examples_per_class=0)
    assert d.num_images == 32 and d.accuracy is None and d.class_accuracy == {} and d.examples == {}
    assert d.target_layer == "features"  # the last module with a spatial output (the container)
    pred = healthy(data["tx"][:32]).argmax(1)
    assert d.counts == {int(k): int(n) for k, n in zip(*pred.unique(return_counts=True))}
    one_hot = [(data["tx"][:16], F.one_hot(data["ty"][:16], K).float())]
    assert diagnose(healthy, one_hot, "features").counts == {
        int(k): int(n) for k, n in zip(*data["ty"][:16].unique(return_counts=True))}


def _fake(backbone: list[float], head: list[float], counts: list[int] | None = None, measure: str = "box",
          accuracy: float = 0.9) -> Diagnosis:
    counts = counts or [10] * len(backbone)

    def block(b: float, h: float) -> dict:
        return {"eigencam": {"score": b}, "ablationcam": {"score": h}, "gradcam": {"score": (b + h) / 2}}

    n = sum(counts)
    mean_b = sum(b * c for b, c in zip(backbone, counts)) / n
    mean_h = sum(h * c for h, c in zip(head, counts)) / n
    return Diagnosis(measure=measure, scores=block(mean_b, mean_h),
                     class_scores={k: block(b, h) for k, (b, h) in enumerate(zip(backbone, head))},
                     counts=dict(enumerate(counts)), accuracy=accuracy, class_accuracy={}, chance=0.1,
                     num_images=n, num_classes=len(counts), target_layer="features", class_names=("a", "b", "c"))


def test_verdict_rules():
    assert _fake([0.8, 0.8, 0.8], [0.6, 0.6, 0.6]).verdict == [
        "healthy: the backbone features and the head both sit on the object "
        "(backbone 0.80, head 0.60; thresholds 0.50 / 0.35)"]
    assert _fake([0.8] * 3, [0.1] * 3).verdict[0].startswith("head ignores object features")
    assert _fake([0.2] * 3, [0.6] * 3).verdict[0].startswith("backbone features miss the object:")
    both = _fake([0.2] * 3, [0.1] * 3).verdict[0]
    assert "backbone features miss the object and head ignores object features" in both
    one_class = _fake([0.9, 0.9, 0.3], [0.6, 0.1, 0.6]).verdict
    assert one_class[0].startswith("healthy")
    assert one_class[1:] == ["head ignores object features for class 1 (b) (head 0.10)",
                             "backbone features miss the object for class 2 (c) (backbone 0.30)"]
    few = _fake([0.9, 0.9, 0.3], [0.6, 0.6, 0.6], counts=[20, 20, 3]).verdict
    assert few == few[:1]  # 3 images are too few for a per-class finding
    assert "close to chance" in _fake([0.8] * 3, [0.6] * 3, accuracy=0.4).verdict[1]
    evidence = _fake([0.3] * 3, [0.3] * 3, measure="evidence")
    assert evidence.healthy and "without boxes" in evidence.verdict[-1]
    assert evidence.thresholds == (salaug.diagnosis.EVIDENCE_BACKBONE_THRESHOLD,
                                   salaug.diagnosis.EVIDENCE_HEAD_THRESHOLD)


def test_box_energy_and_score_are_exact():
    s = torch.zeros(3, 1, 8, 8)
    s[0, 0, 2:4, 2:4] = 1.0  # all inside the box
    s[1, 0, 0, 0] = 1.0  # peak outside, a third of the mass inside
    s[1, 0, 3, 3] = 0.5
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]]).expand(3, 4)
    assert box_energy(s, boxes).tolist() == pytest.approx([1.0, 1 / 3, 0.0])  # an all-zero map scores 0
    score, hit, energy = salaug.diagnosis.localisation_score(s, boxes)
    assert hit.tolist() == [1.0, 0.0, 0.0] and score.tolist() == pytest.approx([1.0, 1 / 6, 0.0])


def test_public_exports():
    assert salaug.diagnose is diagnose and salaug.Diagnosis is Diagnosis


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x: diagnose("net", [x]), TypeError, "nn.Module"),
    (lambda m, x: diagnose(m, x[0]), TypeError, "got a tensor"),
    (lambda m, x: diagnose(m, TensorDataset(*x)), TypeError, "DataLoader"),
    (lambda m, x: diagnose(m, []), ValueError, "no batches"),
    (lambda m, x: diagnose(m, [x], max_batches=0), ValueError, "max_batches"),
    (lambda m, x: diagnose(m, [x], box_key=3), ValueError, "box_key=3"),
    (lambda m, x: diagnose(m, [{"x": x[0]}]), ValueError, "image_key"),
    (lambda m, x: diagnose(m, [(x[0], x[1][:3])]), ValueError, "label_key"),
    (lambda m, x: diagnose(m, [(x[0], x[1], x[2][:, :2])], box_key=2), ValueError, r"\(4, 4\)"),
    (lambda m, x: diagnose(m, [(x[0], x[1] + 10)]), ValueError, "labels must lie in"),
    (lambda m, x: diagnose(m, [x], num_classes=9), ValueError, "only 4 outputs"),
])
def test_bad_input_names_the_problem(call, error, match):
    x = (torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(4, 4))
    with pytest.raises(error, match=match):
        call(Tiny().eval(), x)


# ------------------------------------------------------------------------------------ the CLI
SMALL = ["--size", "32", "--num-images", "20", "--batch-size", "20", "--examples", "1", "--no-progress"]


def test_cli_trains_the_demo_model_prints_the_table_and_writes_only_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "1", "--train-size", "40", "--out", "rep", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| **all** | 20 |" in out and "backbone (EigenCAM)" in out and "report: rep" in out
    assert out.count("\n- ") >= 1  # the verdict
    assert sorted(os.listdir(tmp_path)) == ["rep"]
    assert sorted(os.listdir(tmp_path / "rep")) == ["report.md", "report.png"]


def _demo_net(num_classes: int = 6):
    from salaug.demo import DemoNet

    torch.manual_seed(0)
    return DemoNet(num_classes=num_classes, width=8).eval()


def _lightning_checkpoint(path, model) -> None:
    import pytorch_lightning as pl

    x = torch.rand(4, 3, 32, 32)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(path.parent))
    model.train()
    trainer.fit(model, DataLoader(TensorDataset(x, torch.arange(4) % 6), batch_size=4))
    trainer.save_checkpoint(str(path))


@pytest.mark.parametrize("kind", ["state_dict", "lightning", "prefixed"])
def test_cli_loads_checkpoints(kind, tmp_path, capsys):
    from salaug.diagnosis import demo_model_from_state

    model = _demo_net()
    path = tmp_path / "model.ckpt"
    if kind == "state_dict":
        torch.save(model.state_dict(), path)
    elif kind == "lightning":
        _lightning_checkpoint(path, model)  # what salaug demo's Trainer writes
        model.eval()
    else:
        torch.save({"model." + k: v for k, v in model.state_dict().items()}, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    loaded = demo_model_from_state(state.get("state_dict", state))
    assert not loaded.training and loaded.head[2].out_features == 6 and loaded.features[0].out_channels == 8
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert main(["--checkpoint", str(path), "--out", str(tmp_path / "rep"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| **all** | 20 |" in out and "| 5 (cross) |" in out and "| 6 " not in out  # 6 classes of the data
    assert sorted(os.listdir(tmp_path / "rep")) == ["report.md", "report.png"]


def _run_cli(argv, capsys) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "--epochs: must be an integer >= 0"),
    (["--size", "8"], "--size: must be an integer in [16, 512]"),
    (["--num-images", "x"], "--num-images: expected an integer, got 'x'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--checkpoint", "/nonexistent/model.ckpt"], "does not exist"),
])
def test_cli_argument_errors_are_one_line(argv, message, capsys):
    assert message in _run_cli(argv, capsys)


def test_cli_bad_checkpoints_are_one_line(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert "cannot read" in _run_cli(["--checkpoint", str(text)], capsys)
    pickled = tmp_path / "module.pt"
    torch.save(_demo_net(), pickled)  # a whole pickled module would run code from the file: refused
    assert "cannot read" in _run_cli(["--checkpoint", str(pickled)], capsys)
    other = tmp_path / "other.pt"
    torch.save(Tiny().state_dict(), other)
    assert "do not fit salaug.demo.DemoNet" in _run_cli(["--checkpoint", str(other)], capsys)
    wide = tmp_path / "wide.pt"
    torch.save(_demo_net(num_classes=20).state_dict(), wide)
    assert "20 outputs" in _run_cli(["--checkpoint", str(wide)], capsys)
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert "is a file, not a directory" in _run_cli(["--out", str(a_file)], capsys)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _run_cli(["--device", "cuda"], capsys)
