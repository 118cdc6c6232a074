"""Saliency-guided augmentation in a plain PyTorch training loop: ``salaug.SaliencyAugmenter``.

The augmenter is built on the model being trained and called on each batch, after the batch is on
the device and before the forward::

    images, soft_labels = aug(images, labels)       # (B, 3, H, W), (B, K)
    loss = F.cross_entropy(model(images), soft_labels)

Every batch first gets the standard recipe (``salaug.crop_flip``: 4-px padded random crop + horizontal
flip, batched on the device). The augmenter then computes GradCAM maps of the batch with the model
(side-effect free: modes, BatchNorm statistics and ``.grad`` stay as they are), mixes half of the
samples with SnapMix (its default ``p=0.5``: a random box of each partner is resized into a random
box of the image, and the label shares follow the CAM mass pasted and kept) and returns ``(B, K)``
soft labels. For the first ``--warmup-steps`` batches, while the young network's CAMs are noise,
the labels follow box areas instead.

``aug.state_dict()`` goes into the checkpoint next to the model's and the optimizer's, so a resumed
run continues the same augmentation stream. Data: the embedded ``ClutteredObjects`` (objects on
clutter; nothing is downloaded).

Run::

    python examples/plain_loop.py                                  # 3 epochs on 3000 images
    python examples/plain_loop.py --method saliencymix --cam-scale 0.5
    python examples/plain_loop.py --epochs 1 --steps 3 --limit 128 --checkpoint out/ckpt.pt   # smoke run
    python examples/plain_loop.py --epochs 2 --steps 3 --limit 128 --resume out/ckpt.pt        # resume it
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug

TRANSFORMS = {
    "snapmix": salaug.SnapMix,
    "saliencymix": salaug.SaliencyMix,
    "attentivecutmix": salaug.AttentiveCutMix,
    "salientpaste": salaug.SalientPaste,
    "guidedmixup": salaug.GuidedMixup,
}


def small_cnn(num_classes: int) -> nn.Module:
    """A small CNN; ``features`` is the CAM layer (1/8 of the input resolution)."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    net = nn.Sequential()
    net.features = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                                 *block(64, 128), nn.MaxPool2d(2), *block(128, 128))
    net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))
    return net


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for images, labels, _boxes in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        n += len(labels)
    return loss / max(n, 1), correct / max(n, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="at most this many training steps per epoch")
    p.add_argument("--limit", type=int, default=3000, help="number of training images")
    p.add_argument("--val-limit", type=int, default=None, help="number of validation images (default: limit/4)")
    p.add_argument("--size", type=int, default=48, help="image side")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--method", default="snapmix", choices=sorted(TRANSFORMS))
    p.add_argument("--cam", default="gradcam", choices=sorted(salaug.CAM_METHODS))
    p.add_argument("--cam-scale", type=float, default=1.0)
    p.add_argument("--no-recipe", action="store_true", help="no padded crop + flip before the augmenter")
    p.add_argument("--warmup-steps", type=int, default=50, help="first batches with random placement")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", default=None, help="save model, optimizer and augmenter state here")
    p.add_argument("--resume", default=None, help="continue from a --checkpoint file")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    k = args.num_classes
    train = salaug.ClutteredObjects("train", size=args.size, length=args.limit, num_classes=k, cache=True)
    val_n = args.val_limit if args.val_limit is not None else max(args.batch_size, args.limit // 4)
    val = salaug.ClutteredObjects("val", size=args.size, length=val_n, num_classes=k, cache=True)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val, batch_size=256)

    model = small_cnn(k).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    aug = salaug.SaliencyAugmenter(
        model, TRANSFORMS[args.method](num_classes=k),
        cam=args.cam, target_layer="features",   # CAMs of the model being trained, of each image's label
        cam_scale=args.cam_scale,
        warmup_steps=args.warmup_steps, seed=args.seed,
    )
    start_epoch = 0
    if args.resume:
        state = torch.load(args.resume, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        aug.load_state_dict(state["augmenter"])  # the augmentation stream continues where it stopped
        start_epoch = state["epoch"] + 1

    for epoch in range(start_epoch, args.epochs):
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for step, (images, labels, _boxes) in enumerate(train_loader):
            if args.steps is not None and step >= args.steps:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if not args.no_recipe:
                images = salaug.crop_flip(images)[0]                      # the standard recipe first
            images, soft_labels = aug(images, labels)           # (B, 3, H, W), (B, K) rows summing to 1
            loss = F.cross_entropy(model(images), soft_labels)  # cross-entropy takes soft targets as they are
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(images)
            seen += len(images)
        val_loss, val_acc = evaluate(model, val_loader, device)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / max(seen, 1):.3f} "
              f"({seen / (time.perf_counter() - start):.0f} img/s) | val loss {val_loss:.3f} acc {val_acc:.3f}",
              flush=True)
        if args.checkpoint:
            Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "augmenter": aug.state_dict(), "epoch": epoch}, args.checkpoint)
    print(f"augmented {aug.augmented} of {aug.steps} batches with {args.method} "
          f"({min(aug.steps, aug.warmup_steps)} in warm-up)")


if __name__ == "__main__":
    main()
