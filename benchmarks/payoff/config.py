"""The configuration of a benchmark cell: :class:`Config` and its presets."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Config:
    """One benchmark configuration (a preset, then command-line overrides)."""

    dataset: str = "objects"
    base: str = "cropflip"
    arch: str = "demonet"
    size: int = 32
    train_per_class: int = 50
    num_classes: int = 10
    test_size: int = 1000
    width: int = 16
    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 5e-4
    p: float = 0.5
    off_epochs: int = 1
    seeds: int = 5
    pointing_images: int = 256
    fidelity_every: int = 2
    device: str = "cpu"
    threads: int = 1
    root: str | None = None
    finetune: str = "none"  # "none" (from scratch), "whole" or "frozen" (a pretrained backbone, a new head)
    source_per_class: int = 1000  # fine-tuning: source images per class (7 source classes)
    pretrain_epochs: int = 15  # fine-tuning: epochs of the one pretraining run on the source set
    start_epochs: int = 0  # epochs without mixing at the start unless the arm says start=
    cache_dir: str | None = None  # where the pretrained backbone is cached (None: see data.cache_dir)


#: what ``--arch vit`` trains with unless --lr / --weight-decay say otherwise: the usual ViT AdamW
#: setting (the CNNs' 3e-3 / 5e-4 left the tiny ViT unstable on 500 images)
VIT_RECIPE: dict[str, float] = {"lr": 1e-3, "weight_decay": 0.05}

PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"seeds": 3},  # the full preset's runs for 3 seeds and 6 arms: reusable with --reuse
    # OpenMixup's CIFAR-100 ResNet-18 setting (200 epochs, SGD 0.1, cosine, batch 100): for an ImageFolder
    # export of CIFAR-100 on a GPU, e.g. --dataset folder --root PATH --preset cifar100 --device cuda
    "cifar100": {"arch": "resnet18", "epochs": 200, "batch_size": 100, "optimizer": "sgd", "lr": 0.1,
                 "weight_decay": 1e-4, "train_per_class": 0, "num_classes": 100, "test_size": 0, "off_epochs": 0,
                 "pointing_images": 0, "fidelity_every": 0},
    # fine-tuning a pretrained backbone on a small target set: DemoNet pretrained once on 7 source shapes
    # (7000 images), then fine-tuned whole with a new head on 5 target classes, 30 images per class
    "finetune": {"arch": "demonet", "finetune": "whole", "num_classes": 5, "train_per_class": 30, "epochs": 100,
                 "batch_size": 32, "lr": 1e-3},
    "smoke": {"seeds": 2, "train_per_class": 4, "num_classes": 4, "epochs": 2, "width": 8, "test_size": 32,
              "batch_size": 8, "pointing_images": 16, "size": 32},
}
