"""``salaug demo``: train a small CNN on the embedded ClutteredObjects data with saliency augmentation.

Nothing is downloaded: the data is generated procedurally and the model is trained from scratch on
the CPU in a minute or two. Every arm gets the standard recipe first (a 4-px padded random crop and
a horizontal flip of each training image, its box moved with it); the method under test is applied
on top. :func:`run` trains and measures one arm (accuracy, pointing game, CAM box IoU, label
fidelity, time); :func:`format_table` and :func:`write_pictures` report them. The command line
(``salaug demo``) is :mod:`salaug.cli.demo`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from salaug import models
from salaug.callback import SaliencyAugmentation
from salaug.cam import GradCAM
from salaug.datasets import ClutteredObjects
from salaug.metrics import cam_box_iou, label_fidelity, mix_visibility, pointing_game
from salaug.monitor import SaliencyMonitor
from salaug.transforms.base import SaliencyTransform
from salaug.transforms.mix import GuidedMixup
from salaug.transforms.recipe import crop_flip
from salaug.transforms.registry import SALIENCY_FREE, create_transform

__all__ = ["DemoNet", "RunResult", "format_table", "crop_flip_collate", "make_data", "run", "soft_label_captions",
           "write_pictures"]

TARGET_LAYER = "features"


class DemoNet(models.DemoNet, pl.LightningModule):
    """:class:`salaug.models.DemoNet` trained by Lightning: the same ``features`` (the CAM layer),
    ``head``, forward and state-dict keys, plus the training and validation steps.

    Input ``(B, 3, H, W)`` images, output ``(B, num_classes)`` logits. Training takes hard ``(B,)``
    or soft ``(B, K)`` labels (what the augmentation callback leaves in the batch); validation
    appends each epoch's accuracy to :attr:`curve`.

    Args:
        num_classes: number of output logits.
        width: channels of the first block (the last two have ``4 * width``).
        lr: peak learning rate of the one-cycle AdamW schedule.
        epochs: the schedule's length (kept as a hyperparameter; the Trainer's ``max_epochs`` decides).

    Example:
        >>> net = DemoNet(num_classes=4, width=8)
        >>> net(torch.rand(2, 3, 32, 32)).shape, list(net.state_dict())[0]
        (torch.Size([2, 4]), 'features.0.weight')
    """

    def __init__(self, num_classes: int = 10, width: int = 32, lr: float = 3e-3, epochs: int = 8) -> None:
        super().__init__(num_classes=num_classes, width=width)
        self.save_hyperparameters()
        self.curve: list[float] = []
        self._correct = 0
        self._seen = 0

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        pred = self(batch[0]).argmax(1)
        self._correct += int((pred == batch[1]).sum())
        self._seen += batch[1].numel()

    def on_validation_epoch_end(self) -> None:
        acc = self._correct / max(self._seen, 1)
        self._correct = self._seen = 0
        if not self.trainer.sanity_checking:
            self.curve.append(acc)
        self.log("val_acc", acc, prog_bar=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def crop_flip_collate(samples: Sequence[Any]) -> list[Any]:
    """A DataLoader ``collate_fn``: ``default_collate`` of ``(image, label, box, ...)`` samples, then
    :func:`salaug.crop_flip` on the images (field 0) and boxes (field 2) of the batch.

    Returns:
        The batch as a list ``[images (B, C, H, W), labels (B,), boxes (B, 4), ...]`` (a list, so
        the augmentation callback can rewrite it in place).
    """
    from torch.utils.data import default_collate

    batch = list(default_collate(samples))
    batch[0], batch[2] = crop_flip(batch[0], boxes=batch[2])
    return batch


class _FlatSaliency(SaliencyAugmentation):
    """The callback with a flat saliency map: SaliencyMix then degenerates to plain CutMix."""

    def compute_saliency(self, trainer: Any, pl_module: Any, images: Tensor, labels: Tensor) -> Tensor:
        return torch.zeros_like(images[:, :1], dtype=torch.float32)


@dataclass
class RunResult:
    """What one demo run measured."""

    method: str
    test_acc: float
    pointing_game: float
    box_iou: float
    label_fidelity: float | None
    seconds: float
    recipe: bool = True
    curve: list[float] = field(default_factory=list)
    model: DemoNet | None = field(default=None, repr=False)
    callback: SaliencyAugmentation | None = field(default=None, repr=False)


def make_data(size: int, train_size: int, val_size: int, test_size: int, seed: int, batch_size: int,
              workers: int, make_dataset: Any = None, recipe: bool = True
              ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Loaders over the three splits, each batch ``[images (B, 3, size, size), labels (B,), boxes (B, 4)]``.

    Args:
        size, train_size, val_size, test_size, seed: the data (image side, images per split, seed).
        batch_size, workers: the DataLoaders'.
        make_dataset: ``make_dataset(split, size, length, seed)`` builds a split; ClutteredObjects
            by default.
        recipe: give the training batches the standard recipe (:func:`crop_flip_collate`);
            validation and test stay unaugmented.

    Returns:
        The train (shuffled), validation and test loaders.
    """
    make_dataset = make_dataset or (lambda split, size, n, seed: ClutteredObjects(
        split=split, size=size, length=n, seed=seed, cache=True))

    def loader(split: str, n: int, shuffle: bool) -> DataLoader:
        ds = make_dataset(split, size, n, seed)
        collate = crop_flip_collate if recipe and split == "train" else None
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, collate_fn=collate)
    return loader("train", train_size, True), loader("val", val_size, False), loader("test", test_size, False)


@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = seen = 0
    for x, y, _ in loader:
        correct += int((model(x).argmax(1) == y).sum())
        seen += y.numel()
    return correct / max(seen, 1)


def localisation(model: nn.Module, loader: DataLoader, max_batches: int = 4) -> tuple[float, float]:
    """Mean pointing game and CAM box IoU of GradCAM (true class) on ``loader``'s first batches."""
    cam = GradCAM(model, TARGET_LAYER)
    hits, ious, n = 0.0, 0.0, 0
    for i, (x, y, boxes) in enumerate(loader):
        if i >= max_batches:
            break
        maps = cam(x, y)
        hits += float(pointing_game(maps, boxes).float().sum())
        ious += float(cam_box_iou(maps, boxes).sum())
        n += y.numel()
    return hits / max(n, 1), ious / max(n, 1)


def measure_label_fidelity(transform: SaliencyTransform, model: nn.Module, size: int, seed: int,
                           num_classes: int, n: int = 128, flat_saliency: bool = False) -> float | None:
    """Mean label fidelity of ``transform`` on ``n`` training images with true object masks.

    The transform's sampled parameters are replayed on a two-channel "image" holding each
    object's mask and each pixel's source index, which tells which fraction of each object stays
    visible; :func:`salaug.metrics.label_fidelity` compares that with the mixed label. For the
    pixel-wise GuidedMixup the visible fractions are the mask-weighted mixing weights. Fractions
    are relative to each object's original area, so a transform that shrinks an object (SnapMix's
    or SalientPaste's rescaled paste) is scored as if the lost area were hidden. Transforms that
    do not mix keep one class per image, where fidelity is 1 by construction: ``None``.
    """
    ds = ClutteredObjects(split="train", size=size, length=n, seed=seed, return_mask=True)
    batch = ds.render(range(n))
    x, y, masks = batch["image"], batch["label"], batch["mask"]
    saliency = GradCAM(model, TARGET_LAYER)(x, y)
    if flat_saliency:  # plain CutMix: SaliencyMix on a flat map
        saliency = torch.zeros_like(saliency)
    out, params = transform(x, saliency, y, num_classes=num_classes, return_params=True)
    if "perm" not in params:  # label-preserving (crop, cutout): fidelity is 1 by construction
        return None
    partner = params["perm"]
    if isinstance(transform, GuidedMixup):
        visible = mix_visibility(masks, partner, 1.0 - params["own_weight"])
    else:
        index = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand_as(masks).float()
        replay = transform(torch.cat([masks.float(), index], 1), saliency, y, num_classes=num_classes,
                           params=params).images
        shown, source = replay[:, :1] > 0.5, replay[:, 1:].round().long()
        own = torch.arange(n).view(n, 1, 1, 1)
        from_partner = (source == partner.view(n, 1, 1, 1)) & (source != own)
        area = masks.flatten(1).sum(1).clamp(min=1)
        visible = torch.stack([(shown & (source == own)).flatten(1).sum(1) / area,
                               (shown & from_partner).flatten(1).sum(1) / area[partner]], 1).clamp(max=1)
    classes = torch.stack([y, y[partner]], 1)
    return float(label_fidelity(out.labels, classes, visible).mean())


def run(method: str = "snapmix", *, epochs: int = 40, size: int = 32, train_size: int = 500,
        val_size: int = 200, test_size: int = 1000, batch_size: int = 64, seed: int = 0, width: int = 16,
        device: str = "cpu", out: str | None = None, progress: bool = True, workers: int = 0,
        cam_scale: float = 1.0, make_dataset: Any = None, fidelity: bool = True, recipe: bool = True) -> RunResult:
    """Train :class:`DemoNet` with one augmentation method (on top of the standard recipe) and measure it.

    Args:
        method: a name of :data:`salaug.transforms.registry.TRANSFORM_NAMES` (``"none"``: the recipe alone).
        epochs, size, train_size, val_size, test_size, batch_size, seed, width, device: the run.
        out: directory whose ``runs/<method>/`` receives the CSV log and the monitor's pictures
            (default ``salaug_demo``).
        progress: show Lightning's progress bar.
        workers: DataLoader worker processes.
        cam_scale: resolution factor of the CAM forward of the augmentation, in ``(0, 1]``.
        make_dataset: see :func:`make_data`.
        fidelity: measure the label fidelity of mixing methods.
        recipe: apply the standard recipe (:func:`salaug.crop_flip`) to the training batches of the run.

    Returns:
        The measurements, with the trained model (CPU, eval mode) and the callback.

    Raises:
        ValueError: for an unknown method.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    num_classes = 10
    transform = create_transform(method, num_classes)
    train, val, test = make_data(size, train_size, val_size, test_size, seed, batch_size, workers, make_dataset,
                                 recipe=recipe)
    model = DemoNet(num_classes=num_classes, width=width, epochs=epochs)
    # The head check (AblationCAM) is left to `salaug diagnose`: the demo watches GradCAM and EigenCAM.
    monitor = SaliencyMonitor(target_layer=TARGET_LAYER, box_key=2, max_batches=2, every_n_epochs=max(epochs // 4, 1),
                              head_check=False)
    callbacks: list[Any] = [monitor]
    augmentation = None
    if transform is not None:
        kind = _FlatSaliency if method in SALIENCY_FREE else SaliencyAugmentation
        augmentation = kind(transform, cam="gradcam", target_layer=TARGET_LAYER, seed=seed,
                            cam_scale=cam_scale, stop_epoch=max(epochs - 1, 1) if epochs > 2 else None,
                            log_every_n_steps=0)
        callbacks.append(augmentation)
    root = os.path.join(out or "salaug_demo", "runs", method)
    trainer = pl.Trainer(max_epochs=epochs, accelerator=device, devices=1, callbacks=callbacks,
                         logger=pl.loggers.CSVLogger(root, name=""), enable_checkpointing=False,
                         enable_progress_bar=progress, enable_model_summary=False, default_root_dir=root,
                         num_sanity_val_steps=0, log_every_n_steps=max(1, min(20, len(train))))
    start = time.perf_counter()
    trainer.fit(model, train, val)
    seconds = time.perf_counter() - start
    model = model.cpu().eval()
    acc = _accuracy(model, test)
    pg, iou = localisation(model, test)
    score = None
    if fidelity and transform is not None:
        score = measure_label_fidelity(transform, model, size, seed, num_classes,
                                       flat_saliency=method in SALIENCY_FREE)
    return RunResult(method, acc, pg, iou, score, seconds, recipe, list(model.curve), model, augmentation)


def _class_name(names: Sequence[str] | None, k: int) -> str:
    return names[k] if names is not None and 0 <= k < len(names) else str(k)


def soft_label_captions(labels: Tensor, names: Sequence[str] | None = None, top: int = 2) -> list[str]:
    """One caption per row of soft labels ``(B, K)``: the ``top`` classes with their weight, by name
    where ``names`` (e.g. the dataset's ``classes``) has them, else by index.

    Example:
        >>> soft_label_captions(torch.tensor([[0.0, 0.7, 0.3], [1.0, 0.0, 0.0]]), ["disc", "ring", "star"])
        ['ring .70 star .30', 'disc 1.00']
    """
    def weight(v: float) -> str:
        return f"{v:.2f}".removeprefix("0")

    captions = []
    for row in labels:  # a handful of captions for a picture, not a hot path
        values, classes = row.topk(min(top, row.numel()))
        captions.append(" ".join(f"{_class_name(names, int(k))} {weight(float(v))}"
                                 for v, k in zip(values, classes, strict=True) if float(v) > 0))
    return captions


def write_pictures(result: RunResult, others: list[RunResult], out: str, size: int, seed: int) -> list[str]:
    """CAM overlays on validation images, augmented samples with soft labels, accuracy curves.

    Captions name the classes (the dataset's ``classes``). Writes ``cam_overlays.png``,
    ``augmented.png`` (not for ``"none"``) and ``accuracy.png`` (needs matplotlib) into ``out``.

    Returns:
        The paths written.
    """
    from salaug.viz import draw_boxes, overlay, save_grid

    os.makedirs(out, exist_ok=True)
    model = result.model
    assert model is not None
    ds = ClutteredObjects(split="val", size=size, length=16, seed=seed)
    names: Sequence[str] | None = getattr(ds, "classes", None)
    x, y, boxes = (torch.stack([torch.as_tensor(ds[i][j]) for i in range(16)]) for j in range(3))
    truth = [_class_name(names, int(k)) for k in y]
    maps = GradCAM(model, TARGET_LAYER)(x, y)
    rows = {"validation images, true boxes": draw_boxes(x, boxes), "GradCAM of the true class": overlay(x, maps)}
    paths = [save_grid(rows, os.path.join(out, "cam_overlays.png"), nrow=16, captions=[truth, truth])]
    transform = create_transform(result.method, len(names) if names is not None else 10)
    if transform is not None:
        transform.generator = torch.Generator().manual_seed(seed)
        if result.method in SALIENCY_FREE:
            maps = torch.zeros_like(maps)
        mixed = transform(x, maps, y)
        rows = {"images": x, "GradCAM of the true class": overlay(x, maps),
                f"{result.method} (soft labels below)": mixed.images}
        captions = [truth, None, soft_label_captions(mixed.labels, names)]
        paths.append(save_grid(rows, os.path.join(out, "augmented.png"), nrow=16, captions=captions))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pictures of curves are optional
        return paths
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in [result, *others]:
        ax.plot(range(1, len(r.curve) + 1), r.curve, marker="o", label=r.method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "accuracy.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [*paths, path]


def format_table(results: list[RunResult]) -> str:
    """A markdown table of the runs, and a line saying which base augmentation every arm had.

    Times are relative to the ``"none"`` run where there is one.
    """
    base = next((r.seconds for r in results if r.method == "none"), None)
    lines = ["| method | test acc | pointing game | CAM box IoU | label fidelity | train time |",
             "|---|---|---|---|---|---|"]
    for r in results:
        fid = "n/a" if r.label_fidelity is None else f"{r.label_fidelity:.3f}"
        t = f"{r.seconds:.0f} s" + (f" ({r.seconds / base:.2f}x)" if base else "")
        lines.append(f"| {r.method} | {r.test_acc:.3f} | {r.pointing_game:.3f} | {r.box_iou:.3f} | {fid} | {t} |")
    recipes = {r.recipe for r in results}
    if recipes == {True}:
        lines.append("\nEvery arm trains on the standard recipe (4-px padded random crop + horizontal flip); "
                     "each method is applied on top of it.")
    elif recipes == {False}:
        lines.append("\nNo base augmentation (--no-recipe): each method is the only augmentation of its arm.")
    return "\n".join(lines)
