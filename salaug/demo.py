"""``salaug demo``: base only against base + a saliency method, on the embedded ClutteredObjects data.

Nothing is downloaded: the data is generated procedurally and small CNNs are trained from scratch
on the CPU in a few minutes. Every arm gets the standard recipe first (a 4-px padded random crop and
a horizontal flip of each training image, its box moved with it); an arm's method (a name of
:mod:`salaug.transforms.registry`, applied through the :class:`salaug.SaliencyAugmentation`
callback) comes on top, and ``"none"`` is the recipe alone. ``"<name>-flat"`` is the method fed a
flat saliency map (its saliency-free twin, which isolates what the CAM adds).

Arms of one seed share their training images, initial weights and batch order, so the difference
between two arms of a seed is a *paired* difference. Each run is measured on a fixed test set
in-distribution and on three shifted test sets (``ClutteredObjects.SHIFTS``). :func:`run` trains and
measures one arm on one seed; :func:`run_arms` runs several in parallel processes;
:func:`paired_differences`, :func:`verdict`, :func:`format_report` and :func:`write_pictures`
report them. The command line (``salaug demo``) is :mod:`salaug.cli.demo`.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from salaug import models
from salaug.augmenter import SaliencyAugmenter
from salaug.callback import SaliencyAugmentation
from salaug.cam import GradCAM
from salaug.datasets import ClutteredObjects
from salaug.metrics import cam_box_iou, label_fidelity, mix_visibility, pointing_game
from salaug.monitor import SaliencyMonitor
from salaug.sources import Flat
from salaug.transforms.base import SaliencyTransform
from salaug.transforms.mix import GuidedMixup
from salaug.transforms.recipe import crop_flip
from salaug.transforms.registry import NO_TRANSFORM, SALIENCY_FREE, TRANSFORM_NAMES, TRANSFORMS, create_transform

__all__ = ["DEMO_ARMS", "SPLITS", "DemoNet", "RunResult", "crop_flip_collate", "format_report",
           "format_table", "make_data", "paired_differences", "plan_processes", "run", "run_arms", "schedule",
           "soft_label_captions", "verdict", "write_pictures"]

TARGET_LAYER = "features"
FLAT = "-flat"
#: arm names: every transform name, and ``"<name>-flat"`` for those that read saliency
DEMO_ARMS: tuple[str, ...] = (*TRANSFORM_NAMES, *(name + FLAT for name, spec in TRANSFORMS.items()
                                                  if spec.reads_saliency))
SPLITS: tuple[str, ...] = ("id", *ClutteredObjects.SHIFTS)
#: one fixed test set for every seed, so the seed-to-seed spread is the training's
TEST_SEED = 7_777
BASELINE = NO_TRANSFORM
#: the regime of the committed evidence the demo's defaults follow (benchmarks/payoff, 5 paired seeds)
EVIDENCE_REGIME: dict[str, Any] = {"epochs": 150, "train_size": 500, "width": 16, "size": 32, "batch_size": 64,
                                   "recipe": True, "cam_scale": 1.0}
#: at that regime, arm − none per split: (mean over 5 paired seeds, standard deviation of one seed's difference)
EVIDENCE: dict[str, dict[str, tuple[float, float]]] = {
    # SnapMix with the library's defaults: labels from the training forward (the snapmix-fwd arm)
    "snapmix": {"id": (0.008, 0.009), "background": (0.053, 0.010), "occlusion": (0.081, 0.015),
                "small": (0.068, 0.023)},
    "cutmix": {"id": (-0.031, 0.009), "background": (-0.017, 0.021), "occlusion": (0.021, 0.028),
               "small": (-0.021, 0.018)},
    "snapmix-flat": {"id": (-0.020, 0.012), "background": (0.011, 0.032), "occlusion": (0.016, 0.026),
                     "small": (0.005, 0.020)},
}
EVIDENCE_SOURCE = "benchmarks/results/payoff_objects_recipe150_fwd.md in the salaug repository"


def _transform_of(arm: str, num_classes: int) -> tuple[SaliencyTransform | None, bool]:
    """The transform of an arm and whether it is fed a flat saliency map.

    Raises:
        ValueError: an unknown arm (the message lists them).
    """
    if arm not in DEMO_ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {', '.join(DEMO_ARMS)}")
    name = arm.removesuffix(FLAT)
    return create_transform(name, num_classes), arm.endswith(FLAT) or name in SALIENCY_FREE


class DemoNet(models.DemoNet, pl.LightningModule):
    """:class:`salaug.models.DemoNet` trained by Lightning: the same ``features`` (the CAM layer),
    ``head``, forward and state-dict keys, plus the training and validation steps.

    Input ``(B, 3, H, W)`` images, output ``(B, num_classes)`` logits. Training takes hard ``(B,)``
    or soft ``(B, K)`` labels (what the augmentation callback leaves in the batch) and logs the
    epoch's mean loss (``train_loss``, once per epoch: per-step logging costs more than a step of
    this network); each validation appends its accuracy to :attr:`curve`.

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
        self.lr = lr
        self.curve: list[float] = []
        self._correct = 0
        self._seen = 0
        self._loss_sum: Tensor | float = 0.0
        self._loss_count = 0

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        n = batch[0].shape[0]
        self._loss_sum = self._loss_sum + loss.detach() * n  # no host sync per step
        self._loss_count += n
        return loss

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            self.log("train_loss", self._loss_sum / self._loss_count, prog_bar=True)
        self._loss_sum, self._loss_count = 0.0, 0

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
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def crop_flip_collate(samples: Sequence[Any]) -> list[Any]:
    """A DataLoader ``collate_fn``: ``default_collate`` of ``(image, label, box, ...)`` samples, then
    :func:`salaug.crop_flip` on the images (field 0) and boxes (field 2) of the batch.

    Returns:
        The batch as a list ``[images (B, C, H, W), labels (B,), boxes (B, 4), ...]`` (a list, so
        the augmentation callback can rewrite it in place).
    """
    from torch.utils.data import default_collate

    batch = list(default_collate(list(samples)))
    batch[0], batch[2] = crop_flip(batch[0], boxes=batch[2])
    return batch



@dataclass
class RunResult:
    """What one demo run (an arm on a seed) measured.

    ``accuracy`` maps each test split of :data:`SPLITS` to the final-epoch accuracy (``test_acc`` is
    its ``"id"`` entry); ``curve`` is the in-distribution validation accuracy, measured every
    ``curve_every`` epochs (its ``i``-th entry after epoch ``(i + 1) * curve_every``); ``model`` is
    the trained network as a plain, picklable :class:`salaug.models.DemoNet` (CPU, eval mode).
    """

    method: str
    test_acc: float
    pointing_game: float
    box_iou: float
    label_fidelity: float | None
    seconds: float
    recipe: bool = True
    curve: list[float] = field(default_factory=list)
    seed: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    model: models.DemoNet | None = field(default=None, repr=False)
    curve_every: int = 1


class _RenderedBatches(Dataset):
    """A :class:`~salaug.datasets.ClutteredObjects` split read a batch at a time: ``data[indices]`` is
    ``[images (B, 3, H, W), labels (B,), boxes (B, 4)]`` from its batched ``render`` (an index into
    the rendered tensors when the split is cached), the same samples as ``B`` reads of ``data[i]``
    and a ``default_collate``, without the per-sample Python work."""

    def __init__(self, dataset: ClutteredObjects) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> list[Tensor]:
        rendered = self.dataset.render(indices)
        return [rendered["image"], rendered["label"], rendered["box"]]


def _recipe(batch: list[Tensor]) -> list[Tensor]:
    """:func:`salaug.crop_flip` on the images and boxes of a ``[images, labels, boxes]`` batch."""
    batch[0], batch[2] = crop_flip(batch[0], boxes=batch[2])
    return batch


def make_data(size: int, train_size: int, val_size: int, test_size: int, seed: int, batch_size: int,
              workers: int, make_dataset: Any = None, recipe: bool = True
              ) -> tuple[DataLoader, DataLoader, dict[str, DataLoader]]:
    """Loaders, each batch ``[images (B, 3, size, size), labels (B,), boxes (B, 4)]``.

    ClutteredObjects splits are rendered once and read a batch at a time (the same batches, in the
    same shuffled order, as a per-sample DataLoader of the same batch size).

    Args:
        size, train_size, val_size, test_size, seed: the data (image side, images per split, seed of
            the training and validation images; the test sets are fixed).
        batch_size, workers: the DataLoaders'.
        make_dataset: ``make_dataset(split, size, length, seed)`` builds a split, read per sample
            (then there are no shifted test sets); ClutteredObjects by default.
        recipe: give the training batches the standard recipe (:func:`salaug.crop_flip` on images
            and boxes, as :func:`crop_flip_collate`); validation and test stay unaugmented.

    Returns:
        The train (shuffled) and validation loaders, and one test loader per split (``"id"`` and,
        for ClutteredObjects, those of ``ClutteredObjects.SHIFTS``).
    """
    def objects(split: Any, size: int, n: int, seed: int, **options: Any) -> ClutteredObjects:
        return ClutteredObjects(split=split, size=size, length=n, seed=seed, cache=True, **options)

    def loader(ds: Any, shuffle: bool = False, augment: bool = False) -> DataLoader:
        common: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
        if make_dataset is not None:
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle,
                              collate_fn=crop_flip_collate if augment else None, **common)
        # the sampler DataLoader(shuffle=...) builds, drawing batches of indices; no collation
        order = RandomSampler(ds) if shuffle else SequentialSampler(ds)
        return DataLoader(_RenderedBatches(ds), batch_size=None, sampler=BatchSampler(order, batch_size, False),
                          collate_fn=_recipe if augment else None, **common)

    build = make_dataset or objects
    train = loader(build("train", size, train_size, seed), True, recipe)
    val = loader(build("val", size, val_size, seed))
    tests = {"id": loader(build("test", size, test_size, TEST_SEED))}
    if make_dataset is None:
        shifts = ClutteredObjects.SHIFTS.items()
        tests.update({s: loader(objects("test", size, test_size, TEST_SEED, **o)) for s, o in shifts})
    return train, val, tests


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


def augment_as_trained(model: nn.Module, transform: SaliencyTransform, x: Tensor, y: Tensor, seed: int,
                       flat: bool, num_classes: int | None = None) -> tuple[SaliencyAugmenter, Tensor, Tensor]:
    """One batch augmented as training augmented it: ``(augmenter, images, soft labels)``.

    The augmenter takes the arm's saliency source (:class:`~salaug.sources.Flat` for the ``-flat``
    twin, the library default otherwise); with labels from the forward, the model's forward of the mixed
    images fills the labels, as the training step's forward did.
    """
    options: dict[str, Any] = {"source": Flat()} if flat else {"target_layer": TARGET_LAYER}
    aug = SaliencyAugmenter(model, transform, seed=seed, num_classes=num_classes, **options)
    images, labels = aug(x, y)
    if aug.labels_from == "forward":
        model(images)
    return aug, images, labels.detach()


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
    aug, _, labels = augment_as_trained(model, transform, x, y, seed, flat_saliency, num_classes)
    assert aug.last is not None and aug.last.params is not None
    params, saliency = aug.last.params, aug.last.saliency
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
    return float(label_fidelity(labels, classes, visible).mean())




def schedule(epochs: int) -> tuple[int, int]:
    """``(validate_every, monitor_every)``: validation every ``validate_every`` epochs (about 30
    points on the curve: a validation pass costs several training steps of this network), and the
    :class:`~salaug.SaliencyMonitor`'s ``every_n_epochs``, which it applies to the index of the
    epochs that validate (Lightning's ``(epoch + 1) % validate_every == 0``): coprime with
    ``validate_every``, so that it watches about 4 times, evenly spaced.

    Example:
        >>> schedule(150), schedule(40), schedule(1)
        ((5, 7), (1, 10), (1, 1))
    """
    every = max(1, epochs // 30)
    monitor = max(1, epochs // 4 // every)
    while math.gcd(monitor, every) != 1:
        monitor += 1
    return every, monitor


class _Progress(pl.Callback):
    """A line on stderr (flushed, so it shows when stdout goes to a file) when a run starts, every
    ``every`` epochs and when it ends: ``seed 0 snapmix: epoch 30/150, 41 s``."""

    def __init__(self, arm: str, seed: int, epochs: int) -> None:
        self.name, self.epochs, self.every = f"seed {seed} {arm}", epochs, max(1, epochs // 5)
        self.start = time.perf_counter()

    def _say(self, text: str) -> None:
        print(f"  {self.name}: {text}", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()
        self._say(f"training, {self.epochs} epochs")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if done % self.every == 0 and done < self.epochs:
            self._say(f"epoch {done}/{self.epochs}, {time.perf_counter() - self.start:.0f} s")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._say(f"trained in {time.perf_counter() - self.start:.0f} s; measuring on the test sets")


def _callbacks(arm: str, transform: SaliencyTransform | None, flat: bool, epochs: int, seed: int,
               cam_scale: float, status: bool = False) -> list[Any]:
    # The head check (AblationCAM) is left to `salaug diagnose`: the demo watches GradCAM and EigenCAM.
    callbacks: list[Any] = [SaliencyMonitor(target_layer=TARGET_LAYER, box_key=2, max_batches=2,
                                            every_n_epochs=schedule(epochs)[1], head_check=False)]
    if status:
        callbacks.append(_Progress(arm, seed, epochs))
    if transform is not None:
        # the flat twin draws from the Flat source; the method keeps the library default
        options: dict[str, Any] = {"source": Flat()} if flat else {"target_layer": TARGET_LAYER, "cam_scale": cam_scale}
        callbacks.append(SaliencyAugmentation(transform, seed=seed, log_every_n_steps=0,
                                              stop_epoch=max(epochs - 1, 1) if epochs > 2 else None, **options))
    return callbacks


def run(method: str = "snapmix", *, epochs: int = 150, size: int = 32, train_size: int = 500,
        val_size: int = 200, test_size: int = 1000, batch_size: int = 64, seed: int = 0, width: int = 16,
        device: str = "cpu", out: str | None = None, progress: bool = True, workers: int = 0,
        cam_scale: float = 1.0, make_dataset: Any = None, fidelity: bool = True, recipe: bool = True,
        status: bool = False) -> RunResult:
    """Train :class:`DemoNet` with one arm (on top of the standard recipe) on one seed, and measure it.

    Args:
        method: an arm of :data:`DEMO_ARMS` (``"none"``: the recipe alone).
        epochs, size, train_size, val_size, test_size, batch_size, seed, width, device: the run
            (``test_size`` images per test split).
        out: directory whose ``runs/<method>/`` (``runs/<method>-seed<k>/`` for a seed other than 0)
            receives the CSV log and the monitor's pictures (default ``salaug_demo``).
        progress: show Lightning's progress bar.
        workers: DataLoader worker processes.
        cam_scale: resolution factor of the CAM forward of the augmentation, in ``(0, 1]``.
        make_dataset: see :func:`make_data`.
        fidelity: measure the label fidelity of mixing methods.
        recipe: apply the standard recipe (:func:`salaug.crop_flip`) to the training batches of the run.
        status: print progress lines on stderr (the start, every fifth of the epochs, the end), which
            show where stdout goes to a file and where the progress bar is off (parallel runs).

    Returns:
        The measurements, with the trained network.

    Raises:
        ValueError: for an unknown arm.
    """
    num_classes = 10
    transform, flat = _transform_of(method, num_classes)
    pl.seed_everything(seed, workers=True, verbose=False)
    train, val, tests = make_data(size, train_size, val_size, test_size, seed, batch_size, workers, make_dataset,
                                  recipe=recipe)
    # channels-last feature maps: this small network's convolutions and max-pooling run several
    # times faster that way on the CPU (the same network and maths; see `salaug demo`'s timings)
    model = DemoNet(num_classes=num_classes, width=width, epochs=epochs).to(memory_format=torch.channels_last)
    root = os.path.join(out or "salaug_demo", "runs", method if seed == 0 else f"{method}-seed{seed}")
    validate_every = schedule(epochs)[0]
    trainer = pl.Trainer(max_epochs=epochs, accelerator=device, devices=1,
                         callbacks=_callbacks(method, transform, flat, epochs, seed, cam_scale, status),
                         logger=pl.loggers.CSVLogger(root, name=""), enable_checkpointing=False,
                         enable_progress_bar=progress, enable_model_summary=False, default_root_dir=root,
                         num_sanity_val_steps=0, check_val_every_n_epoch=validate_every,
                         log_every_n_steps=max(1, min(20, len(train))))
    start = time.perf_counter()
    trainer.fit(model, train, val)
    seconds = time.perf_counter() - start
    net = models.DemoNet(num_classes=num_classes, width=width).to(memory_format=torch.channels_last)
    net.load_state_dict(model.cpu().state_dict())
    net.eval()
    accuracy = {split: _accuracy(net, loader) for split, loader in tests.items()}
    pg, iou = localisation(net, tests["id"])
    score = None
    if fidelity and transform is not None and make_dataset is None:
        score = measure_label_fidelity(transform, net, size, seed, num_classes, flat_saliency=flat)
    net.to(memory_format=torch.contiguous_format)  # the returned (and saved) network is a plain one
    return RunResult(method, accuracy["id"], pg, iou, score, seconds, recipe, list(model.curve), seed, accuracy, net,
                     curve_every=validate_every)


# --------------------------------------------------------------------------- several runs
def plan_processes(runs: int, device: str = "cpu", cores: int | None = None,
                   processes: int | None = None) -> tuple[int, int]:
    """How many processes to run ``runs`` runs in, and torch threads per process.

    On the CPU one process per core (or ``processes``), up to one per run, the cores shared
    among them (a tiny network trains faster on one thread per core than on several threads in one
    process); on an accelerator one process.

    Example:
        >>> plan_processes(2, cores=2), plan_processes(4, cores=2), plan_processes(1, cores=8)
        ((2, 1), (2, 1), (1, 8))
        >>> plan_processes(4, cores=8, processes=2), plan_processes(4, "cuda")[0]
        ((2, 4), 1)
    """
    if device != "cpu":
        return 1, max(torch.get_num_threads(), 1)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    chosen = max(1, min(runs, cores if processes is None else processes))
    return chosen, max(1, cores // chosen)


def _cost(arm: str) -> int:
    """Rank of an arm's training cost: 0 with a CAM per batch, 1 a mix without one, 2 none."""
    transform, flat = _transform_of(arm, 2)
    return 2 if transform is None else int(flat)


def _run_job(job: tuple[str, int, int, dict[str, Any]]) -> RunResult:
    method, seed, threads, kwargs = job
    torch.set_num_threads(threads)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):  # one banner per run, not per worker
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    return run(method, seed=seed, **kwargs)


def run_arms(arms: Sequence[str], seeds: Sequence[int], *, processes: int = 1, threads: int | None = None,
             report: Any = None, **kwargs: Any) -> list[RunResult]:
    """Run every arm on every seed (:func:`run` with ``kwargs``), in ``processes`` spawned processes.

    Args:
        arms, seeds: the runs are their product, seed-major.
        processes: 1 runs them one after another in this process; more spawn that many workers
            (each shows no progress bar).
        threads: torch threads per worker (default: torch's).
        report: called with each :class:`RunResult` as it finishes.

    Returns:
        The results in the order of the runs.
    """
    jobs = [(arm, seed, threads or torch.get_num_threads(), kwargs) for seed in seeds for arm in arms]
    if processes <= 1:
        results = []
        for arm, seed, _, kw in jobs:
            results.append(run(arm, seed=seed, **kw))
            if report is not None:
                report(results[-1])
        return results
    import multiprocessing as mp

    jobs = [(arm, seed, t, {**kw, "progress": False}) for arm, seed, t, kw in jobs]
    with ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn")) as pool:
        # the longest runs first (a CAM per batch, then a mix, then none), so no process idles at the end
        futures = {i: pool.submit(_run_job, jobs[i]) for i in sorted(range(len(jobs)), key=lambda i: _cost(jobs[i][0]))}
        for future in as_completed(futures.values()):
            if report is not None:
                report(future.result())
        return [futures[i].result() for i in range(len(jobs))]


# --------------------------------------------------------------------------- statistics and the report
def paired_differences(results: Sequence[RunResult], baseline: str = BASELINE) -> dict[str, dict[str, list[float]]]:
    """Per arm and split, the accuracy differences arm − ``baseline``, one per seed both ran.

    Example:
        >>> a = RunResult("none", 0.8, 0, 0, None, 1, accuracy={"id": 0.8, "small": 0.5})
        >>> b = RunResult("snapmix", 0.82, 0, 0, None, 1, accuracy={"id": 0.82, "small": 0.56})
        >>> {k: [round(x, 2) for x in v] for k, v in paired_differences([a, b])["snapmix"].items()}
        {'id': [0.02], 'small': [0.06]}
    """
    base = {r.seed: r for r in results if r.method == baseline}
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.method == baseline or r.seed not in base:
            continue
        row = out.setdefault(r.method, {})
        for split, acc in r.accuracy.items():
            row.setdefault(split, []).append(acc - base[r.seed].accuracy[split])
    return out


def verdict(diffs: dict[str, list[float]], method: str) -> str:
    """One sentence: the splits where ``method`` beat base only in every seed, and those where it did not.

    Example:
        >>> verdict({"id": [-0.01], "occlusion": [0.05], "small": [0.07]}, "snapmix")
        'snapmix beat base only on occlusion (+0.050), small (+0.070); not on id (-0.010).'
        >>> verdict({"id": [0.01, 0.02], "small": [0.03, 0.05]}, "snapmix")
        'snapmix beat base only on every split: id (+0.015), small (+0.040).'
        >>> verdict({"id": [0.01, -0.02]}, "cutmix")
        'cutmix did not beat base only on any split (in every seed): id (-0.005).'
    """
    def listed(splits: list[str]) -> str:
        return ", ".join(f"{s} ({statistics.mean(diffs[s]):+.3f})" for s in splits)

    won = [s for s in diffs if all(d > 0 for d in diffs[s])]
    lost = [s for s in diffs if s not in won]
    if not won:
        return f"{method} did not beat base only on any split (in every seed): {listed(lost)}."
    if not lost:
        return f"{method} beat base only on every split: {listed(won)}."
    return f"{method} beat base only on {listed(won)}; not on {listed(lost)}."


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




def _mean(values: Sequence[float]) -> float:
    return statistics.mean(values) if values else float("nan")



def _comparison_figure(results: Sequence[RunResult], path: str) -> str:
    """What the verdict reads, in two panels: each arm's final-epoch test accuracy per split (dots:
    seeds, diamond: mean), beside a forest plot of the paired differences to base only per split.

    (The in-distribution validation curve is not drawn: it shows one split of the four, where the
    method is expected to tie base only; it stays in ``results.json`` and the runs' CSV logs.)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs = paired_differences(results)
    arms = list(dict.fromkeys(r.method for r in results))
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    splits = [s for s in SPLITS if any(s in r.accuracy for r in results)] or ["id"]
    fig, axes = plt.subplots(1, 2 if diffs else 1, figsize=(10 if diffs else 5, 3.4), squeeze=False)
    accuracy = axes[0][0]
    for j, arm in enumerate(arms):
        offset = (j - (len(arms) - 1) / 2) * 0.2
        for i, split in enumerate(splits):
            each = [r.accuracy.get(split, r.test_acc) for r in results if r.method == arm]
            accuracy.scatter(each, [i + offset] * len(each), s=12, color=colours[arm], alpha=0.5)
            accuracy.scatter([_mean(each)], [i + offset], marker="D", s=36, color=colours[arm],
                             label=arm if i == 0 else None)
    accuracy.set_yticks(range(len(splits)), splits)
    accuracy.invert_yaxis()
    accuracy.set(xlabel="final-epoch test accuracy (dots: seeds, diamond: mean)", title="test accuracy per split")
    accuracy.grid(axis="x", alpha=0.3)
    accuracy.legend(fontsize=8)
    if diffs:
        forest = axes[0][1]
        for j, arm in enumerate(diffs):
            offset = (j - (len(diffs) - 1) / 2) * 0.2
            for i, split in enumerate(splits):
                each = diffs[arm].get(split, [])
                forest.scatter(each, [i + offset] * len(each), s=12, color=colours[arm], alpha=0.5)
                if each:
                    forest.scatter([_mean(each)], [i + offset], marker="D", s=36, color=colours[arm],
                                   label=arm if i == 0 else None)
        forest.axvline(0, color="k", lw=0.8)
        forest.set_yticks(range(len(splits)), splits)
        forest.invert_yaxis()
        forest.set(xlabel=f"test accuracy − {BASELINE} (dots: seeds, diamond: mean)",
                   title=f"paired difference to {BASELINE} (the verdict: > 0 in every seed)")
        forest.grid(axis="x", alpha=0.3)
        forest.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_pictures(model: nn.Module, method: str, results: Sequence[RunResult], out: str, size: int,
                   seed: int) -> list[str]:
    """CAM overlays of ``model`` on validation images, ``method``'s augmented samples with their soft
    labels, and the comparison (each arm's test accuracy per split beside the paired differences).

    Captions name the classes (the dataset's ``classes``). Writes ``cam_overlays.png``,
    ``augmented.png`` (not for ``"none"``) and ``accuracy.png`` (needs matplotlib) into ``out``.

    Returns:
        The paths written.
    """
    from salaug.viz import draw_boxes, overlay, save_grid

    os.makedirs(out, exist_ok=True)
    ds = ClutteredObjects(split="val", size=size, length=16, seed=seed)
    names: Sequence[str] | None = getattr(ds, "classes", None)
    x, y, boxes = (torch.stack([torch.as_tensor(ds[i][j]) for i in range(16)]) for j in range(3))
    truth = [_class_name(names, int(k)) for k in y]
    maps = GradCAM(model, TARGET_LAYER)(x, y)
    rows = {"validation images, true boxes": draw_boxes(x, boxes), "GradCAM of the true class": overlay(x, maps)}
    paths = [str(save_grid(rows, os.path.join(out, "cam_overlays.png"), nrow=16, captions=[truth, truth]))]
    transform, flat = _transform_of(method, len(names) if names is not None else 10)
    if transform is not None:
        _, images, soft = augment_as_trained(model, transform, x, y, seed, flat)
        rows = {"images": x, f"{method} (soft labels below)": images}
        captions = [truth, soft_label_captions(soft, names)]
        paths.append(str(save_grid(rows, os.path.join(out, "augmented.png"), nrow=16, captions=captions)))
    try:
        return [*paths, _comparison_figure(results, os.path.join(out, "accuracy.png"))]
    except ImportError:  # matplotlib is optional: the tables are the result
        return paths


def format_table(results: Sequence[RunResult]) -> str:
    """A markdown table, one row per arm (means over its seeds), and a line on the base augmentation.

    Times are relative to the ``"none"`` arm where there is one.
    """
    arms = list(dict.fromkeys(r.method for r in results))
    splits = [s for s in SPLITS if any(s in r.accuracy for r in results)] or ["id"]
    base = _mean([r.seconds for r in results if r.method == BASELINE]) if BASELINE in arms else None
    lines = ["| arm | seeds | " + " | ".join(f"test {s}" for s in splits)
             + " | pointing game | CAM box IoU | label fidelity | train time |",
             "|---" * (len(splits) + 6) + "|"]
    for arm in arms:
        rs = [r for r in results if r.method == arm]
        fids = [r.label_fidelity for r in rs if r.label_fidelity is not None]
        seconds = _mean([r.seconds for r in rs])
        accs = " | ".join(f"{_mean([r.accuracy.get(s, r.test_acc) for r in rs]):.3f}" for s in splits)
        t = f"{seconds:.0f} s" + (f" ({seconds / base:.2f}x)" if base else "")
        lines.append(f"| {arm} | {len(rs)} | {accs} | {_mean([r.pointing_game for r in rs]):.3f} | "
                     f"{_mean([r.box_iou for r in rs]):.3f} | {f'{_mean(fids):.3f}' if fids else 'n/a'} | {t} |")
    recipes = {r.recipe for r in results}
    if recipes == {True}:
        lines.append("\nEvery arm trains on the standard recipe (4-px padded random crop + horizontal flip); "
                     "each method is applied on top of it.")
    elif recipes == {False}:
        lines.append("\nNo base augmentation (--no-recipe): each method is the only augmentation of its arm.")
    return "\n".join(lines)


def _difference_table(diffs: dict[str, dict[str, list[float]]]) -> str:
    splits = [s for s in SPLITS if any(s in row for row in diffs.values())]
    lines = [f"| arm − {BASELINE} | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for arm, row in diffs.items():
        cells = []
        for s in splits:
            each = row.get(s, [])
            seeds = f" ({', '.join(f'{d:+.3f}' for d in each)})" if len(each) > 1 else ""
            cells.append(f"{_mean(each):+.3f}{seeds}" if each else "–")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread_note(method: str, seeds: int, regime: dict[str, Any]) -> str:
    evidence = EVIDENCE.get(method)
    if evidence is None or any(regime.get(k) != v for k, v in EVIDENCE_REGIME.items()):
        context = ("This run is outside the regime of the committed evidence: a difference of a few points can be "
                   "seed noise here")
    else:
        sd = ", ".join(f"{sd:.3f} ({s})" for s, (_, sd) in evidence.items())
        means = ", ".join(f"{m:+.3f} ({s})" for s, (m, _) in evidence.items())
        context = (f"At this regime the committed evidence (5 paired seeds, the same schedule in a plain training "
                   f"loop, {EVIDENCE_SOURCE}) has {method} − none at {means} on average, and one seed's difference "
                   f"strays from that with a standard deviation of {sd}: a one-seed difference within about twice "
                   "that of zero is noise")
    if seeds > 1:
        return (f"{seeds} paired seeds: each cell gives the mean difference and, in parentheses, each seed's, in "
                f"seed order (no interval: brackets would be a 95 % interval); 'beat' means ahead in every seed. "
                f"{context}.")
    return f"One seed. {context}; --seeds 2 (or more) shows the paired difference over seeds."


def format_report(results: Sequence[RunResult], method: str, regime: dict[str, Any]) -> str:
    """The demo's report in markdown: the table, the paired differences to base only, the verdict on
    ``method`` and how much one seed can mislead (``regime``: the run's settings, see
    :data:`EVIDENCE_REGIME`)."""
    seeds = len({r.seed for r in results})
    diffs = paired_differences(results)
    parts = [format_table(results)]
    if diffs:
        parts += [f"Paired difference in test accuracy to base only (arm − {BASELINE}; the arms of a seed share "
                  "their training images, initial weights and batch order):", _difference_table(diffs)]
    if method in diffs:
        parts.append("Verdict: " + verdict(diffs[method], method))
    if diffs:
        parts.append(_spread_note(method, seeds, regime))
    return "\n\n".join(parts)


CAVEATS = """\
## What the columns mean

- **arm**: the augmentation on top of the standard recipe; `none` is the recipe alone (base only);
  `<method>-flat` is the method fed a flat saliency map (same boxes and label rule, no CAM): what
  the saliency adds is the difference between the two.
- **seeds**: runs of the arm; the numbers are means over them.
- **test id / background / occlusion / small**: final-epoch accuracy on a fixed set of test images
  (the same for every seed and arm): in-distribution, on a background family never seen in
  training, with 40 % of each object hidden, and with objects at a third of their usual size.
- **pointing game**: fraction of in-distribution test images (the first 4 batches) whose GradCAM
  peak (true class) falls inside the object's box.
- **CAM box IoU**: intersection over union of the box around the GradCAM map above half its peak
  and the object's box, same images.
- **label fidelity**: how true a mixed label is to what the mixed image shows, on 128 training
  images with their true object masks: 1 − the total-variation distance between the soft label
  and the visible share of each object (1: the label says exactly what is visible). `n/a` for
  arms that do not mix two images.
- **train time**: wall time of training, and its ratio to base only. Parallel runs share the cores.
- **arm − none**: the paired difference of test accuracy per split (same seed: same training
  images, initial weights and batch order), the mean over the seeds and, in parentheses, each
  seed's; `verdict` names the splits where the method was ahead in every seed. `accuracy.png`
  plots what the verdict reads: each arm's test accuracy per split beside these differences.

## Caveats

- Small data and a small network on synthetic images: the regime where the project's evidence
  shows saliency-guided mixing paying (50 images per class, 150 epochs, with the recipe), mostly
  on the shifted test sets; at 40 epochs or without the recipe the recipe alone tends to win.
- Few seeds: see the note on the spread above. The benchmark (`benchmarks/payoff` in the
  repository) measures the same regime over 5 paired seeds with confidence intervals.
- The demo trains through the Lightning callback; the committed evidence comes from a plain
  training loop at the same schedule: the random streams differ, the regime is the same.
"""
