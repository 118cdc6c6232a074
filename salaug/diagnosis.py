"""The model check: EigenCAM tests the backbone, AblationCAM tests the head (``salaug.diagnose``).

Two CAMs of the same target layer answer two different questions:

* **EigenCAM** (the first principal component of the target layer's features; no classifier
  involved) asks whether the **backbone's feature map is a good feature**: does its dominant
  pattern sit on the object?
* **AblationCAM** (each channel weighted by how much removing it lowers the class score) asks
  whether the **head learned well**: does the classifier rely on the channels that fire on the
  object?

GradCAM is measured too, for reference (the map most users know).

**Scores.** Each map of each image gets a localisation score in ``[0, 1]``, averaged overall and
per class:

* with true boxes (``box_key``): the mean of the **pointing game** (1 if the map's peak pixel lies
  in the box) and the **energy inside the box** (the fraction of the map's mass inside it). A map
  that ignores the object scores about the box's share of the image (the ``chance`` column; 0.13
  on 32-pixel ClutteredObjects), a perfect one 1;
* without boxes, the box-free **evidence** score: the model's probability for the target class is
  measured after replacing the map's top 20 % pixels, and separately its bottom 20 %, with the
  image's mean colour; the score is ``clamp((p_bottom_removed - p_top_removed) / p, 0, 1)``: how
  much more the class evidence lies under the map's peak than under its floor. A map unrelated to
  what the model uses scores about 0. It cannot tell the object from a shortcut (a shortcut *is*
  what the model uses): pass boxes to detect one.

**Verdict thresholds** (:data:`BACKBONE_THRESHOLD`, :data:`HEAD_THRESHOLD`; box scores) come
from three tiny CNNs with known faults, trained in-process on 32-pixel ClutteredObjects (4
classes, 768 training images, 8 epochs; ``tests/test_diagnosis.py``) and diagnosed on 128 test
images carrying a class-coded 4x4 mark in the background (clean images for the random backbone).
Seed 0 (the test), with seeds 1 and 2 in brackets:

=========================================  ===================  ===================  ========
model                                      backbone (EigenCAM)  head (AblationCAM)   accuracy
=========================================  ===================  ===================  ========
healthy (trained normally)                 0.66 (0.65, 0.71)    0.56 (0.55, 0.61)    0.78
head shortcut (trained with the mark)      0.07 (0.06, 0.06)    0.09 (0.08, 0.09)    0.99
random frozen backbone, fitted linear head 0.40 (0.36, 0.26)    0.30 (0.27, 0.09)    0.34
=========================================  ===================  ===================  ========

A map that ignores the object scores about 0.13 here (the box's share of the image).
``BACKBONE_THRESHOLD = 0.5`` lies midway between the random backbone's highest 0.40 and the
healthy model's lowest 0.65; ``HEAD_THRESHOLD = 0.35`` midway between the shortcut head's 0.09
and the healthy lowest 0.55 (also above the random model's 0.30, whose head sits on random
features). The shortcut also pulls the backbone's principal feature onto the mark (0.07): its
backbone learned to fire on the mark, and the verdict reports both. Per-class findings need at
least :data:`MIN_CLASS_IMAGES` images of the class.

The box-free evidence score measured on the same models: healthy 0.59 (backbone) / 0.57 (head),
random backbone 0.04 / 0.05, hence :data:`EVIDENCE_BACKBONE_THRESHOLD` and
:data:`EVIDENCE_HEAD_THRESHOLD` of 0.25; the shortcut model scores 0.72 / 0.76 on its marked
images: without boxes a shortcut looks like good evidence.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 3))
    >>> x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0]]).expand(6, 4)
    >>> d = diagnose(net, [(x, y, boxes)], "1", box_key=2)
    >>> d.num_images, d.measure, sorted(d.per_class)
    (6, 'box', [0, 1, 2])
    >>> 0 <= d.backbone_score <= 1 and 0 <= d.head_score <= 1
    True
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._checks import check_class_indices, check_images
from salaug.cam import AblationCAM, EigenCAM, GradCAM
from salaug.cam.base import eval_mode
from salaug.metrics import pointing_game

__all__ = [
    "BACKBONE_THRESHOLD",
    "EVIDENCE_BACKBONE_THRESHOLD",
    "EVIDENCE_HEAD_THRESHOLD",
    "HEAD_THRESHOLD",
    "MIN_CLASS_IMAGES",
    "Diagnosis",
    "box_energy",
    "diagnose",
    "evidence_score",
    "demo_model_from_state",
    "localisation_score",
    "main",
    "train_demo_model",
]

#: A backbone (EigenCAM) box score below this means its features miss the object (see module doc).
BACKBONE_THRESHOLD = 0.5
#: A head (AblationCAM) box score below this means the head ignores object features.
HEAD_THRESHOLD = 0.35
#: Box-free (evidence score) counterpart of :data:`BACKBONE_THRESHOLD`.
EVIDENCE_BACKBONE_THRESHOLD = 0.25
#: Box-free (evidence score) counterpart of :data:`HEAD_THRESHOLD`.
EVIDENCE_HEAD_THRESHOLD = 0.25
#: Per-class findings are reported only for classes with at least this many images.
MIN_CLASS_IMAGES = 4

#: method -> what it checks; the order of the report's columns.
METHODS: dict[str, str] = {"gradcam": "reference", "eigencam": "backbone", "ablationcam": "head"}
_TITLES = {"gradcam": "GradCAM", "eigencam": "EigenCAM", "ablationcam": "AblationCAM"}
_DELETE_FRACTION = 0.2


# --------------------------------------------------------------------------------------------- #
# per-image measures (batched, on device, no host sync)
# --------------------------------------------------------------------------------------------- #
def _box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """``(B, 1, H, W)`` bool: pixel centres inside the half-open ``xyxy`` boxes."""
    b = boxes.to(torch.float32)
    xs = torch.arange(width, device=b.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=b.device, dtype=torch.float32) + 0.5
    in_x = (xs.view(1, -1) >= b[:, 0:1]) & (xs.view(1, -1) < b[:, 2:3])  # (B, W)
    in_y = (ys.view(1, -1) >= b[:, 1:2]) & (ys.view(1, -1) < b[:, 3:4])  # (B, H)
    return (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1)


def box_energy(saliency: Tensor, boxes: Tensor) -> Tensor:
    """Fraction of each map's mass inside its box (energy-based pointing game).

    Args:
        saliency: ``(B, 1, H, W)`` non-negative float maps.
        boxes: ``(B, 4)`` half-open ``xyxy`` boxes in pixels of the maps.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``; an all-zero map gives 0.

    Example:
        >>> s = torch.zeros(2, 1, 4, 4)
        >>> s[0, 0, :2, :2] = 1.0
        >>> s[1] = 1.0
        >>> box_energy(s, torch.tensor([[0.0, 0.0, 2.0, 2.0]]).expand(2, 4)).tolist()
        [1.0, 0.25]
    """
    s = saliency.to(torch.float32).clamp_min(0)
    inside = _box_mask(boxes.to(s.device), s.shape[-2], s.shape[-1])
    total = s.flatten(1).sum(1)
    return (s * inside).flatten(1).sum(1) / total.clamp_min(1e-12) * (total > 0)


def localisation_score(saliency: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The box score of :func:`diagnose`: mean of pointing game and energy inside the box.

    Args:
        saliency: ``(B, 1, H, W)`` float maps in ``[0, 1]``.
        boxes: ``(B, 4)`` half-open ``xyxy`` boxes in pixels of the maps.

    Returns:
        ``(score, pointing, energy)``, each ``(B,)`` float32 in ``[0, 1]``.

    Example:
        >>> s = torch.zeros(1, 1, 4, 4)
        >>> s[0, 0, 0, 0] = 1.0
        >>> [t.tolist() for t in localisation_score(s, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))]
        [[1.0], [1.0], [1.0]]
    """
    pointing = pointing_game(saliency, boxes.to(saliency.device)).to(torch.float32)
    energy = box_energy(saliency, boxes)
    return (pointing + energy) / 2, pointing, energy


def _delete(images: Tensor, saliency: Tensor, top: bool, fraction: float) -> Tensor:
    """Replace each image's top (or bottom) ``fraction`` of map pixels by its mean colour."""
    b, c, h, w = images.shape
    flat = saliency.to(torch.float32).flatten(1)
    k = max(1, int(round(fraction * h * w)))
    idx = flat.topk(k, dim=1, largest=top).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view(b, 1, h, w)
    fill = images.mean(dim=(2, 3), keepdim=True)
    return torch.where(mask, fill, images)


def evidence_score(
    model: nn.Module, images: Tensor, saliency: Tensor, targets: Tensor, *, fraction: float = _DELETE_FRACTION
) -> Tensor:
    """The box-free score of :func:`diagnose`: how much class evidence lies under the map's peak.

    ``clamp((p_bottom - p_top) / p, 0, 1)`` where ``p`` is the softmax probability of the target
    class, ``p_top`` / ``p_bottom`` the same after replacing the map's top / bottom ``fraction`` of
    pixels with the image's mean colour. One no-grad forward of the three batches, in eval mode
    (each module's own mode is restored afterwards).

    Args:
        model: the classifier (returns ``(B, K)`` logits).
        images: ``(B, C, H, W)`` float images.
        saliency: ``(B, 1, H, W)`` maps at the images' size.
        targets: ``(B,)`` long class indices.
        fraction: share of pixels removed, in ``(0, 1)``.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.
    """
    with eval_mode(model), torch.no_grad():
        top, bottom = _delete(images, saliency, True, fraction), _delete(images, saliency, False, fraction)
        both = torch.cat([images, top, bottom])
        probs = model(both).float().softmax(dim=1)
        p = probs.gather(1, targets.repeat(3).unsqueeze(1)).squeeze(1).view(3, -1)
    return ((p[2] - p[1]) / p[0].clamp_min(1e-12)).clamp(0, 1)


# --------------------------------------------------------------------------------------------- #
# the result
# --------------------------------------------------------------------------------------------- #
@dataclass
class Diagnosis:
    """What :func:`diagnose` measured: localisation scores overall and per class, and a verdict.

    Attributes:
        measure: ``"box"`` (pointing game / energy inside the true box) or ``"evidence"`` (the
            box-free score; see the module docstring).
        scores: method (``"gradcam"``, ``"eigencam"``, ``"ablationcam"``) -> ``{"score": ...,
            "pointing": ..., "energy": ...}`` (box measure) or ``{"score": ...}`` (evidence),
            means over all images.
        class_scores: class index -> the same dict per method, means over that class's images.
        counts: class index -> number of images.
        accuracy: top-1 accuracy on the diagnosed images (``None`` without labels).
        class_accuracy: class index -> accuracy.
        chance: mean share of the image covered by the true box (what a map that ignores the object
            scores on the box measure), or ``None`` for the evidence measure.
        num_images: images diagnosed.
        num_classes: classes of the model's output.
        target_layer: name of the CAM layer.
        class_names: optional names, indexable by class (e.g. ``ClutteredObjects.classes``).
        examples: pictures for :meth:`save`: ``images`` ``(N, 3, H, W)``, ``labels`` ``(N,)``,
            ``boxes`` ``(N, 4)`` or ``None``, and one ``(N, 1, H, W)`` map per method (CPU).
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
        """GradCAM's localisation score in ``[0, 1]`` (reference)."""
        return self.scores["gradcam"]["score"]

    @property
    def thresholds(self) -> tuple[float, float]:
        """``(backbone, head)`` thresholds of the verdict for this measure."""
        if self.measure == "box":
            return BACKBONE_THRESHOLD, HEAD_THRESHOLD
        return EVIDENCE_BACKBONE_THRESHOLD, EVIDENCE_HEAD_THRESHOLD

    @property
    def per_class(self) -> dict[int, dict[str, float]]:
        """class -> ``backbone_score``, ``head_score``, ``gradcam_score``, ``accuracy``, ``count``."""
        out: dict[int, dict[str, float]] = {}
        for k, s in self.class_scores.items():
            row = {"backbone_score": s["eigencam"]["score"], "head_score": s["ablationcam"]["score"],
                   "gradcam_score": s["gradcam"]["score"], "count": float(self.counts[k])}
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
    def verdict(self) -> list[str]:
        """Short sentences, one per finding; the first is the overall one (``"healthy: ..."`` when
        both scores pass their thresholds)."""
        tb, th = self.thresholds
        b, h = self.backbone_score, self.head_score
        nums = f"(backbone {b:.2f}, head {h:.2f}; thresholds {tb:.2f} / {th:.2f})"
        if b >= tb and h >= th:
            first = f"healthy: the backbone features and the head both sit on the object {nums}"
        elif b >= tb:
            first = (f"head ignores object features: the backbone's features sit on the object but the head "
                     f"relies on channels that fire elsewhere {nums}")
        elif h >= th:
            first = (f"backbone features miss the object: its principal feature sits elsewhere, though the head "
                     f"still finds object channels {nums}")
        else:
            first = (f"backbone features miss the object and head ignores object features: the model looks "
                     f"elsewhere (a background shortcut?) {nums}")
        lines = [first]
        if self.accuracy is not None and self.accuracy < 1.5 / self.num_classes:
            lines.append(f"accuracy {self.accuracy:.2f} is close to chance ({1 / self.num_classes:.2f}): the maps "
                         "explain a model that has not learned the task yet")
        for k in sorted(self.class_scores):
            if self.counts[k] < MIN_CLASS_IMAGES:
                continue
            row = self.per_class[k]
            if b >= tb and row["backbone_score"] < tb:
                lines.append(f"backbone features miss the object for class {self.class_name(k)} "
                             f"(backbone {row['backbone_score']:.2f})")
            if h >= th and row["head_score"] < th:
                lines.append(f"head ignores object features for class {self.class_name(k)} "
                             f"(head {row['head_score']:.2f})")
        if self.measure == "evidence":
            lines.append("measured without boxes (evidence score): a shortcut the model uses counts as evidence; "
                         "pass box_key= to check that the maps sit on the object")
        return lines

    @property
    def healthy(self) -> bool:
        """Whether the overall verdict is healthy."""
        tb, th = self.thresholds
        return self.backbone_score >= tb and self.head_score >= th

    # ------------------------------------------------------------------ output
    def table(self, details: bool = False) -> str:
        """The scores as a Markdown table: one row overall, one per class.

        Args:
            details: also the pointing game and energy columns of each method (box measure).
        """
        parts = ["pointing", "energy"] if self.measure == "box" and details else []
        head = ["class", "images", "accuracy", "backbone (EigenCAM)", "head (AblationCAM)", "GradCAM"]
        if parts:
            head += [f"{_TITLES[m]} {p}" for m in METHODS for p in parts]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def row(name: str, n: int, acc: float | None, s: dict[str, dict[str, float]]) -> str:
            cells = [name, str(n), "n/a" if acc is None else f"{acc:.3f}", f"{s['eigencam']['score']:.3f}",
                     f"{s['ablationcam']['score']:.3f}", f"{s['gradcam']['score']:.3f}"]
            cells += [f"{s[m][p]:.3f}" for m in METHODS for p in parts]
            return "| " + " | ".join(cells) + " |"

        lines.append(row("**all**", self.num_images, self.accuracy, self.scores))
        for k in sorted(self.class_scores):
            lines.append(row(self.class_name(k), self.counts[k], self.class_accuracy.get(k), self.class_scores[k]))
        return "\n".join(lines)

    def __str__(self) -> str:
        measure = (f"box measure: mean of pointing game and energy inside the true box; chance {self.chance:.2f}"
                   if self.measure == "box" and self.chance is not None else "box-free evidence measure")
        return "\n".join([f"salaug diagnosis of layer {self.target_layer!r} on {self.num_images} images ({measure})",
                          "", self.table(), "", *(f"- {v}" for v in self.verdict)])

    def to_dict(self) -> dict[str, Any]:
        """Everything but the example pictures, as plain (JSON-serialisable) Python values."""
        return {
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
            "thresholds": {"backbone": self.thresholds[0], "head": self.thresholds[1]},
            "healthy": self.healthy,
            "verdict": self.verdict,
            "scores": copy.deepcopy(self.scores),
            "per_class": {str(k): {**v, "scores": copy.deepcopy(self.class_scores[k])}
                          for k, v in self.per_class.items()},
        }

    def save(self, path: str | os.PathLike, *, examples: int | None = None, scale: int | None = None) -> list[Path]:
        """Write the report into the folder ``path``: ``report.png`` and ``report.md``.

        The picture has one row per class: for each example image, the image with its true box, then
        GradCAM, EigenCAM and AblationCAM overlays (the box drawn on each). The Markdown file holds
        the verdict, the table and the picture.

        Args:
            path: output folder (created).
            examples: example images per class (``None``: all that were kept).
            scale: tile upscale factor for the picture (``None``: automatic, about 128 px tiles).

        Returns:
            The paths written.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        picture = self._save_picture(out / "report.png", examples, scale)
        if picture is not None:
            written.append(picture)
        md = ["# salaug diagnosis", "", *(f"- {v}" for v in self.verdict), "", self.table(details=True), ""]
        md += [f"Target layer `{self.target_layer}`, {self.num_images} images. " + (
            f"Scores: mean of pointing game and energy inside the true box (chance {self.chance:.2f})."
            if self.measure == "box" and self.chance is not None else
            "Scores: box-free evidence score (see `salaug.diagnosis`).")]
        md += ["Backbone = EigenCAM (the target layer's principal feature, no classifier), head = AblationCAM "
               "(channels weighted by how much their removal lowers the class score), GradCAM for reference."]
        if picture is not None:
            md += ["", f"![examples]({picture.name})", "",
                   "Each row: a class; per example the image with its true box, then GradCAM, EigenCAM and "
                   "AblationCAM overlays."]
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
        for m in METHODS:
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
                title += f": backbone {r['backbone_score']:.2f}, head {r['head_score']:.2f}"
            rows[title] = stacked[sel].flatten(0, 1)
            captions.append(["image", "GradCAM", "EigenCAM", "AblationCAM"] * sel.numel())
        return save_grid(rows, path, nrow=max(t.shape[0] for t in rows.values()), captions=captions, scale=scale)


# --------------------------------------------------------------------------------------------- #
# diagnose
# --------------------------------------------------------------------------------------------- #
def _get(batch: Any, key: int | str, what: str, arg: str) -> Any:
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError) as exc:
        kind = f"keys {sorted(batch)}" if isinstance(batch, Mapping) else (
            f"{len(batch)} entries" if isinstance(batch, (list, tuple)) else type(batch).__name__)
        raise ValueError(f"a batch has no {what} at {arg}={key!r} (the batch has {kind}); pass {arg}= to say where "
                         f"the {what} are") from exc


def _labels_of(value: Any, batch: int, device: torch.device) -> Tensor:
    labels = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if labels.ndim == 2 and labels.is_floating_point():
        labels = labels.argmax(dim=1)  # one-hot / soft labels: their top class
    if labels.ndim != 1 or labels.shape[0] != batch or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be (B,) = ({batch},) integer class indices (or (B, K) one-hot), got "
                         f"{tuple(labels.shape)} {labels.dtype}; pass label_key= for the right entry, or "
                         "label_key=None to explain the predicted classes")
    return labels.to(device=device, dtype=torch.long)


def _boxes_of(value: Any, batch: int, device: torch.device) -> Tensor:
    boxes = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if boxes.shape != (batch, 4):
        raise ValueError(f"boxes must be ({batch}, 4) xyxy pixels (one true box per image), got {tuple(boxes.shape)}; "
                         "pass box_key= for the right entry, or box_key=None for the box-free measure")
    return boxes.to(device=device, dtype=torch.float32)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_data(data: object) -> None:
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, Tensor):
        raise TypeError("data must be a DataLoader or an iterable of batches, got a tensor; pass e.g. "
                        "[(images, labels)] or [(images, labels, boxes)] with box_key=2")
    if isinstance(data, Dataset) and not isinstance(data, (DataLoader, IterableDataset)):
        raise TypeError(f"data must yield batches, got the dataset {type(data).__name__} (it yields single samples); "
                        "wrap it: torch.utils.data.DataLoader(dataset, batch_size=64)")
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be a DataLoader or an iterable of batches, got {type(data).__name__}")


def _class_names(data: object) -> tuple[str, ...] | None:
    names = getattr(getattr(data, "dataset", data), "classes", None)
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


class _Examples:
    """Keeps the first ``per_class`` images of each class for the report (one small sync per batch
    until every class is full; the picture is not a hot path)."""

    def __init__(self, num_classes: int, per_class: int) -> None:
        self.need = torch.full((num_classes,), per_class, dtype=torch.long)
        self.parts: list[dict[str, Tensor | None]] = []

    @property
    def full(self) -> bool:
        return not bool((self.need > 0).any())

    def add(self, images: Tensor, classes: Tensor, boxes: Tensor | None, maps: dict[str, Tensor]) -> None:
        cls = classes.cpu()
        onehot = F.one_hot(cls, self.need.numel())
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # this image's rank within its class in the batch
        keep = (rank < self.need[cls]).nonzero().flatten()
        if keep.numel() == 0:
            return
        self.need -= F.one_hot(cls[keep], self.need.numel()).sum(0)
        idx = keep.to(images.device)
        part: dict[str, Tensor | None] = {"images": images.index_select(0, idx).detach().float().cpu(),
                                          "labels": cls[keep],
                                          "boxes": None if boxes is None else boxes.index_select(0, idx).cpu()}
        part.update({m: v.index_select(0, idx).cpu() for m, v in maps.items()})
        self.parts.append(part)

    def result(self) -> dict[str, Any]:
        if not self.parts:
            return {}
        order = torch.cat([p["labels"] for p in self.parts]).argsort(stable=True)  # type: ignore[misc]
        out: dict[str, Any] = {}
        for key in self.parts[0]:
            vals = [p[key] for p in self.parts]
            out[key] = None if vals[0] is None else torch.cat(vals)[order]  # type: ignore[arg-type]
        return out


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device | str | None) -> Iterator[tuple[nn.Module, torch.device]]:
    here = _model_device(model)
    if device is None or torch.device(device) == here:
        yield model, here
        return
    target = torch.device(device)
    yield copy.deepcopy(model).to(target), target  # a copy: the caller's model stays where it is


def diagnose(
    model: nn.Module,
    data: Iterable[Any],
    target_layer: str | nn.Module | None = None,
    *,
    num_classes: int | None = None,
    image_key: int | str = 0,
    label_key: int | str | None = 1,
    box_key: int | str | None = None,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    examples_per_class: int = 4,
    ablation_batch_size: int = 256,
) -> Diagnosis:
    """Check a trained classifier: do its backbone's features (EigenCAM) and its head's evidence
    (AblationCAM) sit on the object? GradCAM is measured for reference.

    Side-effect free like every CAM call: module modes, BatchNorm statistics, parameter ``.grad``
    and hooks are as before; with a ``device`` other than the model's, a copy of the model runs
    there. The scores and thresholds are described in the module docstring.

    Args:
        model: a classifier returning ``(B, K)`` logits (an ``nn.Module`` or LightningModule).
        data: a ``DataLoader`` or any iterable of batches (tuples / lists / dicts) holding images
            ``(B, C, H, W)``, labels ``(B,)`` and optionally true boxes ``(B, 4)`` xyxy pixels.
        target_layer: the CAM layer (dotted name or module); ``None``: the last spatial layer.
        num_classes: classes of the per-class table; ``None``: the model's output width ``K``.
        image_key: position or key of the images in a batch.
        label_key: position or key of the labels; ``None`` explains (and groups by) the predicted class.
        box_key: position or key of the true boxes; ``None`` uses the box-free evidence score.
        max_batches: diagnose at most this many batches (``None``: all).
        device: where to compute (``None``: the model's device).
        examples_per_class: images per class kept for the report picture (0: none).
        ablation_batch_size: ablated head forwards per chunk of AblationCAM.

    Returns:
        A :class:`Diagnosis`.

    Raises:
        TypeError: ``model`` is not a module or ``data`` does not yield batches.
        ValueError: bad arguments, empty data, batches without the named entries, labels out of range.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_data(data)
    for name, value, low in (("max_batches", max_batches, 1), ("num_classes", num_classes, 1),
                             ("examples_per_class", examples_per_class, 0),
                             ("ablation_batch_size", ablation_batch_size, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            optional = " or None" if name in ("max_batches", "num_classes") else ""
            raise ValueError(f"{name} must be an int >= {low}{optional}, got {value!r}")
    with _on_device(model, device) as (net, dev):
        cams = {"gradcam": GradCAM(net, target_layer)}
        sums: Tensor | None = None
        keeper: _Examples | None = None
        k_out = num_classes
        n_batches = 0
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            images = check_images(_get(batch, image_key, "images", "image_key")).to(dev)
            b = images.shape[0]
            labels = None if label_key is None else _labels_of(_get(batch, label_key, "labels", "label_key"), b, dev)
            boxes = None if box_key is None else _boxes_of(_get(batch, box_key, "boxes", "box_key"), b, dev)
            with eval_mode(net), torch.no_grad():
                logits = net(images)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != b:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise TypeError(f"the model must return (B, K) logits, got {got}; wrap it so that it does")
            if k_out is None:
                k_out = logits.shape[1]
            elif k_out > logits.shape[1]:
                raise ValueError(f"num_classes={k_out} but the model has only {logits.shape[1]} outputs")
            pred = logits.argmax(dim=1)
            classes = pred if labels is None else labels
            if labels is not None:
                check_class_indices(labels, k_out, "labels", f"num_classes={k_out}")
            maps = {"gradcam": cams["gradcam"](images, classes)}
            if len(cams) == 1:  # the same layer for all three, once an automatic choice is resolved
                layer = cams["gradcam"].target_layer
                cams["eigencam"] = EigenCAM(net, layer)
                cams["ablationcam"] = AblationCAM(net, layer, batch_size=ablation_batch_size)
            maps["eigencam"] = cams["eigencam"](images, classes)
            maps["ablationcam"] = cams["ablationcam"](images, classes)
            stats = _batch_stats(net, images, classes, pred, boxes, maps)
            if sums is None:  # one row per model output: predicted classes may exceed num_classes
                sums = torch.zeros(logits.shape[1], stats.shape[1], device=dev)
            sums.index_add_(0, classes, stats)
            if examples_per_class > 0:
                if keeper is None:
                    keeper = _Examples(logits.shape[1], examples_per_class)
                if not keeper.full:
                    keeper.add(images, classes, boxes, maps)
            n_batches += 1
        if sums is None or n_batches == 0:
            raise ValueError("data yielded no batches: pass a non-empty DataLoader (and max_batches >= 1)")
        layer_name = cams["gradcam"].target_layer_name or ""
    examples = keeper.result() if keeper is not None else {}
    return _summarise(sums.cpu(), box_key is not None, label_key is not None, k_out,  # type: ignore[arg-type]
                      layer_name, _class_names(data), examples)


def _batch_stats(net: nn.Module, images: Tensor, classes: Tensor, pred: Tensor, boxes: Tensor | None,
                 maps: dict[str, Tensor]) -> Tensor:
    """``(B, S)`` per-image statistics: count, correct, then (box area, and per method score,
    pointing, energy) with boxes, or the per-method evidence score without."""
    cols: list[Tensor] = [torch.ones_like(pred, dtype=torch.float32), (pred == classes).float()]
    if boxes is not None:
        h, w = images.shape[-2:]
        cols.append((boxes[:, 2] - boxes[:, 0]).clamp(0, w) * (boxes[:, 3] - boxes[:, 1]).clamp(0, h) / (h * w))
        for m in METHODS:
            cols.extend(localisation_score(maps[m], boxes))
    else:
        cols.extend(evidence_score(net, images, maps[m], classes) for m in METHODS)
    return torch.stack(cols, dim=1)


def _summarise(sums: Tensor, has_boxes: bool, has_labels: bool, num_classes: int, layer: str,
               names: tuple[str, ...] | None, examples: dict[str, Any]) -> Diagnosis:
    parts = ("score", "pointing", "energy") if has_boxes else ("score",)
    offset = 3 if has_boxes else 2

    def scores_of(row: Tensor) -> dict[str, dict[str, float]]:
        n = max(float(row[0]), 1.0)
        out = {}
        for j, m in enumerate(METHODS):
            base = offset + j * len(parts)
            out[m] = {p: float(row[base + q]) / n for q, p in enumerate(parts)}
        return out

    total = sums.sum(0)
    n = int(total[0])
    present = [k for k in range(sums.shape[0]) if float(sums[k, 0]) > 0]
    return Diagnosis(
        measure="box" if has_boxes else "evidence",
        scores=scores_of(total),
        class_scores={k: scores_of(sums[k]) for k in present},
        counts={k: int(sums[k, 0]) for k in present},
        accuracy=float(total[1]) / n if has_labels else None,
        class_accuracy={k: float(sums[k, 1] / sums[k, 0]) for k in present} if has_labels else {},
        chance=float(total[2]) / n if has_boxes else None,
        num_images=n,
        num_classes=num_classes,
        target_layer=layer,
        class_names=names,
        examples=examples,
    )


# --------------------------------------------------------------------------------------------- #
# command line: salaug diagnose
# --------------------------------------------------------------------------------------------- #
def demo_model_from_state(state: Mapping[str, Any]) -> nn.Module:
    """Rebuild :class:`salaug.demo.DemoNet` from its state dict (width and classes read from the
    weights' shapes), e.g. the ``"state_dict"`` of a Lightning checkpoint of ``salaug demo``.

    Keys prefixed by a wrapper (``model.``, ``module.``, ``_orig_mod.``, ``net.``) are accepted.

    Returns:
        The model in eval mode, on CPU.

    Raises:
        ValueError: weights that do not fit a DemoNet (the first mismatch is named).
    """
    from salaug.demo import DemoNet

    state = _strip_prefix(dict(state))
    try:
        num_classes = int(state["head.2.weight"].shape[0])
        width = int(state["features.0.weight"].shape[0])
        model = DemoNet(num_classes=num_classes, width=width)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, AttributeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"the weights do not fit salaug.demo.DemoNet ({first}); for another architecture call "
                         "salaug.diagnose(model, loader) from Python") from None
    return model.eval()


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in ("_orig_mod.", "module.", "model.", "net."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def train_demo_model(train_loader: Iterable[Any], *, num_classes: int = 10, epochs: int = 4, lr: float = 3e-3,
                     device: torch.device | str = "cpu", progress: bool = True) -> nn.Module:
    """Train :class:`salaug.demo.DemoNet` briefly with a plain loop (AdamW, one-cycle schedule).

    Returns:
        The model in eval mode.
    """
    from salaug.demo import DemoNet

    model = DemoNet(num_classes=num_classes, epochs=max(epochs, 1)).to(device)
    if epochs == 0:
        return model.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * len(train_loader)  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        total = torch.zeros((), device=device)
        for x, y, *_ in train_loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        if progress:
            mean = float(total) / len(train_loader)  # type: ignore[arg-type]
            print(f"epoch {epoch + 1}/{epochs}: mean loss {mean:.3f}", file=sys.stderr, flush=True)
    return model.eval()


def _torch_device(name: str) -> torch.device:
    """An accelerator name of ``salaug.cli.accelerator`` (already checked available) as a device."""
    if name == "gpu":
        return torch.device("cuda")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    """The ``salaug diagnose`` argument parser: every argument typed and range-checked by argparse."""
    from salaug.cli import accelerator, int_range, nonnegative_int, output_dir, positive_int, seed, weights_file

    parser = argparse.ArgumentParser(
        prog="salaug diagnose",
        description="Check a classifier: do its backbone's features (EigenCAM) and its head's evidence "
                    "(AblationCAM) sit on the object? Runs on the embedded ClutteredObjects data and writes a "
                    "report (picture + Markdown table) into --out.")
    parser.add_argument("--checkpoint", type=weights_file, default=None,
                        help="DemoNet weights: a Lightning checkpoint of salaug demo or a state dict "
                             "(torch.save(model.state_dict(), path)); default: train the demo model briefly")
    parser.add_argument("--epochs", type=nonnegative_int, default=4, help="training epochs without --checkpoint")
    parser.add_argument("--train-size", type=positive_int, default=2000, help="training images without --checkpoint")
    parser.add_argument("--num-images", type=positive_int, default=300, help="test images diagnosed")
    parser.add_argument("--size", type=int_range(16, 512, "ClutteredObjects draws 16 to 512 px images here"),
                        default=64, help="image side in pixels (that of the checkpoint's training)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--examples", type=nonnegative_int, default=3, help="example images per class in the picture")
    parser.add_argument("--device", type=accelerator, default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--out", type=output_dir, default="salaug_diagnosis",
                        help="directory of the report (created if missing)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``salaug diagnose``: check the demo model (or ``--checkpoint``) on the embedded data.

    Prints the table and the verdict, and writes ``report.png`` / ``report.md`` into ``--out``
    (nothing else is written).

    Returns:
        0 on success; a bad argument exits with argparse's one-line error and code 2, before any work.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    device = _torch_device(args.device)
    from torch.utils.data import DataLoader

    from salaug.datasets import CLASS_NAMES, ClutteredObjects

    torch.manual_seed(args.seed)
    if args.checkpoint is not None:
        try:
            model = demo_model_from_state(args.checkpoint.state)
        except ValueError as exc:
            parser.error(f"argument --checkpoint: {args.checkpoint.path!r}: {exc}")
        num_classes = model.head[2].out_features
        if not 2 <= num_classes <= len(CLASS_NAMES):
            parser.error(f"argument --checkpoint: the model has {num_classes} outputs, but the embedded data has 2 "
                         f"to {len(CLASS_NAMES)} classes")
        model = model.to(device)
    else:
        num_classes = 10
        train = ClutteredObjects("train", size=args.size, length=args.train_size, seed=args.seed, cache=True)
        model = train_demo_model(DataLoader(train, batch_size=args.batch_size, shuffle=True), num_classes=num_classes,
                                 epochs=args.epochs, device=device, progress=not args.no_progress)
    test = ClutteredObjects("test", size=args.size, length=args.num_images, num_classes=num_classes, seed=args.seed,
                            cache=True)
    result = diagnose(model, DataLoader(test, batch_size=args.batch_size), "features", box_key=2,
                      examples_per_class=args.examples)
    print(result)
    paths = result.save(args.out, examples=args.examples)
    print("\nreport: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
