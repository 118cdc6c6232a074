"""The engine of :func:`salaug.diagnose`: batches in, a :class:`~salaug.diagnosis.Diagnosis` out."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._batch import get_field
from salaug._checks import check_class_indices, check_flag, check_images, check_int
from salaug.cam.base import BaseCAM, check_logits, eval_mode, model_device, model_on
from salaug.cam.hooks import Hooks
from salaug.diagnosis.measure import CAM_ROLES, PARTS, check_cams, score_maps
from salaug.diagnosis.references import random_reference
from salaug.diagnosis.reliance import VARIANTS, reliance_images
from salaug.diagnosis.report import Diagnosis
from salaug.diagnosis.thresholds import Thresholds
from salaug.metrics import box_share

__all__ = ["Budget", "diagnose"]


def diagnose(
    model: nn.Module,
    data: Iterable[Any],
    target_layer: str | nn.Module | None = None,
    *,
    num_classes: int | None = None,
    image_key: int | str = 0,
    label_key: int | str | None = 1,
    box_key: int | str | None = None,
    mask_key: int | str | None = None,
    budget: Budget | None = None,
    thresholds: Thresholds | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    **deprecated: Any,
) -> Diagnosis:
    """Check a trained classifier: do its backbone's features (EigenCAM) and its head's evidence
    (AblationCAM) sit on the object, beyond chance and beyond the same network at random
    initialisation, and does its decision depend on the background?

    Three steps: a set-up on the first batch (the CAMs, the target layer's resolution, the
    references), one measurement per batch (:func:`_measure`), a summary of the totals. Per batch:
    GradCAM (for reference), EigenCAM and AblationCAM maps of the model and of its
    random-initialisation references (:func:`salaug.diagnosis.random_reference`,
    ``budget.references`` draws built once on the first batch), their localisation scores, and,
    with labels and boxes, the reliance test (:mod:`salaug.diagnosis.reliance`; each image's
    outcome under each version is kept for the interval of
    :attr:`~salaug.diagnosis.Diagnosis.background_share`). The reference score of each method is
    the **highest** over the draws: one random draw's score varies a lot from draw to draw (the
    evidence pages give the spread), and a random backbone must not
    pass for a trained one because it drew better than a single reference. The verdict rules are in
    :mod:`salaug.diagnosis.report`.

    Side-effect free like every CAM call: module modes, BatchNorm statistics, parameter ``.grad``,
    hooks and the global random state are as before (each reference is a deep copy, so it costs
    the model's memory once more); with a ``device`` other than the model's, a copy runs there.

    Args:
        model: a classifier returning ``(B, K)`` logits, ``K >= 2`` (an ``nn.Module`` or LightningModule).
        data: a ``DataLoader`` or any iterable of batches (tuples / lists / dicts) holding images
            ``(B, C, H, W)``, labels ``(B,)`` and optionally true boxes ``(B, 4)`` xyxy pixels and
            object masks ``(B, 1, H, W)``.
        target_layer: the CAM layer (dotted name or module); ``None``: the last spatial layer.
        num_classes: classes of the per-class table; ``None``: the model's output width ``K``.
        image_key: position or key of the images in a batch.
        label_key: position or key of the labels; ``None`` explains (and groups by) the predicted
            class (no reliance test then).
        box_key: position or key of the true boxes; ``None`` uses the box-free evidence score (no
            reliance test then). Boxes may reach past the border (their in-image part counts) but
            must be non-empty and overlap the image.
        mask_key: position or key of bool object masks for the reliance test (``None``: boxes).
        budget: what the check spends (:class:`Budget`: random-initialisation references, batches,
            AblationCAM chunk, example images, whether to run the reliance test); ``None``:
            ``Budget()``.
        thresholds: what the verdict compares against (:class:`~salaug.diagnosis.Thresholds`);
            ``None``: the library's. Kept on the result: ``dataclasses.replace(d, thresholds=...)``
            re-judges without measuring again.
        device: where to compute (``None``: the model's device).
        seed: seed of the references' weights (draw ``j`` uses ``seed + j``), of the reliance
            test's pairings and of its bootstrap interval.
        **deprecated: ``max_batches``, ``examples_per_class``, ``ablation_batch_size``,
            ``references`` and ``reliance``, the fields of :class:`Budget` (a
            ``DeprecationWarning``; removed in 0.5.0).

    Batches may differ in image size (e.g. ``batch_size=1`` over full-size images): every image
    is measured at its own size, and the report's example images are resized to the first
    batch's size.

    Returns:
        A :class:`~salaug.diagnosis.Diagnosis`.

    Raises:
        TypeError: ``model`` is not a module, ``data`` does not yield batches, the model does not
            return ``(B, K)`` logits.
        KeyError / IndexError: a batch without the entry an ``*_key`` names (the message names
            the argument to fix).
        ValueError: bad arguments, empty data, labels out of range, empty / inverted boxes or boxes
            wholly outside the image, masks of the wrong shape, a model with one output, NaN / inf
            logits (each naming the samples and the fix).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    budget = _budget(budget, deprecated)
    if thresholds is None:
        thresholds = Thresholds()
    elif not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds must be a salaug.diagnosis.Thresholds, got {type(thresholds).__name__}")
    _check_data(data)
    opts = _Options(
        num_classes=check_int("num_classes", num_classes, low=2, optional=True),
        keys=(image_key, label_key, box_key, mask_key),
        max_batches=budget.max_batches,
        examples_per_class=budget.examples_per_class,
        ablation_batch_size=budget.ablation_batch_size,
        references=budget.references,
        seed=check_int("seed", seed, low=0),
        reliance=budget.reliance and box_key is not None and label_key is not None,
        thresholds=thresholds,
    )
    here = model_device(model) or torch.device("cpu")
    net = model_on(model, None if device is None else torch.device(device))  # a copy when moved
    dev = here if device is None else torch.device(device)
    setup: _Setup | None = None
    totals: _Totals | None = None
    for i, batch in enumerate(data):
        if opts.max_batches is not None and i >= opts.max_batches:
            break
        images, labels, boxes, masks = _batch_fields(batch, opts, dev)
        if setup is None:
            setup = _set_up(net, target_layer, images, opts)
        result = _measure(setup, images, labels, boxes, masks)
        if totals is None:
            totals = _Totals(result, opts.examples_per_class)
        totals.add(result, images, boxes)
    if setup is None or totals is None:
        raise ValueError("data yielded no batches: pass a non-empty DataLoader (and max_batches >= 1)")
    return _summarise(setup, totals, _class_names(data))


@dataclass
class _Options:
    num_classes: int | None
    keys: tuple[int | str, int | str | None, int | str | None, int | str | None]  # image, label, box, mask
    max_batches: int | None
    examples_per_class: int
    ablation_batch_size: int
    references: int
    seed: int
    reliance: bool
    thresholds: Thresholds


@dataclass(frozen=True)
class Budget:
    """What :func:`diagnose` spends, in one record.

    Attributes:
        references: random-initialisation draws measured (0: none; each costs about one more
            diagnosis of the model).
        max_batches: diagnose at most this many batches (``None``: all).
        ablation_batch_size: ablated head forwards per chunk of AblationCAM.
        examples_per_class: images per class kept for the report picture (0: none).
        reliance: run the reliance test (it needs labels and boxes).

    Raises:
        TypeError / ValueError: a field of the wrong type or out of range (the message names it).

    Example:
        >>> Budget(references=1, examples_per_class=0).references
        1
    """

    references: int = 3
    max_batches: int | None = None
    ablation_batch_size: int = 256
    examples_per_class: int = 4
    reliance: bool = True

    def __post_init__(self) -> None:
        check_int("Budget.references", self.references, low=0)
        check_int("Budget.max_batches", self.max_batches, low=1, optional=True)
        check_int("Budget.ablation_batch_size", self.ablation_batch_size, low=1)
        check_int("Budget.examples_per_class", self.examples_per_class, low=0)
        check_flag("Budget.reliance", self.reliance)


def _budget(budget: Budget | None, deprecated: dict[str, Any]) -> Budget:
    """``budget`` with the deprecated keyword arguments of :func:`diagnose` folded in (warned about)."""
    if budget is not None and not isinstance(budget, Budget):
        raise TypeError(f"budget must be a salaug.diagnosis.Budget, got {type(budget).__name__}")
    unknown = sorted(set(deprecated) - {f.name for f in fields(Budget)})
    if unknown:
        raise TypeError(f"diagnose() got an unexpected keyword argument {unknown[0]!r}")
    budget = budget or Budget()
    if deprecated:
        names = ", ".join(f"{k}={v!r}" for k, v in deprecated.items())
        warnings.warn(f"diagnose({', '.join(f'{k}=' for k in deprecated)}...) is deprecated and will be removed in "
                      f"0.5.0: pass budget=salaug.diagnosis.Budget({names})", DeprecationWarning, stacklevel=3)
        budget = replace(budget, **deprecated)
    return budget


@dataclass
class _Setup:
    """What the first batch fixes: the CAMs of the model and of its references, the layer's resolution."""

    net: nn.Module
    opts: _Options
    cams: dict[str, BaseCAM]
    refs: list[tuple[nn.Module, dict[str, BaseCAM]]]
    kept: int
    cell: float | None
    cells: list[tuple[str, float]]
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def layer_name(self) -> str:
        return self.cams["gradcam"].target_layer_name or ""


def _set_up(net: nn.Module, target_layer: str | nn.Module | None, images: Tensor, opts: _Options) -> _Setup:
    """The CAMs on the target layer (an automatic choice resolved on ``images``), the references."""
    probe = check_cams(net, target_layer, methods=("gradcam",))["gradcam"]
    with eval_mode(net):  # an automatic choice probes one forward: BatchNorm statistics stay as they are
        layer = probe._resolve_layer(images) if probe.target_layer is None else probe.target_layer
    cams = check_cams(net, layer, ablation_batch_size=opts.ablation_batch_size)
    cell, cells = _cells(cams["gradcam"].model, layer, images[:1])
    name = cams["gradcam"].target_layer_name
    refs, kept = [], 0
    for j in range(opts.references):
        ref, kept = random_reference(net, images, seed=opts.seed + j)
        refs.append((ref, check_cams(ref, name, ablation_batch_size=opts.ablation_batch_size)))
    return _Setup(net, opts, cams, refs, kept, cell, cells, torch.Generator().manual_seed(opts.seed))


@dataclass
class _Batch:
    """One batch's measurement: per image its class, and per model (the model, then each reference)
    its correctness and map scores; per variant of the reliance test the hits and predictions."""

    classes: Tensor  # (B,) true class, or the predicted one without labels
    width: int  # the model's output width K
    correct: Tensor  # (R + 1, B): the model, then each reference
    scores: Tensor  # (R + 1, M, P, B): per model, method and score part
    share: Tensor | None  # (B,) the box's share of the image
    side: Tensor | None  # (B,) the box's side
    hits: Tensor | None  # (V, B) reliance-test hits per variant
    predicted: Tensor | None  # (V, B) reliance-test predicted class per variant
    maps: dict[str, Tensor]  # the model's maps, for the report's examples
    labelled: bool


def _measure(setup: _Setup, images: Tensor, labels: Tensor | None, boxes: Tensor | None,
             masks: Tensor | None) -> _Batch:
    """One batch: the model's maps and scores, each reference's, the reliance test."""
    net, opts = setup.net, setup.opts
    with eval_mode(net), torch.no_grad():
        logits = net(images)
    width = _logit_width(logits, images.shape[0], opts.num_classes)
    pred = logits.argmax(dim=1)
    classes = pred if labels is None else labels
    if labels is not None:
        k = opts.num_classes or width
        check_class_indices(labels, k, "labels", f"num_classes={k}")
    maps = {m: cam(images, classes) for m, cam in setup.cams.items()}
    correct, scores = [pred == classes], [_stack(score_maps(maps, boxes, model=net, images=images, targets=classes))]
    for ref, ref_cams in setup.refs:
        with torch.no_grad():
            correct.append(ref(images).argmax(1) == classes)
        ref_maps = {m: cam(images, classes) for m, cam in ref_cams.items()}
        scores.append(_stack(score_maps(ref_maps, boxes, model=ref, images=images, targets=classes)))
    hits = predicted = share = side = None
    if boxes is not None:
        share = box_share(boxes, (images.shape[-2], images.shape[-1]))
        side = (boxes[:, 2] - boxes[:, 0]).clamp(min=0).mul((boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    if opts.reliance:
        assert boxes is not None and labels is not None
        variants = reliance_images(images, labels, boxes, masks, setup.generator)
        with eval_mode(net), torch.no_grad():  # the originals' predictions are known: forward the others only
            others = net(variants[1:].flatten(0, 1)).argmax(1).view(len(VARIANTS) - 1, -1)
        predicted = torch.cat([pred.unsqueeze(0), others])
        hits = predicted == labels
    return _Batch(classes, width, torch.stack(correct).float(), torch.stack(scores), share, side,
                  None if hits is None else hits.float(), predicted, maps, labels is not None)


def _stack(scores: dict[str, Tensor]) -> Tensor:
    """method -> (B, P) as one (M, P, B) tensor in :data:`CAM_ROLES` order."""
    return torch.stack([scores[m].T for m in CAM_ROLES])


class _Totals:
    """Per-class sums over the batches (one row per model output: predicted classes may exceed
    ``num_classes``), the reliance test's prediction counts and the report's examples."""

    def __init__(self, first: _Batch, examples_per_class: int) -> None:
        k, dev = first.width, first.classes.device
        self.width, self.labelled = k, first.labelled
        self.count = torch.zeros(k, device=dev)
        self.correct = torch.zeros(first.correct.shape[0], k, device=dev)
        self.scores = torch.zeros(*first.scores.shape[:3], k, device=dev)
        self.share = None if first.share is None else torch.zeros(k, device=dev)
        self.side = None if first.side is None else torch.zeros(k, device=dev)
        self.hits = None if first.hits is None else torch.zeros(first.hits.shape[0], k, device=dev)
        self.predicted = None if first.predicted is None else torch.zeros(first.predicted.shape[0], k, device=dev)
        self.examples = _Examples(k, examples_per_class) if examples_per_class > 0 else None
        self.image_hits: list[Tensor] = []  # per batch (V, B) bool: each image's hit per variant

    def add(self, b: _Batch, images: Tensor, boxes: Tensor | None) -> None:
        cls = b.classes
        self.count.index_add_(0, cls, torch.ones_like(cls, dtype=self.count.dtype))
        self.correct.index_add_(1, cls, b.correct)
        self.scores.index_add_(3, cls, b.scores)
        for total, value in ((self.share, b.share), (self.side, b.side)):
            if total is not None and value is not None:
                total.index_add_(0, cls, value)
        if self.hits is not None and b.hits is not None and self.predicted is not None and b.predicted is not None:
            self.hits.index_add_(1, cls, b.hits)
            self.image_hits.append(b.hits.bool())
            self.predicted.scatter_add_(1, b.predicted, torch.ones_like(b.predicted, dtype=self.predicted.dtype))
        if self.examples is not None and not self.examples.full:
            self.examples.add(images, cls, boxes, b.maps)


def _summarise(setup: _Setup, t: _Totals, class_names: tuple[str, ...] | None) -> Diagnosis:
    """The totals as a :class:`Diagnosis` (host values: one transfer)."""
    count = t.count.cpu()
    n = count.sum()
    present = [k for k in range(t.width) if count[k] > 0]
    per = count.clamp_min(1)
    has_boxes = t.share is not None
    parts = PARTS if has_boxes else PARTS[:1]
    scores = t.scores.cpu()  # (R + 1, M, P, K)

    def scores_of(j: int, k: int | None) -> dict[str, dict[str, float]]:
        s = scores[j].sum(-1) / n if k is None else scores[j, :, :, k] / per[k]
        return {m: {p: float(s[i, q]) for q, p in enumerate(parts)} for i, m in enumerate(CAM_ROLES)}

    draws = len(setup.refs)

    def highest(k: int | None) -> dict[str, dict[str, float]]:  # per method, the draw scoring highest
        each = [scores_of(j + 1, k) for j in range(draws)]
        return {m: max((e[m] for e in each), key=lambda v: v["score"]) for m in CAM_ROLES}

    correct = t.correct.cpu()
    share = None if t.share is None else t.share.cpu()
    side = None if t.side is None else float(t.side.sum().cpu() / n)
    finer = None
    if setup.cell is not None and side is not None and setup.cell >= side:
        fine = [name for name, c in setup.cells if c <= side / 2]
        finer = fine[-1] if fine else None
    reliance = class_reliance = entropy = None
    if t.hits is not None and t.predicted is not None:
        hits = t.hits.cpu()
        reliance = {v: float(hits[i].sum() / n) for i, v in enumerate(VARIANTS)}
        class_reliance = {k: {v: float(hits[i, k] / per[k]) for i, v in enumerate(VARIANTS)} for k in present}
        entropy = dict(zip(VARIANTS, _entropy_bits(t.predicted.cpu()), strict=True))
    return Diagnosis(
        measure="box" if has_boxes else "evidence",
        scores=scores_of(0, None),
        class_scores={k: scores_of(0, k) for k in present},
        counts={k: int(count[k]) for k in present},
        accuracy=float(correct[0].sum() / n) if t.labelled else None,
        class_accuracy={k: float(correct[0, k] / per[k]) for k in present} if t.labelled else {},
        chance=None if share is None else float(share.sum() / n),
        num_images=int(n),
        num_classes=setup.opts.num_classes or t.width,
        target_layer=setup.layer_name,
        class_names=class_names,
        examples=t.examples.result() if t.examples is not None else {},
        random_scores=highest(None) if draws else None,
        random_class_scores={k: highest(k) for k in present} if draws else {},
        random_accuracy=float(correct[1:].sum() / n / draws) if draws and t.labelled else None,
        random_draws=[{m: v["score"] for m, v in scores_of(j + 1, None).items()} for j in range(draws)],
        class_chance={} if share is None else {k: float(share[k] / per[k]) for k in present},
        reliance=reliance,
        class_reliance=class_reliance or {},
        reliance_entropy=entropy or {},
        reliance_hits=torch.cat(t.image_hits, 1).cpu() if t.image_hits else None,
        label_chance=float(count.max() / n) if t.labelled else None,
        cell=setup.cell,
        box_side=side,
        finer_layer=finer,
        kept_parameters=setup.kept,
        thresholds=setup.opts.thresholds,
        seed=setup.opts.seed,
    )


def _entropy_bits(counts: Tensor) -> list[float]:
    """Entropy in bits of each row's distribution ``(V, K)`` counts -> ``V`` floats."""
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    return (-(p * p.clamp_min(1e-12).log2()).sum(1)).clamp_min(0).tolist()


def _cells(model: nn.Module, layer: nn.Module, image: Tensor) -> tuple[float | None, list[tuple[str, float]]]:
    """Pixels per feature cell of the target layer, and of every module with a spatial output, in
    execution order (one no-grad forward of one image)."""
    side = float(max(image.shape[-2:]))
    records: list[tuple[nn.Module, Tensor]] = []
    with Hooks() as hooks, eval_mode(model), torch.no_grad():
        hooks.on_spatial_outputs(model, records)
        model(image)
    names = {id(m): n for n, m in model.named_modules()}
    seen = [(names[id(m)], side / float(max(out.shape[-2:]))) for m, out in records if out.shape[-1] > 0]
    target = [side / float(max(out.shape[-2:])) for m, out in records if m is layer and out.shape[-1] > 0]
    return (target[0] if target else None), seen


# --------------------------------------------------------------------------------------------- #
# batch entries and their checks
# --------------------------------------------------------------------------------------------- #
def _batch_fields(batch: Any, opts: _Options, device: torch.device) -> tuple[Tensor, Tensor | None, Tensor | None,
                                                                              Tensor | None]:
    """Images, labels, boxes and masks of one batch, checked, on ``device``."""
    image_key, label_key, box_key, mask_key = opts.keys
    images = check_images(get_field(batch, image_key, "images", "image_key", kind="batch"), finite=True).to(device)
    b, _, h, w = images.shape
    labels = None if label_key is None else _labels_of(
        get_field(batch, label_key, "labels", "label_key", kind="batch"), b, device)
    boxes = None if box_key is None else _boxes_of(
        get_field(batch, box_key, "boxes", "box_key", kind="batch"), b, (h, w), device)
    masks = None if mask_key is None else _masks_of(
        get_field(batch, mask_key, "masks", "mask_key", kind="batch"), b, (h, w), device)
    return images, labels, boxes, masks


def _logit_width(logits: Any, batch: int, num_classes: int | None) -> int:
    """The model's output width ``K``, after the checks that the maps and accuracies need."""
    logits = check_logits(logits, batch)
    if logits.shape[1] < 2:
        raise ValueError("the model has one output: class maps and accuracies need K >= 2 logits; for a binary "
                         "classifier with one logit z wrap it to return torch.cat([-z, z], dim=1)")
    bad = ~torch.isfinite(logits).all(1)
    if bool(bad.any()):
        raise ValueError(f"the model returns NaN or inf logits for samples {_samples(bad)}; its scores and verdict "
                         "would be meaningless: check the model's weights and the input normalisation")
    if num_classes is not None and num_classes > logits.shape[1]:
        raise ValueError(f"num_classes={num_classes} but the model has only {logits.shape[1]} outputs")
    return int(logits.shape[1])


def _samples(bad: Tensor) -> str:
    idx = bad.nonzero().flatten().tolist()
    return f"{idx[:8]}{'...' if len(idx) > 8 else ''}"


def _labels_of(value: Any, batch: int, device: torch.device) -> Tensor:
    labels = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if labels.ndim == 2 and labels.is_floating_point():
        labels = labels.argmax(dim=1)  # one-hot / soft labels: their top class
    if labels.ndim != 1 or labels.shape[0] != batch or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be (B,) = ({batch},) integer class indices (or (B, K) one-hot), got "
                         f"{tuple(labels.shape)} {labels.dtype}; pass label_key= for the right entry, or "
                         "label_key=None to explain the predicted classes")
    return labels.to(device=device, dtype=torch.long)


def _boxes_of(value: Any, batch: int, size: tuple[int, int], device: torch.device) -> Tensor:
    boxes = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if boxes.shape != (batch, 4) or boxes.dtype == torch.bool or boxes.is_complex():
        raise ValueError(f"boxes must be ({batch}, 4) xyxy pixels (one true box per image), got {tuple(boxes.shape)} "
                         f"{boxes.dtype}; pass box_key= for the right entry, or box_key=None for the box-free measure")
    b = boxes.to(device=device, dtype=torch.float32)
    h, w = size
    bad = ~torch.isfinite(b).all(1)
    if bool(bad.any()):
        raise ValueError(f"boxes of samples {_samples(bad)} hold NaN or inf; give finite xyxy pixel boxes")
    bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bool(bad.any()):
        raise ValueError(f"boxes of samples {_samples(bad)} are empty or inverted (x2 <= x1 or y2 <= y1); boxes must "
                         "be (x1, y1, x2, y2) with x1 < x2 and y1 < y2 (convert xywh boxes with "
                         "torchvision.ops.box_convert)")
    bad = (b[:, 0] >= w) | (b[:, 1] >= h) | (b[:, 2] <= 0) | (b[:, 3] <= 0)
    if bool(bad.any()):
        raise ValueError(f"boxes of samples {_samples(bad)} lie wholly outside the {h}x{w} images; boxes must be in "
                         "pixels of these images (rescale normalised or original-size boxes)")
    return b


def _masks_of(value: Any, batch: int, size: tuple[int, int], device: torch.device) -> Tensor:
    masks = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.shape != (batch, 1, *size):
        raise ValueError(f"masks must be ({batch}, 1, {size[0]}, {size[1]}) object masks (one per image), got "
                         f"{tuple(value.shape)}; pass mask_key= for the right entry, or mask_key=None to use the boxes")
    if masks.is_floating_point():
        masks = masks > 0.5
    return masks.to(device=device, dtype=torch.bool)


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
    until every class is full; the picture is not a hot path). Images of another size than the
    first batch's are resized to it (bilinear; their maps too, their boxes scaled)."""

    def __init__(self, num_classes: int, per_class: int) -> None:
        self.need = torch.full((num_classes,), per_class, dtype=torch.long)
        self.parts: list[dict[str, Tensor | None]] = []
        self.size: tuple[int, int] | None = None

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
        h, w = images.shape[-2:]
        self.size = self.size or (h, w)
        part: dict[str, Tensor | None] = {"images": self._fit(images.index_select(0, idx).detach().float().cpu()),
                                          "labels": cls[keep], "boxes": None}
        if boxes is not None:
            scale = torch.tensor([self.size[1] / w, self.size[0] / h] * 2)
            part["boxes"] = boxes.index_select(0, idx).float().cpu() * scale
        part.update({m: self._fit(v.index_select(0, idx).cpu()) for m, v in maps.items()})
        self.parts.append(part)

    def _fit(self, x: Tensor) -> Tensor:
        assert self.size is not None
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def result(self) -> dict[str, Any]:
        if not self.parts:
            return {}
        order = torch.cat([p["labels"] for p in self.parts]).argsort(stable=True)  # type: ignore[misc]
        out: dict[str, Any] = {}
        for key in self.parts[0]:
            vals = [p[key] for p in self.parts]
            out[key] = None if vals[0] is None else torch.cat(vals)[order]  # type: ignore[arg-type]
        return out
