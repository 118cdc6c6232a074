"""Saliency-guided augmentation inside a Lightning training loop.

``salaug.SaliencyAugmentation`` is a callback: before every training step it computes GradCAM maps
of the batch with the model being trained, mixes the images with a saliency transform (here
SaliencyMix: a box around each partner's CAM peak is pasted in), and writes the new images and
``(B, K)`` soft labels back into the batch. ``training_step`` keeps its ordinary
``F.cross_entropy(logits, y)``: cross-entropy accepts class probabilities as targets. Training
images first get the standard recipe in ``on_after_batch_transfer`` (``salaug.crop_flip``: 4-px padded
random crop + horizontal flip, batched on the device), which Lightning runs before the callback.

``salaug.SaliencyMonitor`` watches the validation set: pointing game (is the CAM peak inside the
true object box?), CAM box IoU, and an overlay picture per epoch.

Data: the embedded ``ClutteredObjects`` (one object on a cluttered background, with its true box);
nothing is downloaded. Pictures are written as PNGs under ``--out`` (CSV logger).

Run::

    python examples/lightning_callback.py                                   # 6 epochs, 4000 images
    python examples/lightning_callback.py --method attentivecutmix --arch resnet18
    python examples/lightning_callback.py --epochs 1 --limit 256            # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug

NUM_CLASSES = 10

# The transforms to choose from; each returns (B, K) soft labels whose rows sum to 1.
TRANSFORMS = {
    "saliencymix": lambda: salaug.SaliencyMix(num_classes=NUM_CLASSES),
    "attentivecutmix": lambda: salaug.AttentiveCutMix(num_classes=NUM_CLASSES),
    "snapmix": lambda: salaug.SnapMix(num_classes=NUM_CLASSES),
    "guidedmixup": lambda: salaug.GuidedMixup(num_classes=NUM_CLASSES),
    "salientpaste": lambda: salaug.SalientPaste(num_classes=NUM_CLASSES),
    "salientcrop": lambda: salaug.SalientCrop(num_classes=NUM_CLASSES),
    "keepcutout": lambda: salaug.KeepCutout(num_classes=NUM_CLASSES),
}


def build_network(arch: str, num_classes: int) -> tuple[nn.Module, str]:
    """The network and the dotted name of its CAM layer (relative to the network)."""
    if arch == "cnn":
        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        net = nn.Sequential()
        net.features = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                                     *block(64, 128), nn.MaxPool2d(2), *block(128, 128))   # 64 px -> 8x8 maps
        net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))
        return net, "features"
    if arch == "resnet18":
        # torchvision's ResNet-18, randomly initialised (weights=None), adapted to 64x64 images: a 3x3
        # stride-1 stem instead of the 7x7 stride-2 one, so layer4 still has 4x4 feature maps.
        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        return net, "layer4"
    raise ValueError(f"unknown arch {arch!r}")


class Classifier(pl.LightningModule):
    def __init__(self, arch: str = "cnn", num_classes: int = NUM_CLASSES, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net, layer = build_network(arch, num_classes)
        self.cam_layer = f"net.{layer}"  # names are relative to the LightningModule

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_after_batch_transfer(self, batch: list[Tensor], dataloader_idx: int) -> list[Tensor]:
        if self.trainer.training:  # the standard recipe on training images, before SaliencyAugmentation
            batch[0] = salaug.crop_flip(batch[0])[0]  # (the training boxes are not used, so they are not moved)
        return batch

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y, _boxes = batch  # y: (B, K) soft labels written by SaliencyAugmentation
        loss = F.cross_entropy(self(x), y)  # unchanged: soft targets work as they are
        self.log("train_loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        x, y, _boxes = batch  # (B,) class indices: the callback only touches training batches
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), batch_size=len(x))
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, batch_size=len(x))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr,
                                                    total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit", type=int, default=4000, help="number of training images")
    p.add_argument("--val-limit", type=int, default=None, help="number of validation images (default: limit/4)")
    p.add_argument("--method", default="saliencymix", choices=sorted(TRANSFORMS))
    p.add_argument("--cam", default="gradcam", choices=sorted(salaug.CAM_METHODS))
    p.add_argument("--arch", default="cnn", choices=["cnn", "resnet18"])
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="salaug_lightning", help="log directory (metrics CSV and PNG pictures)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    pl.seed_everything(args.seed, workers=True)
    val_limit = args.val_limit if args.val_limit is not None else max(args.batch_size, args.limit // 4)
    # Batches are lists [images (B,3,H,W), labels (B,), boxes (B,4)]: lists, not tuples, because the
    # callback writes the augmented images and soft labels back into the batch (default_collate
    # turns the dataset's tuples into a list).
    train = salaug.ClutteredObjects("train", size=args.size, length=args.limit, num_classes=NUM_CLASSES, cache=True)
    val = salaug.ClutteredObjects("val", size=args.size, length=val_limit, num_classes=NUM_CLASSES, cache=True)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val, batch_size=2 * args.batch_size)

    model = Classifier(args.arch, NUM_CLASSES, args.lr)
    augment = salaug.SaliencyAugmentation(
        TRANSFORMS[args.method](),      # the transform's defaults (a mix: half of the samples, p=0.5)
        cam=args.cam,                   # CAMs of the model being trained, of each image's own label
        target_layer=model.cam_layer,   # "net.features" / "net.layer4"
        log_every_n_steps=50,           # a picture (batch / CAM / augmented + soft labels) every 50
    )
    monitor = salaug.SaliencyMonitor(target_layer=model.cam_layer, box_key=2, max_batches=4)

    # The callback logs pictures to loggers with `add_image` (TensorBoard); with the CSV logger they
    # become PNG files in the log directory: <out>/version_N/salaug/ and .../salaug_monitor/.
    logger = pl.loggers.CSVLogger(args.out, name="")
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="auto", devices=1, logger=logger,
        callbacks=[augment, monitor], enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=not args.no_progress, num_sanity_val_steps=0,
        log_every_n_steps=min(50, len(train_loader)),
    )
    trainer.fit(model, train_loader, val_loader)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"augmented {augment.batches_augmented} of {augment.batches_seen} batches with {args.method}")
    print(f"val_acc {metrics.get('val_acc', float('nan')):.3f} | "
          f"pointing game {metrics.get('salaug_monitor/pointing_game', float('nan')):.3f} | "
          f"CAM box IoU {metrics.get('salaug_monitor/box_iou', float('nan')):.3f}")
    pictures = sorted(Path(logger.log_dir).glob("salaug*/*.png"))
    print(f"pictures in {logger.log_dir}: " + ", ".join(p.relative_to(logger.log_dir).as_posix() for p in pictures))


if __name__ == "__main__":
    main()
