"""The arms: what each one trains with (a transform of :mod:`salaug.transforms.registry`, or MixUp,
or nothing), fed which saliency, with which options; and the in-loop augmenter that applies it."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.payoff.config import Config
from salaug.augmenter import SaliencyAugmenter
from salaug.sources import Flat
from salaug.transforms.base import SaliencyTransform, sample_beta
from salaug.transforms.registry import create_transform

SALIENCY_FREE = ("cutmix", "mixup", "resizemix")  # the mixes a saliency method must beat
DEFAULT_ARMS = ("none", "mixup", "cutmix", "saliencymix", "saliencymix-mass", "attentivecutmix", "salientpaste",
                "guidedmixup", "snapmix", "snapmix-flat", "snapmix-area", "oracle", "oracle-saliencymix")
QUICK_ARMS = ("none", "cutmix", "saliencymix", "snapmix", "snapmix-flat", "oracle")
DIGITS_ARMS = ("none", "mixup", "cutmix", "saliencymix", "snapmix", "snapmix-flat")
#: what the ``augmenter`` field of a run says when the arm went through the in-loop augmenter
#: (``"-"``: no augmenter); runs of older files that say otherwise drew other random numbers
AUGMENTER = "salaug.SaliencyAugmenter"


@dataclasses.dataclass(frozen=True)
class Arm:
    """What one arm does: a transform fed some saliency, with options."""

    name: str
    kind: str  # "none", "mixup" or a name of salaug.transforms.registry
    saliency: str = "cam"  # "cam", "flat" or "mask"
    labels: str | None = None  # None: the transform's default; "area" / "saliency"
    warmup: int = 0
    ema: float | None = None
    alpha: float | None = None
    p: float | None = None
    off: int | None = None
    start: int | None = None  # epochs without mixing at the start (None: the config's start_epochs)
    cam: str = "gradcam"
    cam_scale: float = 1.0
    transport: bool = False
    labels_from: str = "cam"  # "cam" (the transform's rule on the saliency fed) or "forward"
    blend: float | None = None  # forward labels: weight of the model's evidence (None: the rule's default)


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
    # labels from the training forward of the mixed batch (no CAM pass); on a ViT, cutmix-fwd is TransMix
    "snapmix-fwd": {"kind": "snapmix", "saliency": "flat", "labels_from": "forward"},
    "cutmix-fwd": {"kind": "cutmix", "saliency": "flat", "labels_from": "forward"},
    "resizemix-fwd": {"kind": "resizemix", "saliency": "flat", "labels_from": "forward"},
    "transmix": {"kind": "cutmix", "saliency": "flat", "labels_from": "forward"},
}
_OPTION_TYPES = {"warmup": int, "ema": float, "alpha": float, "p": float, "off": int, "start": int, "cam": str,
                 "labels": str, "saliency": str, "cam_scale": float, "blend": float}


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


def build_transform(arm: Arm, cfg: Config) -> SaliencyTransform | None:
    """The salaug transform of an arm, at the arm's (or the config's) ``p``; ``None`` for none / mixup.

    Raises:
        ValueError: the arm sets an option its transform does not take (e.g. ``guidedmixup:labels=area``).
    """
    if arm.kind in ("none", "mixup"):
        return None
    options: dict[str, Any] = {"p": cfg.p if arm.p is None else arm.p}
    if arm.alpha is not None:
        options["alpha"] = arm.alpha
    if arm.transport:
        options["transport"] = True
    if arm.labels is not None:
        options["labels"] = arm.labels
    try:
        return create_transform(arm.kind, cfg.num_classes, **options)
    except ValueError as err:
        raise ValueError(f"arm {arm.name!r}: {err}") from None


def make_augmenter(model: nn.Module, transform: SaliencyTransform, arm: Arm, cfg: Config, seed: int,
                   target_layer: str | None) -> SaliencyAugmenter:
    """The in-loop ``salaug.SaliencyAugmenter`` of an arm (its saliency source, warm-up, EMA, CAM scale).

    Flat arms draw from :class:`salaug.sources.Flat`; forward-label arms from the forward (their
    boxes are drawn flat by the source itself); the others from a CAM forward (or the true masks
    the loop hands in).
    """
    common: dict[str, Any] = {"num_classes": cfg.num_classes, "seed": seed, "warmup_steps": arm.warmup}
    if arm.saliency == "flat" and arm.labels_from != "forward":  # the saliency-free twin: no map at all
        return SaliencyAugmenter(model, transform, source=Flat(), **common)
    return SaliencyAugmenter(model, transform, cam=arm.cam, target_layer=target_layer, cam_scale=arm.cam_scale,
                             ema_decay=arm.ema, labels_from=arm.labels_from, label_blend=arm.blend, **common)


def mixup(images: Tensor, labels: Tensor, num_classes: int, p: float, alpha: float,
          generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample MixUp: ``(images, soft_labels, perm, partner_weight)``, batched, ``p`` per sample.

    Written here: torchvision's v2.MixUp mixes the whole batch with one lambda and has no per-sample ``p``.
    """
    b = images.shape[0]
    dev = images.device
    perm = torch.randperm(b, generator=generator).to(dev)
    lam = sample_beta(alpha, alpha, (b,), torch.device("cpu"), generator)
    applied = torch.rand(b, generator=generator) < p
    w = (lam * applied).to(dev)
    soft = F.one_hot(labels, num_classes).float()
    mixed = torch.lerp(images, images[perm], w.view(-1, 1, 1, 1).to(images.dtype))
    return mixed, torch.lerp(soft, soft[perm], w.view(-1, 1)), perm, w


def sweep_arms(method: str, epoch_steps: int) -> list[str]:
    """One-factor-at-a-time variants around ``method``, plus none and cutmix.

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
