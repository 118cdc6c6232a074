"""The Lightning callback that watches what the model attends to (SaliencyMonitor)."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from salaug.callback import callback_bases
from salaug.cam import create_cam
from salaug.metrics import cam_box_iou, pointing_game

__all__ = ["SaliencyMonitor"]


class SaliencyMonitor(*callback_bases()):  # type: ignore[misc]
    """Log CAM overlays and localisation metrics at the end of each validation epoch.

    On validation batches it computes the CAM of each image's label and, when the batch carries
    true object boxes, accumulates the pointing game (CAM peak inside the box) and the IoU of the
    thresholded CAM's box. It also measures how well EigenCAM (the backbone's principal feature,
    no classifier involved) agrees with GradCAM (the classifier's evidence): low agreement with a
    good pointing game for EigenCAM points at the head, both low at the backbone. At the epoch end
    it logs these as ``salaug_monitor/pointing_game``, ``salaug_monitor/box_iou`` and
    ``salaug_monitor/eigen_agreement`` and a picture of a fixed set of validation images with their
    overlays (TensorBoard, else a PNG in the log directory).

    Args:
        cam: CAM method name or CAM object (see :class:`salaug.SaliencyAugmentation`).
        target_layer: dotted module name relative to the LightningModule, or ``None`` (auto).
        num_images: how many validation images the picture shows (taken once, then fixed).
        image_key: position or key of the images in a validation batch.
        label_key: position or key of the labels (``(B,)`` class indices); ``None`` explains the
            predicted class instead.
        box_key: position or key of the true boxes ``(B, 4)`` xyxy pixels, or ``None``.
        max_batches: validation batches per epoch used for the metrics (``None``: all).
        every_n_epochs: run every this many epochs.

    Raises:
        ValueError: for ``num_images < 1`` or ``every_n_epochs < 1``.
    """

    def __init__(self, cam: str | Any = "gradcam", target_layer: str | nn.Module | None = None, *,
                 num_images: int = 8, image_key: int | str = 0, label_key: int | str | None = 1,
                 box_key: int | str | None = None, max_batches: int | None = None,
                 every_n_epochs: int = 1) -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("num_images and every_n_epochs must be >= 1")
        self.cam = cam
        self.target_layer = target_layer
        self.num_images = num_images
        self.image_key, self.label_key, self.box_key = image_key, label_key, box_key
        self.max_batches = max_batches
        self.every_n_epochs = every_n_epochs
        self.history: list[dict[str, float]] = []
        self._cam: Any = None
        self._eigen: Any = None
        self._fixed: tuple[Tensor, Tensor | None] | None = None
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        self._picture_dir: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._cam = create_cam(self.cam, pl_module, self.target_layer)
        self._picture_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "salaug_monitor")

    def _enabled(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums, self._count = {}, 0

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._enabled(trainer) or (self.max_batches is not None and batch_idx >= self.max_batches):
            return
        # Lightning validates under inference_mode; CAMs need autograd on fresh, normal tensors.
        with torch.inference_mode(False), torch.enable_grad():
            images = batch[self.image_key].clone()
            labels = None if self.label_key is None else batch[self.label_key].clone()
            if self._fixed is None:
                k = self.num_images
                self._fixed = (images[:k], None if labels is None else labels[:k])
            grad_maps = self._cam(images, labels)
            if self._eigen is None:  # the same layer, known once the first call resolved an automatic choice
                self._eigen = create_cam("eigencam", pl_module, self._cam.target_layer)
            eigen_maps = self._eigen(images, labels)
            stats = {"eigen_agreement": _cosine(grad_maps, eigen_maps)}
            if self.box_key is not None:
                boxes = batch[self.box_key].clone().to(images.device)
                stats["pointing_game"] = pointing_game(grad_maps, boxes).float()
                stats["box_iou"] = cam_box_iou(grad_maps, boxes)
                stats["eigen_pointing_game"] = pointing_game(eigen_maps, boxes).float()
        for name, value in stats.items():
            self._sums[name] = self._sums.get(name, 0) + value.sum().detach()
        self._count += images.shape[0]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled(trainer) or self._count == 0:
            return
        means = {f"salaug_monitor/{k}": v / self._count for k, v in self._sums.items()}
        pl_module.log_dict(means, on_epoch=True, sync_dist=True)
        self.history.append({"epoch": float(trainer.current_epoch), **{k: float(v) for k, v in means.items()}})
        if trainer.is_global_zero and self._fixed is not None:
            self._log_picture(trainer)

    def _log_picture(self, trainer: pl.Trainer) -> None:
        from salaug.viz import overlay, save_grid, to_display

        images, labels = self._fixed  # type: ignore[misc]
        with torch.inference_mode(False), torch.enable_grad():
            shown = to_display(images)
            rows = [shown, overlay(shown, self._cam(images, labels).float()),
                    overlay(shown, self._eigen(images, labels).float())]
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                import torchvision

                grid = torchvision.utils.make_grid(torch.cat(rows), nrow=images.shape[0])
                experiment.add_image("salaug_monitor/gradcam_eigencam", grid, trainer.global_step)
                return
        if self._picture_dir is not None:
            named = {"validation images": rows[0], "GradCAM": rows[1], "EigenCAM": rows[2]}
            save_grid(named, os.path.join(self._picture_dir, f"epoch{trainer.current_epoch:04d}.png"),
                      nrow=images.shape[0])


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-image cosine similarity of two ``(B, 1, H, W)`` map batches; 0 where one is all zero."""
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)
