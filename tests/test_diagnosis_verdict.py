"""The verdict's limits: the reliance test's validity gate, chance from the labels, per-class
references, whole-image boxes, batches of several sizes, the verdict as sentences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salaug.diagnosis import VARIANTS, Diagnosis, diagnose


def block(b: float, h: float) -> dict:
    return {"eigencam": {"score": b}, "ablationcam": {"score": h}, "gradcam": {"score": (b + h) / 2}}


def reliance(t: dict[str, float], b: dict[str, float] | None = None, original: float = 0.6) -> dict[str, float]:
    b = t if b is None else b
    return {"original": original, **{f"{k}_t": v for k, v in t.items()}, **{f"{k}_b": v for k, v in b.items()}}


def fake(rel: dict[str, float] | None = None, entropy: dict[str, float] | None = None, *, backbone: float = 0.8,
         head: float = 0.6, chance: float = 0.1, label_chance: float = 0.1, num_classes: int = 10,
         random_class: dict[int, dict] | None = None, class_chance: dict[int, float] | None = None,
         class_scores: dict[int, dict] | None = None) -> Diagnosis:
    class_scores = class_scores or {0: block(backbone, head), 1: block(backbone, head)}
    return Diagnosis(measure="box", scores=block(backbone, head), class_scores=class_scores,
                     counts={k: 10 for k in class_scores}, accuracy=rel["original"] if rel else 0.9,
                     class_accuracy={}, chance=chance, num_images=10 * len(class_scores), num_classes=num_classes,
                     target_layer="features", random_scores=block(0.3, 0.3),
                     random_class_scores=random_class or {k: block(0.3, 0.3) for k in class_scores},
                     class_chance=class_chance or {}, reliance=rel,
                     reliance_entropy=entropy or {v: 3.0 for v in VARIANTS}, label_chance=label_chance,
                     cell=4.0, box_side=10.0)


# the table: a dark-background dataset, a model that partly reads a mark; the batch-mean
# grey fill sent every filled image to one class
OFF = {"object_only": 0.098, "background_only": 0.098, "mixed_same": 0.163, "mixed_rand": 0.163}
COLLAPSED = {**{v: 0.2 for v in VARIANTS}, "original": 3.2}


def test_fills_that_fail_their_controls_make_the_reliance_test_uninformative_and_uncited():
    d = fake(reliance(OFF, original=0.596), COLLAPSED, label_chance=0.098)
    assert d.reliance_state == "uninformative" and d.kind == "healthy"
    line = d.verdict[1]
    assert line.startswith("the reliance test is uninformative on this data: the fills are off-distribution (")
    assert "fill T: object alone 0.10, object only predictions spread over 0.2 bits" in line
    assert "vs original 0.60 with predictions over 3.2 bits, chance 0.10" in line and "does not use it" in line
    assert not any("does not depend on the background" in v for v in d.verdict)  # never cited as health
    # the same accuracies with valid spreads: only the object-only control fails
    assert fake(reliance(OFF, original=0.596), label_chance=0.098).reliance_state == "uninformative"
    # a collapse alone fails the gate too (object-only fine, predictions on one or two classes)
    fine = {"object_only": 0.55, "background_only": 0.1, "mixed_same": 0.55, "mixed_rand": 0.55}
    assert fake(reliance(fine), COLLAPSED).reliance_state == "uninformative"
    assert fake(reliance(fine)).reliance_state == "independent"
    assert "the decision does not depend on the background (original 0.60" in fake(reliance(fine)).verdict[1]


def test_background_read_on_filled_images_counts_whatever_the_fill_when_both_fills_agree():
    # a mark model: object-only near chance and collapsed, but the background alone is read
    mark = {"object_only": 0.1, "background_only": 0.9, "mixed_same": 0.95, "mixed_rand": 0.3}
    d = fake(reliance(mark, original=0.98), COLLAPSED)
    assert d.reliance_state == "reliant" and d.kind == "background"
    assert "fill T: BG-gap +0.65, background alone 0.90" in d.verdict[0]
    partial = {"object_only": 0.5, "background_only": 0.3, "mixed_same": 0.6, "mixed_rand": 0.4}  # gap 0.20
    assert fake(reliance(partial)).kind == "background"


def test_fills_that_disagree_are_inconclusive_and_uncited():
    healthy = {"object_only": 0.55, "background_only": 0.1, "mixed_same": 0.55, "mixed_rand": 0.55}
    gap = {"object_only": 0.55, "background_only": 0.1, "mixed_same": 0.6, "mixed_rand": 0.4}
    d = fake(reliance(gap, healthy))
    assert d.reliance_state == "disagree" and d.kind == "healthy"
    assert d.verdict[1].startswith("the reliance test is inconclusive: the two fills disagree (")
    # one fill reads the background, the other failed its controls: not confirmed, uninformative
    assert fake(reliance(gap, OFF)).reliance_state == "uninformative"


def test_chance_is_the_label_distributions_not_one_over_k():
    # a constant-output model on a 70 % majority class: every version scores 0.7; with chance 1/K
    # (0.33) that read as background reliance (background alone 0.7 - 0.33 >= 0.25)
    const = {"object_only": 0.7, "background_only": 0.7, "mixed_same": 0.7, "mixed_rand": 0.7}
    d = fake(reliance(const, original=0.7), {v: 0.0 for v in VARIANTS}, label_chance=0.7, num_classes=3)
    assert d.chance_accuracy == 0.7 and d.kind != "background" and d.reliance_state == "uninformative"
    assert "the model is near chance on the original images (0.70 vs chance 0.70)" in d.verdict[1]
    assert fake(reliance(const, original=0.7), label_chance=1 / 3, num_classes=3).kind == "background"


def test_a_constant_model_on_imbalanced_labels_is_not_called_background_reliant():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.fc(self.conv(x).mean((2, 3)))
            return z * 0 + torch.tensor([5.0, 0.0, 0.0])  # always class 0

    x = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0] * 14 + [1] * 4 + [2] * 2)
    boxes = torch.tensor([[4.0, 4.0, 10.0, 10.0]]).expand(20, 4)
    d = diagnose(Constant(), [(x, y, boxes)], "conv", box_key=2, references=1, examples_per_class=0)
    assert d.label_chance == pytest.approx(0.7) and d.reliance["background_only_t"] == pytest.approx(0.7)
    assert d.reliance_entropy["original"] == 0.0 and d.reliance_state == "uninformative"
    assert d.kind != "background"


def test_per_class_findings_use_each_classs_own_references():
    # class 0's random-init reference (0.75) and class 1's chance (0.72) are far above the overall
    # reference (0.3, chance 0.1): their margins (0.8 - 0.75, 0.8 - 0.72) fall short, which the
    # overall reference (margin 0.5) would hide
    random_class = {0: block(0.75, 0.3), 1: block(0.3, 0.3), 2: block(0.3, 0.3)}
    scores = {k: block(0.8, 0.6) for k in range(3)}
    d = fake(reliance({"object_only": 0.55, "background_only": 0.1, "mixed_same": 0.55, "mixed_rand": 0.55}),
             random_class=random_class, class_chance={0: 0.1, 1: 0.72, 2: 0.1}, class_scores=scores)
    assert d.reference("eigencam", 0) == 0.75 and d.reference("eigencam", 1) == 0.72
    assert d.margin("eigencam", 0) == pytest.approx(0.05) and d.margin("eigencam", 1) == pytest.approx(0.08)
    assert d.margin("eigencam", 2) == pytest.approx(0.5) == pytest.approx(d.margin("eigencam"))
    assert d.kind == "healthy"
    lines = [v for v in d.verdict if v.startswith("backbone features miss the object for class")]
    assert lines == ["backbone features miss the object for class 0 (EigenCAM margin +0.05)",
                     "backbone features miss the object for class 1 (EigenCAM margin +0.08)"]
    assert d.per_class[0]["backbone_margin"] == pytest.approx(0.05)


def test_a_healthy_verdict_says_how_its_per_class_findings_fit():
    scores = {0: block(0.8, 0.6), 1: block(0.8, 0.35)}
    d = fake(reliance({"object_only": 0.55, "background_only": 0.1, "mixed_same": 0.55, "mixed_rand": 0.55}),
             class_scores=scores)
    text = d.summary
    assert text.startswith("Healthy: the backbone's features") and ". The decision does not depend" in text
    assert "The healthy verdict holds over all images together; the classes named next fall short on their own " \
           "images" in text
    assert text.endswith("Head ignores object features for class 1 (AblationCAM margin +0.05).")
    lines = str(d).splitlines()
    assert " ".join(line[2:] for line in lines[2:2 + len(d.verdict)]) == text and "['" not in str(d)
    assert lines[2].startswith("- Healthy: ") and lines[3].startswith("- The decision does not depend")


def test_whole_image_boxes_leave_the_model_unjudged_and_say_why():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(8, 4)
    d = diagnose(net, [(x, y, whole)], "1", box_key=2, references=1, examples_per_class=0)
    assert d.chance == pytest.approx(1.0) and d.full_boxes and d.kind == "unjudged"
    assert d.verdict[0].startswith("unjudged: the true boxes cover 100% of the image on average, so chance is about 1")
    assert d.reliance_state == "uninformative" and "there is no background to test" in d.verdict[1]
    nearly = fake(reliance({"object_only": 0.55, "background_only": 0.1, "mixed_same": 0.55, "mixed_rand": 0.55}),
                  chance=0.92)
    assert nearly.kind == "unjudged" and not fake(chance=0.85).full_boxes


def test_batches_of_different_image_sizes_are_diagnosed_and_their_examples_resized(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    batches = [(torch.rand(1, 3, 16 + 8 * (i % 3), 24), torch.tensor([i % 3]),
                torch.tensor([[4.0, 4.0, 12.0, 12.0]])) for i in range(6)]  # batch_size=1 over full-size images
    d = diagnose(net, batches, "1", box_key=2, references=1, examples_per_class=2)
    assert d.num_images == 6 and sorted(d.counts.values()) == [2, 2, 2]
    assert d.examples["images"].shape == (6, 3, 16, 24) and d.examples["ablationcam"].shape == (6, 1, 16, 24)
    # a box of a 32-pixel-high image, scaled to the 16-pixel-high examples
    tall = (d.examples["labels"] == 2).nonzero().flatten()[0]
    assert d.examples["boxes"][tall].tolist() == [4.0, 2.0, 12.0, 6.0]
    assert [p.name for p in d.save(tmp_path / "r")] == ["report.png", "report.md"]


def test_an_automatic_layer_choice_leaves_a_train_mode_model_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.rand(8, 3, 16, 16) * 3, torch.tensor([0, 1] * 4)
    d = diagnose(net, [(x, y)], None, references=1, examples_per_class=0)  # the layer probed on the first batch
    assert d.target_layer == "2" and net.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # BatchNorm statistics too
