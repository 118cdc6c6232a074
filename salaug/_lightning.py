"""What salaug's two Lightning callbacks share: their base classes and where their pictures go."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers.logger import DummyLogger

__all__ = ["callback_bases", "picture_sinks"]


def callback_bases() -> tuple[type, ...]:
    """The Callback base classes to derive from: ``pytorch_lightning``'s and, if installed, ``lightning``'s."""
    bases: list[type] = [pl.Callback]
    if importlib.util.find_spec("lightning") is not None:
        from lightning.pytorch import Callback as LightningCallback

        bases.append(LightningCallback)
    return tuple(bases)


def picture_sinks(trainer: pl.Trainer, picture_dir: str | None, subdir: str) -> tuple[list[Any], str | None]:
    """Where a callback's pictures go: the one rule of :class:`SaliencyAugmentation` and the monitor.

    Nothing on ranks other than 0 or under ``fast_dev_run``. Otherwise every logger with an
    ``add_image`` experiment (TensorBoard) gets the picture, and PNG files go to ``picture_dir``
    when given, else (no logger takes images) to ``<log_dir>/<subdir>`` of a file logger (CSV). A
    ``DummyLogger`` (``logger=False``) counts as no logger: without one and without ``picture_dir``
    nothing is drawn or written.

    Returns:
        ``(loggers, directory)``: the loggers taking images, and the PNG directory or ``None``.
    """
    # Lightning sets fast_dev_run on the trainer from a helper; the Trainer class does not declare it
    if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
        return [], None
    loggers = [lg for lg in trainer.loggers if not isinstance(lg, DummyLogger)]
    takes_images = [lg for lg in loggers if hasattr(getattr(lg, "experiment", None), "add_image")]
    directory = picture_dir
    if directory is None and not takes_images and loggers and trainer.log_dir is not None:
        directory = os.path.join(trainer.log_dir, subdir)  # a file logger (CSV): PNGs beside its metrics
    return takes_images, directory
