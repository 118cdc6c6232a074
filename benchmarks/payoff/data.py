"""The data of a cell: training sets per seed, the fixed test splits (in-distribution and shifted),
ImageFolder trees, and the base augmentation every arm gets before its mix."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from benchmarks.payoff.config import Config
from salaug.datasets import ClutteredObjects, TexturedBlobs
from salaug.demo import TEST_SEED
from salaug.transforms.recipe import crop_flip

#: the shifted test sets per dataset, as constructor options (digits and folders have none)
SHIFTS: dict[str, Mapping[str, dict[str, Any]]] = {"objects": ClutteredObjects.SHIFTS,
                                                   "textures": TexturedBlobs.SHIFTS}
Split = Literal["train", "val", "test"]
BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def splits_of(dataset: str) -> list[str]:
    """The test splits of a dataset: ``id`` and its shift splits."""
    return ["id", *SHIFTS.get(dataset, {})]


def _objects(split: Split, cfg: Config, seed: int, length: int, **options: Any) -> dict[str, Tensor]:
    ds = ClutteredObjects(split, size=cfg.size, length=length, num_classes=cfg.num_classes, seed=seed,
                          return_mask=True, **options)
    return ds.render(range(length))


def _textures(split: Split, cfg: Config, seed: int, length: int, **options: Any) -> dict[str, Tensor]:
    ds = TexturedBlobs(split, size=cfg.size, length=length, num_classes=cfg.num_classes, seed=seed,
                       return_mask=True, **options)
    return ds.render(range(length))


def _digits(split: Split, cfg: Config, seed: int, length: int, **options: Any) -> dict[str, Tensor]:
    if BENCHMARKS not in sys.path:  # ClutteredDigits lives in the script benchmarks/quality.py
        sys.path.insert(0, BENCHMARKS)
    from quality import ClutteredDigits

    if options:
        raise ValueError("the digits dataset has no shift splits")
    ds = ClutteredDigits(split, cfg.size, length, seed)
    items = [ds[i] for i in range(length)]
    return {"image": torch.stack([it[0] for it in items]), "label": torch.tensor([it[1] for it in items]),
            "box": torch.stack([it[2] for it in items])}


def load_folder(root: str, split: str, size: int, limit_per_class: int = 0) -> dict[str, Any]:
    """An ImageFolder split (``root/<split>/<class>/<image>``) as tensors, resized to ``size``.

    ``split`` ``"train"``, and ``"test"`` (or ``"val"`` where there is no ``test`` folder). Images are
    decoded once into memory as uint8 (CIFAR-100: 150 MB), ``limit_per_class > 0`` keeps the first
    images of each class (the small-data regime). No mask, no box: the oracle and localisation arms
    are not available on a folder.

    Returns:
        ``{"image": (N, 3, size, size) uint8, "label": (N,), "classes": [names]}``.

    Raises:
        FileNotFoundError: the split folder is missing (the message says what layout is expected).
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    where = os.path.join(root, split)
    if split == "test" and not os.path.isdir(where):
        where = os.path.join(root, "val")
    if not os.path.isdir(where):
        raise FileNotFoundError(f"{where} not found; --root must hold train/<class>/*.png and test/ (or val/) "
                                "folders, one subfolder per class (an ImageFolder export)")
    ds = ImageFolder(where)
    resize = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])
    keep: list[int] = []
    seen: dict[int, int] = {}
    for i, (_, label) in enumerate(ds.samples):
        seen[label] = seen.get(label, 0) + 1
        if limit_per_class <= 0 or seen[label] <= limit_per_class:
            keep.append(i)
    images = torch.stack([resize(ds.loader(ds.samples[i][0])) for i in keep])
    labels = torch.tensor([ds.samples[i][1] for i in keep])
    return {"image": images[:, :3], "label": labels, "classes": ds.classes}


_DATA_CACHE: dict[Any, Any] = {}
_MAKERS = {"objects": _objects, "textures": _textures, "digits": _digits}


def _folder_data(cfg: Config) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    if cfg.root is None:
        raise ValueError("--dataset folder needs --root PATH (an ImageFolder tree with train/ and test/)")
    key = ("folder", cfg.root, cfg.size, cfg.train_per_class)
    if key not in _DATA_CACHE:
        train = load_folder(cfg.root, "train", cfg.size, cfg.train_per_class)
        test = load_folder(cfg.root, "test", cfg.size)
        _DATA_CACHE[key] = ({"image": train["image"].float() / 255, "label": train["label"]},
                            {"id": {"image": test["image"].float() / 255, "label": test["label"]}})
    return _DATA_CACHE[key]


def load_data(cfg: Config, seed: int) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Training set of ``seed`` and the fixed test splits (cached per process)."""
    if cfg.dataset == "folder":
        return _folder_data(cfg)
    make = _MAKERS[cfg.dataset]
    n_train = cfg.train_per_class * cfg.num_classes
    key = ("train", cfg.dataset, cfg.size, n_train, cfg.num_classes, seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = make("train", cfg, seed, n_train)
    tkey = ("test", cfg.dataset, cfg.size, cfg.test_size, cfg.num_classes)
    if tkey not in _DATA_CACHE:
        options = {"id": {}, **SHIFTS.get(cfg.dataset, {})}
        _DATA_CACHE[tkey] = {s: make("test", cfg, TEST_SEED, cfg.test_size, **options[s])
                             for s in splits_of(cfg.dataset)}
    return _DATA_CACHE[key], _DATA_CACHE[tkey]


def trivial_augment(images: Tensor, seed: int) -> Tensor:
    """torchvision's ``TrivialAugmentWide`` per sample (uint8 round trip).

    Seeded per batch, so every arm of a seed sees the same augmentation of the same batch.
    torchvision's auto-augment transforms refuse masks, so under this base the masks are dropped:
    no oracle arm and no label fidelity (see :func:`apply_base`).
    """
    from torchvision.transforms import v2

    ta = v2.TrivialAugmentWide()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = [ta((images[i].cpu() * 255).round().to(torch.uint8)) for i in range(images.shape[0])]
    return torch.stack(out).to(images.device, torch.float32) / 255


def apply_base(cfg: Config, x: Tensor, m: Tensor | None, generator: torch.Generator,
               step_seed: int) -> tuple[Tensor, Tensor | None]:
    """The base augmentation every arm gets before its mix (``cfg.base``)."""
    if cfg.base == "none":
        return x, m
    if cfg.base == "trivialaugment":
        x, m = trivial_augment(x, step_seed), None
    if m is None:
        return crop_flip(x, padding=cfg.size // 8, generator=generator)[0], None
    x, m = crop_flip(x, m, padding=cfg.size // 8, generator=generator)
    return x, m
