"""``salaug demo``: train a small CNN on the embedded ClutteredObjects data with saliency augmentation.

Nothing is downloaded: the data is generated procedurally and the model is trained from scratch on
the CPU in a few minutes. The demo prints a results table (accuracy, pointing game, CAM box IoU,
label fidelity, time) and writes pictures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from salaug.callback import SaliencyAugmentation
from salaug.cam import GradCAM
from salaug.datasets import ClutteredObjects
from salaug.metrics import cam_box_iou, label_fidelity, mix_visibility, pointing_game
from salaug.monitor import SaliencyMonitor
from salaug.transforms import (
    AttentiveCutMix,
    GuidedMixup,
    KeepCutout,
    SaliencyMix,
    SalientCrop,
    SalientPaste,
    SaliencyTransform,
    SnapMix,
)

__all__ = ["METHODS", "DemoNet", "RunResult", "build_transform", "main", "run"]

METHODS = ("saliencymix", "snapmix", "salientcrop", "keepcutout", "guidedmixup", "salientpaste",
           "attentivecutmix", "cutmix", "none")
TARGET_LAYER = "features"


def build_transform(method: str, num_classes: int) -> SaliencyTransform | None:
    """The transform behind a demo method name (``"none"`` -> ``None``).

    ``"cutmix"`` is SaliencyMix fed a flat saliency map: its box centre then falls back to a
    random point, which is plain CutMix (see :class:`salaug.SaliencyMix`), so it shares the same
    label rule and code path and isolates what the saliency adds.

    Raises:
        ValueError: for an unknown method.
    """
    k = num_classes
    table: dict[str, Any] = {
        "saliencymix": lambda: SaliencyMix(num_classes=k, p=0.5),
        "cutmix": lambda: SaliencyMix(num_classes=k, p=0.5),
        "snapmix": lambda: SnapMix(num_classes=k, p=0.5),
        "salientcrop": lambda: SalientCrop(num_classes=k, p=0.5),
        "keepcutout": lambda: KeepCutout(num_classes=k, p=0.5),
        "guidedmixup": lambda: GuidedMixup(num_classes=k, p=0.5),
        "salientpaste": lambda: SalientPaste(num_classes=k, p=0.5),
        "attentivecutmix": lambda: AttentiveCutMix(num_classes=k, p=0.5),
        "none": lambda: None,
    }
    if method not in table:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return table[method]()


class DemoNet(pl.LightningModule):
    """A small CNN: four conv blocks (``features``, the CAM layer) and a linear head on pooled features."""

    def __init__(self, num_classes: int = 10, width: int = 32, lr: float = 3e-3, epochs: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        w = width
        self.features = nn.Sequential(*block(3, w, True), *block(w, 2 * w, True), *block(2 * w, 4 * w, True),
                                      *block(4 * w, 4 * w, False))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))
        self.curve: list[float] = []
        self._correct = 0
        self._seen = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
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
    curve: list[float] = field(default_factory=list)
    model: DemoNet | None = field(default=None, repr=False)
    callback: SaliencyAugmentation | None = field(default=None, repr=False)


def make_data(size: int, train_size: int, val_size: int, test_size: int, seed: int, batch_size: int,
              workers: int, make_dataset: Any = None) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Loaders over the three splits, each batch ``[images, labels, boxes]``.

    ``make_dataset(split, size, length, seed)`` builds a split; ClutteredObjects by default.
    """
    make_dataset = make_dataset or (lambda split, size, n, seed: ClutteredObjects(
        split=split, size=size, length=n, seed=seed, cache=True))

    def loader(split: str, n: int, shuffle: bool) -> DataLoader:
        ds = make_dataset(split, size, n, seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0)
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
        cam_scale: float = 1.0, make_dataset: Any = None, fidelity: bool = True) -> RunResult:
    """Train :class:`DemoNet` with one augmentation method and measure it.

    Raises:
        ValueError: for an unknown method.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    num_classes = 10
    transform = build_transform(method, num_classes)
    train, val, test = make_data(size, train_size, val_size, test_size, seed, batch_size, workers, make_dataset)
    model = DemoNet(num_classes=num_classes, width=width, epochs=epochs)
    # The head check (AblationCAM) is left to `salaug diagnose`: the demo watches GradCAM and EigenCAM.
    monitor = SaliencyMonitor(target_layer=TARGET_LAYER, box_key=2, max_batches=2, every_n_epochs=max(epochs // 4, 1),
                              head_check=False)
    callbacks: list[Any] = [monitor]
    augmentation = None
    if transform is not None:
        kind = _FlatSaliency if method == "cutmix" else SaliencyAugmentation
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
        score = measure_label_fidelity(transform, model, size, seed, num_classes, flat_saliency=method == "cutmix")
    return RunResult(method, acc, pg, iou, score, seconds, list(model.curve), model, augmentation)


def write_pictures(result: RunResult, others: list[RunResult], out: str, size: int, seed: int) -> list[str]:
    """CAM overlays on validation images, augmented samples with soft labels, accuracy curves."""
    from salaug.viz import draw_boxes, overlay, save_grid

    os.makedirs(out, exist_ok=True)
    model = result.model
    assert model is not None
    ds = ClutteredObjects(split="val", size=size, length=16, seed=seed)
    x, y, boxes = (torch.stack([torch.as_tensor(ds[i][j]) for i in range(16)]) for j in range(3))
    maps = GradCAM(model, TARGET_LAYER)(x, y)
    rows = {"validation images, true boxes": draw_boxes(x, boxes), "GradCAM of the true class": overlay(x, maps)}
    paths = [save_grid(rows, os.path.join(out, "cam_overlays.png"), nrow=16)]
    transform = build_transform(result.method, 10)
    if transform is not None:
        transform.generator = torch.Generator().manual_seed(seed)
        if result.method == "cutmix":
            maps = torch.zeros_like(maps)
        mixed = transform(x, maps, y)
        captions = [" ".join(f"{int(i)}:{float(v):.2f}" for v, i in zip(*row.topk(2)) if float(v) > 0)
                    for row in mixed.labels]
        rows = {"images": x, "GradCAM of the true class": overlay(x, maps), f"{result.method} (soft labels below)": mixed.images}
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
    """A markdown table of the runs."""
    base = next((r.seconds for r in results if r.method == "none"), None)
    lines = ["| method | test acc | pointing game | CAM box IoU | label fidelity | train time |",
             "|---|---|---|---|---|---|"]
    for r in results:
        fid = "n/a" if r.label_fidelity is None else f"{r.label_fidelity:.3f}"
        t = f"{r.seconds:.0f} s" + (f" ({r.seconds / base:.2f}x)" if base else "")
        lines.append(f"| {r.method} | {r.test_acc:.3f} | {r.pointing_game:.3f} | {r.box_iou:.3f} | {fid} | {t} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``salaug demo`` argument parser: every argument typed and range-checked by argparse."""
    from salaug.cli import accelerator, fraction, int_range, output_dir, positive_int, seed

    parser = argparse.ArgumentParser(prog="salaug demo", description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="snapmix", choices=METHODS)
    parser.add_argument("--epochs", type=positive_int, default=40)
    parser.add_argument("--out", type=output_dir, default="salaug_demo",
                        help="directory for the results and pictures (created if missing)")
    parser.add_argument("--device", type=accelerator, default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--compare", nargs="*", default=None, choices=["none", "cutmix"],
                        help="also train these baselines on the same schedule (default with the flag: none cutmix)")
    parser.add_argument("--train-size", type=positive_int, default=500,
                        help="training images; few per class (50) is where mixing pays")
    parser.add_argument("--val-size", type=positive_int, default=200)
    parser.add_argument("--test-size", type=positive_int, default=1000)
    parser.add_argument("--size", type=int_range(16, 512, "ClutteredObjects draws 16 to 512 px images here"),
                        default=32, help="image side in pixels")
    parser.add_argument("--width", type=positive_int, default=16, help="DemoNet's base channel width")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--cam-scale", type=fraction, default=1.0,
                        help="resolution factor of the CAM forward, in (0, 1]")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the demo's arguments; a bad one exits with argparse's code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if round(args.size * args.cam_scale) < 8:  # DemoNet halves the CAM input three times
        parser.error(f"--cam-scale {args.cam_scale} on {args.size} px images runs the CAM on "
                     f"{round(args.size * args.cam_scale)} px, below the 8 px the network needs; raise it")
    return args


def main(argv: list[str] | None = None) -> int:
    """``salaug demo [--method M] [--epochs N] [--out DIR] [--device D] [--seed S] [--compare B]``."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    common = dict(epochs=args.epochs, size=args.size, train_size=args.train_size, val_size=args.val_size,
                  test_size=args.test_size, batch_size=args.batch_size,
                  seed=args.seed, device=args.device, out=args.out, progress=not args.no_progress,
                  cam_scale=args.cam_scale, width=args.width)
    main_run = run(args.method, **common)
    baselines = [] if args.compare is None else (args.compare or ["none", "cutmix"])
    others = [run(b, **common) for b in baselines if b != args.method]
    results = [main_run, *others]
    table = format_table(results)
    paths = write_pictures(main_run, others, args.out, args.size, args.seed)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump([{k: v for k, v in vars(r).items() if k not in ("model", "callback")} for r in results], f, indent=1)
    weights = os.path.join(args.out, "model.pt")
    torch.save(main_run.model.state_dict(), weights)  # type: ignore[union-attr]
    print()
    print(table)
    if others:
        print("\nOne seed: differences of a few points are noise here. benchmarks/payoff.py measures the same "
              "regime over paired seeds with confidence intervals (README, 'Does it help?').")
    print("\npictures: " + ", ".join(str(p) for p in paths))
    print(f"model ({args.method}): {weights}; check it with `salaug diagnose --checkpoint {weights} --size {args.size}`")
    return 0
