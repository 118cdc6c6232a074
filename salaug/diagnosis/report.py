"""The result of :func:`salaug.diagnose`: scores beside their references, the reliance test, the verdict.

Verdict rules and thresholds
----------------------------
The verdict never reads an absolute score: absolute localisation scores depend on the object's
size and contrast and on the feature map's resolution. It reads **margins** over two references
measured on the same images:

* ``chance``: the in-image share of the image the true box covers, what a map blind to the object
  scores (box measure only);
* ``random init``: the same architecture with re-drawn weights (see
  :func:`salaug.diagnosis.random_reference`), which already lights up a bright object; the
  highest score of three draws (one draw varies by about 0.1 from the next).

``margin = score - max(chance, random-init score)``. And it reads the **reliance test** (see
:mod:`salaug.diagnosis.reliance`), which does not depend on the maps at all, under two fills of
the removed region (T: the image's own background tiled into the box; B: black). Each comparison
of the test is judged by **its own control** (:attr:`Diagnosis.comparisons`):

* the **BG-gap** (mixed-same minus mixed-rand accuracy) of a fill counts when mixed-same keeps the
  original's accuracy (within :attr:`Thresholds.mixed_same_drop`): both pasted images are then
  images the model reads, whatever the object alone scores;
* **background-only** accuracy above chance by :attr:`Thresholds.background_only_margin` is read
  as such on any fill (it cannot come from the fill); near chance it says "not read" only when
  object-only passes its controls (:attr:`Thresholds.object_only_share`,
  :attr:`Thresholds.collapse_ratio`).

The answer is **graded** (:attr:`Diagnosis.background_share`): the share of the model's margin over
chance (original accuracy minus the most frequent label's share) that the background accounts for,
``BG-gap / (original - chance)``, the BG-gap averaged over the fills whose control passed, with a
bootstrap interval over the images. The test's result (:attr:`Diagnosis.reliance_state`) is
*reliant* when that share reaches :attr:`Thresholds.reliance_share` and its interval excludes 0
(or background-only reads the background under every fill), *independent* when it stays below,
*uncertain* when the interval reaches from 0 to the threshold, *disagree* when the share is below
but background-only reads the background under one fill, and *uninformative* when no comparison
can be read; the verdict cites only the first two. In this order:

1. **background**: the reliance test is *reliant*: the decision depends on the background (a
   shortcut: a class-coded mark, a background colour).
2. **unjudged**: the true boxes cover at least :attr:`Thresholds.full_box_share` of the image on
   average (chance is about 1: no map can beat it, and there is no background to test), or the
   target layer's cells are at least as large as the typical object (mean box side): the maps
   cannot say where inside the object the model looks; the report names a finer layer instead of
   judging them.
3. **backbone**: EigenCAM margin below :attr:`Thresholds.backbone_margin`: the backbone's
   principal feature is no better placed than a random network's.
4. **head**: AblationCAM margin below :attr:`Thresholds.head_margin`: the head's channels are no
   better placed.
5. **unjudged** (background): the maps pass but the reliance test ran and could not judge the
   background (*uncertain*, *disagree*, *uninformative*): a check whose control fails never says
   healthy.
6. **healthy** otherwise; classes whose own margins (over their own chance and random-init
   scores) fall short are named after it.

Each verdict ends with what to do next (:attr:`Diagnosis.next_steps`). The map thresholds were set
once, on the tiny CNNs with known faults that ``tests/test_diagnosis.py`` trains in-process on
32-pixel ClutteredObjects; the reliance thresholds on the tuning rows of the fault matrix of
``benchmarks/diagnosis_matrix.py`` and checked on its held-out rows; none is set per dataset. The
measured margins and the matrix are in the documentation's "Reading the diagnosis report" page and
``benchmarks/results/diagnosis_matrix.md``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from salaug._checks import check_int
from salaug.diagnosis.measure import CAM_ROLES
from salaug.diagnosis.reliance import FILLS, reliance_share
from salaug.diagnosis.thresholds import Thresholds, deprecated_constant

__all__ = ["KINDS", "RELIANCE_STATES", "Diagnosis", "Thresholds"]

#: The verdict's kinds (:attr:`Diagnosis.kind`), in the order the rules are tried.
KINDS = ("background", "unjudged", "backbone", "head", "healthy")
#: What the reliance test found (:attr:`Diagnosis.reliance_state`).
RELIANCE_STATES = ("reliant", "independent", "uncertain", "disagree", "uninformative")
_TITLES = {"gradcam": "GradCAM", "eigencam": "EigenCAM", "ablationcam": "AblationCAM"}
_FILL_TITLES = {"t": "fill T (own background tiled)", "b": "fill B (black)"}
_PARTS_TITLES = {"object_only": "object only", "background_only": "background only", "mixed_same": "mixed-same",
                 "mixed_rand": "mixed-rand"}


@dataclass
class Diagnosis:
    """What :func:`salaug.diagnose` measured: scores beside their references, reliance, verdict.

    Attributes:
        measure: ``"box"`` (pointing game / energy inside the true box) or ``"evidence"`` (the
            box-free score of :func:`salaug.diagnosis.evidence_score`).
        scores: method (``"gradcam"``, ``"eigencam"``, ``"ablationcam"``) -> ``{"score": ...,
            "pointing": ..., "energy": ...}`` (box measure) or ``{"score": ...}`` (evidence),
            means over all images.
        class_scores: class index -> the same dict per method, means over that class's images.
        counts: class index -> number of images.
        accuracy: top-1 accuracy on the diagnosed images (``None`` without labels).
        class_accuracy: class index -> accuracy.
        chance: mean in-image share of the image covered by the true box (what a map blind to the
            object scores on the box measure), or ``None`` for the evidence measure.
        num_images: images diagnosed.
        num_classes: classes of the model's output.
        target_layer: name of the CAM layer.
        class_names: optional names, indexable by class.
        examples: pictures for :meth:`save` (CPU tensors).
        random_scores: the same as ``scores`` for the random-initialisation reference (per method,
            the highest of the draws), or ``None`` (``references=0``).
        random_class_scores: per class, like ``class_scores`` (the highest draw per class).
        random_accuracy: the references' mean accuracy (about chance).
        random_draws: each draw's overall score per method.
        class_chance: class index -> mean box share of that class's images.
        reliance: variant (see :data:`salaug.diagnosis.VARIANTS`) -> accuracy, or ``None`` (no
            boxes, no labels, or ``reliance=False``).
        class_reliance: class index -> the same per class.
        reliance_entropy: variant -> entropy in bits of the distribution of the predicted classes
            over the images (how widely the predictions spread; 0: every image in one class).
        label_chance: the accuracy a model blind to the images reaches at best: the share of the
            most frequent label among the diagnosed images (``None`` without labels).
        cell: pixels per cell of the target layer's feature map (image side / feature side).
        box_side: mean side (square root of the area) of the true boxes in pixels, or ``None``.
        finer_layer: a layer with cells at most half the typical box side, when ``cell`` is too
            coarse (``None`` otherwise or when none exists).
        kept_parameters: parameters the random reference could not re-draw.
        reliance_hits: ``(V, N)`` bool, each image's hit under each variant (for the interval of
            :attr:`background_share`), or ``None``.
        thresholds: the :class:`Thresholds` the verdict reads; ``dataclasses.replace(d,
            thresholds=...)`` re-judges without measuring again.
        seed: seed of the bootstrap interval (``diagnose``'s ``seed``).
    """

    measure: str
    scores: dict[str, dict[str, float]]
    class_scores: dict[int, dict[str, dict[str, float]]]
    counts: dict[int, int]
    accuracy: float | None
    class_accuracy: dict[int, float]
    chance: float | None
    num_images: int
    num_classes: int
    target_layer: str
    class_names: tuple[str, ...] | None = None
    examples: dict[str, Any] = field(default_factory=dict, repr=False)
    random_scores: dict[str, dict[str, float]] | None = None
    random_class_scores: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict, repr=False)
    random_accuracy: float | None = None
    random_draws: list[dict[str, float]] = field(default_factory=list, repr=False)
    class_chance: dict[int, float] = field(default_factory=dict, repr=False)
    reliance: dict[str, float] | None = None
    class_reliance: dict[int, dict[str, float]] = field(default_factory=dict, repr=False)
    reliance_entropy: dict[str, float] = field(default_factory=dict, repr=False)
    label_chance: float | None = None
    cell: float | None = None
    box_side: float | None = None
    finer_layer: str | None = None
    kept_parameters: int = 0
    reliance_hits: Tensor | None = field(default=None, repr=False)
    thresholds: Thresholds = field(default_factory=Thresholds)
    seed: int = 0
    _share_cache: tuple[Any, dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ headline numbers
    @property
    def backbone_score(self) -> float:
        """EigenCAM's localisation score in ``[0, 1]``: do the backbone's features sit on the object?"""
        return self.scores["eigencam"]["score"]

    @property
    def head_score(self) -> float:
        """AblationCAM's localisation score in ``[0, 1]``: does the head rely on object channels?"""
        return self.scores["ablationcam"]["score"]

    @property
    def gradcam_score(self) -> float:
        """GradCAM's localisation score in ``[0, 1]`` (for reference)."""
        return self.scores["gradcam"]["score"]

    def reference(self, method: str, k: int | None = None) -> float:
        """``max(chance, random-init score)`` of ``method`` overall (or for class ``k``)."""
        chance = self.chance if k is None else self.class_chance.get(k, self.chance)
        rand = self.random_scores if k is None else self.random_class_scores.get(k)
        refs = [v for v in (chance, None if rand is None else rand[method]["score"]) if v is not None]
        return max(refs) if refs else 0.0

    def margin(self, method: str, k: int | None = None) -> float:
        """``score - reference(method)`` overall (or for class ``k``): what the verdict reads."""
        score = (self.scores if k is None else self.class_scores[k])[method]["score"]
        return score - self.reference(method, k)

    @property
    def backbone_margin(self) -> float:
        """EigenCAM's margin over its references."""
        return self.margin("eigencam")

    @property
    def head_margin(self) -> float:
        """AblationCAM's margin over its references."""
        return self.margin("ablationcam")

    def fill_gap(self, fill: str) -> float | None:
        """Mixed-same minus mixed-rand accuracy under ``fill`` (``"t"`` or ``"b"``; ``None`` without the test)."""
        if self.reliance is None:
            return None
        return self.reliance[f"mixed_same_{fill}"] - self.reliance[f"mixed_rand_{fill}"]

    @property
    def bg_gap(self) -> float | None:
        """The BG-gap of the Backgrounds Challenge (fill T): mixed-same minus mixed-rand accuracy
        (``None`` without the reliance test)."""
        return self.fill_gap("t")

    @property
    def chance_accuracy(self) -> float:
        """Chance accuracy: :attr:`label_chance` where labels were given, else ``1 / num_classes``."""
        return self.label_chance if self.label_chance is not None else 1 / self.num_classes

    @property
    def full_boxes(self) -> bool:
        """Whether the true boxes cover (nearly) the whole image (mean share >= :attr:`Thresholds.full_box_share`)."""
        return self.chance is not None and self.chance >= self.thresholds.full_box_share

    @property
    def coarse(self) -> bool:
        """Whether the target layer's cells are at least as large as the typical object."""
        return self.cell is not None and self.box_side is not None and self.cell >= self.box_side

    @property
    def per_class(self) -> dict[int, dict[str, float]]:
        """class -> ``backbone_score``, ``head_score``, ``gradcam_score``, their margins,
        ``accuracy`` and ``count``."""
        out: dict[int, dict[str, float]] = {}
        for k, s in self.class_scores.items():
            row = {"backbone_score": s["eigencam"]["score"], "head_score": s["ablationcam"]["score"],
                   "gradcam_score": s["gradcam"]["score"], "backbone_margin": self.margin("eigencam", k),
                   "head_margin": self.margin("ablationcam", k), "count": float(self.counts[k])}
            if k in self.class_accuracy:
                row["accuracy"] = self.class_accuracy[k]
            out[k] = row
        return out

    def class_name(self, k: int) -> str:
        """``"3 (frame)"`` when names are known, else ``"3"``."""
        if self.class_names is not None and 0 <= k < len(self.class_names):
            return f"{k} ({self.class_names[k]})"
        return str(k)

    # ------------------------------------------------------------------ verdict
    @property
    def _t(self) -> Thresholds:
        return self.thresholds

    def _gap_control(self, fill: str) -> str | None:
        """Why the BG-gap of ``fill`` cannot be read (``None``: it can): mixed-same must keep the
        original's accuracy, whatever object-only does."""
        r = self.reliance
        assert r is not None
        same = r[f"mixed_same_{fill}"]
        if same < r["original"] - self._t.mixed_same_drop:
            return f"mixed-same {same:.2f} against original {r['original']:.2f}"
        return None

    def _object_only_problems(self, fill: str) -> list[str]:
        """Why background-only accuracy near chance under ``fill`` does not say "not read" (empty:
        it does): object-only must keep the object readable and the predictions must not collapse."""
        r, chance = self.reliance, self.chance_accuracy
        assert r is not None
        problems = []
        obj = r[f"object_only_{fill}"]
        if obj - chance < self._t.object_only_share * (r["original"] - chance):
            problems.append(f"object alone {obj:.2f}")
        floor = self._t.collapse_ratio * self.reliance_entropy.get("original", 0.0)
        low = [v for v in (f"object_only_{fill}", f"mixed_rand_{fill}") if self.reliance_entropy.get(v, floor) < floor]
        problems += [f"{_PARTS_TITLES[v[:-2]]} predictions spread over {abs(self.reliance_entropy[v]):.1f} bits"
                     for v in low]
        return problems

    def _background_only_reads(self, fill: str) -> bool:
        r = self.reliance
        assert r is not None
        return r[f"background_only_{fill}"] - self.chance_accuracy >= self._t.background_only_margin

    @property
    def comparisons(self) -> dict[str, dict[str, dict[str, Any]]] | None:
        """Each comparison of the reliance test under each fill, judged by its own control.

        ``fill -> {"bg_gap": ..., "background_only": ...}``, each ``{"value": float, "valid": bool,
        "control": str | None}``: the BG-gap is valid when mixed-same keeps the original's accuracy
        (:attr:`Thresholds.mixed_same_drop`); background-only is valid when it reads the background
        (above-chance accuracy on filled images cannot come from the fill) or when object-only
        passes its controls (the fill keeps the object readable, the predictions do not collapse).
        ``control`` says why a comparison is not valid. ``None`` without the test.
        """
        if self.reliance is None:
            return None
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for f in FILLS:
            gap_why = self._gap_control(f)
            reads = self._background_only_reads(f)
            obj = [] if reads else self._object_only_problems(f)
            out[f] = {"bg_gap": {"value": self.fill_gap(f), "valid": gap_why is None, "control": gap_why},
                      "background_only": {"value": self.reliance[f"background_only_{f}"], "valid": not obj,
                                          "control": ", ".join(obj) or None}}
        return out

    @property
    def background_share(self) -> dict[str, Any] | None:
        """The graded reliance: the share of the model's margin over chance that the background accounts for.

        ``{"fills", "gap", "margin", "share", "low", "high", "confidence"}``: the fills whose BG-gap is
        valid (:attr:`comparisons`), their mean BG-gap, ``original - chance``, ``gap / margin`` and the
        bootstrap interval of the share over the images
        (:func:`salaug.diagnosis.reliance.reliance_share`, seeded by ``diagnose``'s ``seed``).
        ``None`` without the test, without per-image hits, when no fill's BG-gap is valid, or when
        the original accuracy is within :attr:`Thresholds.original_margin` of chance (there is no
        margin to share).
        """
        comps = self.comparisons
        if comps is None or self.reliance_hits is None or self.full_boxes:
            return None
        if self.reliance["original"] - self.chance_accuracy < self._t.original_margin:  # type: ignore[index]
            return None
        fills = tuple(f for f in FILLS if comps[f]["bg_gap"]["valid"])
        if not fills:
            return None
        key = (fills, self._t.confidence, self._t.resamples, self.seed)
        if self._share_cache is None or self._share_cache[0] != key:
            r = reliance_share(self.reliance_hits, fills, self.chance_accuracy, confidence=self._t.confidence,
                               resamples=self._t.resamples, seed=self.seed)
            self._share_cache = (key, {"fills": list(fills), **r, "confidence": self._t.confidence})
        return dict(self._share_cache[1])

    @property
    def reliance_state(self) -> str | None:
        """What the reliance test found, one of :data:`RELIANCE_STATES` (``None``: no test).

        Read in this order:

        * ``"uninformative"``: the boxes cover the whole image, or no comparison can be read (the
          original accuracy within :attr:`Thresholds.original_margin` of chance, no fill whose
          mixed-same keeps the original's accuracy) and background-only does not read the
          background under every fill;
        * ``"reliant"``: the background's share of the margin (:attr:`background_share`) is at least
          :attr:`Thresholds.reliance_share` and its interval excludes 0, or background-only accuracy
          is above chance by :attr:`Thresholds.background_only_margin` under every fill;
        * ``"uncertain"``: the share reaches the threshold but its interval cannot separate it from
          zero (too few images to tell);
        * ``"disagree"``: the share is below the threshold, but background-only reads the background
          under one fill;
        * ``"independent"``: the share is below the threshold (its interval may still exclude 0: a
          small reliance, which the verdict states).

        Only ``"reliant"`` and ``"independent"`` are cited by the verdict as evidence; with any other
        state the model is never called healthy (:attr:`kind` reads "unjudged" where the maps pass).
        """
        if self.reliance is None:
            return None
        if self.full_boxes:
            return "uninformative"
        bg_only = [self._background_only_reads(f) for f in FILLS]
        share = self.background_share
        if all(bg_only):
            return "reliant"
        if share is None:
            return "uninformative"
        if share["share"] >= self._t.reliance_share:
            return "reliant" if share["low"] > 0 else "uncertain"
        return "disagree" if any(bg_only) else "independent"

    @property
    def background_judged(self) -> bool:
        """Whether the background was judged: the reliance test did not run (no labels or boxes:
        the verdict says so), or it found the model *reliant* or *independent*."""
        return self.reliance_state in (None, "reliant", "independent")

    def _background_reliant(self) -> bool:
        return self.reliance_state == "reliant"

    @property
    def kind(self) -> str:
        """The overall verdict as one word of :data:`KINDS` (see the module docstring)."""
        if self._background_reliant():
            return "background"
        if self.coarse or self.full_boxes:
            return "unjudged"
        if self.backbone_margin < self._t.backbone_margin:
            return "backbone"
        if self.head_margin < self._t.head_margin:
            return "head"
        if not self.background_judged:
            return "unjudged"
        return "healthy"

    @property
    def healthy(self) -> bool:
        """Whether the overall verdict is healthy."""
        return self.kind == "healthy"

    def _share_text(self) -> str | None:
        """``"the background accounts for 12 of its 47 points above chance (26 %, 95 % interval 14 to 38 %; ...)"``."""
        s = self.background_share
        if s is None:
            return None
        fills = " and ".join(f.upper() for f in s["fills"])
        return (f"the background accounts for {s['gap'] * 100:.0f} of the model's {s['margin'] * 100:.0f} points "
                f"above chance ({s['share']:.0%} of them, {s['confidence']:.0%} interval {s['low']:.0%} to "
                f"{s['high']:.0%}; BG-gap under fill{'s' if len(s['fills']) > 1 else ''} {fills})")

    def _fill_text(self, fill: str) -> str:
        r = self.reliance
        assert r is not None
        gap_note = "" if self._gap_control(fill) is None else " (not read: mixed-same fell)"
        return (f"fill {fill.upper()}: BG-gap {self.fill_gap(fill):+.2f}{gap_note}, "
                f"background alone {r[f'background_only_{fill}']:.2f}, object alone {r[f'object_only_{fill}']:.2f}")

    def _reliance_text(self) -> str:
        r = self.reliance
        if r is None:
            return "no reliance test (it needs labels and boxes)"
        return (f"original {r['original']:.2f}, chance {self.chance_accuracy:.2f}; "
                + "; ".join(self._fill_text(f) for f in FILLS))

    def _reliance_line(self) -> str | None:
        """The reliance test's sentence when it is not the overall verdict's."""
        state = self.reliance_state
        if state is None or state == "reliant":
            return None
        share = self._share_text()
        if state == "independent":
            assert share is not None
            s = self.background_share
            assert s is not None
            small = (f"; a small reliance, which the interval separates from zero, below the "
                     f"{self._t.reliance_share:.0%} threshold") if s["low"] > 0 else (
                "; the interval cannot separate it from zero")
            return f"the decision does not depend on the background: {share}{small} ({self._reliance_text()})"
        if state == "uncertain":
            return (f"the reliance test cannot tell: {share}, an interval that reaches from no reliance to above the "
                    f"{self._t.reliance_share:.0%} threshold; test more images ({self._reliance_text()}); the verdict "
                    "does not use it")
        if state == "disagree":
            on = [f.upper() for f in FILLS if self._background_only_reads(f)]
            return (f"the reliance test is inconclusive: {share}, below the threshold, but the background alone is "
                    f"read under fill {' and '.join(on)} ({self._reliance_text()}); the verdict does not use it")
        r = self.reliance
        assert r is not None
        if self.full_boxes:
            why = f"the true boxes cover {self.chance:.0%} of the image on average: there is no background to test"
        elif r["original"] - self.chance_accuracy < self._t.original_margin:
            why = (f"the model is near chance on the original images ({r['original']:.2f} vs chance "
                   f"{self.chance_accuracy:.2f})")
        else:
            why = ("no fill keeps the pasted images readable (" + "; ".join(
                f"fill {f.upper()}: {self._gap_control(f)}" for f in FILLS) + f"; chance {self.chance_accuracy:.2f})")
        return f"the reliance test is uninformative on this data: {why}; the verdict does not use it"

    def _map_text(self, method: str) -> str:
        rand = "n/a" if self.random_scores is None else f"{self.random_scores[method]['score']:.2f}"
        chance = "n/a" if self.chance is None else f"{self.chance:.2f}"
        return (f"{self.scores[method]['score']:.2f} vs random init {rand}, chance {chance}: margin "
                f"{self.margin(method):+.2f}")

    @property
    def next_steps(self) -> list[str]:
        """What to do next for this verdict's :attr:`kind` (and the reliance test's state), as sentences."""
        kind, state = self.kind, self.reliance_state
        steps: list[str] = []
        if kind == "background":
            steps.append("look in the training data for what the background tells about the class: a mark, text, "
                         "a border or a frame, a background colour or scene that goes with one class (compare the "
                         "background-only images of salaug.diagnosis.reliance_images across classes)")
            steps.append("remove it at the source, or weaken its link to the label while training: salaug.SalientPaste"
                         "(background='image') with true object masks as saliency pastes objects onto other images' "
                         "backgrounds (soft labels by area), so that a background no longer goes with one label, and "
                         "salaug.SalientCrop crops around the object and drops the borders; then retrain and run the "
                         f"check again: the background's share should fall below {self._t.reliance_share:.0%}")
        elif kind == "unjudged" and self.full_boxes:
            steps.append("give boxes that frame the object tightly, or crop the images around their objects, and run "
                         "the check again")
        elif kind == "unjudged" and not self.coarse:
            steps.append("judge the background: test more images (the interval narrows with their number), give "
                         "object masks (mask_key=) so that the pasted objects keep their outline, or test images "
                         "whose backgrounds vary more; then run the check again")
        elif kind == "unjudged":
            layer = f"target_layer={self.finer_layer!r}" if self.finer_layer else "a layer with a finer feature map"
            steps.append(f"run the check again with {layer} (or on larger images), so that its cells are smaller "
                         "than the objects")
        elif kind == "backbone":
            steps.append("the features do not single out the object: train longer or with more data, check that "
                         "the backbone is not frozen at random weights, and that the images are normalised as in "
                         "training; run the check again on the retrained model")
        elif kind == "head":
            steps.append("the head decides from channels that fire off the object: look at the AblationCAM rows of "
                         "the report picture for what they fire on (a border, a mark, the background), then train "
                         "with salaug.SalientCrop or salaug.KeepCutout so that the object's channels carry the label, "
                         "and run the check again")
        if kind in ("backbone", "head") and state in ("uncertain", "uninformative", "disagree"):
            steps.append("the background was not judged: run the check on more images, or with object masks "
                         "(mask_key=), before trusting the model on new backgrounds")
        return steps

    @property
    def verdict(self) -> list[str]:
        """Short sentences, one per finding; the first is the overall one and starts with its
        :attr:`kind` (``"healthy: ..."``, ``"background reliance: ..."``, ...); then the reliance
        test's, the caveats, and last what to do next (``"next: ..."``, :attr:`next_steps`)."""
        kind = self.kind
        t = self._t
        b, h = self._map_text("eigencam"), self._map_text("ablationcam")
        if kind == "background":
            share = self._share_text()
            why = share if share is not None and self.reliance_state == "reliant" and (
                self.background_share or {}).get("share", 0) >= t.reliance_share else (
                "the background alone is read under every fill")
            first = (f"background reliance: the decision depends on the background, not only on the object: {why}; "
                     f"measured: {self._reliance_text()}")
        elif kind == "unjudged" and self.full_boxes:
            first = (f"unjudged: the true boxes cover {self.chance:.0%} of the image on average, so chance is about 1 "
                     "and no map can score above it, and there is no background for the reliance test")
        elif kind == "unjudged" and not self.coarse:
            first = (f"unjudged background: the backbone's features (EigenCAM {b}) and the head's channels "
                     f"(AblationCAM {h}) sit on the object, but the reliance test cannot say whether the decision "
                     "also depends on the background, so the model is not called healthy")
        elif kind == "unjudged":
            first = (f"unjudged maps: the target layer {self.target_layer!r} has {self.cell:.0f}-pixel cells, as large "
                     f"as the objects (about {self.box_side:.0f} px), so its maps cannot show where on the object "
                     "the model looks")
        elif kind == "backbone":
            first = (f"backbone features miss the object: the principal feature of the target layer (EigenCAM) "
                     f"sits no better than a random network's ({b}; needs {t.backbone_margin:+.2f})")
        elif kind == "head":
            first = (f"head ignores object features: the backbone's features sit on the object but the channels "
                     f"the head relies on (AblationCAM) do not ({h}; needs {t.head_margin:+.2f})")
        else:
            first = (f"healthy: the backbone's features (EigenCAM {b}) and the head's channels (AblationCAM {h}) "
                     "sit on the object beyond chance and beyond a random network")
        lines = [first]
        reliance_line = self._reliance_line()
        if reliance_line is not None:
            lines.append(reliance_line)
        if kind == "background" and not (self.coarse or self.full_boxes):
            if self.backbone_margin < t.backbone_margin:
                lines.append(f"the backbone's principal feature sits off the object too (EigenCAM {b})")
            if self.head_margin < t.head_margin:
                lines.append(f"the head's channels sit off the object (AblationCAM {h})")
        if self.accuracy is not None and self.accuracy - self.chance_accuracy < t.original_margin:
            lines.append(f"accuracy {self.accuracy:.2f} is close to chance ({self.chance_accuracy:.2f}): the maps "
                         "explain a model that has not learned the task yet")
        if kind == "healthy":
            lines += self._class_lines()
        if self.random_scores is None:
            lines.append("measured without the random-initialisation reference (Budget(references=0)): margins are "
                         "over chance only")
        if self.kept_parameters:
            lines.append(f"{self.kept_parameters} parameters have no reset_parameters() and kept their trained values "
                         "in the random reference")
        if self.measure == "evidence":
            lines.append("measured without boxes (evidence score): a shortcut the model uses counts as evidence and "
                         "the reliance test cannot run; pass box_key= to check that the maps sit on the object")
        lines += [f"next: {step}" for step in self.next_steps]
        return lines

    def _class_verdict(self, k: int) -> str | None:
        """What falls short for class ``k`` (``None``: nothing, or too few images to say)."""
        if self.counts[k] < self._t.min_class_images:
            return None
        if self.margin("eigencam", k) < self._t.backbone_margin:
            return "backbone misses the object"
        if self.margin("ablationcam", k) < self._t.head_margin:
            return "head ignores the object"
        return "ok"

    def _row_mark(self, k: int) -> str:
        """The verdict a row of the report picture is marked with."""
        if self.kind in ("background", "unjudged"):
            return f"{self.kind.upper()} (whole model)"
        what = self._class_verdict(k)
        if what is None:
            return "too few images"
        return "PASS" if what == "ok" else f"FAIL: {what}"

    def _class_lines(self) -> list[str]:
        """Per-class findings under a healthy verdict, with how they fit the overall one."""
        lines = []
        for k in sorted(self.class_scores):
            if self.counts[k] < self._t.min_class_images:
                continue
            if self.margin("eigencam", k) < self._t.backbone_margin:
                lines.append(f"backbone features miss the object for class {self.class_name(k)} "
                             f"(EigenCAM margin {self.margin('eigencam', k):+.3f}, "
                             f"needs {self._t.backbone_margin:+.2f})")
            if self.margin("ablationcam", k) < self._t.head_margin:
                lines.append(f"head ignores object features for class {self.class_name(k)} "
                             f"(AblationCAM margin {self.margin('ablationcam', k):+.3f}, "
                             f"needs {self._t.head_margin:+.2f})")
        if lines:
            lines.insert(0, "the healthy verdict holds over all images together; the classes named next fall short on "
                            "their own images, so for them the model may decide from something other than the "
                            "object: their rows of the report picture are marked, and where the maps land off the "
                            "object there shows what it reads instead (a mark, a border, the background); collect "
                            "more or more varied images of those classes and run the check again")
        return lines

    @property
    def summary(self) -> str:
        """The verdict as one paragraph of sentences (``str(diagnosis)`` lists the same sentences).

        Example:
            >>> Diagnosis._sentences(["healthy: all fine", "the decision does not depend on it"])
            'Healthy: all fine. The decision does not depend on it.'
        """
        return self._sentences(self.verdict)

    @staticmethod
    def _sentences(lines: list[str]) -> str:
        return " ".join(line[:1].upper() + line[1:] + ("" if line.endswith(".") else ".") for line in lines)

    # ------------------------------------------------------------------ output
    def table(self, details: bool = False) -> str:
        """The scores as a Markdown table: overall, the references and the margin, then one row per
        class; then the reliance test's accuracies.

        Args:
            details: also the pointing game and energy columns of each method (box measure).
        """
        parts = ["pointing", "energy"] if self.measure == "box" and details else []
        head = ["", "images", "accuracy", "backbone (EigenCAM)", "head (AblationCAM)", "GradCAM"]
        head += [f"{_TITLES[m]} {p}" for m in CAM_ROLES for p in parts]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def fmt(v: float | None, sign: bool = False) -> str:
            return "" if v is None else (f"{v:+.3f}" if sign else f"{v:.3f}")

        def row(name: str, n: int | None, acc: float | None, s: dict[str, dict[str, float]]) -> str:
            cells = [name, "" if n is None else str(n), "n/a" if acc is None else f"{acc:.3f}"]
            cells += [fmt(s[m]["score"]) for m in ("eigencam", "ablationcam", "gradcam")]
            cells += [fmt(s[m][p]) for m in CAM_ROLES for p in parts]
            return "| " + " | ".join(cells) + " |"

        blank = [""] * len(parts) * len(CAM_ROLES)
        lines.append(row("**all**", self.num_images, self.accuracy, self.scores))
        if self.random_scores is not None:
            lines.append(row("random init (reference)", None, self.random_accuracy, self.random_scores))
        if self.chance is not None:
            lines.append("| " + " | ".join(["chance (box share)", "", f"{self.chance_accuracy:.3f}",
                                             *[fmt(self.chance)] * 3, *blank]) + " |")
        margins = [fmt(self.margin(m), True) for m in ("eigencam", "ablationcam", "gradcam")]
        lines.append("| " + " | ".join(["**margin**", "", "", *margins, *blank]) + " |")
        for k in sorted(self.class_scores):
            lines.append(row(self.class_name(k), self.counts[k], self.class_accuracy.get(k), self.class_scores[k]))
        if self.reliance is not None:
            lines += ["", self._reliance_table()]
        return "\n".join(lines)

    def _reliance_table(self) -> str:
        """The reliance test's accuracies: one row per fill, then per class and fill; the spread
        (entropy, bits) of the predictions below."""
        r = self.reliance
        assert r is not None
        parts = list(_PARTS_TITLES)
        lines = ["| reliance (accuracy) | original | " + " | ".join(_PARTS_TITLES.values()) + " | BG-gap |",
                 "|" + "---|" * (len(parts) + 3)]

        def row(name: str, acc: dict[str, float], fill: str, fmt: str = ".3f") -> str:
            cells = [format(acc["original"], fmt)] + [format(acc[f"{p}_{fill}"], fmt) for p in parts]
            gap = "" if fmt != ".3f" else f"{acc[f'mixed_same_{fill}'] - acc[f'mixed_rand_{fill}']:+.3f}"
            return f"| {name} | " + " | ".join(cells) + f" | {gap} |"

        for f in FILLS:
            lines.append(row(f"**all**, {_FILL_TITLES[f]}", r, f))
        if self.reliance_entropy:
            for f in FILLS:
                lines.append(row(f"predictions' spread (bits), fill {f.upper()}", self.reliance_entropy, f, ".2f"))
        for k in sorted(self.class_reliance):
            for f in FILLS:
                lines.append(row(f"{self.class_name(k)}, fill {f.upper()}", self.class_reliance[k], f))
        lines += ["", f"Chance accuracy {self.chance_accuracy:.3f} (the most frequent label's share)."]
        comps = self.comparisons
        if comps is not None:
            lines += ["", "| comparison, each by its own control | fill | value | counts? | control |",
                      "|---|---|---|---|---|"]
            for f in FILLS:
                g, bo = comps[f]["bg_gap"], comps[f]["background_only"]
                lines.append(f"| BG-gap (mixed-same - mixed-rand) | {f.upper()} | {g['value']:+.3f} | "
                             f"{'yes' if g['valid'] else 'no'} | " + (
                                 g["control"] or f"mixed-same {r[f'mixed_same_{f}']:.3f} keeps the original's "
                                 f"{r['original']:.3f} (within {self.thresholds.mixed_same_drop:.2f})") + " |")
                reads = self._background_only_reads(f)
                lines.append(f"| background only | {f.upper()} | {bo['value']:.3f} | "
                             f"{'yes' if bo['valid'] else 'no'} | " + (
                                 "above chance: read whatever the fill" if reads else bo["control"] or
                                 "object alone readable, predictions spread") + " |")
            share = self._share_text()
            lines += ["", (share[:1].upper() + share[1:] + ".") if share is not None else
                      "No share of the margin: no fill's BG-gap can be read, or the model is near chance.",
                      f"Reliance test: {self.reliance_state}."]
        return "\n".join(lines)

    def _resolution_text(self) -> str:
        if self.cell is None:
            return ""
        side = "" if self.box_side is None else f", typical object side {self.box_side:.1f} px"
        return f"; feature cells of {self.cell:.1f} px{side}"

    def __str__(self) -> str:
        measure = ("box measure: mean of pointing game and energy inside the true box" if self.measure == "box"
                   else "box-free evidence measure")
        title = (f"salaug diagnosis of layer {self.target_layer!r} on {self.num_images} images ({measure}"
                 f"{self._resolution_text()})")
        sentences = "\n".join(f"- {self._sentences([line])}" for line in self.verdict)
        return f"{title}\n\n{sentences}\n\n{self.table()}"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the example pictures, as plain (JSON-serialisable) Python values."""
        return {
            "kind": self.kind,
            "healthy": self.healthy,
            "verdict": self.verdict,
            "measure": self.measure,
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "target_layer": self.target_layer,
            "class_names": None if self.class_names is None else list(self.class_names),
            "accuracy": self.accuracy,
            "chance": self.chance,
            "backbone_score": self.backbone_score,
            "head_score": self.head_score,
            "gradcam_score": self.gradcam_score,
            "margins": {m: self.margin(m) for m in CAM_ROLES},
            "thresholds": self.thresholds.as_dict(),
            "next_steps": self.next_steps,
            "scores": copy.deepcopy(self.scores),
            "random_init": None if self.random_scores is None else {
                "scores": copy.deepcopy(self.random_scores), "accuracy": self.random_accuracy,
                "kept_parameters": self.kept_parameters, "draws": copy.deepcopy(self.random_draws)},
            "reliance": None if self.reliance is None else {
                "accuracy": dict(self.reliance), "entropy_bits": dict(self.reliance_entropy),
                "bg_gap": {f: self.fill_gap(f) for f in FILLS}, "chance": self.chance_accuracy,
                "state": self.reliance_state, "share": self.background_share, "comparisons": self.comparisons},
            "resolution": {"cell": self.cell, "box_side": self.box_side, "coarse": self.coarse,
                           "finer_layer": self.finer_layer},
            "per_class": {str(k): {**v, "scores": copy.deepcopy(self.class_scores[k]),
                                   "reliance": copy.deepcopy(self.class_reliance.get(k))}
                          for k, v in self.per_class.items()},
        }

    def save(self, path: str | os.PathLike, *, examples: int | None = None, scale: int | None = None) -> list[Path]:
        """Write the report into the folder ``path``: ``report.md`` and (with examples) ``report.png``.

        The picture has one row per class: for each example image, the image with its true box, then
        GradCAM, EigenCAM and AblationCAM overlays (the box drawn on each). The Markdown file holds
        the verdict, the tables and the picture.

        Args:
            path: output folder (created).
            examples: example images per class in the picture (``None``: all that were kept; ``0``:
                no picture, only ``report.md``).
            scale: tile upscale factor for the picture (``None``: automatic, about 128 px tiles).

        Returns:
            The paths written.

        Raises:
            TypeError / ValueError: ``examples`` or ``scale`` not a non-negative (positive) int.
        """
        examples = check_int("examples", examples, low=0, optional=True)
        scale = check_int("scale", scale, low=1, optional=True)
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        picture = None if examples == 0 else self._save_picture(out / "report.png", examples, scale)
        if picture is not None:
            written.append(picture)
        md = ["# salaug diagnosis", "", *(f"- {v}" for v in self.verdict), "", self.table(details=True), ""]
        md += [f"Target layer `{self.target_layer}`, {self.num_images} images{self._resolution_text()}. " + (
            "Scores: mean of pointing game and energy inside the true box." if self.measure == "box" else
            "Scores: box-free evidence score (see `salaug.diagnosis.evidence_score`).")]
        md += [("Backbone = EigenCAM (the target layer's principal feature, no classifier), head = AblationCAM "
               "(channels weighted by how much their removal lowers the class score), GradCAM for reference. "
               "Each score is judged by its margin over two references: chance (the box's share of the image, "
               "where a map blind to the object lands) and the same network at random initialisation. "
               "The reliance test shows the model the object alone, the background alone (the object's box filled) "
               "and the object on the background of another image of the same class (mixed-same) or of any class "
               "(mixed-rand), under two fills of the removed region: T (the image's own background tiled into the "
               "box) and B (black); the BG-gap (mixed-same - mixed-rand) is what the background's class information "
               "is worth to it. The verdict uses the test only when both fills agree and passed their controls.")]
        if picture is not None:
            md += ["", f"![examples]({picture.name})", "",
                   ("Each row: a class; per example the image with its true box, then GradCAM, EigenCAM and "
                    "AblationCAM overlays.")]
        (out / "report.md").write_text("\n".join(md) + "\n")
        written.append(out / "report.md")
        return written

    def _save_picture(self, path: Path, examples: int | None, scale: int | None) -> Path | None:
        from salaug.viz import draw_boxes, overlay, save_grid, to_display

        ex = self.examples
        if not ex or ex["images"].shape[0] == 0:
            return None
        images, labels, boxes = ex["images"], ex["labels"], ex.get("boxes")
        shown = to_display(images)
        tiles = [draw_boxes(shown, boxes) if boxes is not None else shown]
        for m in CAM_ROLES:
            o = overlay(shown, ex[m])
            tiles.append(draw_boxes(o, boxes, color="white") if boxes is not None else o)
        stacked = torch.stack(tiles, dim=1)  # (N, 4, 3, H, W): image, then the three overlays
        rows: dict[str, Tensor] = {}
        captions: list[list[str]] = []
        per_class = self.per_class
        for k in sorted(set(labels.tolist())):
            sel = (labels == k).nonzero().flatten()
            if examples is not None:
                sel = sel[:examples]
            r = per_class.get(k)
            title = f"class {self.class_name(k)}"
            if r is not None:
                title += (f": backbone {r['backbone_margin']:+.3f}, head {r['head_margin']:+.3f} over references"
                          f" -> {self._row_mark(k)}")
            rows[title] = stacked[sel].flatten(0, 1)
            captions.append(["image", "GradCAM", "EigenCAM", "AblationCAM"] * sel.numel())
        return save_grid(rows, path, nrow=max(t.shape[0] for t in rows.values()), captions=captions, scale=scale)


def __getattr__(name: str) -> Any:
    """The deprecated threshold constants (see :mod:`salaug.diagnosis.thresholds`)."""
    return deprecated_constant(__name__, name)
