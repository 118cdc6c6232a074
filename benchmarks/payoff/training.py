"""One run (an arm on a seed) of the plain training loop, its measurements, and the runs of a cell."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.payoff.arms import (
    AUGMENTER,
    Arm,
    build_transform,
    make_augmenter,
    mixup,
    parse_arm,
)
from benchmarks.payoff.config import Config
from benchmarks.payoff.data import SOURCE_SEED, apply_base, cache_dir, load_data, source_set
from salaug.cam import create_cam
from salaug.metrics import mix_visibility, pointing_game
from salaug.models import DemoNet, ResNet8, tiny_vit
from salaug.transforms.recipe import crop_flip

TARGET_LAYER = "features"


def build_model(cfg: Config) -> nn.Module:
    """The network of ``cfg.arch``: salaug.models.DemoNet / ResNet8 (CAM layer ``features``), a
    CIFAR-style torchvision ResNet-18 (3x3 stem, no max-pool; CAM layer ``layer4``), or
    salaug.models.tiny_vit (a conv stem to an 8 x 8 token grid, 4 blocks; forward labels read its last block's
    attention)."""
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
    if cfg.arch == "vit":
        return tiny_vit(num_classes=cfg.num_classes, image_size=cfg.size)
    raise ValueError(f"unknown arch {cfg.arch!r}; choose demonet, resnet8, resnet18 or vit")


def target_layer(cfg: Config) -> str | None:
    """The CAM layer of ``cfg.arch`` (``None`` for the ViT: the forward labels find its last attention)."""
    return {"resnet18": "layer4", "vit": None}.get(cfg.arch, TARGET_LAYER)


# --------------------------------------------------------------------------- fine-tuning
#: the one pretraining run on the source set: AdamW + OneCycle, batch 128, the crop + flip recipe
PRETRAIN: dict[str, float] = {"batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4}
SOURCE_CLASSES = 7
_HEADS = {"demonet": "head.", "resnet8": "head.", "resnet18": "fc.", "vit": "heads."}


def pretrained_path(cfg: Config) -> str:
    """The cache file of the backbone ``cfg`` fine-tunes (one per arch, width, size and source set)."""
    name = (f"{cfg.arch}_w{cfg.width}_s{cfg.size}_src{SOURCE_CLASSES}x{cfg.source_per_class}_"
            f"ep{cfg.pretrain_epochs}_seed{SOURCE_SEED}.pt")
    return os.path.join(cache_dir(cfg), "payoff_pretrained", name)


def pretrain(cfg: Config, log: Callable[..., None] = print) -> dict[str, Any]:
    """The pretrained source network of ``cfg`` (its state_dict and held-out source accuracy), trained
    once and cached at :func:`pretrained_path` (``.pt`` and a ``.json`` with what it reached).

    Trains ``cfg.arch`` from ``torch.manual_seed(SOURCE_SEED)`` on :func:`~benchmarks.payoff.data.source_set`
    for ``cfg.pretrain_epochs`` with :data:`PRETRAIN` and the crop + flip recipe; the accuracy is
    measured on 700 held-out source images (another seed).

    Returns:
        ``{"state_dict": ..., "source_acc": float, "seconds": float, "path": str}``.
    """
    path = pretrained_path(cfg)
    if os.path.isfile(path) and os.path.isfile(path[:-3] + ".json"):
        with open(path[:-3] + ".json") as f:
            info = json.load(f)
        return {**info, "state_dict": torch.load(path, map_location="cpu", weights_only=True), "path": path}
    src = dataclasses.replace(cfg, num_classes=SOURCE_CLASSES, batch_size=int(PRETRAIN["batch_size"]),
                              lr=PRETRAIN["lr"], weight_decay=PRETRAIN["weight_decay"], epochs=cfg.pretrain_epochs,
                              optimizer="adamw")
    torch.set_num_threads(max(cfg.threads, torch.get_num_threads()))
    dev = torch.device(cfg.device)
    data = source_set(cfg)
    held_out = source_set(dataclasses.replace(cfg, source_per_class=100), seed=SOURCE_SEED + 1)
    x_all, y_all = data["image"].to(dev), data["label"].to(dev)
    torch.manual_seed(SOURCE_SEED)
    model = build_model(src).to(dev)
    n = x_all.shape[0]
    opt, sched = _optimizer(src, model, src.epochs * math.ceil(n / src.batch_size))
    gen = torch.Generator().manual_seed(SOURCE_SEED)
    start = time.perf_counter()
    for epoch in range(src.epochs):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(src.batch_size):
            x = crop_flip(x_all[idx.to(dev)], padding=cfg.size // 8, generator=gen)[0]
            loss = F.cross_entropy(model(x), y_all[idx.to(dev)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"pretraining {cfg.arch} on {n} source images: epoch {epoch + 1}/{src.epochs}, "
            f"loss {float(loss.detach()):.3f} [{time.perf_counter() - start:.0f}s]", flush=True)
    info = {"source_acc": accuracy(model, held_out["image"].to(dev), held_out["label"].to(dev)),
            "train_acc": accuracy(model, x_all, y_all), "seconds": time.perf_counter() - start,
            "source_images": n, "epochs": src.epochs}
    log(f"pretrained: held-out source accuracy {info['source_acc']:.3f}, train {info['train_acc']:.3f}; "
        f"cached at {path}", flush=True)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path + ".tmp")  # then renamed: a crashed run leaves no half-written cache
    os.replace(path + ".tmp", path)
    with open(path[:-3] + ".json", "w") as f:
        json.dump(info, f)
    return {**info, "state_dict": state, "path": path}


def load_backbone(model: nn.Module, cfg: Config) -> nn.Module:
    """Load the pretrained backbone into ``model`` (all but its head, which stays as initialised); with
    ``cfg.finetune == "frozen"`` freeze everything but the head (see :func:`set_train_mode`)."""
    if cfg.arch not in _HEADS:
        raise ValueError(f"fine-tuning is set up for {sorted(_HEADS)}, not {cfg.arch!r}")
    head = _HEADS[cfg.arch]
    state = {k: v for k, v in pretrain(cfg)["state_dict"].items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise RuntimeError(f"the pretrained backbone does not fit {cfg.arch}: missing {missing}, "
                           f"unexpected {unexpected}")
    if cfg.finetune == "frozen":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head))
    return model


def set_train_mode(model: nn.Module, cfg: Config) -> None:
    """``model.train()``; a frozen backbone stays in eval mode (its BatchNorm statistics frozen too)."""
    model.train()
    if cfg.finetune == "frozen":
        head = _HEADS[cfg.arch].rstrip(".")
        for name, child in model.named_children():
            if name != head:
                child.eval()


# --------------------------------------------------------------------------- measurements
@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 500) -> float:
    model.eval()
    pairs = zip(images.split(batch), labels.split(batch), strict=True)
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in pairs)
    return correct / max(labels.numel(), 1)


def pointing(model: nn.Module, data: dict[str, Tensor], n: int, layer: str | None) -> float | None:
    """Pointing game of GradCAM (true class) on the first ``n`` test images; ``None`` without boxes or layer."""
    if n <= 0 or "box" not in data or layer is None:
        return None
    cam = create_cam("gradcam", model, layer)
    x, y, boxes = data["image"][:n], data["label"][:n], data["box"][:n]
    return float(pointing_game(cam(x, y), boxes).float().mean())


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
    GuidedMixup and MixUp (``transform`` ``None``) the visible fractions are the mask-weighted mixing
    weights. Returns ``(B,)`` errors and ``(B,)`` bool "mixed with an object of another class" (only
    those have a partner share to get wrong).
    """
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


# --------------------------------------------------------------------------- one run
def _optimizer(cfg: Config, model: nn.Module, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """SGD + cosine (``cfg.optimizer == "sgd"``) or AdamW + OneCycle, stepped per batch."""
    if cfg.optimizer == "sgd":
        sgd = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                              nesterov=True)
        return sgd, torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=total_steps)
    adamw = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return adamw, torch.optim.lr_scheduler.OneCycleLR(adamw, max_lr=cfg.lr, total_steps=total_steps)


def _saliency_of(arm: Arm, x: Tensor, m: Tensor | None) -> Tensor | None:
    """What the loop hands the augmenter: the true masks, or ``None`` (the augmenter's own source)."""
    if arm.saliency == "mask":
        assert m is not None
        return m.float()
    return None


def _measure(cfg: Config, model: nn.Module, train: dict[str, Tensor], tests: dict[str, dict[str, Tensor]],
             errors: list[Tensor]) -> dict[str, Any]:
    dev = torch.device(cfg.device)
    result: dict[str, Any] = {"train_acc": accuracy(model, train["image"].to(dev), train["label"].to(dev))}
    for split, data in tests.items():
        result[f"acc_{split}"] = accuracy(model, data["image"].to(dev), data["label"].to(dev))
    result["pointing_game"] = pointing(model.cpu(), tests["id"], cfg.pointing_images, target_layer(cfg))
    if errors:
        e = torch.cat(errors)
        result["label_mae"] = float(e.abs().mean()) if e.numel() else None
        result["label_bias"] = float(e.mean()) if e.numel() else None
        result["label_samples"] = int(e.numel())
    return result


def run_one(cfg: Config, spec: str, seed: int) -> dict[str, Any]:
    """Train one arm on one seed; returns its measurements (JSON-ready).

    Every arm of a seed gets the same training images, initial weights, batch order and base
    augmentation; the mix draws from its own stream.
    """
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
    epochs = cfg.epochs
    off = cfg.off_epochs if arm.off is None else arm.off
    first = cfg.start_epochs if arm.start is None else arm.start

    torch.manual_seed(seed)  # the same initial weights (the same new head when fine-tuning) for every arm of a seed
    model = build_model(cfg)
    if cfg.finetune != "none":
        model = load_backbone(model, cfg)
    model = model.to(dev)
    opt, sched = _optimizer(cfg, model, epochs * math.ceil(n / cfg.batch_size))
    order = torch.Generator().manual_seed(seed)  # the same batches for every arm of a seed
    base_gen = torch.Generator().manual_seed(seed + 2_000_003)  # the same base augmentation for every arm
    mix_gen = torch.Generator().manual_seed(seed + 1_000_003)
    transform = build_transform(arm, cfg)
    aug = make_augmenter(model, transform, arm, cfg, seed, target_layer(cfg)) if transform is not None else None
    p = cfg.p if arm.p is None else arm.p
    alpha = 1.0 if arm.alpha is None else arm.alpha
    errors: list[Tensor] = []
    start = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        set_train_mode(model, cfg)
        mixing = arm.kind != "none" and first <= epoch < epochs - off
        for idx in torch.randperm(n, generator=order).split(cfg.batch_size):
            idx = idx.to(dev)
            x, y = x_all[idx], y_all[idx]
            m = m_all[idx] if m_all is not None else None
            x, m = apply_base(cfg, x, m, base_gen, seed * 1_000_003 + step)
            target: Tensor = y
            record: tuple[Any, Any, Tensor] | None = None
            if mixing and arm.kind == "mixup":
                x, target, perm, w = mixup(x, y, cfg.num_classes, p, alpha, mix_gen)
                record = (None, {"perm": perm, "applied": w > 0, "weight": w}, target)
            elif mixing and aug is not None:
                sal = _saliency_of(arm, x, m)
                x, target = aug(x, y, saliency=sal) if sal is not None else aug(x, y)
                if aug.last is not None and aug.last.params is not None:
                    record = (transform, aug.last.params, target)
            logits = model(x)  # forward labels are filled in `target` by this forward
            if record is not None and m is not None and cfg.fidelity_every and step % cfg.fidelity_every == 0:
                err, valid = label_error(record[0], record[1], record[2], y, m, cfg.num_classes)
                errors.append(err[valid].detach().cpu())
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    return {"arm": spec, "seed": seed, "seconds": seconds, "augmenter": AUGMENTER if aug is not None else "-",
            **_measure(cfg, model, train, tests, errors)}


def _worker(job: tuple[Config, str, int]) -> dict[str, Any]:
    return run_one(*job)


def run_jobs(jobs: list[tuple[Config, str, int]], workers: int, report: Callable[[dict[str, Any]], None]) -> None:
    """Run ``(config, arm, seed)`` jobs, in ``workers`` spawned processes when more than one, and
    hand each result to ``report`` as it finishes."""
    if workers > 1 and jobs:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_worker, job) for job in jobs]):
                report(future.result())
    else:
        for job in jobs:
            report(_worker(job))
