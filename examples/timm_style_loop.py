"""``salaug.SaliencyAugmenter`` in the slot of timm's ``mixup_fn``.

timm's ``train.py`` builds ``mixup_fn`` (its Mixup / CutMix) once, switches the loss to a
soft-target cross-entropy when it is set, and calls ``input, target = mixup_fn(input, target)``
inside ``train_one_epoch``. The augmenter has the same call shape, so it takes that slot unchanged;
this script reproduces the shape of that loop (timm itself is not needed):

* ``mixup_fn = salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=K), ...)`` where timm
  would build ``Mixup(...)``;
* ``SoftTargetCrossEntropy`` when ``mixup_fn`` is set, ``CrossEntropyLoss(label_smoothing=...)``
  otherwise; with the augmenter, smoothing is applied to its soft targets (timm's Mixup does the
  same inside);
* ``--mixup-off-epoch``: from that epoch on, batches are no longer mixed (``mixup_fn.batch_p = 0``;
  timm sets ``mixup_fn.mixup_enabled = False``); targets stay ``(B, K)`` so the loss does not change;
* the standard recipe first, as timm's transforms do before the mix: a 4-px padded random crop and a
  horizontal flip (``salaug.crop_flip``, batched on the device); SnapMix then mixes half of the samples
  (its default ``p=0.5``).

Run::

    python examples/timm_style_loop.py                          # SnapMix + GradCAM, 3 epochs
    python examples/timm_style_loop.py --no-salaug              # the same loop, no mixing
    python examples/timm_style_loop.py --epochs 1 --steps 3 --limit 128   # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against ``(B, K)`` probability targets: ``-sum_k t_k log softmax(x)_k``, batch mean."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def create_model(num_classes: int) -> nn.Module:
    def stage(cin: int, cout: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    net = nn.Sequential()
    net.stem = stage(3, 32)
    net.stages = nn.Sequential(nn.MaxPool2d(2), stage(32, 64), nn.MaxPool2d(2), stage(64, 128), nn.MaxPool2d(2))
    net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(128, num_classes))
    return net


def train_one_epoch(epoch: int, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    loss_fn: nn.Module, args: argparse.Namespace, mixup_fn=None) -> float:
    if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        mixup_fn.batch_p = 0.0  # timm: mixup_fn.mixup_enabled = False
    model.train()
    total, seen = 0.0, 0
    for batch_idx, (input, target, _box) in enumerate(loader):
        if args.steps is not None and batch_idx >= args.steps:
            break
        input, target = input.to(args.device), target.to(args.device)
        input = salaug.crop_flip(input)[0]  # timm's train transforms (random crop + flip) before the mix
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)  # the one line timm's loop has for Mixup / CutMix
            if args.smoothing:
                target = target * (1.0 - args.smoothing) + args.smoothing / target.shape[1]
        output = model(input)
        loss = loss_fn(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * input.shape[0]
        seen += input.shape[0]
    return total / max(seen, 1)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: str) -> float:
    model.eval()
    correct, n = 0, 0
    for input, target, _box in loader:
        output = model(input.to(device))
        correct += int((output.argmax(1) == target.to(device)).sum())
        n += target.shape[0]
    return correct / max(n, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="at most this many steps per epoch")
    p.add_argument("--limit", type=int, default=3000)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    p.add_argument("--no-salaug", dest="salaug", action="store_false", help="train without mixing")
    p.add_argument("--cam-scale", type=float, default=0.5)
    p.add_argument("--mixup-off-epoch", type=int, default=0, help="stop mixing from this epoch on (0: never)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    k = args.num_classes
    train = salaug.ClutteredObjects("train", size=args.size, length=args.limit, num_classes=k, cache=True)
    val = salaug.ClutteredObjects("val", size=args.size, length=max(args.batch_size, args.limit // 4),
                                  num_classes=k, cache=True)
    loader_train = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    loader_eval = DataLoader(val, batch_size=256)
    model = create_model(k).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)

    # -- where timm's train.py builds `mixup_fn = Mixup(**mixup_args)` -------------------------------
    mixup_fn = None
    if args.salaug:
        mixup_fn = salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=k), cam="gradcam",
                                            target_layer="stages", cam_scale=args.cam_scale,
                                            warmup_steps=20, seed=args.seed)
    # -- and picks the loss: soft targets with mixing, label smoothing otherwise -----------------------
    if mixup_fn is not None:
        train_loss_fn: nn.Module = SoftTargetCrossEntropy()
    else:
        train_loss_fn = nn.CrossEntropyLoss(label_smoothing=args.smoothing)

    for epoch in range(args.epochs):
        start = time.perf_counter()
        loss = train_one_epoch(epoch, model, loader_train, optimizer, train_loss_fn, args, mixup_fn=mixup_fn)
        acc = validate(model, loader_eval, args.device)
        print(f"epoch {epoch}: train loss {loss:.3f} | val top-1 {acc:.3f} | {time.perf_counter() - start:.1f} s",
              flush=True)
    if mixup_fn is not None:
        print(f"mixup_fn: {mixup_fn}; mixed {mixup_fn.augmented} of {mixup_fn.steps} batches")


if __name__ == "__main__":
    main()
