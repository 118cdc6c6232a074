"""salaug.diagnose tells the truth: models with known faults, trained in-process on ClutteredObjects.

Four tiny CNNs on 32-pixel images (4 classes), each trained in a few seconds and shared across the
tests: a healthy one, one whose head learned a class-coded mark in the background (a shortcut
outside the object), one that learned a class-coded background colour, and a random frozen
backbone under a fitted linear head. The verdict thresholds of ``salaug.diagnosis.report`` were
set on these models (``benchmarks/diagnosis_matrix.py`` checks them on other data and seeds).
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
from salaug.diagnosis import (
    KINDS,
    VARIANTS,
    Budget,
    Diagnosis,
    Thresholds,
    diagnose,
)
from salaug.metrics import box_energy

S, K = 32, 4
T = Thresholds()
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


def box_mask(boxes: torch.Tensor) -> torch.Tensor:
    ar = torch.arange(S) + 0.5
    in_x = (ar.view(1, -1) >= boxes[:, 0:1]) & (ar.view(1, -1) < boxes[:, 2:3])
    in_y = (ar.view(1, -1) >= boxes[:, 1:2]) & (ar.view(1, -1) < boxes[:, 3:4])
    return (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1).float()


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


def tint_background(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Everything but the object blended halfway towards the class's colour."""
    return torch.where(masks, images, 0.5 * images + 0.5 * PALETTE[labels].view(-1, 3, 1, 1))


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
    return {"x": tr["image"], "y": tr["label"], "b": tr["box"], "m": tr["mask"], "tx": te["image"],
            "ty": te["label"], "tb": te["box"], "tm": te["mask"],
            "tx_mark": add_mark(te["image"], te["label"], te["box"]),
            "tx_tint": tint_background(te["image"], te["label"], te["mask"])}


@pytest.fixture(scope="module")
def healthy(data) -> nn.Module:
    torch.manual_seed(0)
    return train(Tiny(), data["x"], data["y"])


@pytest.fixture(scope="module")
def shortcut(data) -> nn.Module:
    torch.manual_seed(0)
    return train(Tiny(), add_mark(data["x"], data["y"], data["b"]), data["y"])


@pytest.fixture(scope="module")
def tinted(data) -> nn.Module:
    torch.manual_seed(0)
    n = 384  # a colour is learnt fast: half the images, three epochs
    return train(Tiny(), tint_background(data["x"][:n], data["y"][:n], data["m"][:n]), data["y"][:n], epochs=3)


@pytest.fixture(scope="module")
def random_backbone(data) -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    model.features.requires_grad_(False)
    return train(model, data["x"], data["y"], params=list(model.head.parameters()))


def loader(images, labels, boxes=None, masks=None, batch_size=64) -> DataLoader:
    tensors = [t for t in (images, labels, boxes, masks) if t is not None]
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


def run(model, data, images="tx", seed: int = 0, **budget) -> Diagnosis:
    return diagnose(model, loader(data[images], data["ty"], data["tb"], data["tm"]), "features", box_key=2,
                    mask_key=3, budget=Budget(**budget), seed=seed)


# ------------------------------------------------------------------------------------ the proofs
def test_healthy_model_is_called_healthy_by_its_margins(healthy, data):
    for images in ("tx", "tx_mark"):  # the mark is only a distractor to this model
        d = run(healthy, data, images)
        print(images, d.backbone_score, d.backbone_margin, d.head_score, d.head_margin, d.reliance, d.accuracy)
        assert d.accuracy > 0.6 and d.kind == "healthy" and d.healthy and d.verdict[0].startswith("healthy")
        assert d.backbone_margin >= T.backbone_margin + 0.05 and d.head_margin >= T.head_margin + 0.1
        assert d.reliance_state == "independent" and abs(d.background_share["share"]) < T.reliance_share
        assert d.random_accuracy < 0.45
        assert d.random_scores["eigencam"]["score"] > d.chance  # random features see it too


def test_mark_shortcut_is_called_background_reliance(healthy, shortcut, data):
    bad = run(shortcut, data, "tx_mark")
    print("shortcut:", bad.backbone_margin, bad.head_margin, bad.reliance)
    assert bad.accuracy > 0.9 and bad.kind == "background" and bad.verdict[0].startswith("background reliance")
    assert bad.reliance_state == "reliant"
    assert bad.reliance["background_only_t"] > 0.9  # the mark alone gives the label away
    for fill in ("t", "b"):  # both fills agree (the black box distracts a little more: 0.70 alone there)
        assert bad.fill_gap(fill) > 0.4 and bad.reliance[f"background_only_{fill}"] > bad.chance_accuracy + 0.4
        assert bad.reliance[f"mixed_rand_{fill}"] < bad.reliance[f"mixed_same_{fill}"] - 0.4
    assert bad.head_margin < T.head_margin and bad.head_score < run(healthy, data, "tx_mark").head_score - 0.3


def test_background_colour_shortcut_is_called_background_reliance(tinted, data):
    d = run(tinted, data, "tx_tint")
    print("tinted:", d.backbone_margin, d.head_margin, d.reliance)
    assert d.kind == "background" and d.background_share["share"] >= T.reliance_share > 0
    assert d.background_share["low"] > 0


def test_random_backbone_reads_as_its_random_reference(healthy, random_backbone, data):
    bad, good = run(random_backbone, data), run(healthy, data)
    print("random backbone:", bad.backbone_score, bad.random_scores["eigencam"], bad.backbone_margin, bad.reliance)
    assert bad.kind == "backbone" and bad.verdict[0].startswith("backbone features miss the object")
    assert bad.backbone_margin < T.backbone_margin and abs(bad.backbone_margin) < 0.15  # ~ its reference
    assert good.backbone_margin > bad.backbone_margin + 0.15
    # absolute scores alone would not say it: the random backbone sits far above chance
    assert bad.backbone_score > 2 * bad.chance


def test_box_free_evidence_score_uses_the_random_reference(healthy, random_backbone, data):
    good = diagnose(healthy, loader(data["tx"], data["ty"]), "features", budget=Budget(references=1))
    bad = diagnose(random_backbone, loader(data["tx"], data["ty"]), "features", budget=Budget(references=1))
    print("evidence healthy:", good.backbone_margin, good.head_margin, "random:", bad.backbone_margin)
    assert good.measure == "evidence" and good.chance is None and good.reliance is None
    assert "pointing" not in good.scores["eigencam"]
    assert good.backbone_margin > bad.backbone_margin
    assert any("without boxes" in v for v in good.verdict)


def test_coarse_target_layer_is_not_judged_and_a_finer_layer_is_named(healthy, data):
    c = (data["tb"][:, :2] + data["tb"][:, 2:]) / 2
    small = torch.cat([c - 1.5, c + 1.5], dim=1)  # 3-pixel boxes under 4-pixel cells
    d = diagnose(healthy, loader(data["tx"], data["ty"], small), "features", box_key=2,
                 budget=Budget(reliance=False, references=1))
    assert d.cell == 4.0 and d.box_side == pytest.approx(3.0) and d.coarse and d.kind == "unjudged"
    assert d.finer_layer in ("features.0", "features.1", "features.2")  # the full-resolution block
    assert "4-pixel cells" in d.verdict[0] and d.verdict[-1] == f"next: {d.next_steps[0]}"
    assert d.next_steps[0].startswith(f"run the check again with target_layer={d.finer_layer!r}")
    assert not run(healthy, data, references=0, reliance=False).coarse


# ------------------------------------------------------------------------------------ the API
def test_per_class_scores_report_and_json(healthy, data, tmp_path):
    names = ("disc", "ring", "square", "frame")
    ds = TensorDataset(data["tx"], data["ty"], data["tb"])
    ds.classes = names  # like ClutteredObjects.classes: the table names the classes
    d = diagnose(healthy, DataLoader(ds, batch_size=50), "features", box_key=2,
                 budget=Budget(examples_per_class=2, references=1))
    assert d.num_images == 128 and d.num_classes == K and d.target_layer == "features"
    assert sorted(d.per_class) == [0, 1, 2, 3] and sum(d.counts.values()) == 128
    assert [d.counts[k] for k in range(K)] == torch.bincount(data["ty"], minlength=K).tolist()
    mean = sum(d.per_class[k]["head_score"] * d.counts[k] for k in range(K)) / 128
    assert abs(mean - d.head_score) < 1e-5  # the overall score is the image-weighted class mean
    for method in ("gradcam", "eigencam", "ablationcam"):
        s = d.scores[method]
        assert abs(s["score"] - (s["pointing"] + s["energy"]) / 2) < 1e-6
        assert d.margin(method) == pytest.approx(s["score"] - max(d.chance, d.random_scores[method]["score"]))
    assert 0.05 < d.chance < 0.3  # objects cover 5-30 % of the image
    assert d.examples["images"].shape == (8, 3, S, S) and d.examples["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    table = d.table()
    assert "1 (ring)" in table and "| **all** | 128 |" in table and "random init (reference)" in table
    assert "chance (box share)" in table and "**margin**" in table and "BG-gap" in table
    blob = json.loads(json.dumps(d.to_dict()))
    assert blob["kind"] == d.kind and blob["healthy"] == d.healthy and blob["backbone_score"] == d.backbone_score
    assert blob["reliance"]["bg_gap"]["t"] == pytest.approx(d.bg_gap) and set(VARIANTS) == set(
        blob["reliance"]["accuracy"]) and blob["reliance"]["state"] == d.reliance_state
    assert blob["reliance"]["share"] == d.background_share  # None when no fill's BG-gap can be read
    assert blob["reliance"]["comparisons"] == d.comparisons
    assert blob["next_steps"] == d.next_steps
    assert set(blob["per_class"]) == {"0", "1", "2", "3"} and blob["thresholds"] == T.as_dict()
    assert blob["resolution"] == {"cell": 4.0, "box_side": d.box_side, "coarse": False, "finer_layer": None}
    paths = d.save(tmp_path / "report")
    assert sorted(p.name for p in paths) == ["report.md", "report.png"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert d.verdict[0] in md and "![examples](report.png)" in md and d.table(details=True) in md
    assert "EigenCAM pointing" in md and "EigenCAM pointing" not in d.table() and d.table() in str(d)
    assert f"- {d.verdict[0][:1].upper()}{d.verdict[0][1:]}." in str(d) and "['" not in str(d)  # sentences, not a list
    width, height = Image.open(tmp_path / "report" / "report.png").size
    assert width > height > 0  # 4 class rows of 2 examples x (image, GradCAM, EigenCAM, AblationCAM)
    assert sorted(os.listdir(tmp_path)) == ["report"]  # nothing else written
    assert [p.name for p in d.save(tmp_path / "text", examples=0)] == ["report.md"]
    assert "![examples]" not in (tmp_path / "text" / "report.md").read_text()


def test_diagnose_is_side_effect_free(healthy, data):
    model = healthy
    model.train()
    model.features[1].eval()  # mixed modes come back exactly
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    rng = torch.get_rng_state()
    try:  # lists of batches: a DataLoader itself draws its base seed from the global generator
        diagnose(model, [(data["tx"][:16], data["ty"][:16], data["tb"][:16], data["tm"][:16])], "features",
                 box_key=2, mask_key=3)
        diagnose(model, [(data["tx"][:16], data["ty"][:16])], "features")  # the evidence forwards too
        assert [m.training for m in model.modules()] == modes
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN statistics too
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert torch.equal(torch.get_rng_state(), rng)  # the reference's draw forks the generator
    finally:
        for p in model.parameters():
            p.grad = None
        model.eval()


def test_same_seed_same_diagnosis(healthy, data):
    small = {k: v[:32] for k, v in data.items()}
    a, b = run(healthy, small, references=1).to_dict(), run(healthy, small, references=1).to_dict()
    assert a == b
    c = run(healthy, small, seed=1, references=1).to_dict()
    assert c["random_init"] != a["random_init"]  # another reference draw


def test_dict_batches_predicted_classes_caps_and_auto_layer(healthy, data):
    batches = [{"img": data["tx"][i : i + 16], "box": data["tb"][i : i + 16]} for i in range(0, 64, 16)]
    d = diagnose(healthy, batches, image_key="img", label_key=None, box_key="box",
                 budget=Budget(max_batches=2, examples_per_class=0, references=0))
    assert d.num_images == 32 and d.accuracy is None and d.class_accuracy == {} and d.examples == {}
    assert d.reliance is None and d.random_scores is None  # no labels: no reliance test
    assert any("references=0" in v for v in d.verdict)
    assert d.target_layer == "features"  # the last module with a spatial output (the container)
    pred = healthy(data["tx"][:32]).argmax(1)
    assert d.counts == {int(k): int(n) for k, n in zip(*pred.unique(return_counts=True))}
    one_hot = [(data["tx"][:16], F.one_hot(data["ty"][:16], K).float())]
    assert diagnose(healthy, one_hot, "features").counts == {
        int(k): int(n) for k, n in zip(*data["ty"][:16].unique(return_counts=True))}


def _fake(backbone: list[float], head: list[float], counts: list[int] | None = None, measure: str = "box",
          accuracy: float = 0.9, random: float = 0.3, reliance: dict | None = None, cell: float = 4.0,
          side: float = 10.0) -> Diagnosis:
    counts = counts or [10] * len(backbone)

    def block(b: float, h: float) -> dict:
        return {"eigencam": {"score": b}, "ablationcam": {"score": h}, "gradcam": {"score": (b + h) / 2}}

    n = sum(counts)
    mean_b = sum(b * c for b, c in zip(backbone, counts)) / n
    mean_h = sum(h * c for h, c in zip(head, counts)) / n
    rel = both_fills(reliance or {"original": 0.9, "object_only": 0.8, "background_only": 0.3, "mixed_same": 0.85,
                                  "mixed_rand": 0.84})
    return Diagnosis(measure=measure, scores=block(mean_b, mean_h),
                     class_scores={k: block(b, h) for k, (b, h) in enumerate(zip(backbone, head))},
                     counts=dict(enumerate(counts)), accuracy=accuracy, class_accuracy={}, chance=0.1,
                     num_images=n, num_classes=len(counts), target_layer="features", class_names=("a", "b", "c"),
                     random_scores=block(random, random),
                     random_class_scores={k: block(random, random) for k in range(len(counts))},
                     reliance=rel if measure == "box" else None, cell=cell, box_side=side,
                     reliance_entropy={v: 1.5 for v in VARIANTS}, label_chance=1 / len(counts),
                     reliance_hits=torch.stack([torch.arange(200) < round(rel[v] * 200) for v in VARIANTS]))


def both_fills(accuracy: dict[str, float]) -> dict[str, float]:
    """The same accuracies under fill T and fill B (``object_only`` -> ``object_only_t``, ``object_only_b``)."""
    return {"original": accuracy["original"], **{f"{k}_{f}": v for k, v in accuracy.items() if k != "original"
                                                 for f in ("t", "b")}}


def test_verdict_rules():
    ok = _fake([0.8] * 3, [0.6] * 3)
    assert ok.kind == "healthy" and ok.verdict[0].startswith("healthy: ") and "margin +0.50" in ok.verdict[0]
    assert ok.verdict[1].startswith("the decision does not depend on the background: the background accounts for 1 "
                                    "of the model's 57 points above chance")
    assert "(original 0.90, chance 0.33; fill T: BG-gap +0.01" in ok.verdict[1]
    assert _fake([0.8] * 3, [0.35] * 3).kind == "head"  # margin 0.05 over the random head's 0.3
    assert _fake([0.35] * 3, [0.8] * 3).kind == "backbone"
    assert _fake([0.35] * 3, [0.35] * 3).kind == "backbone"
    shortcut = {"original": 1.0, "object_only": 0.3, "background_only": 0.4, "mixed_same": 1.0, "mixed_rand": 0.5}
    assert _fake([0.8] * 3, [0.6] * 3, reliance=shortcut).kind == "background"  # good maps, but the gap says it
    only_bg = {"original": 1.0, "object_only": 0.9, "background_only": 0.6, "mixed_same": 0.9, "mixed_rand": 0.85}
    assert _fake([0.8] * 3, [0.6] * 3, reliance=only_bg).kind == "background"  # 0.6 - 1/3 >= 0.25
    coarse = _fake([0.35] * 3, [0.35] * 3, cell=16.0, side=12.0)
    assert coarse.kind == "unjudged" and "16-pixel cells" in coarse.verdict[0]
    assert _fake([0.35] * 3, [0.35] * 3, cell=16.0, side=12.0, reliance=shortcut).kind == "background"
    one_class = _fake([0.9, 0.9, 0.35], [0.6, 0.3, 0.6]).verdict
    assert one_class[0].startswith("healthy")
    assert one_class[2].startswith("the healthy verdict holds over all images together; the classes named next")
    assert one_class[3:] == ["head ignores object features for class 1 (b) (AblationCAM margin +0.000, needs +0.10)",
                             "backbone features miss the object for class 2 (c) (EigenCAM margin +0.050, needs +0.10)"]
    few = _fake([0.9, 0.9, 0.3], [0.6, 0.6, 0.6], counts=[20, 20, 3]).verdict
    assert len(few) == 2  # 3 images are too few for a per-class finding
    assert any("close to chance" in v for v in _fake([0.8] * 3, [0.6] * 3, accuracy=0.4).verdict)
    evidence = _fake([0.5] * 3, [0.5] * 3, measure="evidence")
    assert evidence.kind == "healthy" and "without boxes" in evidence.verdict[-1]
    assert set(KINDS) == {"healthy", "background", "backbone", "head", "unjudged"}


def test_box_energy_and_score_are_exact():
    s = torch.zeros(3, 1, 8, 8)
    s[0, 0, 2:4, 2:4] = 1.0  # all inside the box
    s[1, 0, 0, 0] = 1.0  # peak outside, a third of the mass inside
    s[1, 0, 3, 3] = 0.5
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]]).expand(3, 4)
    assert box_energy(s, boxes).tolist() == pytest.approx([1.0, 1 / 3, 0.0])  # an all-zero map scores 0
    score, hit, _ = salaug.diagnosis.localisation_score(s, boxes)
    assert hit.tolist() == [1.0, 0.0, 0.0] and score.tolist() == pytest.approx([1.0, 1 / 6, 0.0])
    assert salaug.diagnosis.localisation_score is salaug.metrics.localisation_score  # one implementation


def test_public_exports():
    assert salaug.diagnose is diagnose and salaug.Diagnosis is Diagnosis
