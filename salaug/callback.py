"""The Lightning callback that augments training batches with saliency from the model being trained.

A thin adapter over :class:`salaug.SaliencyAugmenter`: per training batch (``on_train_batch_start``,
after the batch is on the device) it reads the images and labels from the batch container, calls
the augmenter (CAMs of the batch with the unwrapped LightningModule, the transform, ``(B, K)`` soft
labels) and writes the result back, which is what ``training_step`` receives. The callback adds
what only Lightning knows: the epoch window, warm-up in epochs, the precision context of the CAM
forward, checkpointed state, and logging (scalars every step, a picture every
``log_every_n_steps`` augmented steps). The augmenter is built with the callback and given the
LightningModule at ``setup``; it holds the configuration and the counters, which the callback's
attributes of the same names read there.

The class derives from ``pytorch_lightning.Callback`` and, when the ``lightning`` package is
installed, from ``lightning.pytorch.Callback`` as well, so it works with either ``Trainer``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Iterator, MutableMapping, MutableSequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import DummyLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor, nn

from salaug._batch import get_field
from salaug._checks import check_images, check_int, check_key, check_targets
from salaug.augmenter import (
    AugmenterRecord,
    DeprecatedBatchP,
    SaliencyAugmenter,
    check_augmenter_options,
    check_stream_state,
    resolve_batch_p,
)
from salaug.transforms.base import SaliencyTransform

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

__all__ = ["SaliencyAugmentation"]

# The augmenter's counters under the names of the callback's checkpointed state.
_STATE_NAMES = {"steps": "batches_seen", "augmented": "batches_augmented"}


def callback_bases() -> tuple[type, ...]:
    """The Callback base classes to derive from: ``pytorch_lightning``'s and, if installed, ``lightning``'s."""
    bases: list[type] = [pl.Callback]
    if importlib.util.find_spec("lightning") is not None:
        from lightning.pytorch import Callback as LightningCallback

        bases.append(LightningCallback)
    return tuple(bases)


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


class _LightningAugmenter(SaliencyAugmenter):
    """The callback's augmenter: configured at construction, bound to the LightningModule at setup.

    Its forwards run in the Trainer's precision context, and its saliency comes from the callback's
    ``compute_saliency`` hook.
    """

    def __init__(self, callback: SaliencyAugmentation, transform: SaliencyTransform, cam: Any,
                 target_layer: str | nn.Module | None, **options: Any) -> None:
        self._configure(transform, cam, target_layer, rank=None, **options)
        self._callback = callback
        self._trainer: pl.Trainer | None = None

    @property
    @override
    def _owner(self) -> str:
        return "SaliencyAugmentation"

    @property
    def bound(self) -> bool:
        """Whether setup has given this augmenter its model."""
        return self._model is not None

    def bind(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Give the augmenter its model, rank and precision context (at every ``setup("fit")``)."""
        self._trainer = trainer
        self.rank_override = trainer.global_rank
        self._bind(pl_module)

    @override
    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        assert self._trainer is not None
        stack = contextlib.ExitStack()
        stack.enter_context(self._trainer.precision_plugin.forward_context())
        stack.enter_context(_uncompiled_forward(self.model))
        return stack

    @override
    def compute_saliency(self, images: Tensor, labels: Tensor) -> Tensor:
        assert self._trainer is not None
        return self._callback.compute_saliency(self._trainer, self.model, images, labels)  # type: ignore[arg-type]


class _FromAugmenter:
    """A callback attribute that lives on its augmenter (the one source of state), under ``name``.

    ``check`` validates a value written through the callback; ``read_only`` refuses writes.
    """

    def __init__(self, name: str, *, read_only: bool = False, check: Callable[[Any], object] | None = None) -> None:
        self.name, self.read_only, self.check = name, read_only, check

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = attribute

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj._aug, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        if self.read_only:
            raise AttributeError(f"SaliencyAugmentation.{self.attribute} is read-only; pass it to the constructor")
        if self.check is not None:
            self.check(value)
        setattr(obj._aug, self.name, value)


class SaliencyAugmentation(*callback_bases()):  # type: ignore[misc]
    """Augment each training batch with a saliency transform driven by the model's own CAMs.

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
            Skipped batches still get ``(B, K)`` one-hot labels, so the label format does not
            flicker between steps.
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
            overlays, augmented samples) on rank 0; ``0`` disables pictures. Pictures go to every
            logger with ``add_image`` (TensorBoard), as PNG files into ``picture_dir`` when given,
            and otherwise into ``<log_dir>/salaug/`` of a file logger (CSV) that takes no images.
            Without a logger (``logger=False``, ``fast_dev_run``) and without ``picture_dir``
            nothing is drawn and no file is written.
        warmup_epochs: number of first epochs of the window whose batches get flat saliency (the
            transform's random-placement variant with area labels), while the CAMs of the young
            network are uninformative; converted to batches at the start of training.
        warmup_steps: the same in batches (added to ``warmup_epochs``).
        ema_decay: ``None`` or a decay in ``(0, 1)``: CAMs from an exponential moving average of the
            weights (see :class:`salaug.SaliencyAugmenter`).
        picture_dir: directory for PNG pictures (created when the first one is written).
        labels_from: ``"cam"`` (a CAM forward of each batch feeds the transform), ``"forward"`` (a box
            mix — SnapMix, SaliencyMix / CutMix, ResizeMix — draws its boxes without a CAM and its
            labels are filled by ``training_step``'s own forward of the mixed batch, which must call
            the LightningModule, ``self(x)``) or ``"auto"`` (the default: ``"forward"`` for a SnapMix
            with saliency labels and default CAM options, else ``"cam"``); see
            :class:`salaug.SaliencyAugmenter`.
        label_blend: with ``labels_from="forward"``, the weight of the model's evidence against the
            area share (``None``: the rule's default).
        p: deprecated name of ``batch_p`` (a ``DeprecationWarning``).

    Attributes:
        augmenter: the :class:`~salaug.SaliencyAugmenter` doing the work (``None`` until
            ``setup("fit")``); it holds the configuration and the counters below.
        transform, batch_p, cam_scale, targets, num_classes, seed: the augmenter's, read and written
            there (a change takes effect at the next batch); ``seed`` is ``None`` until setup when
            not given.
        cam, target_layer, ema_decay, labels_from, label_blend: the arguments, read-only.
        batches_seen, batches_augmented: the augmenter's ``steps`` and ``augmented``: batches inside
            the epoch window so far (the position in the random stream) and batches transformed.
        warmup_steps: the argument; the augmenter's ``warmup_steps`` adds ``warmup_epochs``
            converted to batches at the start of training.

    Raises:
        TypeError: if ``transform`` is not a salaug transform, or (at run time) the batch is a
            tuple, which cannot be changed in place.
        ValueError: for out-of-range arguments, or a ``training_step`` that takes
            ``dataloader_iter`` (it never sees edits made by callbacks).
        RuntimeError: under strategies that shard the model (FSDP, DeepSpeed, model parallel) or XLA.
    """

    p = DeprecatedBatchP()  # the old name of batch_p
    # The augmenter's configuration and counters, read (and where writable, written) there.
    transform = _FromAugmenter("transform")
    cam = _FromAugmenter("_cam_spec", read_only=True)
    target_layer = _FromAugmenter("_layer_spec", read_only=True)
    batch_p = _FromAugmenter("batch_p")
    cam_scale = _FromAugmenter("cam_scale")
    targets = _FromAugmenter("targets")
    num_classes = _FromAugmenter("num_classes", check=lambda v: check_augmenter_options(num_classes=v))
    seed = _FromAugmenter("seed")
    ema_decay = _FromAugmenter("ema_decay", read_only=True)
    labels_from = _FromAugmenter("labels_from", read_only=True)
    label_blend = _FromAugmenter("label_blend", read_only=True)
    batches_seen = _FromAugmenter("steps")
    batches_augmented = _FromAugmenter("augmented")

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
        p: float | None = None,
    ) -> None:
        self._aug = _LightningAugmenter(
            self, transform, cam, target_layer, batch_p=resolve_batch_p(batch_p, p, type(self).__name__),
            cam_scale=cam_scale, targets=check_targets("targets", targets, type(self).__name__),
            num_classes=num_classes, seed=seed, warmup_steps=warmup_steps, ema_decay=ema_decay,
            labels_from=labels_from, label_blend=label_blend,
        )
        check_int("start_epoch", start_epoch, low=0)
        check_int("stop_epoch", stop_epoch, low=0, optional=True)
        check_int("warmup_epochs", warmup_epochs, low=0)
        check_int("log_every_n_steps", log_every_n_steps, low=0)
        check_key("image_key", image_key)
        check_key("label_key", label_key)
        if stop_epoch is not None and stop_epoch <= start_epoch:
            raise ValueError(f"need 0 <= start_epoch < stop_epoch, got {start_epoch} and {stop_epoch}")
        self.start_epoch = start_epoch
        self.stop_epoch = stop_epoch
        self.image_key = image_key
        self.label_key = label_key
        self.log_every_n_steps = log_every_n_steps
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps  # the augmenter's warm-up adds warmup_epochs, known at the start
        self.picture_dir = os.fspath(picture_dir) if picture_dir is not None else None
        self._picture_sinks: tuple[list[Any], str | None] = ([], None)
        self._pictures = _PictureWorker()

    @property
    def augmenter(self) -> SaliencyAugmenter | None:
        """The :class:`~salaug.SaliencyAugmenter` doing the work (``None`` until ``setup("fit")``)."""
        return self._aug if self._aug.bound else None

    # -- Lightning plumbing -----------------------------------------------------------------------
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
        self._aug.bind(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._pictures.wait()
        if stage == "fit":
            self._aug.last = None  # drop the last batch's tensors

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._aug.warmup_steps = self.warmup_steps + self._warmup_batches(trainer)
        self._warn_about_the_window(trainer)
        self._picture_sinks = self._find_picture_sinks(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {_STATE_NAMES.get(k, k): v for k, v in self._aug.state_dict().items()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it on resume).

        Raises:
            TypeError, ValueError: a state that is not this callback's (a missing, mistyped or
                negative entry, EMA weights of another architecture), naming the entry.
        """
        names = ("seed", _STATE_NAMES["steps"], _STATE_NAMES["augmented"])
        seed, seen, augmented = check_stream_state(state_dict, type(self).__name__, names, seed_optional=True)
        self._aug._restore(seed, seen, augmented, state_dict.get("ema"))  # EMA checked now, or at setup

    # -- the work ---------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self._in_window(trainer.current_epoch) or not self._aug.bound:
            return
        images, labels = self._read(batch)
        new_images, soft_labels = self._aug(images, labels)
        self._write(batch, new_images, soft_labels)
        record = self._aug.last
        assert record is not None
        if not record.augmented:
            pl_module.log("salaug/augmented", 0.0, on_step=True, on_epoch=True, batch_size=images.shape[0])
            return
        self._log(trainer, pl_module, record)

    def compute_saliency(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor,
                         labels: Tensor) -> Tensor:
        """CAMs ``(B, 1, H, W)`` of ``images`` from ``pl_module``, at ``cam_scale``, side-effect free.

        Override to supply saliency another way (e.g. flat maps, masks from the batch).
        """
        return SaliencyAugmenter.compute_saliency(self._aug, images, labels)

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

    def _write(self, batch: Any, images: Tensor, labels: Tensor) -> None:
        batch[self.image_key] = images
        batch[self.label_key] = labels

    # -- logging ----------------------------------------------------------------------------------
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: AugmenterRecord) -> None:
        out, params, saliency, labels = record.output, record.params, record.saliency, record.labels
        assert out is not None and params is not None and saliency is not None
        b = record.images.shape[0]
        own = (labels if labels.ndim == 1 else labels.argmax(1)).to(out.labels.device).long().unsqueeze(1)
        pl_module.log_dict(
            {"salaug/augmented": params["applied"].float().mean(),
             "salaug/salient_area": (saliency >= 0.5).float().mean(),
             "salaug/label_weight": out.labels.gather(1, own).mean()},
            on_step=True, on_epoch=True, batch_size=b,
        )
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
        out, saliency = record.output, record.saliency
        assert out is not None and saliency is not None
        k = min(8, record.images.shape[0])
        # The step only copies k samples (asynchronously on an accelerator); drawing, PNG encoding
        # and writing happen on a worker thread, so a picture does not stall training.
        tiles = tuple(t[:k].detach().clone() for t in (record.images, saliency, out.images, out.labels))
        self._pictures.submit(_draw_picture, tiles, trainer.global_step, loggers, directory)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pictures.wait()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._pictures.wait()


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


def _draw_picture(tiles: tuple[Tensor, ...], step: int, loggers: list[Any], directory: str | None) -> None:
    """Rows (batch, CAM overlay, augmented) of ``k`` samples to the image loggers and / or a PNG file."""
    from salaug.viz import overlay, to_display

    images, saliency, augmented, labels = (t.cpu() for t in tiles)
    shown = to_display(images)
    rows = [shown, overlay(shown, saliency.float()), to_display(augmented)]
    if loggers:
        from torchvision.utils import make_grid

        grid = make_grid(torch.cat(rows), nrow=images.shape[0])
        for logger in loggers:
            logger.experiment.add_image("salaug/cam_and_augmented", grid, step)
    if directory is not None:
        from salaug.viz import save_grid

        named = {"batch": rows[0], "CAM": rows[1], "augmented": rows[2]}
        captions = [_caption(row) for row in labels.float()]
        save_grid(named, os.path.join(directory, f"step{step:07d}.png"), nrow=images.shape[0], captions=captions)


def _caption(label: Tensor) -> str:
    top = label.topk(min(2, label.numel()))
    return " ".join(f"{int(i)}:{float(v):.2f}" for v, i in zip(top.values, top.indices, strict=True) if float(v) > 0)
