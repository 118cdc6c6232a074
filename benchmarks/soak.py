"""Soak: 1000 training steps with SaliencyAugmentation, watching memory and hooks for leaks.

A small CNN on tiny in-memory images is trained by a Lightning ``Trainer`` with the callback
(GradCAM + SaliencyMix, ``p=0.5``, a warm-up, pictures logged every ``--picture-every`` augmented
steps to a logger in a temporary directory). A probe callback records the resident set size
(RSS) and the number of live tensors at steps 100 and ``--steps``, and the number of hooks
registered on the model's modules before ``fit``, between steps, and after ``fit``.

Pass criteria (exit code 1 when broken): RSS growth from step 100 to the end below 5 %; hooks at
the end equal to the count before ``fit``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/soak.py                       # 1000 steps, ~2-5 min on CPU
    python benchmarks/soak.py --steps 300 --ema-decay 0.99 --logger csv
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import sys
import tempfile
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import salaug
from salaug.callback import SaliencyAugmentation


def rss_mib() -> float:
    """Current resident set size in MiB (``/proc/self/statm``; peak RSS where that is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def count_hooks(model: nn.Module) -> int:
    """Forward, forward-pre, backward and backward-pre hooks on every module of ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


class Net(pl.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.net = nn.Sequential()
        self.net.features = nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                                          *block(32, 64))
        self.net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, batch_size=batch[0].shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


class Probe(pl.Callback):
    def __init__(self, marks: tuple[int, ...]) -> None:
        self.marks = marks
        self.rss: dict[int, float] = {}
        self.tensors: dict[int, int] = {}
        self.hooks_between_steps: set[int] = set()
        self.start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        self.hooks_between_steps.add(count_hooks(pl_module))
        if step in self.marks:
            self.rss[step] = rss_mib()
            self.tensors[step] = live_tensors()
            print(f"  step {step:5d}: RSS {self.rss[step]:7.1f} MiB, {self.tensors[step]} live tensors, "
                  f"{time.perf_counter() - self.start:6.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--first-mark", type=int, default=100, help="the step memory growth is measured from")
    p.add_argument("--size", type=int, default=24, help="image side")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--images", type=int, default=512, help="images in the (cycled) training set")
    p.add_argument("--logger", choices=["tensorboard", "csv", "none"], default="tensorboard")
    p.add_argument("--picture-every", type=int, default=100, help="a picture every this many augmented steps")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--cam", default="gradcam", choices=sorted(salaug.CAM_METHODS))
    args = p.parse_args(argv)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    pl.seed_everything(0, verbose=False)
    k = 10
    data = TensorDataset(torch.rand(args.images, 3, args.size, args.size), torch.randint(0, k, (args.images,)))
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    model = Net(k)
    hooks_before = count_hooks(model)
    marks = tuple(sorted({args.first_mark, args.steps // 2, args.steps}))
    probe = Probe(marks)
    augment = SaliencyAugmentation(salaug.SaliencyMix(num_classes=k), cam=args.cam, target_layer="net.features",
                                   p=0.5, warmup_steps=50, ema_decay=args.ema_decay, seed=0,
                                   log_every_n_steps=args.picture_every)
    print(f"soak: {args.steps} steps, batch {args.batch} at {args.size}x{args.size}, {args.cam} + SaliencyMix "
          f"(p=0.5, warm-up 50, ema_decay={args.ema_decay}), logger {args.logger}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="salaug_soak_") as root:
        logger: Any = False
        if args.logger == "tensorboard":
            logger = pl.loggers.TensorBoardLogger(root, name="")
        elif args.logger == "csv":
            logger = pl.loggers.CSVLogger(root, name="")
        trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=logger,
                             log_every_n_steps=50, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=root, callbacks=[augment, probe])
        trainer.fit(model, loader)
        pictures = sum(f.endswith(".png") or "events" in f for _, _, fs in os.walk(root) for f in fs)
    hooks_after = count_hooks(model)

    first, last = probe.rss[args.first_mark], probe.rss[args.steps]
    growth = last / first - 1
    ok_memory = growth < 0.05
    ok_hooks = hooks_after == hooks_before and probe.hooks_between_steps == {hooks_before}
    print("| measure | value |")
    print("|---|---|")
    print(f"| RSS at step {args.first_mark} | {first:.1f} MiB |")
    print(f"| RSS at step {args.steps} | {last:.1f} MiB |")
    print(f"| RSS growth | {100 * growth:+.2f} % ({'ok' if ok_memory else 'FAIL'}: < 5 %) |")
    print(f"| live tensors at step {args.first_mark} / {args.steps} | {probe.tensors[args.first_mark]} / "
          f"{probe.tensors[args.steps]} |")
    print(f"| hooks before fit / between steps / after fit | {hooks_before} / "
          f"{sorted(probe.hooks_between_steps)} / {hooks_after} ({'ok' if ok_hooks else 'FAIL'}) |")
    print(f"| batches augmented / seen | {augment.batches_augmented} / {augment.batches_seen} |")
    print(f"| picture / event files written (temporary) | {pictures} |")
    return 0 if ok_memory and ok_hooks else 1


if __name__ == "__main__":
    sys.exit(main())
