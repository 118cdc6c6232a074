"""Cost of SaliencyAugmentation inside a real Lightning training loop, as ratios to a plain step.

Fits the same model on the same in-memory batches for the same number of steps, once per
configuration, in interleaved rounds, and times each training batch from the first
``on_train_batch_start`` to ``on_train_batch_end`` (so the CAM forward, the transform and the
training step are all inside). Prints the median per-step time and its ratio to the plain step:

* plain training (no callback)
* salaug GradCAM at ``cam_scale=1.0`` and ``0.5``, with SaliencyMix and with SnapMix
* the same SaliencyMix driven by pytorch-grad-cam (the ``grad-cam`` package) inside the loop

Usage::

    python benchmarks/callback_overhead.py                 # ResNet-18, B32, 96x96, CPU
    python benchmarks/callback_overhead.py --device cuda --batch 128 --size 224
"""

from __future__ import annotations

import argparse
import logging
import statistics
import warnings
import time
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import salaug
from salaug.callback import SaliencyAugmentation
from salaug.cam.base import eval_mode


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


class GradCamPackageAugmentation(SaliencyAugmentation):
    """The same callback with its CAMs from pytorch-grad-cam instead of salaug's engine.

    pytorch-grad-cam puts the model in eval mode and never restores it, and zeroes the grads; the
    modes are restored here so that training stays correct (the comparison is about speed).
    """

    def compute_saliency(self, trainer: Any, pl_module: Any, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = pl_module.get_submodule(self.target_layer)
        with eval_mode(pl_module), GradCAM(model=pl_module, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
        return torch.from_numpy(maps).unsqueeze(1).to(images.device)


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

    def ours(transform: Any, scale: float) -> Any:
        return lambda: SaliencyAugmentation(transform(), cam="gradcam", target_layer=layer, cam_scale=scale)

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
        "pytorch-grad-cam GradCAM + SaliencyMix": lambda: GradCamPackageAugmentation(mix(), target_layer=layer),
    }


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
    args = parser.parse_args()
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    k = 10
    n = args.batch * (args.steps + args.warmup)
    data = TensorDataset(torch.randn(n, 3, args.size, args.size), torch.randint(0, k, (n,)))
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    configs = configurations(k)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, make in configs.items():
            times[name].append(fit_once(make, loader, args.steps, args.warmup, args.device, k))
    plain = statistics.median(times["plain step"])
    print(f"ResNet-18, batch {args.batch}, {args.size}x{args.size}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} interleaved "
          f"rounds x {args.steps} steps")
    print("| configuration | ms / step | ratio to plain step |")
    print("|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {1000 * t:.1f} | {t / plain:.2f}x |")


if __name__ == "__main__":
    main()
