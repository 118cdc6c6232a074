"""The Lightning callback that watches what the model attends to (SaliencyMonitor)."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from salaug.callback import callback_bases
from salaug.cam import create_cam
from salaug.diagnosis import localisation_score
from salaug.metrics import cam_box_iou, pointing_game

__all__ = ["SaliencyMonitor"]


class SaliencyMonitor(*callback_bases()):  # type: ignore[misc]
    """Log CAM overlays and localisation metrics at the end of each validation epoch.

    On validation batches it computes the CAM of each image's label and, when the batch carries
    true object boxes, accumulates the pointing game (CAM peak inside the box) and the IoU of the
    thresholded CAM's box. It also runs the two checks of :func:`salaug.diagnose`:

    * **backbone check** (EigenCAM, the target layer's principal feature, no classifier involved):
      ``eigen_agreement`` (cosine similarity of the EigenCAM and GradCAM maps) and, with boxes,
      ``eigen_pointing_game`` and ``backbone_score`` (mean of pointing game and energy inside the
      box, the score of :func:`salaug.diagnose`);
    * **head check** (AblationCAM, channels weighted by how much their removal lowers the class
      score), on the first ``head_max_batches`` validation batches only, because it costs one
      forward of the layers after the target per channel (batched by the engine):
      ``head_agreement`` (cosine similarity of the AblationCAM and EigenCAM maps: does the head
      rely on the backbone's dominant feature?) and, with boxes, ``head_pointing_game`` and
      ``head_score``.

    A falling ``head_score`` under a steady ``backbone_score`` means the head drifts off the object
    (a shortcut); both low, the backbone. The thresholds of :mod:`salaug.diagnosis`
    (``BACKBONE_THRESHOLD``, ``HEAD_THRESHOLD``) apply to the two scores. Everything is logged as
    ``salaug_monitor/<name>``, each a mean over the images it was measured on, together with a
    picture of a fixed set of validation images and their GradCAM, EigenCAM (and AblationCAM)
    overlays: to loggers that take images (TensorBoard), else as PNG files into ``picture_dir``
    when given, else into ``<log_dir>/salaug_monitor/`` of a file logger (CSV). Without a logger
    (``logger=False``, ``fast_dev_run``) and without ``picture_dir`` no picture is drawn or written.

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
        head_check: run the head check (AblationCAM).
        head_max_batches: validation batches per epoch of the head check (``None``: as many as
            ``max_batches``).
        picture_dir: directory for PNG pictures (created when the first one is written).

    Raises:
        ValueError: for ``num_images < 1``, ``every_n_epochs < 1`` or ``head_max_batches < 1``.
    """

    def __init__(self, cam: str | Any = "gradcam", target_layer: str | nn.Module | None = None, *,
                 num_images: int = 8, image_key: int | str = 0, label_key: int | str | None = 1,
                 box_key: int | str | None = None, max_batches: int | None = None,
                 every_n_epochs: int = 1, head_check: bool = True, head_max_batches: int | None = 2,
                 picture_dir: str | os.PathLike[str] | None = None) -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("num_images and every_n_epochs must be >= 1")
        if head_max_batches is not None and head_max_batches < 1:
            raise ValueError(f"head_max_batches must be >= 1 or None, got {head_max_batches!r}; turn the head "
                             "check off with head_check=False")
        self.cam = cam
        self.target_layer = target_layer
        self.num_images = num_images
        self.image_key, self.label_key, self.box_key = image_key, label_key, box_key
        self.max_batches = max_batches
        self.every_n_epochs = every_n_epochs
        self.head_check = bool(head_check)
        self.head_max_batches = head_max_batches
        self.history: list[dict[str, float]] = []
        self._cam: Any = None
        self._eigen: Any = None
        self._ablation: Any = None
        self._fixed: tuple[Tensor, Tensor | None] | None = None
        self._sums: dict[str, list[Tensor]] = {}
        self._count = 0
        self.picture_dir = os.fspath(picture_dir) if picture_dir is not None else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._cam = create_cam(self.cam, pl_module, self.target_layer)

    def _picture_target(self, trainer: pl.Trainer) -> Any:
        """The logger experiment that takes images, else a PNG directory, else ``None`` (no picture)."""
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                return experiment
        if self.picture_dir is not None:
            return self.picture_dir
        if trainer.loggers and trainer.log_dir is not None:
            return os.path.join(trainer.log_dir, "salaug_monitor")  # a file logger (CSV)
        return None

    def _enabled(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums, self._count = {}, 0

    def _head_batch(self, batch_idx: int) -> bool:
        return self.head_check and (self.head_max_batches is None or batch_idx < self.head_max_batches)

    def _layer_cams(self, pl_module: pl.LightningModule) -> None:
        """EigenCAM / AblationCAM of the GradCAM's layer, known once its first call resolved an automatic choice."""
        from salaug.cam import AblationCAM, EigenCAM

        if self._eigen is None:
            self._eigen = EigenCAM(pl_module, self._cam.target_layer)
        if self._ablation is None and self.head_check:
            self._ablation = AblationCAM(pl_module, self._cam.target_layer)

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
            self._layer_cams(pl_module)
            eigen_maps = self._eigen(images, labels)
            stats = {"eigen_agreement": _cosine(grad_maps, eigen_maps)}
            head_maps = self._ablation(images, labels) if self._head_batch(batch_idx) else None
            if head_maps is not None:
                stats["head_agreement"] = _cosine(head_maps, eigen_maps)
            if self.box_key is not None:
                boxes = batch[self.box_key].clone().to(images.device)
                stats["pointing_game"] = pointing_game(grad_maps, boxes).float()
                stats["box_iou"] = cam_box_iou(grad_maps, boxes)
                score, hit, _ = localisation_score(eigen_maps, boxes)
                stats["eigen_pointing_game"], stats["backbone_score"] = hit, score
                if head_maps is not None:
                    score, hit, _ = localisation_score(head_maps, boxes)
                    stats["head_pointing_game"], stats["head_score"] = hit, score
        for name, value in stats.items():
            # per metric (sum, count): the head check runs on fewer batches than the others
            total = self._sums.setdefault(name, [torch.zeros((), device=value.device)] * 2)
            total[0] = total[0] + value.sum().detach()
            total[1] = total[1] + value.numel()
        self._count += images.shape[0]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled(trainer) or self._count == 0:
            return
        means = {f"salaug_monitor/{k}": s / n for k, (s, n) in self._sums.items()}
        pl_module.log_dict(means, on_epoch=True, sync_dist=True)
        self.history.append({"epoch": float(trainer.current_epoch), **{k: float(v) for k, v in means.items()}})
        if trainer.is_global_zero and self._fixed is not None:
            self._log_picture(trainer)

    def _log_picture(self, trainer: pl.Trainer) -> None:
        target = self._picture_target(trainer)
        if target is None:
            return
        from salaug.viz import overlay, save_grid, to_display

        images, labels = self._fixed  # type: ignore[misc]
        with torch.inference_mode(False), torch.enable_grad():
            shown = to_display(images)
            rows = [shown, overlay(shown, self._cam(images, labels).float()),
                    overlay(shown, self._eigen(images, labels).float())]
            if self._ablation is not None:
                rows.append(overlay(shown, self._ablation(images, labels).float()))
        if not isinstance(target, str):
            import torchvision

            grid = torchvision.utils.make_grid(torch.cat(rows), nrow=images.shape[0])
            target.add_image("salaug_monitor/gradcam_eigencam_ablationcam", grid, trainer.global_step)
            return
        named = dict(zip(["validation images", "GradCAM", "EigenCAM (backbone)", "AblationCAM (head)"], rows))
        save_grid(named, os.path.join(target, f"epoch{trainer.current_epoch:04d}.png"), nrow=images.shape[0])


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-image cosine similarity of two ``(B, 1, H, W)`` map batches; 0 where one is all zero."""
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)
