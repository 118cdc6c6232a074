"""Cost of saliency augmentation inside real training steps, as ratios to a plain step.

Two loops, each fitting the same model on the same in-memory batches for the same number of steps,
once per configuration, in interleaved rounds (so a busy machine slows every configuration alike):

* **plain PyTorch loop** (``loop`` rows): ``images, labels = aug(images, labels)`` with
  :class:`salaug.SaliencyAugmenter`, then forward, loss, backward, optimizer step; each step is timed
  from before the augmenter call to after ``optimizer.step()``, and the configurations take turns
  step by step (a load change on a shared machine hits them all); the median is over every timed
  step of every round. Rows: no augmenter; CutMix with no CAM (SaliencyMix fed flat saliency);
  CutMix and SnapMix with ``labels_from="forward"`` (no CAM pass: the labels come from the step's
  own forward; their target: within 1.05x of a plain step); GradCAM at
  ``cam_scale=1.0`` and ``0.5`` with SaliencyMix and with SnapMix; in the plain loop also PuzzleMix
  (without and with transport; its target: within 1.35x of a plain step).
* **Lightning** (``lightning`` rows): the :class:`salaug.SaliencyAugmentation` callback, each batch
  timed from the first ``on_train_batch_start`` to ``on_train_batch_end``. Rows: no callback; the
  same four salaug configurations; the same SaliencyMix driven by pytorch-grad-cam (the
  ``grad-cam`` package) inside the loop.

Each row prints the median per-step time and its ratio to its own loop's plain step: for the loop,
the median of the ratios of steps run side by side (same batch, consecutive); for Lightning, the
ratio of the medians over rounds of each fit's median step.

Usage::

    python benchmarks/callback_overhead.py                 # ResNet-18, B32, 96x96, CPU, both loops
    python benchmarks/callback_overhead.py --loops loop    # the plain PyTorch loop only
    python benchmarks/callback_overhead.py --device cuda --batch 128 --size 224
    python benchmarks/callback_overhead.py --model vit --loops loop   # TransMix on a ViT
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import salaug
from salaug.augmenter import SaliencyAugmenter
from salaug.callback import SaliencyAugmentation
from salaug.cam.base import eval_mode
from salaug.models import tiny_vit
from salaug.sources import Flat, SaliencySource


class Classifier(pl.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class GradCamPackage(SaliencySource):
    """CAMs from pytorch-grad-cam instead of salaug's engine, on the LightningModule given at setup.

    pytorch-grad-cam puts the model in eval mode and never restores it, and zeroes the grads; the
    modes are restored here so that training stays correct (the comparison is about speed).
    """

    def __init__(self, target_layer: str) -> None:
        self.target_layer = target_layer
        self.module: torch.nn.Module | None = None

    def saliency(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        assert self.module is not None, "set at setup"
        layer = self.module.get_submodule(self.target_layer)
        with eval_mode(self.module), GradCAM(model=self.module, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
        return torch.from_numpy(maps).unsqueeze(1).to(images.device)


class GradCamPackageAugmentation(SaliencyAugmentation):
    """The callback with its saliency from :class:`GradCamPackage`."""

    def __init__(self, transform: Any, target_layer: str) -> None:
        self.package = GradCamPackage(target_layer)
        super().__init__(transform, source=self.package)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.package.module = pl_module
        super().setup(trainer, pl_module, stage)


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


def configurations(num_classes: int) -> dict[str, Any]:
    layer = "net.layer4"

    def ours(transform: Any, scale: float) -> Any:  # the CAM rows: a CAM forward per batch (labels_from="cam")
        return lambda: SaliencyAugmentation(transform(), cam="gradcam", target_layer=layer, cam_scale=scale,
                                            labels_from="cam")

    def mix() -> Any:
        return salaug.SaliencyMix(num_classes=num_classes)

    def snap() -> Any:
        return salaug.SnapMix(num_classes=num_classes)

    return {
        "plain step": None,
        "salaug GradCAM x1.0 + SaliencyMix": ours(mix, 1.0),
        "salaug GradCAM x0.5 + SaliencyMix": ours(mix, 0.5),
        "salaug GradCAM x1.0 + SnapMix": ours(snap, 1.0),
        "salaug GradCAM x0.5 + SnapMix": ours(snap, 0.5),
        "salaug SnapMix, labels from the forward": lambda: SaliencyAugmentation(
            snap(), target_layer=layer, labels_from="forward"),
        "pytorch-grad-cam GradCAM + SaliencyMix": lambda: GradCamPackageAugmentation(mix(), target_layer=layer),
    }


def build_model(name: str, num_classes: int, size: int) -> torch.nn.Module:
    """``resnet18`` (torchvision) or ``vit``: a DeiT-Tiny-shaped torchvision ``VisionTransformer``
    (patch 8, 12 blocks of width 192, 3 heads, linear patch embedding), randomly initialised."""
    if name == "vit":
        return tiny_vit(num_classes=num_classes, image_size=size, patch_size=8, num_layers=12,
                        num_heads=3, hidden_dim=192, mlp_dim=768, stem="patch")
    return torchvision.models.resnet18(num_classes=num_classes)


def flat_mix(transform: type, num_classes: int) -> Any:
    """``model -> augmenter`` of ``transform`` fed flat saliency: the saliency-free mix, no CAM forward."""
    return lambda model: SaliencyAugmenter(model, transform(num_classes=num_classes), source=Flat(), seed=0)


def vit_loop_configurations(num_classes: int) -> dict[str, Any]:
    """Plain-loop rows for the ViT: the saliency-free mix and the forward-label mixes (TransMix)."""

    def forward(transform: type) -> Any:
        return lambda model: SaliencyAugmenter(model, transform(num_classes=num_classes), labels_from="forward",
                                               seed=0)

    return {
        "loop: plain step": None,
        "loop: CutMix (SaliencyMix on flat saliency, no CAM)": flat_mix(salaug.SaliencyMix, num_classes),
        "loop: TransMix (CutMix, labels from the forward's attention)": forward(salaug.SaliencyMix),
        "loop: SnapMix, labels from the forward's attention": forward(salaug.SnapMix),
    }


def loop_configurations(num_classes: int) -> dict[str, Any]:
    """Plain-loop rows: ``None`` (no augmenter) or ``model -> SaliencyAugmenter``."""

    def ours(transform: type, scale: float, **options: Any) -> Any:
        options.setdefault("labels_from", "cam")  # the GradCAM rows run their CAM forward
        return lambda model: SaliencyAugmenter(model, transform(num_classes=num_classes), cam="gradcam",
                                               target_layer="layer4", cam_scale=scale, seed=0, **options)

    return {
        "loop: plain step": None,
        "loop: CutMix (SaliencyMix on flat saliency, no CAM)": flat_mix(salaug.SaliencyMix, num_classes),
        "loop: SaliencyAugmenter CutMix, labels from the forward": ours(salaug.SaliencyMix, 1.0, labels_from="forward"),
        "loop: SaliencyAugmenter SnapMix, labels from the forward": ours(salaug.SnapMix, 1.0, labels_from="forward"),
        "loop: SaliencyAugmenter GradCAM x1.0 + SaliencyMix": ours(salaug.SaliencyMix, 1.0),
        "loop: SaliencyAugmenter GradCAM x0.5 + SaliencyMix": ours(salaug.SaliencyMix, 0.5),
        "loop: SaliencyAugmenter GradCAM x1.0 + SnapMix": ours(salaug.SnapMix, 1.0),
        "loop: SaliencyAugmenter GradCAM x0.5 + SnapMix": ours(salaug.SnapMix, 0.5),
        "loop: SaliencyAugmenter GradCAM x1.0 + PuzzleMix": ours(salaug.PuzzleMix, 1.0),
        "loop: SaliencyAugmenter GradCAM x1.0 + PuzzleMix transport": ours(
            lambda num_classes: salaug.PuzzleMix(num_classes=num_classes, transport=True), 1.0),
    }


class LoopRun:
    """One configuration's model, optimizer and augmenter in a plain PyTorch training loop."""

    def __init__(self, make_augmenter: Any, device: str, num_classes: int, model: str = "resnet18",
                 size: int = 96) -> None:
        torch.manual_seed(0)
        self.model = build_model(model, num_classes, size).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.augment = make_augmenter(self.model) if make_augmenter else None
        self.cuda = torch.device(device).type == "cuda"

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One training step (augmenter call included); returns its time in seconds."""
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if self.augment is not None:
            images, labels = self.augment(images, labels)
        loss = F.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def loop_round(configs: dict[str, Any], batches: list[tuple[torch.Tensor, torch.Tensor]], warmup: int, device: str,
               num_classes: int, model: str = "resnet18") -> dict[str, list[float]]:
    """Fresh runs of every configuration, interleaved step by step: each step's times of each run."""
    size = batches[0][0].shape[-1]
    runs = [(name, LoopRun(make, device, num_classes, model, size)) for name, make in configs.items()]
    times: dict[str, list[float]] = {name: [] for name in configs}
    for i, (images, labels) in enumerate(batches):
        for j in range(len(runs)):  # the order rotates, so that no run always follows the same one
            name, run = runs[(i + j) % len(runs)]
            t = run.step(images, labels)
            if i >= warmup:
                times[name].append(t)
    return times


def fit_once(make_callback: Any, loader: DataLoader, steps: int, warmup: int, device: str, num_classes: int) -> float:
    torch.manual_seed(0)
    timer = StepTimer(warmup)
    callbacks: list[Any] = [timer] + ([make_callback()] if make_callback else [])
    trainer = pl.Trainer(max_steps=steps + warmup, accelerator=device, devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks)
    trainer.fit(Classifier(num_classes), loader)
    return statistics.median(timer.times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loops", choices=("all", "loop", "lightning"), default="all",
                        help="which training loops to time (default: both)")
    parser.add_argument("--model", choices=("resnet18", "vit"), default="resnet18",
                        help="vit: a DeiT-Tiny-shaped ViT, plain loop only (CutMix, TransMix, SnapMix forward labels)")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="time only the configurations whose name contains one of these (plain steps always)")
    args = parser.parse_args()
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    k = 10
    n = args.batch * (args.steps + args.warmup)
    data = TensorDataset(torch.randn(n, 3, args.size, args.size), torch.randint(0, k, (n,)))
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    batches = [(x.to(args.device), y.to(args.device)) for x, y in loader]
    if args.model == "vit" and args.loops == "lightning":
        parser.error("--model vit times the plain loop only; use --loops loop")
    loop_rows = vit_loop_configurations(k) if args.model == "vit" else loop_configurations(k)
    loop = loop_rows if args.loops in ("all", "loop") else {}
    lightning = {f"lightning: {name}": make for name, make in configurations(k).items()} \
        if args.loops in ("all", "lightning") and args.model == "resnet18" else {}
    if args.only:
        def keep(name: str) -> bool:
            return name.endswith("plain step") or any(text in name for text in args.only)

        loop = {name: make for name, make in loop.items() if keep(name)}
        lightning = {name: make for name, make in lightning.items() if keep(name)}
    times: dict[str, list[float]] = {name: [] for name in [*loop, *lightning]}
    for _ in range(args.rounds):
        # the plain loop interleaves its configurations step by step; Lightning fit by fit
        for name, ts in loop_round(loop, batches, args.warmup, args.device, k, args.model).items():
            times[name].extend(ts)
        for name, make in lightning.items():
            times[name].append(fit_once(make, loader, args.steps, args.warmup, args.device, k))
    model = "ViT (DeiT-Tiny shape, patch 8)" if args.model == "vit" else "ResNet-18"
    print(f"{model}, batch {args.batch}, {args.size}x{args.size}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} interleaved "
          f"rounds x {args.steps} steps")
    print("| configuration | ms / step | ratio to plain step |")
    print("|---|---|---|")
    for name, ts in times.items():
        base = times[f"{name.split(':')[0]}: plain step"]
        # loop rows: the median of step-by-step ratios (the steps ran side by side); Lightning: of medians
        ratio = statistics.median(t / p for t, p in zip(ts, base, strict=True)) if name.startswith("loop") else \
            statistics.median(ts) / statistics.median(base)
        print(f"| {name} | {1000 * statistics.median(ts):.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
