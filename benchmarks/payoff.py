"""Does saliency-guided augmentation pay *on top of the standard recipe*? Paired seeds, matched controls.

A plain PyTorch training loop (no Lightning: it is faster on tiny data) trains a small network from
scratch with each augmentation *arm*, over paired seeds (per seed every arm sees the same training
images, the same initial weights, the same batch order and the same base augmentation), and
reports final-epoch test accuracy on the in-distribution test split and on shifted splits, with
paired differences to ``none`` and to ``cutmix`` and their 95 % t-intervals. It also reports train
accuracy, the pointing game of GradCAM on the test set, label fidelity of each arm's mixed labels
against the true visible fractions (where the dataset has masks) and the training time per arm.

**The base augmentation** (``--base``, the same in every arm, ``none`` included): ``cropflip``
(default: a per-sample random crop of the image zero-padded by ``size / 8`` pixels, 4 px at 32², and
a horizontal flip with probability 1/2, batched on the tensor and applied to the object masks
alike), ``trivialaugment`` (torchvision's ``TrivialAugmentWide`` per sample, then ``cropflip``; the
masks cannot follow it, so no oracle arm there), or ``none`` (no recipe at all: the tables of
salaug 0.2, kept as a secondary, labelled table). A gain measured without the recipe says little
about a real pipeline, which always has it.

Datasets (``--dataset``): ``objects`` (:class:`salaug.ClutteredObjects`; shift splits: a background
family never seen in training, 40 % occlusion, small objects), ``textures``
(:class:`salaug.datasets.TexturedBlobs`, a generator that shares nothing with ClutteredObjects:
the class is a blob's texture among distractor blobs on 1/f noise; shift splits: a colour-gradient
background, small objects), ``digits`` (sklearn's digits on clutter, boxes only, no shift split) and
``folder`` (an ImageFolder tree at ``--root``: e.g. a local CIFAR-100 or CUB-200 export; with
``--preset cifar100`` the published CIFAR-100 ResNet-18 setting: 200 epochs, SGD 0.1 with Nesterov
momentum, weight decay 1e-4, cosine, batch 100, on ``--device cuda``). Networks (``--arch``):
``demonet`` (:class:`salaug.models.DemoNet`), ``resnet8`` (:class:`salaug.models.ResNet8`) and
``resnet18`` (torchvision's, CIFAR stem).

Default regime (see ``Config`` and ``PRESETS``): 32x32, 10 classes, 50 training images per class,
DemoNet width 16, AdamW 3e-3, weight decay 5e-4, OneCycle over ``--epochs`` (40 by default; the
with-recipe tables use 150), batch 64, every mixing arm at ``p = 0.5`` per sample, no mixing in
the last epoch, one fixed test set of 1000 images per split.

The gate, per cell: the oracle arm (SnapMix fed the true object masks, so its labels are the
visible object mass) must beat ``none`` by more than 2 standard errors over paired seeds; where
even the oracle cannot help, no saliency method can be expected to.

Arms (all through ``salaug.SaliencyAugmenter``, the in-loop path, except ``none`` and ``mixup``):

* ``none`` (the base only); ``mixup`` (per-sample MixUp, Beta(1, 1), written here: torchvision's
  v2.MixUp mixes the whole batch with one lambda and has no per-sample ``p``);
* saliency-free mixes: ``cutmix`` (SaliencyMix fed flat saliency: per-sample CutMix boxes, area
  labels, the same code path as SaliencyMix) and ``resizemix`` (:class:`salaug.ResizeMix`, the whole
  partner resized into a box, area labels: the saliency-free twin of SnapMix's paste);
* CAM-driven salaug mixes (GradCAM of the live model at its last spatial layer): ``saliencymix``,
  ``saliencymix-mass`` (``labels="saliency"``), ``attentivecutmix``, ``salientpaste``,
  ``guidedmixup``, ``snapmix``, ``puzzlemix`` and ``puzzlemix-transport`` (:class:`salaug.PuzzleMix`
  without / with its block transport);
* controls that isolate what saliency adds: ``snapmix-flat`` (flat saliency: the same boxes with
  area labels) and ``snapmix-area`` (``labels="area"``);
* ``oracle``: SnapMix fed the true object masks (the ceiling a CAM could reach),
  ``oracle-saliencymix`` (SaliencyMix with masks and mass labels).

Any arm takes options after a colon, e.g. ``snapmix:warmup=40,ema=0.99,alpha=1,p=1,off=3,cam_scale=0.5``
(warm-up calls with flat saliency, CAMs from an EMA of the weights, Beta alpha, mixing
probability, epochs without mixing at the end, CAMs computed on images downscaled by
``cam_scale``); ``--sweep`` runs a one-factor sweep around one method.

Statistics: the final-epoch accuracy of each run (never the best epoch), paired differences per
seed, mean and 95 % t-interval (Student t, ``n - 1`` degrees of freedom). Label fidelity: every
second mixed batch of training, the sampled params are replayed on the true masks; ``label MAE``
is the mean |partner share of the label - partner's share of the visible object pixels| over the
samples mixed with another class (a rescaled paste counts pixels at the source scale).

Runs are deterministic per (config, arm, seed, in-loop path), so ``--reuse payoff_x.json`` takes
matching runs from an earlier results file instead of training them again.

Usage::

    python benchmarks/payoff.py --quick --workers 2            # 6 arms x 3 seeds at 40 epochs
    python benchmarks/payoff.py --epochs 150 --arms none,cutmix,mixup,resizemix,snapmix,snapmix-flat,oracle \
        --workers 2 --out benchmarks/results --name objects_recipe150       # a with-recipe cell
    python benchmarks/payoff.py --dataset textures --epochs 150 --workers 2 --out benchmarks/results  # held out
    python benchmarks/payoff.py --base none --workers 2 --out benchmarks/results   # the no-recipe table
    python benchmarks/payoff.py --dataset folder --root ~/data/cifar100 --preset cifar100 --device cuda \
        --arms none,cutmix,resizemix,snapmix,snapmix-flat --out results       # the published setting

Nothing is written unless ``--out`` is given; ``--replot payoff_x.json`` redraws a plot.

Cost (2 CPU cores, one thread per worker, 2026-12-04): a 150-epoch run of DemoNet takes 50-75 s
(SnapMix about 1.2x ``none``, for its CAM forward); a 7-arm x 5-seed cell about 25 min with
``--workers 2``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import math
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug.transforms.base import sample_beta
from salaug.transforms.recipe import crop_flip

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # so that `benchmarks/quality.py` (ClutteredDigits) imports when run as a script
    sys.path.insert(0, HERE)

TARGET_LAYER = "features"
SPLITS = ("id", "background", "occlusion", "small")
SPLIT_OPTIONS: dict[str, dict[str, Any]] = {
    "id": {},
    "background": {"background": "shifted"},
    "occlusion": {"occlusion": 0.4},
    "small": {"object_scale": (0.09, 0.14)},
}
TEXTURE_SPLITS = ("id", "background", "small")
TEXTURE_SPLIT_OPTIONS: dict[str, dict[str, Any]] = {
    "id": {},
    "background": {"background": "shifted"},
    "small": {"object_scale": (0.12, 0.18)},
}
TEST_SEED = 7_777  # one fixed test set for every seed: the seed-to-seed spread is the training's
SALIENCY_FREE = ("cutmix", "mixup", "resizemix")  # the mixes a saliency method must beat
DEFAULT_ARMS = ("none", "mixup", "cutmix", "saliencymix", "saliencymix-mass", "attentivecutmix", "salientpaste",
                "guidedmixup", "snapmix", "snapmix-flat", "snapmix-area", "oracle", "oracle-saliencymix")
QUICK_ARMS = ("none", "cutmix", "saliencymix", "snapmix", "snapmix-flat", "oracle")
DIGITS_ARMS = ("none", "mixup", "cutmix", "saliencymix", "snapmix", "snapmix-flat")


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


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"seeds": 3},  # the full preset's runs for 3 seeds and 6 arms: reusable with --reuse
    # OpenMixup's CIFAR-100 ResNet-18 setting (200 epochs, SGD 0.1, cosine, batch 100): for an ImageFolder
    # export of CIFAR-100 on a GPU, e.g. --dataset folder --root PATH --preset cifar100 --device cuda
    "cifar100": {"arch": "resnet18", "epochs": 200, "batch_size": 100, "optimizer": "sgd", "lr": 0.1,
                 "weight_decay": 1e-4, "train_per_class": 0, "num_classes": 100, "test_size": 0, "off_epochs": 0,
                 "pointing_images": 0, "fidelity_every": 0},
    "smoke": {"seeds": 2, "train_per_class": 4, "num_classes": 4, "epochs": 2, "width": 8, "test_size": 32,
              "batch_size": 8, "pointing_images": 16, "size": 32},
}


# --------------------------------------------------------------------------- arms
@dataclasses.dataclass(frozen=True)
class Arm:
    """What one arm does: a transform fed some saliency, with options."""

    name: str
    kind: str  # "none", "mixup" or a salaug transform name
    saliency: str = "cam"  # "cam", "flat" or "mask"
    labels: str | None = None  # None: the transform's default; "area" / "saliency"
    warmup: int = 0
    ema: float | None = None
    alpha: float | None = None
    p: float | None = None
    off: int | None = None
    cam: str = "gradcam"
    cam_scale: float = 1.0
    transport: bool = False


_BASE_ARMS: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    "mixup": {"kind": "mixup"},
    "cutmix": {"kind": "saliencymix", "saliency": "flat"},
    "resizemix": {"kind": "resizemix", "saliency": "flat"},
    "puzzlemix": {"kind": "puzzlemix"},
    "puzzlemix-transport": {"kind": "puzzlemix", "transport": True},
    "saliencymix": {"kind": "saliencymix"},
    "saliencymix-mass": {"kind": "saliencymix", "labels": "saliency"},
    "attentivecutmix": {"kind": "attentivecutmix"},
    "salientpaste": {"kind": "salientpaste"},
    "guidedmixup": {"kind": "guidedmixup"},
    "snapmix": {"kind": "snapmix"},
    "snapmix-flat": {"kind": "snapmix", "saliency": "flat"},
    "snapmix-area": {"kind": "snapmix", "labels": "area"},
    "oracle": {"kind": "snapmix", "saliency": "mask"},
    "oracle-saliencymix": {"kind": "saliencymix", "saliency": "mask", "labels": "saliency"},
}
_OPTION_TYPES = {"warmup": int, "ema": float, "alpha": float, "p": float, "off": int, "cam": str,
                 "labels": str, "saliency": str, "cam_scale": float}


def parse_arm(spec: str) -> Arm:
    """``"snapmix:warmup=40,ema=0.99"`` -> :class:`Arm`.

    Raises:
        ValueError: unknown base arm or option (the valid ones are listed).
    """
    base, _, opts = spec.partition(":")
    if base not in _BASE_ARMS:
        raise ValueError(f"unknown arm {base!r}; choose from {', '.join(_BASE_ARMS)} (options after ':')")
    fields: dict[str, Any] = dict(_BASE_ARMS[base])
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        if key not in _OPTION_TYPES or not value:
            raise ValueError(f"arm option {item!r} in {spec!r}: use key=value with key in {sorted(_OPTION_TYPES)}")
        fields[key] = None if value == "none" else _OPTION_TYPES[key](value)
    return Arm(name=spec, **fields)


def _supports_labels(cls: type) -> bool:
    return "labels" in inspect.signature(cls.__init__).parameters


def build_transform(arm: Arm, cfg: Config) -> Any:
    """The salaug transform of an arm, at the arm's (or the config's) ``p``; ``None`` for none / mixup.

    Raises:
        NotImplementedError: the arm needs ``labels=`` and the installed transform lacks it.
    """
    import salaug

    if arm.kind in ("none", "mixup"):
        return None
    classes = {"saliencymix": salaug.SaliencyMix, "snapmix": salaug.SnapMix,
               "attentivecutmix": salaug.AttentiveCutMix, "salientpaste": salaug.SalientPaste,
               "guidedmixup": salaug.GuidedMixup, "resizemix": salaug.ResizeMix, "puzzlemix": salaug.PuzzleMix}
    cls = classes[arm.kind]
    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes, "p": cfg.p if arm.p is None else arm.p}
    if arm.alpha is not None:
        kwargs["alpha"] = arm.alpha
    if arm.transport:
        kwargs["transport"] = True
    if arm.labels is not None:
        if not _supports_labels(cls):
            raise NotImplementedError(f"{cls.__name__} has no labels= option in this salaug")
        kwargs["labels"] = arm.labels
    return cls(**kwargs)


# --------------------------------------------------------------------------- the in-loop path
class LocalAugmenter:
    """Stand-in with the interface of ``salaug.SaliencyAugmenter`` (used only when that is missing).

    ``aug(images, labels, saliency=None) -> (images, soft_labels)``; ``aug.last`` has ``params``,
    ``output`` and ``saliency``. CAMs via ``salaug.create_cam`` (side-effect free), flat saliency
    during the first ``warmup_steps`` calls, CAMs from an EMA copy with ``ema_decay``.
    """

    def __init__(self, model: nn.Module, transform: Any, cam: str = "gradcam", target_layer: str = TARGET_LAYER,
                 *, num_classes: int | None = None, seed: int = 0, warmup_steps: int = 0,
                 ema_decay: float | None = None) -> None:
        import salaug

        self.model, self.transform, self.num_classes = model, transform, num_classes
        self.warmup_steps, self.ema_decay = warmup_steps, ema_decay
        self.ema = copy.deepcopy(model) if ema_decay is not None else None
        self.cam = salaug.create_cam(cam, self.ema if self.ema is not None else model, target_layer)
        self.generator = torch.Generator().manual_seed(seed)
        self._call_takes_generator = "generator" in inspect.signature(transform.forward).parameters
        self.steps = 0
        self.last: Any = None

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema is not None and self.ema_decay is not None
        for e, w in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(w, 1 - self.ema_decay)
            else:
                e.copy_(w)

    def __call__(self, images: Tensor, labels: Tensor, saliency: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.ema is not None:
            self._update_ema()
        if self.steps < self.warmup_steps:
            saliency = torch.ones_like(images[:, :1])
        elif saliency is None:
            saliency = self.cam(images, labels)
        self.steps += 1
        kw: dict[str, Any] = {"num_classes": self.num_classes, "return_params": True}
        if self._call_takes_generator:
            kw["generator"] = self.generator
        else:
            self.transform.generator = self.generator
        out, params = self.transform(images, saliency, labels, **kw)
        self.last = argparse.Namespace(params=params, output=out, saliency=saliency, augmented=True)
        return out.images, out.labels


def augmenter_impl() -> str:
    """Which in-loop path this salaug offers: the real augmenter (with ``generator=`` transforms) or the stand-in."""
    try:
        import salaug

        salaug.SaliencyAugmenter  # noqa: B018 (lazy attribute: imports salaug.augmenter)
        if "generator" not in inspect.signature(salaug.SaliencyTransform.forward).parameters:
            return "local stand-in"
    except (AttributeError, ImportError):
        return "local stand-in"
    return "salaug.SaliencyAugmenter"


def make_augmenter(model: nn.Module, transform: Any, arm: Arm, cfg: Config, seed: int) -> tuple[Any, str]:
    """The real ``salaug.SaliencyAugmenter`` when it works here, else :class:`LocalAugmenter`."""
    kwargs = dict(num_classes=cfg.num_classes, seed=seed, warmup_steps=arm.warmup, ema_decay=arm.ema)
    impl = augmenter_impl()
    if impl == "salaug.SaliencyAugmenter":
        import salaug

        return salaug.SaliencyAugmenter(model, transform, cam=arm.cam, target_layer=target_layer(cfg),
                                        cam_scale=arm.cam_scale, **kwargs), impl
    if arm.cam_scale != 1.0:
        raise NotImplementedError("cam_scale needs salaug.SaliencyAugmenter")
    return LocalAugmenter(model, transform, arm.cam, target_layer(cfg), **kwargs), impl


def mixup(images: Tensor, labels: Tensor, num_classes: int, p: float, alpha: float,
          generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample MixUp: ``(images, soft_labels, perm, partner_weight)``, batched, ``p`` per sample."""
    b = images.shape[0]
    dev = images.device
    perm = torch.randperm(b, generator=generator).to(dev)
    lam = sample_beta(alpha, alpha, (b,), torch.device("cpu"), generator)
    applied = torch.rand(b, generator=generator) < p
    w = (lam * applied).to(dev)
    soft = F.one_hot(labels, num_classes).float()
    mixed = torch.lerp(images, images[perm], w.view(-1, 1, 1, 1).to(images.dtype))
    return mixed, torch.lerp(soft, soft[perm], w.view(-1, 1)), perm, w


# --------------------------------------------------------------------------- label fidelity
def _paste_scale(params: dict[str, Tensor]) -> Tensor | float:
    """Source over destination box area of a rescaled paste (SnapMix, SalientPaste), else 1.

    A partner object pasted at half the area is still wholly visible: its visible fraction is
    counted in the partner's own pixels, not the destination's.
    """
    dst = params.get("dst_boxes", params.get("boxes")) if "src_boxes" in params else None
    if dst is None:
        return 1.0

    def area(b: Tensor) -> Tensor:
        return ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).to(torch.float32)

    return area(params["src_boxes"]) / area(dst).clamp(min=1)


def label_error(transform: Any, params: dict[str, Tensor], soft: Tensor, labels: Tensor, masks: Tensor,
                num_classes: int) -> tuple[Tensor, Tensor]:
    """Per mixed sample: the label's partner share minus the true visible share, and a validity mask.

    The sampled params are replayed on a two-channel "image" (each object's mask, each pixel's
    source index) to find which fraction of each object stays visible (fractions of the object's
    area; a rescaled paste's pixels count at the source scale, see :func:`_paste_scale`). For
    GuidedMixup and MixUp the
    visible fractions are the mask-weighted mixing weights. Returns ``(B,)`` errors and ``(B,)``
    bool "mixed with an object of another class" (only those have a partner share to get wrong).
    """
    from salaug.metrics import mix_visibility

    n = labels.shape[0]
    partner = params["perm"]
    applied = params["applied"]
    if transform is None or "own_weight" in params:  # MixUp / GuidedMixup: pixel-wise weights
        weight = params["weight"].view(n, 1, 1, 1).expand_as(masks).float() if transform is None \
            else 1.0 - params["own_weight"]
        visible = mix_visibility(masks, partner, weight)
    else:
        index = torch.arange(n, dtype=torch.float32, device=masks.device).view(n, 1, 1, 1).expand_as(masks)
        flat = torch.zeros_like(masks, dtype=torch.float32)
        replay = transform(torch.cat([masks.float(), index], 1), flat, labels, num_classes=num_classes,
                           params=params).images
        shown, source = replay[:, :1] > 0.5, replay[:, 1:].round().long()
        own = torch.arange(n, device=masks.device).view(n, 1, 1, 1)
        area = masks.flatten(1).sum(1).clamp(min=1)
        from_partner = (shown & (source == partner.view(n, 1, 1, 1)) & (source != own)).flatten(1).sum(1)
        visible = torch.stack([(shown & (source == own)).flatten(1).sum(1) / area,
                               from_partner * _paste_scale(params) / area[partner]], 1).clamp(max=1)
    total = visible.sum(1)
    true_share = torch.where(total > 0, visible[:, 1] / total.clamp(min=1e-12), torch.full_like(total, 0.5))
    label_share = soft.gather(1, labels[partner].view(-1, 1)).squeeze(1)
    valid = applied & (labels[partner] != labels)
    return label_share - true_share, valid


# --------------------------------------------------------------------------- data
def _objects(split: str, cfg: Config, seed: int, length: int, **options: Any) -> dict[str, Tensor]:
    from salaug.datasets import ClutteredObjects

    ds = ClutteredObjects(split, size=cfg.size, length=length, num_classes=cfg.num_classes, seed=seed,
                          return_mask=True, **options)
    return ds.render(range(length))


def _textures(split: str, cfg: Config, seed: int, length: int, **options: Any) -> dict[str, Tensor]:
    from salaug.datasets import TexturedBlobs

    ds = TexturedBlobs(split, size=cfg.size, length=length, num_classes=cfg.num_classes, seed=seed,
                       return_mask=True, **options)
    return ds.render(range(length))


def _digits(split: str, cfg: Config, seed: int, length: int, **options: Any) -> dict[str, Tensor]:
    from quality import ClutteredDigits

    if options:
        raise ValueError("the digits dataset has no shift splits")
    ds = ClutteredDigits(split, cfg.size, length, seed)
    items = [ds[i] for i in range(length)]
    return {"image": torch.stack([it[0] for it in items]), "label": torch.tensor([it[1] for it in items]),
            "box": torch.stack([it[2] for it in items])}


def load_folder(root: str, split: str, size: int, limit_per_class: int = 0) -> dict[str, Tensor]:
    """An ImageFolder split (``root/<split>/<class>/<image>``) as tensors, resized to ``size``.

    ``split`` ``"train"``, and ``"test"`` (or ``"val"`` where there is no ``test`` folder). Images are
    decoded once into memory as uint8 (CIFAR-100: 150 MB), ``limit_per_class > 0`` keeps the first
    images of each class (the small-data regime). No mask, no box: the oracle and localisation arms
    are not available on a folder.

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
    keep, seen = [], {}  # type: list[int], dict[int, int]
    for i, (_, label) in enumerate(ds.samples):
        seen[label] = seen.get(label, 0) + 1
        if limit_per_class <= 0 or seen[label] <= limit_per_class:
            keep.append(i)
    images = torch.stack([resize(ds.loader(ds.samples[i][0])) for i in keep])
    labels = torch.tensor([ds.samples[i][1] for i in keep])
    return {"image": images[:, :3], "label": labels, "classes": ds.classes}  # type: ignore[dict-item]


_DATA_CACHE: dict[Any, Any] = {}
_MAKERS = {"objects": _objects, "textures": _textures, "digits": _digits}
_SHIFTS = {"objects": SPLITS, "textures": TEXTURE_SPLITS, "digits": ("id",)}


def splits_of(cfg: Config) -> list[str]:
    return list(_SHIFTS.get(cfg.dataset, ("id",)))


def load_data(cfg: Config, seed: int) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Training set of ``seed`` and the fixed test splits (cached per process)."""
    if cfg.dataset == "folder":
        if cfg.root is None:
            raise ValueError("--dataset folder needs --root PATH (an ImageFolder tree with train/ and test/)")
        key = ("folder", cfg.root, cfg.size, cfg.train_per_class)
        if key not in _DATA_CACHE:
            train = load_folder(cfg.root, "train", cfg.size, cfg.train_per_class)
            test = load_folder(cfg.root, "test", cfg.size)
            _DATA_CACHE[key] = ({"image": train["image"].float() / 255, "label": train["label"]},
                                {"id": {"image": test["image"].float() / 255, "label": test["label"]}})
        return _DATA_CACHE[key]
    make = _MAKERS[cfg.dataset]
    n_train = cfg.train_per_class * cfg.num_classes
    key = ("train", cfg.dataset, cfg.size, n_train, cfg.num_classes, seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = make("train", cfg, seed, n_train)
    tkey = ("test", cfg.dataset, cfg.size, cfg.test_size, cfg.num_classes)
    if tkey not in _DATA_CACHE:
        options = TEXTURE_SPLIT_OPTIONS if cfg.dataset == "textures" else SPLIT_OPTIONS
        _DATA_CACHE[tkey] = {s: make("test", cfg, TEST_SEED, cfg.test_size, **options[s]) for s in splits_of(cfg)}
    return _DATA_CACHE[key], _DATA_CACHE[tkey]


# --------------------------------------------------------------------------- the standard recipe
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


# --------------------------------------------------------------------------- the networks
def build_model(cfg: Config) -> nn.Module:
    """The network of ``cfg.arch``: salaug.models.DemoNet / ResNet8 (CAM layer ``features``), or a
    CIFAR-style torchvision ResNet-18 (3x3 stem, no max-pool; CAM layer ``layer4``)."""
    from salaug.models import DemoNet, ResNet8

    if cfg.arch == "demonet":
        return DemoNet(num_classes=cfg.num_classes, width=cfg.width)
    if cfg.arch == "resnet8":
        return ResNet8(num_classes=cfg.num_classes, width=cfg.width)
    if cfg.arch == "resnet18":
        import torchvision

        net = torchvision.models.resnet18(num_classes=cfg.num_classes)
        net.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        net.maxpool = nn.Identity()  # type: ignore[assignment]
        return net
    raise ValueError(f"unknown arch {cfg.arch!r}; choose demonet, resnet8 or resnet18")


def target_layer(cfg: Config) -> str:
    return "layer4" if cfg.arch == "resnet18" else TARGET_LAYER


# --------------------------------------------------------------------------- one run
@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch), labels.split(batch)))
    return correct / max(labels.numel(), 1)


def pointing(model: nn.Module, data: dict[str, Tensor], n: int, layer: str) -> float | None:
    import salaug
    from salaug.metrics import pointing_game

    if n <= 0 or "box" not in data:
        return None
    cam = salaug.create_cam("gradcam", model, layer)
    x, y, boxes = data["image"][:n], data["label"][:n], data["box"][:n]
    return float(pointing_game(cam(x, y), boxes).float().mean())


def run_one(cfg: Config, spec: str, seed: int) -> dict[str, Any]:
    """Train one arm on one seed; returns its measurements (JSON-ready)."""
    torch.set_num_threads(cfg.threads)
    warnings.filterwarnings("ignore")
    arm = parse_arm(spec)
    dev = torch.device(cfg.device)
    train, tests = load_data(cfg, seed)
    x_all, y_all = train["image"].to(dev), train["label"].to(dev)
    m_all = train["mask"].to(dev) if "mask" in train else None
    if arm.saliency == "mask" and m_all is None:
        raise ValueError(f"arm {spec!r} needs object masks, which the {cfg.dataset} dataset does not have")
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    epochs = cfg.epochs
    off = cfg.off_epochs if arm.off is None else arm.off

    torch.manual_seed(seed)  # the same initial weights for every arm of a seed
    model = build_model(cfg).to(dev)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                                                     weight_decay=cfg.weight_decay, nesterov=True)
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(seed)  # the same batches for every arm of a seed
    base_gen = torch.Generator().manual_seed(seed + 2_000_003)  # the same base augmentation for every arm
    mix_gen = torch.Generator().manual_seed(seed + 1_000_003)
    transform = build_transform(arm, cfg)
    aug, aug_impl = (make_augmenter(model, transform, arm, cfg, seed) if transform is not None else (None, "-"))
    p = cfg.p if arm.p is None else arm.p
    alpha = 1.0 if arm.alpha is None else arm.alpha
    errors: list[Tensor] = []
    start = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        model.train()
        mixing = arm.kind != "none" and epoch < epochs - off
        for idx in torch.randperm(n, generator=order).split(cfg.batch_size):
            idx = idx.to(dev)
            x, y = x_all[idx], y_all[idx]
            m = m_all[idx] if m_all is not None else None
            x, m = apply_base(cfg, x, m, base_gen, seed * 1_000_003 + step)
            target: Tensor = y
            record = None
            if mixing and arm.kind == "mixup":
                x, target, perm, w = mixup(x, y, cfg.num_classes, p, alpha, mix_gen)
                record = (None, {"perm": perm, "applied": w > 0, "weight": w}, target)
            elif mixing:
                sal = None
                if arm.saliency == "flat":
                    sal = torch.zeros_like(x[:, :1])
                elif arm.saliency == "mask":
                    assert m_all is not None
                    assert m is not None
                    sal = m.float()
                x, target = aug(x, y, saliency=sal) if sal is not None else aug(x, y)
                last = aug.last
                if last is not None and getattr(last, "params", None) is not None:
                    record = (transform, last.params, target)
            if record is not None and m is not None and cfg.fidelity_every and step % cfg.fidelity_every == 0:
                err, valid = label_error(record[0], record[1], record[2], y, m, cfg.num_classes)
                errors.append(err[valid].detach().cpu())
            loss = F.cross_entropy(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    result: dict[str, Any] = {"arm": spec, "seed": seed, "seconds": seconds, "augmenter": aug_impl,
                              "train_acc": accuracy(model, x_all, y_all)}
    for split, data in tests.items():
        result[f"acc_{split}"] = accuracy(model, data["image"].to(dev), data["label"].to(dev))
    result["pointing_game"] = pointing(model.cpu(), tests["id"], cfg.pointing_images, target_layer(cfg))
    if errors:
        e = torch.cat(errors)
        result["label_mae"] = float(e.abs().mean()) if e.numel() else None
        result["label_bias"] = float(e.mean()) if e.numel() else None
        result["label_samples"] = int(e.numel())
    return result


# --------------------------------------------------------------------------- statistics
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045]


def t975(df: int) -> float:
    """Two-sided 95 % Student t quantile (1.96 beyond the table)."""
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean paired difference ``a - b`` with its standard error and 95 % t-interval."""
    d = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(d)
    if len(d) < 2:
        return {"mean": mean, "se": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": len(d)}
    se = statistics.stdev(d) / math.sqrt(len(d))
    half = t975(len(d) - 1) * se
    return {"mean": mean, "se": se, "lo": mean - half, "hi": mean + half, "n": len(d)}


def summarise(results: list[dict[str, Any]], arms: list[str], splits: list[str],
              refs: tuple[str, ...] = ("none", "cutmix")) -> dict[str, Any]:
    """Per-arm means and paired differences to each of ``refs`` (over the seeds present in both)."""
    by = {(r["arm"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    out: dict[str, Any] = {}
    for arm in arms:
        rs = [by[(arm, s)] for s in seeds if (arm, s) in by]
        if not rs:
            continue
        row: dict[str, Any] = {"n": len(rs), "seconds": statistics.mean(r["seconds"] for r in rs),
                               "augmenter": rs[0]["augmenter"]}
        for key in ["train_acc", "pointing_game", "label_mae", *[f"acc_{s}" for s in splits]]:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                row[key] = statistics.mean(vals)
                row[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        for ref in refs:
            common = [s for s in seeds if (arm, s) in by and (ref, s) in by]
            if ref == arm or not common:
                continue
            row[f"vs_{ref}"] = {sp: paired([by[(arm, s)][f"acc_{sp}"] for s in common],
                                           [by[(ref, s)][f"acc_{sp}"] for s in common]) for sp in splits}
        out[arm] = row
    return out


def gate(summary: dict[str, Any]) -> str:
    o = summary.get("oracle", {}).get("vs_none", {}).get("id")
    if o is None:
        return "gate not evaluated (needs the arms oracle and none)"
    if o["n"] < 2:
        return "gate not evaluated (needs at least 2 paired seeds)"
    passed = o["mean"] > 2 * o["se"]
    return (f"gate {'PASSED' if passed else 'FAILED'}: oracle - none = {o['mean']:+.3f} "
            f"(SE {o['se']:.3f}, {o['mean'] / o['se'] if o['se'] > 0 else float('inf'):.1f} SE; "
            f"95% CI [{o['lo']:+.3f}, {o['hi']:+.3f}], {o['n']} paired seeds)")


def _ci(d: dict[str, float] | None) -> str:
    if d is None:
        return "–"
    if math.isnan(d["lo"]):
        return f"{d['mean']:+.3f}"
    mark = " **↑**" if d["lo"] > 0 else (" ↓" if d["hi"] < 0 else "")
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{mark}"


def format_tables(summary: dict[str, Any], splits: list[str], header: str,
                  refs: tuple[str, ...] = ("none", "cutmix")) -> str:
    lines = [header, ""]
    fid_base = summary.get("cutmix", {}).get("label_mae")
    lines += ["| arm | train acc | " + " | ".join(f"test {s}" for s in splits)
              + " | pointing game | label MAE | MAE / CutMix's | time (s) | time / none |",
              "|---" * (len(splits) + 7) + "|"]
    base_time = summary.get("none", {}).get("seconds")
    for arm, row in summary.items():
        accs = " | ".join(f"{row.get(f'acc_{s}', float('nan')):.3f} ± {row.get(f'acc_{s}_sd', 0):.3f}" for s in splits)
        mae = row.get("label_mae")
        ratio = f"{mae / fid_base:.2f}" if mae is not None and fid_base else "–"
        cost = f"{row['seconds'] / base_time:.2f}x" if base_time else "–"
        pg = row.get("pointing_game")
        lines.append(f"| {arm} | {row['train_acc']:.3f} | {accs} | {'–' if pg is None else f'{pg:.3f}'} | "
                     f"{'–' if mae is None else f'{mae:.3f}'} | {ratio} | {row['seconds']:.0f} | {cost} |")
    for ref in refs:
        lines += ["", f"Paired difference in test accuracy to **{ref}** (mean [95% t-interval]; ↑ interval above 0, "
                  "↓ below):", "", "| arm | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
        for arm, row in summary.items():
            if f"vs_{ref}" in row:
                lines.append(f"| {arm} | " + " | ".join(_ci(row[f"vs_{ref}"].get(s)) for s in splits) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], splits: list[str], path: str, title: str,
         refs: tuple[str, ...] = ("none", "cutmix")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(refs), figsize=(6 * len(refs), 0.45 * len(summary) + 1.8), sharey=True,
                             squeeze=False)
    axes = axes[0]
    names = list(summary)
    colours = ["C0", "C1", "C2", "C3"]
    for ax, ref in zip(axes, refs):
        for j, split in enumerate(splits):
            ys, ms, lo, hi = [], [], [], []
            for i, arm in enumerate(names):
                d = summary[arm].get(f"vs_{ref}", {}).get(split)
                if d is None:
                    continue
                ys.append(i + (j - (len(splits) - 1) / 2) * 0.18)
                ms.append(d["mean"])
                lo.append(d["mean"] - d["lo"] if not math.isnan(d["lo"]) else 0.0)
                hi.append(d["hi"] - d["mean"] if not math.isnan(d["hi"]) else 0.0)
            ax.errorbar(ms, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, color=colours[j % 4], label=split)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"test accuracy − {ref} (paired, 95% CI)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # the axes share y: invert once, the first arm on top
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- sweep
def sweep_arms(method: str, epoch_steps: int) -> list[str]:
    """One-factor-at-a-time variants around ``method`` (section 3 of the issue), plus none and cutmix.

    Warm-up of one and five epochs (``epoch_steps`` calls each), CAMs from an EMA of the weights
    (decay 0.99: a horizon of ~100 of the ~320 steps), ``p`` 0.3 and 1.0 (default 0.5), no mixing
    in the last 0 or 5 epochs (default 1), and Beta alpha 1 (SnapMix's default is 5; SaliencyMix's 1,
    so it gets 0.4 and 2).
    """
    arms = ["none", "cutmix", method, f"{method}:warmup={epoch_steps}", f"{method}:warmup={5 * epoch_steps}",
            f"{method}:ema=0.99", f"{method}:p=0.3", f"{method}:p=1.0", f"{method}:off=0", f"{method}:off=5"]
    kind = parse_arm(method).kind
    arms += [f"{method}:alpha={a}" for a in {"snapmix": (1.0,), "saliencymix": (0.4, 2.0)}.get(kind, (0.4,))]
    return arms


# --------------------------------------------------------------------------- main
_RUN_INDEPENDENT = ("seeds", "threads")  # config fields that do not change a run's numbers
_LEGACY = {"base": "none", "arch": "demonet", "optimizer": "adamw", "root": None}  # files from before these fields
ARCH_NAMES = {"demonet": "DemoNet", "resnet8": "ResNet8", "resnet18": "ResNet-18 (CIFAR stem)"}
BASE_NAMES = {"none": "none (no crop, no flip: a secondary, no-recipe table)",
              "cropflip": "padded random crop + horizontal flip",
              "trivialaugment": "TrivialAugmentWide + padded random crop + horizontal flip"}


def load_reusable(paths: list[str], cfg: Config) -> dict[tuple[str, int], dict[str, Any]]:
    """Runs of earlier results files whose config matches ``cfg`` (runs are deterministic per seed)."""
    want = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_INDEPENDENT}
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        have = {k: v for k, v in {**_LEGACY, **data["config"]}.items() if k not in _RUN_INDEPENDENT}
        have = {k: tuple(v) if isinstance(v, list) else v for k, v in have.items()}
        if have != want:
            print(f"--reuse {path}: its config differs ({sorted(k for k in want if have.get(k) != want[k])}); "
                  "not reused", flush=True)
            continue
        impl = augmenter_impl()
        for r in data["runs"]:
            if "skipped" not in r and r["augmenter"] in ("-", impl):  # another path draws other random numbers
                found[(r["arm"], r["seed"])] = dict(r, reused_from=os.path.basename(path))
    return found


def _worker(job: tuple[Config, str, int]) -> dict[str, Any]:
    cfg, spec, seed = job
    try:
        return run_one(cfg, spec, seed)
    except NotImplementedError as err:
        return {"arm": spec, "seed": seed, "skipped": str(err)}


def replot(path: str) -> int:
    """Redraw ``payoff_x.png`` from ``payoff_x.json`` (e.g. after a change to the plot)."""
    with open(path) as f:
        data = json.load(f)
    cfg = data["config"]
    summary = data["summary"]
    found = {k[3:] for row in summary.values() for k in row if k.startswith("vs_")}
    refs = tuple(r for r in ("none", "cutmix") if r in found) + tuple(sorted(found - {"none", "cutmix"}))
    splits = list(_SHIFTS.get(cfg["dataset"], ("id",)))
    plot(summary, splits, os.path.splitext(path)[0] + ".png",
         f"{cfg['dataset']}: {cfg['seeds']} paired seeds, {cfg['epochs']} epochs", refs)
    return 0


def regime_table(paths: list[str], method: str = "snapmix") -> str:
    """One line per results file (a cell of the regime sweep): base-only accuracy, the oracle gate,
    ``method`` against base-only, against the best saliency-free mix of that cell, and against its
    flat-saliency twin, in-distribution and on the best and worst shift split.

    The best saliency-free mix is chosen per cell and split by its mean accuracy (a choice that
    favours the baseline).
    """
    lines = ["| cell | seeds | base only (id) | oracle − base (id) | gate | "
             f"{method} − base | {method} − best saliency-free | {method} − flat twin |",
             "|---|---|---|---|---|---|---|---|"]
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        cfg = data["config"]
        runs = [r for r in data["runs"] if "skipped" not in r]
        by = {(r["arm"], r["seed"]): r for r in runs}
        splits = list(_SHIFTS.get(cfg["dataset"], ("id",)))

        def diff(arm: str, ref: str, split: str) -> dict[str, float] | None:
            seeds = sorted(s for (a, s) in by if a == arm and (ref, s) in by)
            if not seeds:
                return None
            return paired([by[(arm, s)][f"acc_{split}"] for s in seeds], [by[(ref, s)][f"acc_{split}"] for s in seeds])

        def best_free(split: str) -> str | None:
            free = [a for a in SALIENCY_FREE if any(k[0] == a for k in by)]
            means = {a: statistics.mean(r[f"acc_{split}"] for (x, _), r in by.items() if x == a) for a in free}
            return max(means, key=means.__getitem__) if means else None

        def cell(ref_of: Any) -> str:
            parts = []
            for split in splits:
                ref = ref_of(split)
                d = diff(method, ref, split) if ref else None
                if d is not None:
                    parts.append(f"{split}{'' if ref in ('none', f'{method}-flat') else f' vs {ref}'} {_ci(d)}")
            return "<br>".join(parts) or "–"

        base = [r["acc_id"] for (a, _), r in by.items() if a == "none"]
        o = diff("oracle", "none", "id")
        gate_cell = "–" if o is None or math.isnan(o["se"]) else (
            f"{'passed' if o['mean'] > 2 * o['se'] else 'FAILED'} ({o['mean'] / o['se'] if o['se'] > 0 else 0:.1f} SE)")
        name = (f"{cfg['dataset']}, {ARCH_NAMES.get(cfg.get('arch', 'demonet'), '?')}, {cfg['train_per_class']}/class, "
                f"{cfg['epochs']} ep, base {cfg.get('base', 'none')}")
        seeds = len({s for (_, s) in by})
        lines.append(f"| {name} | {seeds} | {statistics.mean(base):.3f} | {_ci(o)} | {gate_cell} | "
                     f"{cell(lambda s: 'none')} | {cell(best_free)} | {cell(lambda s: f'{method}-flat')} |"
                     if base else f"| {name} | {seeds} | – | – | – | – | – | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, fewer arms, 500 test images (~10 min)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--dataset", choices=["objects", "textures", "digits", "folder"], default="objects",
                        help="objects: ClutteredObjects; textures: TexturedBlobs; digits: sklearn digits on clutter; "
                             "folder: an ImageFolder tree at --root (train/, test/ or val/)")
    parser.add_argument("--root", default=None, help="the ImageFolder tree of --dataset folder")
    parser.add_argument("--base", choices=["none", "cropflip", "trivialaugment"], default=None,
                        help="augmentation every arm gets before its mix (default cropflip: padded random crop + "
                             "flip; trivialaugment: TrivialAugmentWide then cropflip)")
    parser.add_argument("--arch", choices=["demonet", "resnet8", "resnet18"], default=None)
    parser.add_argument("--arms", default=None, help="comma-separated arms (options after ':', see the docstring)")
    parser.add_argument("--sweep", default=None, metavar="ARM", help="run the warm-up / EMA / p / alpha sweep")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-per-class", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--p", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one thread each by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--out", default=None, help="write payoff_<name>.md / .json / .png here")
    parser.add_argument("--reuse", action="append", default=[], metavar="JSON",
                        help="take runs (same arm, seed and config) from an earlier payoff_*.json instead of rerunning")
    parser.add_argument("--name", default=None, help="output stem suffix (default: dataset, quick, sweep)")
    parser.add_argument("--regimes", nargs="+", default=None, metavar="JSON",
                        help="print one summary line per results file (the regime table) and exit")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="redraw the PNG of an earlier payoff_*.json next to it (no training)")
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.replot)
    if args.regimes:
        print(regime_table(args.regimes))
        return 0

    preset = args.preset or ("quick" if args.quick else "full")
    cfg = Config(**PRESETS[preset], dataset=args.dataset, device=args.device, root=args.root)
    if args.dataset == "digits":  # sklearn's digits: 10 classes, 347 test glyphs
        cfg.test_size, cfg.num_classes = min(cfg.test_size, 347), 10
    if args.dataset == "folder":
        if not args.root or not os.path.isdir(os.path.join(args.root, "train")):
            raise SystemExit("--dataset folder needs --root PATH holding train/<class>/... and test/ (or val/)")
        cfg.num_classes = len([d for d in os.scandir(os.path.join(args.root, "train")) if d.is_dir()])
    for key in ("seeds", "epochs", "train_per_class", "width", "p", "threads", "base", "arch"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    steps = math.ceil(cfg.train_per_class * cfg.num_classes / cfg.batch_size)
    if args.sweep:
        arms = sweep_arms(args.sweep, steps)
    elif args.arms:
        arms = [a for a in args.arms.split(",") if a]
    else:
        arms = list(QUICK_ARMS if preset == "quick" else DIGITS_ARMS if args.dataset == "digits" else DEFAULT_ARMS)
    for a in arms:
        parse_arm(a)
    if args.dataset in ("digits", "folder") and any(parse_arm(a).saliency == "mask" for a in arms):
        raise SystemExit(f"the {args.dataset} dataset has no object masks: drop the oracle arms")
    if cfg.base == "trivialaugment" and any(parse_arm(a).saliency == "mask" for a in arms):
        raise SystemExit("--base trivialaugment cannot move object masks (torchvision's TrivialAugmentWide refuses "
                         "them): drop the oracle arms")
    splits = splits_of(cfg)
    jobs = [(cfg, a, s) for s in range(cfg.seeds) for a in arms]
    reused = load_reusable(args.reuse, cfg)
    jobs_left = [j for j in jobs if (j[1], j[2]) not in reused]
    print(f"{len(jobs)} runs: {len(arms)} arms x {cfg.seeds} seeds, {args.workers} worker(s), preset {preset}; "
          f"{cfg}", flush=True)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        if "skipped" in r:
            print(f"seed {r['seed']} {r['arm']:28s} skipped: {r['skipped']}", flush=True)
            return
        accs = " ".join(f"{s} {r[f'acc_{s}']:.3f}" for s in splits)
        mae = r.get("label_mae")
        print(f"seed {r['seed']} {r['arm']:28s} train {r['train_acc']:.3f} {accs} pg {float('nan') if r['pointing_game'] is None else r['pointing_game']:.2f} "
              f"mae {'-' if mae is None else f'{mae:.3f}'} {r['seconds']:.0f}s [{time.perf_counter() - t0:.0f}s]",
              flush=True)

    for job in jobs:
        if (job[1], job[2]) in reused:
            report(reused[(job[1], job[2])])
    if args.workers > 1 and jobs_left:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_worker, job) for job in jobs_left]):
                report(future.result())
    else:
        for job in jobs_left:
            report(_worker(job))
    wall = time.perf_counter() - t0
    done = [r for r in results if "skipped" not in r]
    skipped = sorted({r["arm"] for r in results if "skipped" in r})
    # differences to the base only, to each saliency-free mix in the run, and to the swept method
    refs = ("none",) + tuple(a for a in SALIENCY_FREE if a in arms) + ((args.sweep,) if args.sweep else ())
    summary = summarise(done, arms, splits, refs)
    what = f"sweep around {args.sweep}" if args.sweep else f"{len(summary)} arms"
    header = (f"Dataset {cfg.dataset}, {cfg.size}x{cfg.size}, {cfg.num_classes} classes, {cfg.train_per_class} "
              f"training images per class, {ARCH_NAMES[cfg.arch]} width {cfg.width}, {cfg.epochs} epochs "
              f"{'SGD cosine' if cfg.optimizer == 'sgd' else 'AdamW OneCycle'} lr {cfg.lr:g}, "
              f"base augmentation in every arm: {BASE_NAMES[cfg.base]}, "
              f"batch {cfg.batch_size}, p={cfg.p:g} per sample, no mixing in the last {cfg.off_epochs} epoch(s) unless "
              f"the arm says off=; {cfg.seeds} paired seeds, final-epoch accuracy on {cfg.test_size} test images per "
              f"split; {what}; wall time {wall / 60:.1f} min with {args.workers} worker(s) on {cfg.device}"
              + (f" for {len(jobs_left)} runs ({len(jobs) - len(jobs_left)} reused from --reuse)." if reused else ".")
              + (f" Skipped (option missing in this salaug): {', '.join(skipped)}." if skipped else ""))
    g = gate(summary)
    table = format_tables(summary, splits, header + "\n\n" + g, refs)
    print("\n" + table, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        name = args.name or ("sweep" if args.sweep else "quick" if preset == "quick" else cfg.dataset)
        stem = os.path.join(args.out, f"payoff_{name}")
        cmd = "python benchmarks/payoff.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(stem + ".md", "w") as f:
            f.write(f"Command: `{cmd}`\n\n{table}\n")
        with open(stem + ".json", "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "arms": arms, "wall_seconds": wall, "gate": g,
                       "summary": summary, "runs": results}, f, indent=1)
        try:
            plot(summary, splits, stem + ".png", f"{cfg.dataset}: {cfg.seeds} paired seeds, {cfg.epochs} epochs", refs)
        except ImportError:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
