"""The data of a cell: training sets per seed, the fixed test splits (in-distribution and shifted),
ImageFolder trees, the fine-grained target and the source set of the fine-tuning regime, and the
base augmentation every arm gets before its mix."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.payoff.config import Config
from salaug.datasets import CLASS_NAMES, ClutteredObjects, TexturedBlobs
from salaug.demo import TEST_SEED
from salaug.transforms.recipe import crop_flip

#: the fine-grained target's shifted test sets: the objects' new background family, and 40 % of
#: each object hidden (which may hide the mark, as a part of a bird is hidden behind a branch)
FINEGRAINED_SHIFTS: Mapping[str, dict[str, Any]] = {"background": {"background": "shifted"},
                                                    "occlusion": {"occlusion": 0.4}}
#: the shifted test sets per dataset, as constructor options (digits and folders have none)
SHIFTS: dict[str, Mapping[str, dict[str, Any]]] = {"objects": ClutteredObjects.SHIFTS,
                                                   "textures": TexturedBlobs.SHIFTS,
                                                   "finegrained": FINEGRAINED_SHIFTS}
#: the fine-grained classes: the pattern of a small square mark on the object (the object's shape
#: carries no class)
MARKS = ("hstripes", "vstripes", "checks", "solid", "hollow")
#: the solid shapes of ClutteredObjects a fine-grained mark is painted on (disc, square, diamond)
MARKED_SHAPES = tuple(CLASS_NAMES.index(n) for n in ("disc", "square", "diamond"))
_MARKED_SCALE = (0.2, 0.3)  # the fine-grained objects' radius, a fraction of the side: room for the mark
#: the mark's side (a fraction of the image side) and the range of its ink's contrast (0: the object's
#: colour, 1: black or white), set once from base-only fine-tuning runs so that accuracy is off the ceiling
#: (one seed of base only at 100 epochs: black-or-white ink gave 1.000 in-distribution, contrast 0.08-0.2 gave
#: 0.554, 0.15-0.35 gave 0.908; no mixing arm had run)
MARK_SIDE = 0.16
MARK_CONTRAST = (0.15, 0.35)
#: the fine-tuning source: ClutteredObjects' classes from this one on (cross, plus, bars, diamond, star,
#: crescent, tee): disjoint from the objects target's first five, and shapes, where the fine-grained
#: target's classes are marks
SOURCE_FIRST_CLASS = 5
SOURCE_SEED = 424_242
Split = Literal["train", "val", "test"]
BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_dir(cfg: Config) -> str:
    """Where the benchmark caches what it computes once (the pretrained backbones): ``cfg.cache_dir``,
    else ``$SALAUG_BENCHMARK_CACHE``, else ``~/.cache/salaug/benchmarks`` (outside the repository: never
    committed)."""
    return (cfg.cache_dir or os.environ.get("SALAUG_BENCHMARK_CACHE")
            or os.path.join(os.path.expanduser("~"), ".cache", "salaug", "benchmarks"))


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


def _mark_patterns(side: int) -> Tensor:
    """``(len(MARKS), side, side)`` bool: the "ink" pixels of each mark class."""
    r = torch.arange(side).view(-1, 1).expand(side, side)
    c = torch.arange(side).view(1, -1).expand(side, side)
    border = (r == 0) | (c == 0) | (r == side - 1) | (c == side - 1)
    return torch.stack([r % 2 == 0, c % 2 == 0, (r + c) % 2 == 0, torch.ones_like(border), border])


def finegrained(split: Split, size: int, length: int, num_classes: int, seed: int,
                background: str = "default", occlusion: float = 0.0) -> dict[str, Tensor]:
    """The fine-grained target: classes differ only in a small mark on the object.

    Each image is a ClutteredObjects image whose object is a disc, square or diamond (radius 20–30 %
    of the side; the shape carries no class); a ``round(0.16 * size)``-pixel square mark (5 px at
    32²) is painted inside the object, at a random place where it fits, in an ink 15–35 % of the way
    from the object's colour to black (light objects) or white (dark ones); its pattern is the class
    (:data:`MARKS`: horizontal stripes, vertical stripes, checks, solid, hollow square;
    ``num_classes`` takes the first). The
    mark covers about 2.5 % of the image and 9–30 % of the object. Labels are balanced (a
    permutation of ``arange(length) % num_classes``).

    ``background`` and ``occlusion`` are ClutteredObjects' shift options: the same objects and marks
    of the same ``(seed, split)`` on the new background family, or with 40 % of each object hidden
    by an occluder drawn over the mark too. Samples depend on ``(seed, split, length)``.

    Returns:
        ``{"image": (N, 3, H, W) float32, "label": (N,), "box": (N, 4), "mask": (N, 1, H, W) bool}``:
        the mask and box are the mark's visible pixels (the part that carries the class).

    Raises:
        ValueError: ``num_classes`` outside ``[2, len(MARKS)]``.
    """
    if not 2 <= num_classes <= len(MARKS):
        raise ValueError(f"the finegrained dataset has {len(MARKS)} mark classes; num_classes={num_classes} "
                         f"must lie in [2, {len(MARKS)}]")
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    gen = torch.Generator().manual_seed(seed * 7 + split_id + 99_991)
    pool_len = 6 * length + 64  # MARKED_SHAPES are 3 of 12 balanced classes: about a quarter of a pool
    options: dict[str, Any] = {"background": background} if background != "default" else {}
    plain = ClutteredObjects(split, size=size, length=pool_len, num_classes=len(CLASS_NAMES), seed=seed,
                             return_mask=True, object_scale=_MARKED_SCALE, **options)
    shapes = plain.labels()
    keep = torch.isin(shapes, torch.tensor(MARKED_SHAPES)).nonzero().flatten()[:length]
    data = plain.render(keep)
    image, obj = data["image"], data["mask"]
    n = image.shape[0]
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    side = max(3, round(MARK_SIDE * size))
    contrast = MARK_CONTRAST[0] + (MARK_CONTRAST[1] - MARK_CONTRAST[0]) * torch.rand(length, generator=gen)[:n]
    # where the mark's top-left corner may go: the whole side x side window inside the object
    fits = -F.max_pool2d(-obj.float(), side, stride=1)  # (N, 1, H - side + 1, W - side + 1)
    score = torch.rand(fits.shape, generator=gen) * fits + fits
    corner = score.flatten(1).argmax(1)
    span = size - side + 1
    cy, cx = corner // span, corner % span
    rows = torch.arange(size).view(1, -1, 1)
    cols = torch.arange(size).view(1, 1, -1)
    dy = rows - cy.view(-1, 1, 1)
    dx = cols - cx.view(-1, 1, 1)
    inside = (dy >= 0) & (dy < side) & (dx >= 0) & (dx < side)  # (N, H, W)
    patterns = _mark_patterns(side)[labels]  # (N, side, side)
    ink = inside & patterns.flatten(1).gather(1, (dy.clamp(0, side - 1) * side + dx.clamp(0, side - 1))
                                            .flatten(1)).view(n, size, size)
    colour = (image * obj).sum((2, 3)) / obj.sum((2, 3)).clamp(min=1)  # (N, 3) the object's colour
    luma = colour[:, 0] * 0.299 + colour[:, 1] * 0.587 + colour[:, 2] * 0.114
    tone = torch.where(luma > 0.5, 0.0, 1.0).view(n, 1, 1, 1)
    inked = torch.round(torch.lerp(colour.view(n, 3, 1, 1), tone, contrast.view(n, 1, 1, 1)) * 255) / 255
    image = torch.where(ink.unsqueeze(1), inked.expand_as(image), image)
    mark = inside.unsqueeze(1)
    if occlusion > 0:
        hidden = ClutteredObjects(split, size=size, length=pool_len, num_classes=len(CLASS_NAMES), seed=seed,
                                  return_mask=True, object_scale=_MARKED_SCALE, occlusion=occlusion,
                                  **options).render(keep)["image"]
        occluder = (hidden != data["image"]).any(1, keepdim=True)
        image = torch.where(occluder, hidden, image)
        mark = mark & ~occluder
    ys, xs = mark.squeeze(1).any(2), mark.squeeze(1).any(1)
    ar = torch.arange(size)
    big = size + 1
    box = torch.stack([torch.where(xs, ar, big).amin(1), torch.where(ys, ar, big).amin(1),
                       torch.where(xs, ar + 1, 0).amax(1), torch.where(ys, ar + 1, 0).amax(1)], 1).float()
    box = torch.where(mark.flatten(1).any(1, keepdim=True), box, torch.zeros_like(box))
    return {"image": image, "label": labels, "box": box, "mask": mark}


def _finegrained(split: Split, cfg: Config, seed: int, length: int, **options: Any) -> dict[str, Tensor]:
    return finegrained(split, cfg.size, length, cfg.num_classes, seed, **options)


def source_set(cfg: Config, seed: int = SOURCE_SEED) -> dict[str, Tensor]:
    """The fine-tuning source set: ``cfg.source_per_class`` ClutteredObjects images of each of the
    classes from :data:`SOURCE_FIRST_CLASS` on (7 shapes none of the targets has as a class), labels
    ``0..6``; one fixed seed, so every cell pretrains on the same images (another ``seed``: held-out
    source images).

    Returns:
        ``{"image": (7 * source_per_class, 3, H, W) float32, "label": (N,) int64}``.
    """
    k = len(CLASS_NAMES)
    ds = ClutteredObjects("train", size=cfg.size, length=cfg.source_per_class * k, num_classes=k, seed=seed)
    keep = (ds.labels() >= SOURCE_FIRST_CLASS).nonzero().flatten()
    data = ds.render(keep)
    return {"image": data["image"], "label": data["label"] - SOURCE_FIRST_CLASS}


_DATA_CACHE: dict[Any, Any] = {}
_MAKERS = {"objects": _objects, "textures": _textures, "digits": _digits, "finegrained": _finegrained}


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
