"""The engine of :func:`salaug.diagnose`: batches in, a :class:`~salaug.diagnosis.Diagnosis` out."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._checks import check_class_indices, check_flag, check_images, check_number
from salaug.cam import AblationCAM, EigenCAM, GradCAM
from salaug.cam.base import eval_mode
from salaug.diagnosis.references import random_reference
from salaug.diagnosis.reliance import VARIANTS, reliance_images
from salaug.diagnosis.report import METHODS, Diagnosis
from salaug.diagnosis.scores import evidence_score
from salaug.metrics import box_share, localisation_score

__all__ = ["diagnose"]

_PARTS = ("score", "pointing", "energy")


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
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    examples_per_class: int = 4,
    ablation_batch_size: int = 256,
    references: int = 3,
    reliance: bool = True,
    seed: int = 0,
) -> Diagnosis:
    """Check a trained classifier: do its backbone's features (EigenCAM) and its head's evidence
    (AblationCAM) sit on the object, beyond chance and beyond the same network at random
    initialisation, and does its decision depend on the background?

    Per batch: GradCAM (for reference), EigenCAM and AblationCAM maps of the model and of its
    random-initialisation references (:func:`salaug.diagnosis.random_reference`, ``references``
    draws built once on the first batch), their localisation scores, and, with labels and boxes,
    the reliance test (:mod:`salaug.diagnosis.reliance`). The reference score of each method is
    the **highest** over the draws: one random draw's score varies a lot from draw to draw (EigenCAM
    0.17 to 0.38 over six draws of one network on TexturedBlobs), and a random backbone must not
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
        max_batches: diagnose at most this many batches (``None``: all).
        device: where to compute (``None``: the model's device).
        examples_per_class: images per class kept for the report picture (0: none).
        ablation_batch_size: ablated head forwards per chunk of AblationCAM.
        references: random-initialisation draws measured (0: none; each costs about one more
            diagnosis of the model).
        reliance: run the reliance test (needs labels and boxes).
        seed: seed of the references' weights (draw ``j`` uses ``seed + j``) and of the reliance
            test's pairings.

    Returns:
        A :class:`~salaug.diagnosis.Diagnosis`.

    Raises:
        TypeError: ``model`` is not a module, ``data`` does not yield batches, the model does not
            return ``(B, K)`` logits.
        ValueError: bad arguments, empty data, batches without the named entries, labels out of
            range, empty / inverted boxes or boxes wholly outside the image, masks of the wrong
            shape, a model with one output, NaN / inf logits (each naming the samples and the fix).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_data(data)
    max_batches = check_number("max_batches", max_batches, integer=True, low=1, optional=True)  # type: ignore[assignment]
    num_classes = check_number("num_classes", num_classes, integer=True, low=2, optional=True)  # type: ignore[assignment]
    examples_per_class = check_number("examples_per_class", examples_per_class, integer=True, low=0)  # type: ignore[assignment]
    ablation_batch_size = check_number("ablation_batch_size", ablation_batch_size, integer=True, low=1)  # type: ignore[assignment]
    seed = check_number("seed", seed, integer=True, low=0)  # type: ignore[assignment]
    references = check_number("references", references, integer=True, low=0)  # type: ignore[assignment]
    reliance = check_flag("reliance", reliance)
    run_reliance = reliance and box_key is not None and label_key is not None
    with _on_device(model, device) as (net, dev):
        cams: dict[str, Any] = {"gradcam": GradCAM(net, target_layer)}
        refs: list[tuple[nn.Module, dict[str, Any]]] = []
        kept = 0
        gen = torch.Generator().manual_seed(seed)
        names: list[str] = []
        sums: Tensor | None = None
        keeper: _Examples | None = None
        k_out = num_classes
        n_batches = 0
        cell: float | None = None
        cells: list[tuple[str, float]] = []
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            images = check_images(_get(batch, image_key, "images", "image_key"), finite=True).to(dev)
            b, _, h, w = images.shape
            labels = None if label_key is None else _labels_of(_get(batch, label_key, "labels", "label_key"), b, dev)
            boxes = None if box_key is None else _boxes_of(_get(batch, box_key, "boxes", "box_key"), b, (h, w), dev)
            masks = None if mask_key is None else _masks_of(_get(batch, mask_key, "masks", "mask_key"), b, (h, w), dev)
            with eval_mode(net), torch.no_grad():
                logits = net(images)
            k_all = _check_logits(logits, b)
            if k_out is None:
                k_out = k_all
            elif k_out > k_all:
                raise ValueError(f"num_classes={k_out} but the model has only {k_all} outputs")
            pred = logits.argmax(dim=1)
            classes = pred if labels is None else labels
            if labels is not None:
                check_class_indices(labels, k_out, "labels", f"num_classes={k_out}")
            maps = {"gradcam": cams["gradcam"](images, classes)}
            if len(cams) == 1:  # the same layer for all three, once an automatic choice is resolved
                layer = cams["gradcam"].target_layer
                cams["eigencam"] = EigenCAM(net, layer)
                cams["ablationcam"] = AblationCAM(net, layer, batch_size=ablation_batch_size)
                cell, cells = _cells(cams["gradcam"].model, layer, images[:1])
                name = cams["gradcam"].target_layer_name
                for j in range(references):
                    ref, kept = random_reference(net, images, seed=seed + j)
                    refs.append((ref, {"gradcam": GradCAM(ref, name), "eigencam": EigenCAM(ref, name),
                                       "ablationcam": AblationCAM(ref, name, batch_size=ablation_batch_size)}))
            maps["eigencam"] = cams["eigencam"](images, classes)
            maps["ablationcam"] = cams["ablationcam"](images, classes)
            cols: dict[str, Tensor] = {"count": torch.ones(b, device=dev), "correct": (pred == classes).float()}
            if boxes is not None:
                cols["share"] = box_share(boxes, (h, w))
                cols["side"] = (boxes[:, 2] - boxes[:, 0]).clamp(min=0).mul(
                    (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
            cols.update(_map_stats("", net, images, classes, boxes, maps))
            for j, (ref, ref_cams) in enumerate(refs):
                with torch.no_grad():
                    ref_logits = ref(images)
                cols[f"ref{j}_correct"] = (ref_logits.argmax(1) == classes).float()
                ref_maps = {m: cam(images, classes) for m, cam in ref_cams.items()}
                cols.update(_map_stats(f"ref{j}_", ref, images, classes, boxes, ref_maps))
            if run_reliance:
                assert boxes is not None and labels is not None
                variants = reliance_images(images, labels, boxes, masks, gen)
                with eval_mode(net), torch.no_grad():
                    out = net(variants.flatten(0, 1))
                hits = (out.argmax(1).view(len(VARIANTS), b) == labels).float()
                cols.update({f"rel_{v}": hits[j] for j, v in enumerate(VARIANTS)})
            stats = torch.stack(list(cols.values()), dim=1)
            if sums is None:  # one row per model output: predicted classes may exceed num_classes
                names = list(cols)
                sums = torch.zeros(k_all, stats.shape[1], device=dev)
            sums.index_add_(0, classes, stats)
            if examples_per_class > 0:
                if keeper is None:
                    keeper = _Examples(k_all, examples_per_class)
                if not keeper.full:
                    keeper.add(images, classes, boxes, maps)
            n_batches += 1
        if sums is None or n_batches == 0:
            raise ValueError("data yielded no batches: pass a non-empty DataLoader (and max_batches >= 1)")
        layer_name = cams["gradcam"].target_layer_name or ""
    examples = keeper.result() if keeper is not None else {}
    return _summarise(sums.cpu(), names, box_key is not None, label_key is not None, k_out,  # type: ignore[arg-type]
                      layer_name, _class_names(data), examples, cell, cells, kept, len(refs))


def _map_stats(prefix: str, net: nn.Module, images: Tensor, classes: Tensor, boxes: Tensor | None,
               maps: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-image score columns of the three maps: score, pointing, energy (boxes) or evidence."""
    out: dict[str, Tensor] = {}
    for m in METHODS:
        if boxes is not None:
            for part, value in zip(_PARTS, localisation_score(maps[m], boxes)):
                out[f"{prefix}{m}.{part}"] = value
        else:
            out[f"{prefix}{m}.score"] = evidence_score(net, images, maps[m], classes)
    return out


def _cells(model: nn.Module, layer: nn.Module, image: Tensor) -> tuple[float | None, list[tuple[str, float]]]:
    """Pixels per feature cell of the target layer, and of every module with a spatial output, in
    execution order (one no-grad forward of one image)."""
    side = float(max(image.shape[-2:]))
    seen: list[tuple[str, float]] = []
    target: list[float] = []
    handles = []

    def hook(name: str, module: nn.Module):
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.ndim == 4 and out.shape[-1] > 0:
                c = side / float(max(out.shape[-2:]))
                seen.append((name, c))
                if module is layer:
                    target.append(c)
        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name, module)))
    try:
        with eval_mode(model), torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return (target[0] if target else None), seen


def _summarise(sums: Tensor, names: list[str], has_boxes: bool, has_labels: bool, num_classes: int, layer: str,
               class_names: tuple[str, ...] | None, examples: dict[str, Any], cell: float | None,
               cells: list[tuple[str, float]], kept: int, draws: int) -> Diagnosis:
    col = {n: j for j, n in enumerate(names)}
    parts = _PARTS if has_boxes else ("score",)

    def scores_of(row: Tensor, prefix: str = "") -> dict[str, dict[str, float]]:
        n = max(float(row[col["count"]]), 1.0)
        return {m: {p: float(row[col[f"{prefix}{m}.{p}"]]) / n for p in parts} for m in METHODS}

    def mean(row: Tensor, name: str) -> float:
        return float(row[col[name]]) / max(float(row[col["count"]]), 1.0)

    total = sums.sum(0)
    n = int(total[col["count"]])
    present = [k for k in range(sums.shape[0]) if float(sums[k, col["count"]]) > 0]
    has_ref = draws > 0

    def highest(row: Tensor) -> dict[str, dict[str, float]]:  # per method, the draw scoring highest
        each = [scores_of(row, f"ref{j}_") for j in range(draws)]
        return {m: max((e[m] for e in each), key=lambda v: v["score"]) for m in METHODS}

    has_rel = "rel_original" in col
    box_side = mean(total, "side") if has_boxes else None
    finer = None
    if cell is not None and box_side is not None and cell >= box_side:
        fine = [name for name, c in cells if c <= box_side / 2]
        finer = fine[-1] if fine else None
    return Diagnosis(
        measure="box" if has_boxes else "evidence",
        scores=scores_of(total),
        class_scores={k: scores_of(sums[k]) for k in present},
        counts={k: int(sums[k, col["count"]]) for k in present},
        accuracy=mean(total, "correct") if has_labels else None,
        class_accuracy={k: mean(sums[k], "correct") for k in present} if has_labels else {},
        chance=mean(total, "share") if has_boxes else None,
        num_images=n,
        num_classes=num_classes,
        target_layer=layer,
        class_names=class_names,
        examples=examples,
        random_scores=highest(total) if has_ref else None,
        random_class_scores={k: highest(sums[k]) for k in present} if has_ref else {},
        random_accuracy=sum(mean(total, f"ref{j}_correct") for j in range(draws)) / draws
        if has_ref and has_labels else None,
        random_draws=[{m: v["score"] for m, v in scores_of(total, f"ref{j}_").items()} for j in range(draws)],
        class_chance={k: mean(sums[k], "share") for k in present} if has_boxes else {},
        reliance={v: mean(total, f"rel_{v}") for v in VARIANTS} if has_rel else None,
        class_reliance={k: {v: mean(sums[k], f"rel_{v}") for v in VARIANTS} for k in present} if has_rel else {},
        cell=cell,
        box_side=box_side,
        finer_layer=finer,
        kept_parameters=kept,
    )


# --------------------------------------------------------------------------------------------- #
# batch entries and their checks
# --------------------------------------------------------------------------------------------- #
def _samples(bad: Tensor) -> str:
    idx = bad.nonzero().flatten().tolist()
    return f"{idx[:8]}{'...' if len(idx) > 8 else ''}"


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


def _check_logits(logits: Any, batch: int) -> int:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"the model must return (B, K) logits, got {got}; wrap it so that it does")
    if logits.shape[1] < 2:
        raise ValueError("the model has one output: class maps and accuracies need K >= 2 logits; for a binary "
                         "classifier with one logit z wrap it to return torch.cat([-z, z], dim=1)")
    bad = ~torch.isfinite(logits).all(1)
    if bool(bad.any()):
        raise ValueError(f"the model returns NaN or inf logits for samples {_samples(bad)}; its scores and verdict "
                         "would be meaningless: check the model's weights and the input normalisation")
    return int(logits.shape[1])


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
