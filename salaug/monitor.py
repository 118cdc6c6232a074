"""The Lightning callback that watches what the model attends to (SaliencyMonitor)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from salaug._batch import get_field
from salaug._checks import check_flag, check_int, check_key
from salaug._lightning import callback_bases, picture_sinks
from salaug.cam import create_cam
from salaug.diagnosis.measure import check_cams, score_maps
from salaug.metrics import cam_box_iou, pointing_game

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

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
    (a shortcut); both low, the backbone. These are raw scores;
    :func:`salaug.diagnose` judges them by their margin over chance and a random-initialisation
    reference (:mod:`salaug.diagnosis.report`). Everything is logged as
    ``salaug_monitor/<name>``, each a mean over the images it was measured on, together with a
    picture of a fixed set of validation images and their GradCAM, EigenCAM (and AblationCAM)
    overlays, by the rule of :class:`salaug.SaliencyAugmentation`: to loggers that take images
    (TensorBoard), as PNG files into ``picture_dir`` when given, else into
    ``<log_dir>/salaug_monitor/`` of a file logger (CSV) that takes no images. Without a logger
    (``logger=False``) and without ``picture_dir``, or under ``fast_dev_run``, no picture is drawn
    or written.

    :attr:`history` (one dict of means per monitored epoch) is saved in checkpoints and restored
    on resume (:meth:`state_dict`).

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
        TypeError: an argument of the wrong type (a key that is neither an int nor a str, ...).
        ValueError: for ``num_images``, ``every_n_epochs``, ``max_batches`` or ``head_max_batches``
            below 1.
    """

    def __init__(self, cam: str | Any = "gradcam", target_layer: str | nn.Module | None = None, *,
                 num_images: int = 8, image_key: int | str = 0, label_key: int | str | None = 1,
                 box_key: int | str | None = None, max_batches: int | None = None,
                 every_n_epochs: int = 1, head_check: bool = True, head_max_batches: int | None = 2,
                 picture_dir: str | os.PathLike[str] | None = None) -> None:
        check_int("num_images", num_images, low=1)
        check_int("every_n_epochs", every_n_epochs, low=1)
        check_int("max_batches", max_batches, low=1, optional=True)
        check_flag("head_check", head_check)
        if isinstance(head_max_batches, int) and not isinstance(head_max_batches, bool) and head_max_batches < 1:
            raise ValueError(f"head_max_batches must be >= 1 or None, got {head_max_batches!r}; turn the head "
                             "check off with head_check=False")
        check_int("head_max_batches", head_max_batches, low=1, optional=True)
        check_key("image_key", image_key)
        check_key("label_key", label_key, optional=True)
        check_key("box_key", box_key, optional=True)
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

    @property
    @override
    def state_key(self) -> str:
        layer = self.target_layer
        if not isinstance(layer, (str, type(None))):
            layer = type(layer).__name__
        cam = self.cam if isinstance(self.cam, str) else type(self.cam).__name__
        return self._generate_state_key(cam=cam, target_layer=layer, image_key=self.image_key,
                                        label_key=self.label_key, box_key=self.box_key)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :attr:`history` from :meth:`state_dict` (Lightning calls it on resume).

        Raises:
            TypeError, ValueError: a state that is not this monitor's (no ``history`` list of
                ``{name: number}`` dicts with an ``epoch``), naming the entry.
        """
        if not isinstance(state_dict, Mapping) or "history" not in state_dict:
            got = sorted(map(str, state_dict))[:8] if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"SaliencyMonitor.load_state_dict needs the dict its state_dict() returned, with a "
                             f"'history' entry; got {got}")
        history = state_dict["history"]
        if not isinstance(history, list) or not all(
            isinstance(h, Mapping) and "epoch" in h
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in h.values())
            for h in history
        ):
            raise TypeError("SaliencyMonitor.load_state_dict: state_dict['history'] must be a list of {name: number} "
                            "dicts with an 'epoch' entry, as state_dict() returns")
        self.history = [{str(k): float(v) for k, v in h.items()} for h in history]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._cam = create_cam(self.cam, pl_module, self.target_layer)

    def _enabled(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums, self._count = {}, 0

    def _head_batch(self, batch_idx: int) -> bool:
        return self.head_check and (self.head_max_batches is None or batch_idx < self.head_max_batches)

    def _layer_cams(self, pl_module: pl.LightningModule) -> None:
        """EigenCAM / AblationCAM of the GradCAM's layer (those of :func:`salaug.diagnose`), known once
        its first call resolved an automatic choice."""
        if self._eigen is None:
            methods = ("eigencam", "ablationcam") if self.head_check else ("eigencam",)
            cams = check_cams(pl_module, self._cam.target_layer, ablation_batch_size=64, methods=methods)
            self._eigen, self._ablation = cams["eigencam"], cams.get("ablationcam")

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._enabled(trainer) or (self.max_batches is not None and batch_idx >= self.max_batches):
            return
        # Lightning validates under inference_mode; CAMs need autograd on fresh, normal tensors.
        with torch.inference_mode(False), torch.enable_grad():
            images = get_field(batch, self.image_key, "images", "image_key", kind="batch").clone()
            labels = None if self.label_key is None else \
                get_field(batch, self.label_key, "labels", "label_key", kind="batch").clone()
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
                boxes = get_field(batch, self.box_key, "boxes", "box_key", kind="batch").clone().to(images.device)
                stats["pointing_game"] = pointing_game(grad_maps, boxes).float()
                stats["box_iou"] = cam_box_iou(grad_maps, boxes)
                # the per-image measurement of salaug.diagnose: columns score, pointing game, energy
                maps = {"eigencam": eigen_maps} if head_maps is None else {"eigencam": eigen_maps,
                                                                           "ablationcam": head_maps}
                scores = score_maps(maps, boxes)
                stats["backbone_score"] = scores["eigencam"][:, 0]
                stats["eigen_pointing_game"] = scores["eigencam"][:, 1]
                if head_maps is not None:
                    stats["head_score"], stats["head_pointing_game"] = (scores["ablationcam"][:, 0],
                                                                        scores["ablationcam"][:, 1])
        for name, value in stats.items():
            # per metric (sum, count): the head check runs on fewer batches than the others
            total = self._sums.setdefault(name, [torch.zeros((), device=value.device)] * 2)
            total[0] = total[0] + value.sum().detach()
            total[1] = total[1] + value.numel()
        self._count += images.shape[0]

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled(trainer) or self._count == 0:
            return
        means = {f"salaug_monitor/{k}": s / n for k, (s, n) in self._sums.items()}
        pl_module.log_dict(means, on_epoch=True, sync_dist=True)
        self.history.append({"epoch": float(trainer.current_epoch), **{k: float(v) for k, v in means.items()}})
        if trainer.is_global_zero and self._fixed is not None:
            self._log_picture(trainer)

    def _log_picture(self, trainer: pl.Trainer) -> None:
        loggers, directory = picture_sinks(trainer, self.picture_dir, "salaug_monitor")
        if not loggers and directory is None:
            return
        from salaug.viz import overlay, save_grid, to_display

        images, labels = self._fixed  # type: ignore[misc]
        with torch.inference_mode(False), torch.enable_grad():
            shown = to_display(images)
            rows = [shown, overlay(shown, self._cam(images, labels).float()),
                    overlay(shown, self._eigen(images, labels).float())]
            if self._ablation is not None:
                rows.append(overlay(shown, self._ablation(images, labels).float()))
        if loggers:
            import torchvision

            grid = torchvision.utils.make_grid(torch.cat(rows), nrow=images.shape[0])
            for logger in loggers:
                logger.experiment.add_image("salaug_monitor/gradcam_eigencam_ablationcam", grid, trainer.global_step)
        if directory is not None:
            titles = ["validation images", "GradCAM", "EigenCAM (backbone)", "AblationCAM (head)"]
            named = dict(zip(titles, rows, strict=False))  # no AblationCAM row without a head check
            save_grid(named, os.path.join(directory, f"epoch{trainer.current_epoch:04d}.png"), nrow=images.shape[0])


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-image cosine similarity of two ``(B, 1, H, W)`` map batches; 0 where one is all zero."""
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)
