"""Saliency-guided augmentation in the DataLoader: a plain PyTorch training loop.

``SaliencyCollate(SaliencyMix, SpectralResidual)`` is the ``collate_fn`` of a DataLoader with two
worker processes: each worker collates a batch, computes model-free spectral-residual saliency for
it, and pastes a box around each partner's saliency peak (SaliencyMix), returning images and
``(B, K)`` soft labels. Each sample first gets the standard recipe in the worker (``salaug.crop_flip``:
4-px padded random crop + horizontal flip), and SaliencyMix mixes half of the samples of a batch
(its default ``p=0.5``). The training loop is unchanged except that ``F.cross_entropy`` gets soft
labels. Data: the embedded ``ClutteredObjects`` (objects on clutter; nothing is downloaded).

Run::

    python examples/dataloader_collate.py                      # 2 epochs on 5000 images
    python examples/dataloader_collate.py --epochs 1 --limit 256   # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from salaug.data import SaliencyCollate
from salaug.datasets import ClutteredObjects
from salaug.saliency import SpectralResidual
from salaug.transforms.mix import SaliencyMix


class WithRecipe(Dataset):
    """``(image, label)`` samples of ``dataset`` after the standard recipe (drawn in the worker)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        image, label, *_ = self.dataset[index]  # the box is dropped: the crop would move it
        return salaug.crop_flip(image[None])[0][0], label


def small_cnn(num_classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for images, labels, _ in loader:
        logits = model(images)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        n += len(labels)
    return loss / n, correct / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="at most this many training steps per epoch")
    p.add_argument("--limit", type=int, default=5000, help="number of training images")
    p.add_argument("--val-limit", type=int, default=None, help="number of validation images (default: limit/4)")
    p.add_argument("--size", type=int, default=48, help="image side")
    p.add_argument("--num-classes", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    train = WithRecipe(ClutteredObjects("train", size=args.size, length=args.limit, num_classes=args.num_classes))
    val_n = args.val_limit if args.val_limit is not None else max(args.batch_size, args.limit // 4)
    val = ClutteredObjects("val", size=args.size, length=val_n, num_classes=args.num_classes)

    # The augmentation lives in the collate_fn: it runs in the worker processes, on CPU.
    collate = SaliencyCollate(SaliencyMix(), SpectralResidual(size=32),
                              num_classes=args.num_classes, seed=args.seed)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              num_workers=args.workers, collate_fn=collate,
                              persistent_workers=args.workers > 0,
                              generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val, batch_size=256, num_workers=0)

    model = small_cnn(args.num_classes)
    steps_per_epoch = len(train_loader) if args.steps is None else min(args.steps, len(train_loader))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    total_steps = max(1, args.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total_steps)

    for epoch in range(args.epochs):
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for step, (images, soft_labels) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            # images (B, 3, H, W) already mixed; soft_labels (B, K) rows summing to 1
            loss = F.cross_entropy(model(images), soft_labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(images)
            seen += len(images)
        val_loss, val_acc = evaluate(model, val_loader)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / max(seen, 1):.3f} "
              f"({seen / (time.perf_counter() - start):.0f} img/s) | val loss {val_loss:.3f} acc {val_acc:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
