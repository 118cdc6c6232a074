"""``salaug.SaliencyAugmenter`` with Lightning Fabric, on one device or with DDP.

Fabric keeps the loop in your hands: ``fabric.setup`` wraps the model and optimizer (DDP across
processes), ``fabric.setup_dataloaders`` shards the data and moves batches to the device,
``fabric.backward`` replaces ``loss.backward()``. The augmenter goes between the batch and the
forward, exactly as in a plain loop. Two details:

* it is built on the **unwrapped** module (``model.module``): the CAM forward then runs the network
  itself, never the DDP wrapper, so it triggers no gradient synchronisation between processes;
* under DDP each process draws from its own stream: the rank is read from ``torch.distributed``
  (which Fabric initialises), so the ranks mix their batches differently from one seed.

Every batch first gets the standard recipe (``salaug.crop_flip``: 4-px padded random crop + horizontal
flip, batched on the device); SaliencyMix then mixes half of the samples (its default ``p=0.5``).

Run::

    python examples/fabric_loop.py                                  # one process
    python examples/fabric_loop.py --devices 2 --strategy ddp       # 2 processes on CPU (gloo)
    python examples/fabric_loop.py --epochs 1 --steps 3 --limit 128 --devices 2 --strategy ddp   # smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug


def small_cnn(num_classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    net = nn.Sequential()
    net.features = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128))
    net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))
    return net


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="at most this many steps per epoch")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy)
    fabric.launch()  # with strategy="ddp" this starts the other processes, each running this script
    fabric.seed_everything(args.seed)
    k = args.num_classes
    train = salaug.ClutteredObjects("train", size=args.size, length=args.limit, num_classes=k)
    val = salaug.ClutteredObjects("val", size=args.size, length=max(args.batch_size, args.limit // 4), num_classes=k)
    train_loader, val_loader = fabric.setup_dataloaders(
        DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True),
        DataLoader(val, batch_size=128),
    )
    net = small_cnn(k)
    model, optimizer = fabric.setup(net, torch.optim.AdamW(net.parameters(), lr=args.lr))
    # Built on the network itself (model.module is net), not on Fabric's / DDP's wrapper.
    aug = salaug.SaliencyAugmenter(model.module, salaug.SaliencyMix(num_classes=k), cam="gradcam",
                                   target_layer="features", warmup_steps=5, seed=args.seed)
    for epoch in range(args.epochs):
        model.train()
        for step, (images, labels, _boxes) in enumerate(train_loader):
            if args.steps is not None and step >= args.steps:
                break
            # the standard recipe first; batches are already on this process's device
            images = salaug.crop_flip(images)[0]
            images, soft_labels = aug(images, labels)
            loss = F.cross_entropy(model(images), soft_labels)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
        model.eval()
        correct = torch.zeros((), device=fabric.device)
        total = torch.zeros((), device=fabric.device)
        with torch.no_grad():
            for images, labels, _boxes in val_loader:
                correct = correct + (model(images).argmax(1) == labels).sum()
                total = total + labels.numel()
        acc = fabric.all_reduce(correct, reduce_op="sum") / fabric.all_reduce(total, reduce_op="sum")
        fabric.print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f} | val acc {acc.item():.3f}", flush=True)
    print(f"rank {fabric.global_rank}/{fabric.world_size}: augmenter rank {aug.rank}, augmented {aug.augmented} "
          f"of {aug.steps} batches", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # else gloo's threads can abort the process at exit


if __name__ == "__main__":
    main()
