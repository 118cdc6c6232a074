"""The Lightning callback that augments training batches with saliency from the model being trained.

:class:`SaliencyAugmentation` composes a public :class:`salaug.SaliencyAugmenter`, built in
``setup("fit")`` on the LightningModule with the trainer's precision context: per training batch
(``on_train_batch_start``, after the batch is on the device) it reads the images and labels from
the batch container, calls the augmenter and writes the result back, which is what
``training_step`` receives. The callback adds what only Lightning knows: the epoch window, warm-up
in epochs, the precision context of the model forwards made for saliency, checkpointed state, and
logging (scalars every step, read after ``training_step`` so that forward labels are logged as the
loss read them; a picture every ``log_every_n_steps`` augmented steps). A batch whose labels wait
for a forward is cancelled when the step ends, fails or training stops: no hook outlives a step.

The class derives from ``pytorch_lightning.Callback`` and, when the ``lightning`` package is
installed, from ``lightning.pytorch.Callback`` as well, so it works with either ``Trainer``.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import warnings
from collections.abc import Iterator, MutableMapping, MutableSequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor, nn

from salaug._batch import get_field
from salaug._checks import check_images, check_int, check_key, check_targets
from salaug._lightning import callback_bases, picture_sinks
from salaug.augmenter import (
    AugmenterRecord,
    DeprecatedBatchP,
    SaliencyAugmenter,
    check_augmenter_options,
    check_stream_state,
    resolve_batch_p,
)
from salaug.sources import PendingLabels, SaliencySource, as_source
from salaug.sources.options import check_no_cam_options, resolve_labels_from
from salaug.transforms.base import SaliencyTransform, check_transform

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

__all__ = ["SaliencyAugmentation"]

# The augmenter's counters under the names of the callback's checkpointed state.
_STATE_NAMES = {"steps": "batches_seen", "augmented": "batches_augmented"}


def _sharded_strategies() -> tuple[type, ...]:
    """Strategy classes that do not hold the full model on each device (or break the CAM's autograd)."""
    names = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAStrategy", "SingleDeviceXLAStrategy")
    found: list[type] = []
    for package in ("pytorch_lightning.strategies", "lightning.pytorch.strategies"):
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        found.extend(cls for cls in (getattr(module, name, None) for name in names) if isinstance(cls, type))
    return tuple(found)


@contextlib.contextmanager
def _uncompiled_forward(pl_module: nn.Module) -> Iterator[None]:
    # A LightningModule compiled with torch.compile has its forward replaced by the compiled one,
    # which ignores forward hooks added later; the CAM forward runs the original eager forward.
    ctx = getattr(pl_module, "_compiler_ctx", None)
    if not ctx:
        yield
        return
    compiled = pl_module.forward
    pl_module.forward = ctx["original_forward"]
    try:
        yield
    finally:
        pl_module.forward = compiled


class SaliencyAugmentation(*callback_bases()):  # type: ignore[misc]
    """Augment each training batch with a saliency transform driven by the model being trained.

    Example:
        >>> import salaug
        >>> cb = salaug.SaliencyAugmentation(salaug.SaliencyMix(num_classes=10), cam="gradcam",
        ...                                  target_layer="net.layer4")
        >>> cb.state_key  # doctest: +NORMALIZE_WHITESPACE
        "SaliencyAugmentation{'transform': 'SaliencyMix', 'cam': 'gradcam', 'target_layer': 'net.layer4',
        'image_key': 0, 'label_key': 1}"

    Args:
        transform: a salaug transform, called ``transform(images, saliency, labels)``.
        cam: a CAM method name (``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``, ``"hirescam"``,
            ``"layercam"``, ``"eigencam"``, ``"scorecam"``, ``"ablationcam"``) or a CAM object built
            on the LightningModule.
        target_layer: dotted module name relative to the LightningModule (``"net.layer4"``), or
            ``None`` for the last layer with a spatial ``(B, C, h, w)`` output.
        batch_p: probability that a batch goes to the transform at all; the default 1.0 sends every
            batch, and the transform's own ``p`` (per sample) decides which images are mixed.
        start_epoch: first epoch (0-based) to augment.
        stop_epoch: epoch at which augmentation stops (exclusive), e.g. to train the last epochs
            on clean data; ``None`` augments to the end. Outside the window batches are untouched.
        cam_scale, targets, ema_decay: the :class:`~salaug.sources.LiveCAM` options (see
            :class:`salaug.SaliencyAugmenter`).
        image_key: position (list batch) or key (dict batch) of the images ``(B, C, H, W)``.
        label_key: position or key of the labels, ``(B,)`` class indices or ``(B, K)``.
        num_classes: number of classes; inferred from the model's output when ``None``.
        seed: seed of the augmentation stream; ``None`` uses ``torch.initial_seed()`` at setup
            (set by ``seed_everything``). Each rank draws from its own stream.
        log_every_n_steps: every this many augmented steps, log a picture (originals, saliency
            overlays, augmented samples) on rank 0; ``0`` disables pictures. Pictures go to every
            logger with ``add_image`` (TensorBoard), as PNG files into ``picture_dir`` when given,
            and otherwise into ``<log_dir>/salaug/`` of a file logger (CSV) that takes no images.
            Without a logger (``logger=False``, ``fast_dev_run``) and without ``picture_dir``
            nothing is drawn and no file is written.
        warmup_epochs: number of first epochs of the window whose batches get flat saliency;
            converted to batches at the start of training.
        warmup_steps: the same in batches (added to ``warmup_epochs``).
        picture_dir: directory for PNG pictures (created when the first one is written).
        labels_from: ``"cam"``, ``"forward"`` or ``"auto"`` (see :class:`salaug.SaliencyAugmenter`).
            Forward labels are filled by ``training_step``'s own forward of the mixed batch, which
            must call the LightningModule, ``self(x)``: a step that calls a submodule
            (``self.net(x)``) is refused at the first step, naming the fix.
        label_blend: with forward labels, the weight of the model's evidence against the area share.
        source: a model-free :class:`~salaug.sources.SaliencySource` (``Flat()``,
            ``ModelFree(SpectralResidual())``) instead of the CAM options.
        p: deprecated name of ``batch_p`` (a ``DeprecationWarning``).

    Attributes:
        augmenter: the :class:`~salaug.SaliencyAugmenter` doing the work, built at ``setup("fit")``
            from the options above (``None`` before); change options there once it is built.
        batches_seen, batches_augmented: batches inside the epoch window so far (the position in
            the random stream) and batches transformed (read-only; restored by
            :meth:`load_state_dict`).

    Raises:
        TypeError: if ``transform`` is not a salaug transform, or (at run time) the batch is a
            tuple, which cannot be changed in place.
        ValueError: for out-of-range arguments, or a ``training_step`` that takes
            ``dataloader_iter`` (it never sees edits made by callbacks).
        RuntimeError: under strategies that shard the model (FSDP, DeepSpeed, model parallel) or
            XLA; forward labels used before ``training_step``'s forward of the LightningModule
            filled them (e.g. a step that calls a submodule).
    """

    p = DeprecatedBatchP()  # the old name of batch_p

    def __init__(
        self,
        transform: SaliencyTransform,
        cam: str | Any = "gradcam",
        target_layer: str | nn.Module | None = None,
        *,
        batch_p: float = 1.0,
        start_epoch: int = 0,
        stop_epoch: int | None = None,
        cam_scale: float = 1.0,
        targets: Literal["labels", "predicted"] = "labels",
        image_key: int | str = 0,
        label_key: int | str = 1,
        num_classes: int | None = None,
        seed: int | None = None,
        log_every_n_steps: int = 500,
        warmup_epochs: int = 0,
        warmup_steps: int = 0,
        ema_decay: float | None = None,
        picture_dir: str | os.PathLike[str] | None = None,
        labels_from: Literal["auto", "cam", "forward"] = "auto",
        label_blend: float | None = None,
        source: SaliencySource | Any = None,
        p: float | None = None,
    ) -> None:
        check_transform(transform)
        targets = check_targets("targets", targets, type(self).__name__)
        batch_p = resolve_batch_p(batch_p, p, type(self).__name__)
        check_augmenter_options(batch_p=batch_p, cam_scale=cam_scale, targets=targets, num_classes=num_classes,
                                seed=seed, warmup_steps=warmup_steps, ema_decay=ema_decay)
        if source is None:
            resolve_labels_from(transform, labels_from, label_blend, cam=cam, cam_scale=cam_scale, targets=targets,
                                ema_decay=ema_decay)
        else:
            check_no_cam_options(cam=cam, target_layer=target_layer, cam_scale=cam_scale, targets=targets,
                                 ema_decay=ema_decay, labels_from=labels_from, label_blend=label_blend)
            source = as_source(source)
        check_int("start_epoch", start_epoch, low=0)
        check_int("stop_epoch", stop_epoch, low=0, optional=True)
        check_int("warmup_epochs", warmup_epochs, low=0)
        check_int("log_every_n_steps", log_every_n_steps, low=0)
        check_key("image_key", image_key)
        check_key("label_key", label_key)
        if stop_epoch is not None and stop_epoch <= start_epoch:
            raise ValueError(f"need 0 <= start_epoch < stop_epoch, got {start_epoch} and {stop_epoch}")
        self.transform = transform
        self.cam = cam
        self.target_layer = target_layer
        self.batch_p = batch_p
        self.cam_scale = cam_scale
        self.targets = targets
        self.num_classes = num_classes
        self.seed = seed
        self.ema_decay = ema_decay
        self.labels_from = labels_from
        self.label_blend = label_blend
        self.source = source
        self.start_epoch = start_epoch
        self.stop_epoch = stop_epoch
        self.image_key = image_key
        self.label_key = label_key
        self.log_every_n_steps = log_every_n_steps
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.picture_dir = os.fspath(picture_dir) if picture_dir is not None else None
        self.augmenter: SaliencyAugmenter | None = None
        self._state: dict[str, Any] = {"seed": seed, "steps": 0, "augmented": 0}  # until an augmenter holds it
        self._picture_sinks: tuple[list[Any], str | None] = ([], None)
        self._pictures = _PictureWorker()

    # -- state --------------------------------------------------------------------------------------
    @property
    def batches_seen(self) -> int:
        """Batches inside the epoch window so far: the position in the random stream."""
        return int(self.augmenter.steps if self.augmenter is not None else self._state["steps"])

    @property
    def batches_augmented(self) -> int:
        """Batches the transform changed so far."""
        return int(self.augmenter.augmented if self.augmenter is not None else self._state["augmented"])

    @property
    @override
    def state_key(self) -> str:
        layer = self.target_layer
        if not isinstance(layer, (str, type(None))):
            layer = type(layer).__name__
        cam = self.cam if isinstance(self.cam, str) else type(self.cam).__name__
        return self._generate_state_key(
            transform=type(self.transform).__name__, cam=cam, target_layer=layer,
            image_key=self.image_key, label_key=self.label_key,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        state = self.augmenter.state_dict() if self.augmenter is not None else dict(self._state)
        return {_STATE_NAMES.get(k, k): v for k, v in state.items()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it on resume, before or after ``setup``).

        Raises:
            TypeError, ValueError: a state that is not this callback's (a missing, mistyped or
                negative entry, EMA weights of another architecture), naming the entry.
        """
        names = ("seed", _STATE_NAMES["steps"], _STATE_NAMES["augmented"])
        seed, seen, augmented = check_stream_state(state_dict, type(self).__name__, names, seed_optional=True)
        state = {k: v for k, v in state_dict.items() if k not in names}
        state.update(seed=seed if seed is not None else self._state["seed"], steps=seen, augmented=augmented)
        if self.augmenter is not None:
            self.augmenter.load_state_dict(state)
        self._state = state

    # -- Lightning plumbing -------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, _sharded_strategies()):
            raise RuntimeError(
                f"SaliencyAugmentation does not support {type(trainer.strategy).__name__}: CAMs need the full "
                "model on each device, which sharded strategies do not have. Use DDP (strategy='ddp') or one device."
            )
        if is_param_in_hook_signature(pl_module.training_step, "dataloader_iter", explicit=True):
            raise ValueError(
                "training_step takes `dataloader_iter`, so it reads batches itself and never sees the "
                "batches SaliencyAugmentation rewrites. Take `batch` instead, or apply a salaug "
                "transform inside training_step."
            )
        if self.augmenter is not None:  # a second fit continues the stream
            self.augmenter.cancel()
            self._state = {**self._state, **self.augmenter.state_dict()}
        self.augmenter = self._build(trainer, pl_module)
        seed = self._state["seed"]
        self.augmenter.load_state_dict({**self._state, "seed": self.augmenter.seed if seed is None else seed})

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> SaliencyAugmenter:
        def forward_context() -> contextlib.AbstractContextManager[Any]:
            stack = contextlib.ExitStack()
            stack.enter_context(trainer.precision_plugin.forward_context())
            stack.enter_context(_uncompiled_forward(pl_module))
            return stack

        source = self.source if self.source is not None else self._overridden_saliency(trainer, pl_module)
        options: dict[str, Any] = {"source": source} if source is not None else {
            "cam": self.cam, "target_layer": self.target_layer, "cam_scale": self.cam_scale, "targets": self.targets,
            "ema_decay": self.ema_decay, "labels_from": self.labels_from, "label_blend": self.label_blend}
        return SaliencyAugmenter(pl_module, self.transform, batch_p=self.batch_p, num_classes=self.num_classes,
                                 seed=self.seed, warmup_steps=self.warmup_steps, rank=trainer.global_rank,
                                 forward_context=forward_context, **options)

    def compute_saliency(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor,
                         labels: Tensor) -> Tensor | None:
        """The augmenter's saliency for ``images`` (deprecated as an override point: pass ``source=``).

        A subclass that overrides it still has its maps used, with a ``DeprecationWarning`` (removal
        in 0.5.0): pass the function as ``source=`` (any callable ``(images, labels) -> maps``).
        """
        assert self.augmenter is not None, "built at setup('fit')"
        return self.augmenter.compute_saliency(images, labels)

    def _overridden_saliency(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        if type(self).compute_saliency is SaliencyAugmentation.compute_saliency:
            return None
        warnings.warn(
            f"{type(self).__name__} overrides SaliencyAugmentation.compute_saliency, which is deprecated and will be "
            "removed in 0.5.0: pass the saliency as source= (a salaug.sources.SaliencySource, or any callable "
            "(images, labels) -> (B, 1, H, W) maps)", DeprecationWarning, stacklevel=2)
        return lambda images, labels: self.compute_saliency(trainer, pl_module, images, labels)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._pictures.wait()
        if stage == "fit" and self.augmenter is not None:
            self.augmenter.cancel()
            self.augmenter.last = None  # drop the last batch's tensors

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.augmenter is not None:
            self.augmenter.cancel()
        self._pictures.wait()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.augmenter is not None:
            self.augmenter.warmup_steps = self.warmup_steps + self._warmup_batches(trainer)
        self._warn_about_the_window(trainer)
        self._picture_sinks = self._find_picture_sinks(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pictures.wait()

    # -- the work -----------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.augmenter is None or not self._in_window(trainer.current_epoch):
            return
        images, labels = self._read(batch)
        new_images, soft_labels = self.augmenter(images, labels)
        batch[self.image_key] = new_images
        batch[self.label_key] = soft_labels

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = self.augmenter.last if self.augmenter is not None else None
        if record is None or not self._in_window(trainer.current_epoch):
            return
        self.augmenter.last = None  # type: ignore[union-attr]  # each record is logged once
        labels = record.output.labels if record.output is not None else None
        if isinstance(labels, PendingLabels) and not labels.filled:
            # the step skipped the batch without a forward or a use of its labels: nothing to log
            self.augmenter.cancel()  # type: ignore[union-attr]
            return
        self._log(trainer, pl_module, record)

    def _in_window(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (self.stop_epoch is None or epoch < self.stop_epoch)

    def _warmup_batches(self, trainer: pl.Trainer) -> int:
        if not self.warmup_epochs:
            return 0
        per_epoch = trainer.num_training_batches
        if not math.isfinite(per_epoch):
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} needs the number of batches per epoch, which this "
                "training dataloader does not have (no __len__); pass warmup_steps= instead"
            )
        return int(self.warmup_epochs * per_epoch)

    def _warn_about_the_window(self, trainer: pl.Trainer) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            return
        if self.start_epoch >= max_epochs:
            rank_zero_warn(
                f"SaliencyAugmentation(start_epoch={self.start_epoch}) will never augment: the Trainer stops after "
                f"max_epochs={max_epochs} (epochs 0..{max_epochs - 1}). Lower start_epoch or raise max_epochs.",
                category=UserWarning,
            )
            return
        window = min(max_epochs, self.stop_epoch or max_epochs) - self.start_epoch
        if self.warmup_epochs >= window:
            rank_zero_warn(
                f"SaliencyAugmentation(warmup_epochs={self.warmup_epochs}) covers the whole augmentation window "
                f"({window} epoch(s) of max_epochs={max_epochs}): the transform will only ever get flat saliency "
                "(random placement), never the CAMs. Lower warmup_epochs.",
                category=UserWarning,
            )

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
        images = get_field(batch, self.image_key, "images", "image_key", kind="batch")
        labels = get_field(batch, self.label_key, "labels", "label_key", kind="batch")
        check_images(images, f"batch[{self.image_key!r}] (image_key)")
        return images, labels

    # -- logging ------------------------------------------------------------------------------------
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: AugmenterRecord) -> None:
        b = record.images.shape[0]
        if not record.augmented:
            pl_module.log("salaug/augmented", 0.0, on_step=True, on_epoch=True, batch_size=b)
            return
        out, params, saliency, labels = record.output, record.params, record.saliency, record.labels
        assert out is not None and params is not None
        own = (labels if labels.ndim == 1 else labels.argmax(1)).to(out.labels.device).long().unsqueeze(1)
        scalars = {"salaug/augmented": params["applied"].float().mean(),
                   "salaug/label_weight": out.labels.gather(1, own).mean()}
        if saliency is not None:
            scalars["salaug/salient_area"] = (saliency >= 0.5).float().mean()
        pl_module.log_dict(scalars, on_step=True, on_epoch=True, batch_size=b)
        n = self.log_every_n_steps
        loggers, directory = self._picture_sinks
        if n and (loggers or directory) and trainer.is_global_zero and (self.batches_augmented - 1) % n == 0:
            self._log_picture(trainer, record, loggers, directory)

    def _find_picture_sinks(self, trainer: pl.Trainer) -> tuple[list[Any], str | None]:
        """Loggers taking ``add_image`` pictures, and the PNG directory (``None``: write no files)."""
        if not self.log_every_n_steps:
            return [], None
        takes_images, directory = picture_sinks(trainer, self.picture_dir, "salaug")
        # Imports paid here, at the start of training, not by the step that logs the first picture.
        if takes_images:
            importlib.import_module("torchvision.utils")
        if directory is not None:
            importlib.import_module("PIL.Image")
        return takes_images, directory

    def _log_picture(self, trainer: pl.Trainer, record: AugmenterRecord, loggers: list[Any],
                     directory: str | None) -> None:
        out = record.output
        assert out is not None
        k = min(8, record.images.shape[0])
        # The step only copies k samples (asynchronously on an accelerator); drawing, PNG encoding
        # and writing happen on a worker thread, so a picture does not stall training.
        saliency = record.saliency[:k].detach().clone() if record.saliency is not None else None
        tiles = tuple(t[:k].detach().clone() for t in (record.images, out.images, out.labels))
        self._pictures.submit(_draw_picture, tiles, saliency, record.step, loggers, directory)


class _PictureWorker:
    """One background thread for pictures; beyond a short backlog, a picture that is due is skipped."""

    max_backlog = 4

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, fn: Any, *args: Any) -> None:
        for done in [f for f in self._pending if f.done()]:
            self._report(done)
            self._pending.remove(done)
        if len(self._pending) >= self.max_backlog:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="salaug-pictures")
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Finish the pictures in flight (reporting failures as warnings) and stop the thread."""
        for future in self._pending:
            self._report(future)
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @staticmethod
    def _report(future: Future[None]) -> None:
        error = future.exception()
        if error is not None:
            rank_zero_warn(f"SaliencyAugmentation could not log a picture: {type(error).__name__}: {error}",
                           category=UserWarning)

    def __getstate__(self) -> dict[str, Any]:  # a thread pool cannot be pickled or deep-copied
        return {"_pool": None, "_pending": []}


def _draw_picture(tiles: tuple[Tensor, ...], saliency: Tensor | None, step: int, loggers: list[Any],
                  directory: str | None) -> None:
    """Rows (batch, saliency overlay when there is a map, augmented) of ``k`` samples to the loggers and / or a PNG."""
    from salaug.viz import overlay, to_display

    images, augmented, labels = (t.cpu() for t in tiles)
    shown = to_display(images)
    named = {"batch": shown, "augmented": to_display(augmented)}
    if saliency is not None:
        named = {"batch": shown, "CAM": overlay(shown, saliency.cpu().float()), "augmented": named["augmented"]}
    rows = list(named.values())
    if loggers:
        from torchvision.utils import make_grid

        grid = make_grid(torch.cat(rows), nrow=images.shape[0])
        for logger in loggers:
            logger.experiment.add_image("salaug/cam_and_augmented", grid, step)
    if directory is not None:
        from salaug.viz import save_grid

        captions = [_caption(row) for row in labels.float()]
        save_grid(named, os.path.join(directory, f"step{step:07d}.png"), nrow=images.shape[0], captions=captions)


def _caption(label: Tensor) -> str:
    top = label.topk(min(2, label.numel()))
    return " ".join(f"{int(i)}:{float(v):.2f}" for v, i in zip(top.values, top.indices, strict=True) if float(v) > 0)
