"""Saliency-guided augmentation configured from a LightningCLI YAML file.

The callbacks (``salaug.SaliencyAugmentation`` with a nested ``salaug.SaliencyMix`` transform, and
``salaug.SaliencyMonitor``) are declared under ``trainer.callbacks`` in ``lightning_cli.yaml`` and
instantiated by jsonargparse from their type-hinted signatures; no Python changes are needed to
switch transform, CAM method or target layer. The model is ``salaug.demo.DemoNet`` (a small CNN
whose CAM layer is ``features``); the data module, over the embedded ``ClutteredObjects``
(nothing is downloaded), is defined here.

This uses ``pytorch_lightning.cli.LightningCLI``; the salaug callbacks derive from both
``pytorch_lightning.Callback`` and ``lightning.pytorch.Callback``, so with
``lightning.pytorch.cli.LightningCLI`` (and ``lightning.pytorch`` imports) the same YAML works.

Run::

    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml
    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml \\
        --trainer.max_epochs 1 --data.limit 256                            # a quick smoke run
    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml --print_config  # resolved config
    python examples/lightning_cli.py fit --help                                                # every option
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI
from torch.utils.data import DataLoader

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug
from salaug.demo import DemoNet, crop_flip_collate


class ClutteredObjectsDataModule(pl.LightningDataModule):
    """Train / validation loaders over ``salaug.ClutteredObjects``; batches ``[images, labels, boxes]``.

    Training batches get the standard recipe (``salaug.demo.crop_flip_collate``: 4-px padded random
    crop + horizontal flip per sample, the box moved with the object) before the callback's
    augmentation.

    Args:
        size: image side in pixels.
        limit: number of training images.
        val_limit: number of validation images.
        num_classes: number of object classes (2 to 12).
        batch_size: training batch size (validation uses twice as many).
        num_workers: DataLoader worker processes.
        seed: dataset seed (the images are a pure function of seed, split and index).
        recipe: apply the standard recipe to the training batches.
    """

    def __init__(self, size: int = 64, limit: int = 4000, val_limit: int = 500, num_classes: int = 10,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0, recipe: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        h = self.hparams
        # cache=True renders each split once, in batches, and serves uint8 tensors from memory.
        self.train_set = salaug.ClutteredObjects("train", size=h.size, length=h.limit,
                                                 num_classes=h.num_classes, seed=h.seed, cache=True)
        self.val_set = salaug.ClutteredObjects("val", size=h.size, length=h.val_limit,
                                               num_classes=h.num_classes, seed=h.seed, cache=True)

    def train_dataloader(self) -> DataLoader:
        # default_collate turns the (image, label, box) samples into a *list* batch, which the
        # callback can rewrite in place (a tuple batch would be rejected with an explanation).
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
                          collate_fn=crop_flip_collate if self.hparams.recipe else None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=2 * self.hparams.batch_size,
                          num_workers=self.hparams.num_workers)


def main() -> None:
    cli = LightningCLI(DemoNet, ClutteredObjectsDataModule, save_config_kwargs={"overwrite": True})
    if cli.subcommand != "fit":
        return
    for callback in cli.trainer.callbacks:
        if isinstance(callback, salaug.SaliencyAugmentation):
            print(f"SaliencyAugmentation({type(callback.transform).__name__}, cam={callback.cam!r}, "
                  f"target_layer={callback.target_layer!r}): augmented {callback.batches_augmented} of "
                  f"{callback.batches_seen} batches")
        if isinstance(callback, salaug.SaliencyMonitor) and callback.history:
            last = callback.history[-1]
            print("SaliencyMonitor: " + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in last.items() if "/" in k))
    val_acc = float(cli.trainer.callback_metrics.get("val_acc", float("nan")))
    print(f"val_acc {val_acc:.3f}; logs in {cli.trainer.log_dir}")


if __name__ == "__main__":
    main()
