"""The Lightning callback that augments training batches with saliency from the model being trained.

Per training batch (``on_train_batch_start``, after the batch is on the device): compute CAMs of the
batch with the unwrapped LightningModule, apply a saliency transform, and write the new images and
``(B, K)`` soft labels back into the batch container, which is what ``training_step`` receives.

The class derives from ``pytorch_lightning.Callback`` and, when the ``lightning`` package is
installed, from ``lightning.pytorch.Callback`` as well, so it works with either ``Trainer``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, MutableMapping, MutableSequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor, nn

from salaug._checks import to_soft_labels
from salaug.cam import create_cam
from salaug.cam.base import eval_mode
from salaug.transforms.base import SaliencyTransform

__all__ = ["SaliencyAugmentation", "callback_bases"]

_UNSUPPORTED_STRATEGIES = ("FSDP", "DeepSpeed", "ModelParallel", "XLA")
_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads consecutive counters over the seed space


def callback_bases() -> tuple[type, ...]:
    """The Callback base classes to derive from: ``pytorch_lightning``'s and, if installed, ``lightning``'s."""
    bases: list[type] = [pl.Callback]
    if importlib.util.find_spec("lightning") is not None:
        from lightning.pytorch import Callback as LightningCallback

        bases.append(LightningCallback)
    return tuple(bases)


@contextlib.contextmanager
def _uncompiled_forward(pl_module: nn.Module) -> Iterator[None]:
    # A LightningModule compiled with torch.compile has its forward replaced by the compiled one,
    # which ignores forward hooks added later; the CAM forward runs the original eager forward.
    ctx = getattr(pl_module, "_compiler_ctx", None)
    if not ctx:
        yield
        return
    compiled = pl_module.forward
    pl_module.forward = ctx["original_forward"]  # type: ignore[method-assign]
    try:
        yield
    finally:
        pl_module.forward = compiled  # type: ignore[method-assign]


class SaliencyAugmentation(*callback_bases()):  # type: ignore[misc]
    """Augment each training batch with a saliency transform driven by the model's own CAMs.

    Example:
        >>> import salaug
        >>> cb = salaug.SaliencyAugmentation(salaug.SaliencyMix(num_classes=10), cam="gradcam",
        ...                                  target_layer="net.layer4", p=0.5)
        >>> cb.state_key
        "SaliencyAugmentation{'transform': 'SaliencyMix', 'cam': 'gradcam', 'target_layer': 'net.layer4', 'image_key': 0, 'label_key': 1}"

    Args:
        transform: a salaug transform, called ``transform(images, saliency, labels)``.
        cam: a CAM method name (``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``, ``"hirescam"``,
            ``"layercam"``, ``"eigencam"``, ``"scorecam"``, ``"ablationcam"``) or a CAM object built
            on the LightningModule.
        target_layer: dotted module name relative to the LightningModule (``"net.layer4"``), or
            ``None`` for the last layer with a spatial ``(B, C, h, w)`` output.
        p: probability that a batch is augmented. Skipped batches still get ``(B, K)`` one-hot
            labels, so the label format does not flicker between steps.
        start_epoch: first epoch (0-based) to augment.
        stop_epoch: epoch at which augmentation stops (exclusive), e.g. to train the last epochs
            on clean data; ``None`` augments to the end. Outside the window batches are untouched.
        cam_scale: resolution factor of the CAM forward; ``0.5`` runs it on a half-size batch
            (about 4x cheaper for a CNN) and upsamples the maps.
        targets: ``"labels"`` (CAM of each image's label; soft labels act as class weights) or
            ``"predicted"`` (CAM of the predicted class).
        image_key: position (list batch) or key (dict batch) of the images ``(B, C, H, W)``.
        label_key: position or key of the labels, ``(B,)`` class indices or ``(B, K)``.
        num_classes: number of classes; inferred from the model's output when ``None``.
        seed: seed of the augmentation stream; ``None`` uses ``torch.initial_seed()`` at setup
            (set by ``seed_everything``). Each rank draws from its own stream.
        log_every_n_steps: every this many augmented steps, log a picture (originals, CAM
            overlays, augmented samples) on rank 0; ``0`` disables pictures.

    Raises:
        TypeError: if ``transform`` is not a salaug transform, or (at run time) the batch is a
            tuple, which cannot be changed in place.
        ValueError: for out-of-range arguments, or a ``training_step`` that takes
            ``dataloader_iter`` (it never sees edits made by callbacks).
        RuntimeError: under strategies that shard the model (FSDP, DeepSpeed, model parallel).
    """

    def __init__(
        self,
        transform: SaliencyTransform,
        cam: str | Any = "gradcam",
        target_layer: str | nn.Module | None = None,
        *,
        p: float = 1.0,
        start_epoch: int = 0,
        stop_epoch: int | None = None,
        cam_scale: float = 1.0,
        targets: Literal["labels", "predicted"] = "labels",
        image_key: int | str = 0,
        label_key: int | str = 1,
        num_classes: int | None = None,
        seed: int | None = None,
        log_every_n_steps: int = 500,
    ) -> None:
        if not isinstance(transform, SaliencyTransform):
            raise TypeError(
                f"transform must be a salaug transform (e.g. salaug.SaliencyMix(num_classes=10)), "
                f"got {type(transform).__name__}"
            )
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        if not 0.0 < cam_scale <= 1.0:
            raise ValueError(f"cam_scale must be in (0, 1], got {cam_scale}")
        if start_epoch < 0 or (stop_epoch is not None and stop_epoch <= start_epoch):
            raise ValueError(f"need 0 <= start_epoch < stop_epoch, got {start_epoch} and {stop_epoch}")
        if targets not in ("labels", "predicted"):
            raise ValueError(f"targets must be 'labels' or 'predicted', got {targets!r}")
        if log_every_n_steps < 0:
            raise ValueError(f"log_every_n_steps must be >= 0, got {log_every_n_steps}")
        self.transform = transform
        self.cam = cam
        self.target_layer = target_layer
        self.p = float(p)
        self.start_epoch = start_epoch
        self.stop_epoch = stop_epoch
        self.cam_scale = float(cam_scale)
        self.targets = targets
        self.image_key = image_key
        self.label_key = label_key
        self.num_classes = num_classes or transform.num_classes
        self.seed = seed
        self.log_every_n_steps = log_every_n_steps
        self.batches_seen = 0
        self.batches_augmented = 0
        self._cam: Any = None
        self._rank = 0
        self._picture_dir: str | None = None
        self._generator = torch.Generator()

    # -- Lightning plumbing -----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        layer = self.target_layer if isinstance(self.target_layer, (str, type(None))) else type(self.target_layer).__name__
        cam = self.cam if isinstance(self.cam, str) else type(self.cam).__name__
        return self._generate_state_key(
            transform=type(self.transform).__name__, cam=cam, target_layer=layer,
            image_key=self.image_key, label_key=self.label_key,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = type(trainer.strategy).__name__
        if any(name in strategy for name in _UNSUPPORTED_STRATEGIES):
            raise RuntimeError(
                f"SaliencyAugmentation does not support {strategy}: CAMs need the full model on each "
                "device, which sharded strategies do not have. Use DDP (strategy='ddp') or one device."
            )
        if is_param_in_hook_signature(pl_module.training_step, "dataloader_iter", explicit=True):
            raise ValueError(
                "training_step takes `dataloader_iter`, so it reads batches itself and never sees the "
                "batches SaliencyAugmentation rewrites. Take `batch` instead, or apply a salaug "
                "transform inside training_step."
            )
        self._rank = trainer.global_rank
        if self.seed is None:
            self.seed = torch.initial_seed() % (2**62)
        self._cam = create_cam(self.cam, pl_module, self.target_layer)
        self._picture_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "salaug")

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "batches_seen": self.batches_seen, "batches_augmented": self.batches_augmented}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict["seed"]
        self.batches_seen = state_dict["batches_seen"]
        self.batches_augmented = state_dict["batches_augmented"]

    # -- the work ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        epoch = trainer.current_epoch
        if epoch < self.start_epoch or (self.stop_epoch is not None and epoch >= self.stop_epoch):
            return
        images, labels = self._read(batch)
        generator = self._batch_generator()
        self.batches_seen += 1
        if self.num_classes is None:
            self.num_classes = self._infer_num_classes(pl_module, images)
        augment = self.p >= 1.0 or bool(torch.rand((), generator=generator) < self.p)
        if not augment:
            self._write(batch, images, to_soft_labels(labels, images.shape[0], self.num_classes, images.device))
            pl_module.log("salaug/augmented", 0.0, on_step=True, on_epoch=True, batch_size=images.shape[0])
            return
        saliency = self.compute_saliency(trainer, pl_module, images, labels)
        previous = self.transform.generator
        self.transform.generator = generator
        try:
            out, params = self.transform(images, saliency, labels, num_classes=self.num_classes, return_params=True)
        finally:
            self.transform.generator = previous
        self._write(batch, out.images, out.labels)
        self.batches_augmented += 1
        self._log(trainer, pl_module, images, labels, saliency, out, params)

    def compute_saliency(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor,
                         labels: Tensor) -> Tensor:
        """CAMs ``(B, 1, H, W)`` of ``images`` from ``pl_module``, at ``cam_scale``, side-effect free."""
        x = images
        if self.cam_scale < 1.0:
            x = F.interpolate(images, scale_factor=self.cam_scale, mode="bilinear", align_corners=False,
                              antialias=True)
        if self.targets == "predicted":
            targets = None
        elif labels.ndim == 1:
            targets = labels
        else:
            targets = labels.float()
        with trainer.precision_plugin.forward_context(), _uncompiled_forward(pl_module):
            return self._cam(x, targets, output_size=tuple(images.shape[-2:]))

    def _batch_generator(self) -> torch.Generator:
        # One stream per (seed, rank, batch counter): resuming from a checkpoint (which stores the
        # counter) continues the same stream on every rank without storing per-rank generator state.
        key = (int(self.seed or 0) + self._rank * 1_000_003 + self.batches_seen * _MIX) % (2**63 - 1)
        return self._generator.manual_seed(key)

    def _infer_num_classes(self, pl_module: nn.Module, images: Tensor) -> int:
        with torch.no_grad(), eval_mode(pl_module), _uncompiled_forward(pl_module):
            logits = pl_module(images[:1])
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise TypeError(
                "cannot infer num_classes: the LightningModule's forward does not return (B, K) logits; "
                "pass num_classes= to SaliencyAugmentation"
            )
        return int(logits.shape[1])

    def _read(self, batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch, tuple):
            raise TypeError(
                "SaliencyAugmentation writes the augmented images and soft labels back into the batch, "
                "but this batch is a tuple, which cannot be changed in place. Make the DataLoader yield "
                "lists or dicts (torch's default_collate already turns tuple samples into a list; a "
                "custom collate_fn should return `[images, labels]`)."
            )
        if not isinstance(batch, (MutableSequence, MutableMapping)):
            raise TypeError(
                f"SaliencyAugmentation needs a list or dict batch to rewrite, got {type(batch).__name__}"
            )
        try:
            images, labels = batch[self.image_key], batch[self.label_key]
        except (KeyError, IndexError) as err:
            raise KeyError(
                f"batch has no entry {err}: set image_key / label_key to the positions or keys of the "
                f"images and labels (now {self.image_key!r} and {self.label_key!r})"
            ) from None
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(
                f"batch[{self.image_key!r}] must be images of shape (B, C, H, W), got "
                f"{getattr(images, 'shape', type(images).__name__)}; check image_key"
            )
        return images, labels

    def _write(self, batch: Any, images: Tensor, labels: Tensor) -> None:
        batch[self.image_key] = images
        batch[self.label_key] = labels

    # -- logging ----------------------------------------------------------------------------------
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor, labels: Tensor,
             saliency: Tensor, out: Any, params: dict[str, Tensor]) -> None:
        b = images.shape[0]
        applied = params["applied"].float().mean()
        own = (labels if labels.ndim == 1 else labels.argmax(1)).to(images.device).long().unsqueeze(1)
        kept = out.labels.gather(1, own).mean()
        pl_module.log_dict(
            {"salaug/augmented": applied, "salaug/salient_area": (saliency >= 0.5).float().mean(),
             "salaug/label_weight": kept},
            on_step=True, on_epoch=True, batch_size=b,
        )
        n = self.log_every_n_steps
        if n and trainer.is_global_zero and (self.batches_augmented - 1) % n == 0:
            self._log_picture(trainer, images, saliency, out)

    def _log_picture(self, trainer: pl.Trainer, images: Tensor, saliency: Tensor, out: Any) -> None:
        from salaug.viz import overlay, save_grid, to_display

        k = min(8, images.shape[0])
        shown = to_display(images[:k])
        rows = [shown, overlay(shown, saliency[:k].float()), to_display(out.images[:k])]
        captions = [_caption(row) for row in out.labels[:k]]
        step = trainer.global_step
        logged = False
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                import torchvision

                grid = torchvision.utils.make_grid(torch.cat(rows), nrow=k)
                experiment.add_image("salaug/cam_and_augmented", grid, step)
                logged = True
        if not logged and self._picture_dir is not None:
            named = {"batch": rows[0], "CAM": rows[1], "augmented": rows[2]}
            save_grid(named, os.path.join(self._picture_dir, f"step{step:07d}.png"), nrow=k, captions=captions)


def _caption(label: Tensor) -> str:
    top = label.topk(min(2, label.numel()))
    return " ".join(f"{int(i)}:{float(v):.2f}" for v, i in zip(top.values, top.indices) if float(v) > 0)
