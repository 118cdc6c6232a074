"""The verdict's limits: the reliance test's validity gate, chance from the labels, per-class
references, whole-image boxes, batches of several sizes, the verdict as sentences."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from salaug.diagnosis import VARIANTS, Budget, Diagnosis, Thresholds, diagnose

T = Thresholds()


def block(b: float, h: float) -> dict:
    return {"eigencam": {"score": b}, "ablationcam": {"score": h}, "gradcam": {"score": (b + h) / 2}}


def reliance(t: dict[str, float], b: dict[str, float] | None = None, original: float = 0.6) -> dict[str, float]:
    b = t if b is None else b
    return {"original": original, **{f"{k}_t": v for k, v in t.items()}, **{f"{k}_b": v for k, v in b.items()}}


def hits_for(rel: dict[str, float], n: int = 200) -> torch.Tensor:
    """``(V, n)`` per-image hits with the given accuracies: the first ``round(acc * n)`` images of each
    variant hit (so the images the mixed-rand version gets right are among those mixed-same gets right)."""
    return torch.stack([torch.arange(n) < round(rel[v] * n) for v in VARIANTS])


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
                     cell=4.0, box_side=10.0, reliance_hits=None if rel is None else hits_for(rel))


# the table: a dark-background dataset, a model that partly reads a mark; the batch-mean
# grey fill sent every filled image to one class
OFF = {"object_only": 0.098, "background_only": 0.098, "mixed_same": 0.163, "mixed_rand": 0.163}
COLLAPSED = {**{v: 0.2 for v in VARIANTS}, "original": 3.2}
# what a model reads: the object (a BG-gap of 0), the mark outside it (a gap of 12 points)
OBJECT = {"object_only": 0.55, "background_only": 0.1, "mixed_same": 0.55, "mixed_rand": 0.55}
PARTLY_MARKED = {"object_only": 0.11, "background_only": 0.2, "mixed_same": 0.62, "mixed_rand": 0.50}


def test_a_partly_marked_model_is_called_background_reliant_whatever_object_only_does():
    # round 3's case: the object alone on a flat fill is off-distribution (0.11), but both pasted
    # images keep the model's accuracy (mixed-same 0.62 vs 0.59): the BG-gap is read, and its 12
    # points are a quarter of the 47 the model has above chance
    d = fake(reliance(PARTLY_MARKED, original=0.59), COLLAPSED, label_chance=0.12)
    comps = d.comparisons
    assert comps["t"]["bg_gap"]["valid"] and comps["b"]["bg_gap"]["valid"]
    assert not comps["t"]["background_only"]["valid"]
    assert "object alone 0.11" in comps["t"]["background_only"]["control"]
    share = d.background_share
    assert share["fills"] == ["t", "b"] and share["gap"] == pytest.approx(0.12)
    assert share["margin"] == pytest.approx(0.47)
    assert share["share"] == pytest.approx(0.12 / 0.47) and 0 < share["low"] < share["share"] < share["high"]
    assert d.reliance_state == "reliant" and d.kind == "background"
    assert ("the background accounts for 12 of the model's 47 points above chance (26% of them, 95% interval "
            in d.verdict[0])
    blob = d.to_dict()["reliance"]
    assert blob["share"]["share"] == pytest.approx(share["share"]) and blob["share"]["low"] == share["low"]
    assert blob["comparisons"]["t"]["bg_gap"]["valid"] is True


def test_fills_whose_pasted_images_fall_leave_the_background_unjudged_and_never_healthy():
    d = fake(reliance(OFF, original=0.596), COLLAPSED, label_chance=0.098)
    assert d.reliance_state == "uninformative" and d.background_share is None
    assert d.kind == "unjudged" and not d.healthy  # the maps pass, but a failed control never reads healthy
    assert d.verdict[0].startswith("unjudged background: the backbone's features")
    line = d.verdict[1]
    assert line.startswith("the reliance test is uninformative on this data: no fill keeps the pasted images "
                           "readable (fill T: mixed-same 0.16 against original 0.60; fill B: mixed-same 0.16")
    assert "does not use it" in line and not any("does not depend on the background" in v for v in d.verdict)
    assert d.verdict[-1].startswith("next: judge the background: test more images")
    # one fill's pasted images fall: the other fill's comparisons still count
    half = fake(reliance(OBJECT, OFF))
    assert half.background_share["fills"] == ["t"] and half.reliance_state == "independent"


def test_each_comparison_has_its_own_control():
    # predictions on object-only collapse: background-only near chance says nothing, but the BG-gap
    # (mixed-same keeps the original's accuracy) still reads
    d = fake(reliance(OBJECT), COLLAPSED)
    assert d.reliance_state == "independent" and d.kind == "healthy"
    assert not d.comparisons["t"]["background_only"]["valid"] and d.comparisons["t"]["bg_gap"]["valid"]
    assert "spread over 0.2 bits" in d.comparisons["t"]["background_only"]["control"]
    assert fake(reliance(OBJECT)).comparisons["t"]["background_only"]["valid"]
    assert d.verdict[1].startswith("the decision does not depend on the background: the background accounts for 0 of "
                                   "the model's 50 points above chance (0% of them")
    table = d.table()
    assert "| BG-gap (mixed-same - mixed-rand) | T | +0.000 | yes |" in table
    assert "| background only | T | 0.100 | no | object only predictions spread over 0.2 bits" in table
    # mixed-same 0.45 against 0.6: more than Thresholds.mixed_same_drop below, the gap is not read
    fell = {**OBJECT, "mixed_same": 0.45, "mixed_rand": 0.2}
    assert not fake(reliance(fell)).comparisons["t"]["bg_gap"]["valid"]
    assert fake(reliance(fell)).comparisons["t"]["bg_gap"]["control"] == "mixed-same 0.45 against original 0.60"
    looser = dataclasses.replace(fake(reliance(fell)), thresholds=Thresholds(mixed_same_drop=0.2))
    assert looser.comparisons["t"]["bg_gap"]["valid"] and looser.kind == "background"  # 0.25 of 0.5 points


def test_the_share_threshold_and_the_interval_decide_the_state():
    small = {**OBJECT, "mixed_same": 0.55, "mixed_rand": 0.52}  # 3 of 50 points: 6 %
    d = fake(reliance(small))
    assert d.background_share["share"] == pytest.approx(0.06) and d.background_share["low"] > 0
    assert d.reliance_state == "independent" and d.kind == "healthy"
    assert "a small reliance, which the interval separates from zero, below the 10% threshold" in d.verdict[1]
    strict = dataclasses.replace(d, thresholds=Thresholds(reliance_share=0.05))
    assert strict.reliance_state == "reliant" and strict.kind == "background"
    # a share above the threshold that 30 images cannot separate from zero: uncertain, not healthy
    g = torch.Generator().manual_seed(0)
    hits = torch.stack([torch.rand(30, generator=g) < 0.6 for _ in VARIANTS])
    hits[VARIANTS.index("original")] = torch.arange(30) < 18
    noisy = dataclasses.replace(fake(reliance(OBJECT)), reliance_hits=hits)
    s = noisy.background_share
    assert s["low"] < 0 < s["high"]
    if s["share"] >= T.reliance_share:
        assert noisy.reliance_state == "uncertain" and noisy.kind == "unjudged"
        assert "cannot tell" in noisy.verdict[1]
    else:
        assert noisy.reliance_state == "independent" and "cannot separate it from zero" in noisy.verdict[1]


def test_background_read_on_filled_images_counts_whatever_the_fill_when_both_fills_agree():
    # a mark model: object-only near chance and collapsed, but the background alone is read
    mark = {"object_only": 0.1, "background_only": 0.9, "mixed_same": 0.95, "mixed_rand": 0.3}
    d = fake(reliance(mark, original=0.98), COLLAPSED)
    assert d.reliance_state == "reliant" and d.kind == "background"
    assert "fill T: BG-gap +0.65, background alone 0.90" in d.verdict[0]
    assert d.verdict[-2].startswith("next: look in the training data for what the background tells about the class")
    assert "salaug.SalientPaste" in d.verdict[-1] and "run the check again" in d.verdict[-1]
    partial = {"object_only": 0.5, "background_only": 0.3, "mixed_same": 0.6, "mixed_rand": 0.4}  # gap 0.20
    assert fake(reliance(partial)).kind == "background"


def test_background_alone_read_under_one_fill_only_is_inconclusive_and_uncited():
    one = {**OBJECT, "background_only": 0.45}  # 0.35 above chance under fill B, a gap of 0 under both
    d = fake(reliance(OBJECT, one))
    assert d.reliance_state == "disagree" and d.kind == "unjudged"
    assert d.verdict[1].startswith("the reliance test is inconclusive: the background accounts for 0 of")
    assert "read under fill B" in d.verdict[1]


def test_chance_is_the_label_distributions_not_one_over_k():
    # a constant-output model on a 70 % majority class: every version scores 0.7; with chance 1/K
    # (0.33) that read as background reliance (background alone 0.7 - 0.33 >= 0.25)
    const = {"object_only": 0.7, "background_only": 0.7, "mixed_same": 0.7, "mixed_rand": 0.7}
    d = fake(reliance(const, original=0.7), {v: 0.0 for v in VARIANTS}, label_chance=0.7, num_classes=3)
    assert d.chance_accuracy == 0.7 and d.kind != "background" and d.reliance_state == "uninformative"
    assert "the model is near chance on the original images (0.70 vs chance 0.70)" in d.verdict[1]
    assert fake(reliance(const, original=0.7), label_chance=1 / 3, num_classes=3).kind == "background"


def test_deprecated_threshold_constants_warn_and_keep_their_values():
    import salaug.diagnosis as diagnosis
    import salaug.diagnosis.report as report

    for module in (diagnosis, report):
        with pytest.warns(DeprecationWarning, match=r"Thresholds\(\)\.head_margin.*|removed in 0\.5\.0") as rec:
            value = module.HEAD_MARGIN
        assert value == T.head_margin and "removed in 0.5.0" in str(rec[0].message)
        assert rec[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(DeprecationWarning, match="reliance_share"):
        assert diagnosis.BG_GAP_THRESHOLD == 0.15
    with pytest.raises(AttributeError, match="no attribute 'NOT_A_THRESHOLD'"):
        diagnosis.NOT_A_THRESHOLD  # noqa: B018
    assert "HEAD_MARGIN" not in diagnosis.__all__ and "train_demo_model" not in diagnosis.__all__
    assert callable(diagnosis.train_demo_model)  # internal, still importable for the demo and the CLI


def test_deprecated_budget_keywords_warn_and_behave_as_budget():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0]]).expand(8, 4)
    with pytest.warns(DeprecationWarning, match=r"Budget\(references=1, examples_per_class=0\)") as rec:
        old = diagnose(net, [(x, y, boxes)], "1", box_key=2, references=1, examples_per_class=0)
    assert rec[0].filename == __file__ and "removed in 0.5.0" in str(rec[0].message)
    new = diagnose(net, [(x, y, boxes)], "1", box_key=2, budget=Budget(references=1, examples_per_class=0))
    assert old.to_dict() == new.to_dict()
    with pytest.raises(TypeError, match="unexpected keyword argument 'referenses'"):
        diagnose(net, [(x, y, boxes)], "1", referenses=1)
    with pytest.raises(TypeError, match="budget must be a salaug.diagnosis.Budget"):
        diagnose(net, [(x, y, boxes)], "1", budget={"references": 1})
    with pytest.raises(TypeError, match="thresholds must be a salaug.diagnosis.Thresholds"):
        diagnose(net, [(x, y, boxes)], "1", thresholds={"head_margin": 0.2})
    with pytest.raises(ValueError, match="Thresholds.confidence must be in"):
        Thresholds(confidence=1.0)
    with pytest.raises(ValueError, match="Thresholds.resamples must be a positive integer"):
        Thresholds(resamples=0)


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
    d = diagnose(Constant(), [(x, y, boxes)], "conv", box_key=2, budget=Budget(references=1, examples_per_class=0))
    assert d.label_chance == pytest.approx(0.7) and d.reliance["background_only_t"] == pytest.approx(0.7)
    assert d.reliance_entropy["original"] == 0.0 and d.reliance_state == "uninformative"
    assert d.kind != "background"


def test_per_class_findings_use_each_classs_own_references():
    # class 0's random-init reference (0.75) and class 1's chance (0.72) are far above the overall
    # reference (0.3, chance 0.1): their margins (0.8 - 0.75, 0.8 - 0.72) fall short, which the
    # overall reference (margin 0.5) would hide
    random_class = {0: block(0.75, 0.3), 1: block(0.3, 0.3), 2: block(0.3, 0.3)}
    scores = {k: block(0.8, 0.6) for k in range(3)}
    d = fake(reliance(OBJECT), random_class=random_class, class_chance={0: 0.1, 1: 0.72, 2: 0.1}, class_scores=scores)
    assert d.reference("eigencam", 0) == 0.75 and d.reference("eigencam", 1) == 0.72
    assert d.margin("eigencam", 0) == pytest.approx(0.05) and d.margin("eigencam", 1) == pytest.approx(0.08)
    assert d.margin("eigencam", 2) == pytest.approx(0.5) == pytest.approx(d.margin("eigencam"))
    assert d.kind == "healthy"
    lines = [v for v in d.verdict if v.startswith("backbone features miss the object for class")]
    assert lines == ["backbone features miss the object for class 0 (EigenCAM margin +0.050, needs +0.10)",
                     "backbone features miss the object for class 1 (EigenCAM margin +0.080, needs +0.10)"]
    assert d.per_class[0]["backbone_margin"] == pytest.approx(0.05)


def test_a_healthy_verdict_says_how_its_per_class_findings_fit():
    scores = {0: block(0.8, 0.6), 1: block(0.8, 0.35)}
    d = fake(reliance(OBJECT), class_scores=scores)
    text = d.summary
    assert text.startswith("Healthy: the backbone's features") and ". The decision does not depend" in text
    assert "The healthy verdict holds over all images together; the classes named next fall short on their own " \
           "images" in text
    assert text.endswith("Head ignores object features for class 1 (AblationCAM margin +0.050, needs +0.10).")
    lines = str(d).splitlines()
    assert " ".join(line[2:] for line in lines[2:2 + len(d.verdict)]) == text and "['" not in str(d)
    assert lines[2].startswith("- Healthy: ") and lines[3].startswith("- The decision does not depend")


def test_whole_image_boxes_leave_the_model_unjudged_and_say_why():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(8, 4)
    d = diagnose(net, [(x, y, whole)], "1", box_key=2, budget=Budget(references=1, examples_per_class=0))
    assert d.chance == pytest.approx(1.0) and d.full_boxes and d.kind == "unjudged"
    assert d.verdict[0].startswith("unjudged: the true boxes cover 100% of the image on average, so chance is about 1")
    assert d.reliance_state == "uninformative" and "there is no background to test" in d.verdict[1]
    nearly = fake(reliance(OBJECT), chance=0.92)
    assert nearly.kind == "unjudged" and not fake(chance=0.85).full_boxes


def test_batches_of_different_image_sizes_are_diagnosed_and_their_examples_resized(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    batches = [(torch.rand(1, 3, 16 + 8 * (i % 3), 24), torch.tensor([i % 3]),
                torch.tensor([[4.0, 4.0, 12.0, 12.0]])) for i in range(6)]  # batch_size=1 over full-size images
    d = diagnose(net, batches, "1", box_key=2, budget=Budget(references=1, examples_per_class=2))
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
    # the layer probed on the first batch
    d = diagnose(net, [(x, y)], None, budget=Budget(references=1, examples_per_class=0))
    assert d.target_layer == "2" and net.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # BatchNorm statistics too
