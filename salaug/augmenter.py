"""Saliency-guided augmentation for any training loop: one call per batch, timm's ``mixup_fn`` shape.

:class:`SaliencyAugmenter` is built on the model being trained and called on each training batch::

    aug = salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=10), cam="gradcam",
                                   target_layer="layer4")
    for images, labels in loader:
        images, soft_labels = aug(images, labels)        # (B, C, H, W), (B, K)
        loss = F.cross_entropy(model(images), soft_labels)

Per call it computes CAMs of the batch with the model (at ``cam_scale``, of each image's label or
of the predicted class), applies the transform (whose own ``p`` decides, per sample, which images
are mixed) and returns the new images and ``(B, K)`` soft labels. ``batch_p`` (default 1.0: every
batch) can additionally skip whole batches. It owns everything a loop would otherwise
have to get right:

* **Reproducible randomness.** Call ``n`` draws from a generator seeded by ``(seed, rank, n)``, so a
  run resumed from :meth:`~SaliencyAugmenter.state_dict` continues the same stream, and every DDP
  rank (``torch.distributed`` rank, or ``rank=``) draws its own.
* **No side effects on the model.** The CAM engine leaves module modes, BatchNorm statistics,
  parameter ``.grad`` and hooks as they were; so does the one-image probe of the first call.
* **The start of training.** CAMs of an untrained network are noise; for the first
  ``warmup_steps`` calls the transform is fed flat saliency, which makes it its random-placement
  variant (SaliencyMix becomes CutMix; saliency-mass labels fall back to area labels).
  ``ema_decay`` takes the CAMs from an exponential moving average of the weights instead of the
  live weights (a :class:`salaug.ema.ModelEMA` copy of the model, updated on every call).
* **Cost.** One extra no-grad forward per batch (at ``cam_scale``; channels-last on CPU) plus a
  backward through the head only.
* **Clear errors at the start.** On the first call: the transform's ``num_classes`` against the
  model's output width, a ``cam_scale`` that leaves the target layer a 1x1 map; on every call:
  label shapes and (on CPU) NaN / inf images, named by their batch positions.

No Lightning import: :class:`salaug.SaliencyAugmentation` is the Lightning adapter over this class.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._checks import (
    check_choice,
    check_class_indices,
    check_float,
    check_images,
    check_int,
    check_targets,
    to_soft_labels,
)
from salaug.cam import create_cam
from salaug.cam.base import BaseCAM, eval_mode, model_dtype
from salaug.cam.hooks import Hooks
from salaug.cam.layers import probe_target_layer, unwrap_model
from salaug.ema import ModelEMA
from salaug.forward_labels import ForwardLabels, supports_forward_labels
from salaug.transforms.base import (
    MixTransform,
    Params,
    SaliencyTransform,
    SalientBatch,
    check_transform,
)
from salaug.transforms.mix import SnapMix

__all__ = ["AugmenterRecord", "SaliencyAugmenter"]

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads consecutive counters over the seed space
_RANK_STRIDE = 1_000_003
_TARGETS = ("labels", "predicted")


@dataclass(frozen=True)
class AugmenterRecord:
    """What one :class:`SaliencyAugmenter` call did (``aug.last``), for logging and metrics.

    The tensors are the call's own (not copies); they stay alive until the next call.

    Attributes:
        step: 0-based index of the call.
        augmented: whether the batch was transformed (the per-batch ``batch_p`` draw).
        warmup: whether the call fell in the warm-up (flat saliency).
        images: ``(B, C, H, W)`` input images.
        labels: the input labels, ``(B,)`` or ``(B, K)``.
        saliency: ``(B, 1, H, W)`` saliency given to the transform; ``None`` when not augmented.
        output: the transform's :class:`~salaug.SalientBatch`; ``None`` when not augmented.
        params: the transform's sampled parameters; ``None`` when not augmented.
    """

    step: int
    augmented: bool
    warmup: bool
    images: Tensor
    labels: Tensor
    saliency: Tensor | None = None
    output: SalientBatch | None = None
    params: Params | None = None


def resolve_batch_p(batch_p: object, p: object, owner: str) -> float:
    """The per-batch gate from ``batch_p`` and the deprecated ``p=`` spelling (warned about).

    Args:
        batch_p: the new spelling, a probability in ``[0, 1]``.
        p: the deprecated spelling, or ``None`` when not passed.
        owner: the class name, for the message.

    Returns:
        The gate as a float.

    Raises:
        TypeError, ValueError: a gate that is not a probability; both spellings given.
    """
    check_float("batch_p", batch_p, low=0.0, high=1.0)
    if p is None:
        return float(batch_p)  # type: ignore[arg-type]
    check_float("p", p, low=0.0, high=1.0)
    if batch_p != 1.0:
        raise ValueError(f"{owner} got both p={p!r} and batch_p={batch_p!r}; p is the old name of batch_p, pass "
                         "batch_p only")
    warnings.warn(
        f"{owner}(p=...) is deprecated: it is the per-batch gate, now batch_p=. The per-sample probability "
        "belongs to the transform (e.g. salaug.SnapMix(num_classes=10, p=0.5)); with batch_p=1.0 (the default) "
        "every batch goes to the transform and its p decides",
        DeprecationWarning, stacklevel=3,
    )
    return float(p)  # type: ignore[arg-type]


def check_forward_label_options(transform: object, labels_from: str, label_blend: object, *, cam: object,
                                cam_scale: object, targets: object, ema_decay: object) -> str:
    """Validate ``labels_from`` / ``label_blend`` and resolve ``"auto"``.

    ``"auto"`` is ``"forward"`` for a SnapMix whose labels read saliency (its boxes never do) when
    every CAM option is at its default, and ``"cam"`` otherwise.

    Returns:
        ``"cam"`` or ``"forward"``.

    Raises:
        ValueError: an unknown ``labels_from``; ``label_blend`` without forward labels; forward labels
            with a transform that is not a box mix, or with options they cannot honour (another CAM,
            ``cam_scale``, predicted targets, EMA).
    """
    source = check_choice("labels_from", labels_from, ("auto", "cam", "forward"))
    check_float("label_blend", label_blend, low=0.0, high=1.0, optional=True)
    set_options = [name for name, is_set in (("cam", cam != "gradcam"), ("cam_scale", cam_scale != 1.0),
                                             ("targets", targets != "labels"), ("ema_decay", ema_decay is not None))
                   if is_set]
    if source == "auto":
        label_only = isinstance(transform, SnapMix) and transform.labels == "saliency"
        source = "forward" if label_only and not set_options else "cam"
    if source == "cam":
        if label_blend is not None:
            raise ValueError("label_blend weighs the forward's evidence; it needs labels_from='forward'")
        return source
    if not supports_forward_labels(transform):
        raise ValueError(
            "labels_from='forward' needs a box mix whose labels only depend on the box (SnapMix, "
            f"SaliencyMix / CutMix, ResizeMix), got {type(transform).__name__}; use labels_from='cam' for it"
        )
    if set_options:
        raise ValueError(
            f"labels_from='forward' reads the training forward's own activations (GradCAM evidence of both classes, "
            f"or a ViT's attention), so {', '.join(set_options)} cannot apply; leave "
            f"{'it' if len(set_options) == 1 else 'them'} at the default"
        )
    return source


def check_augmenter_options(*, batch_p: object = 1.0, cam_scale: object = 1.0, targets: object = "labels",
                            num_classes: object = None, seed: object = None, warmup_steps: object = 0,
                            ema_decay: object = None, rank: object = None) -> None:
    """Validate the options of :class:`SaliencyAugmenter` (the Lightning callback configures one).

    Raises:
        TypeError: an option of the wrong type (the message names it and the fix).
        ValueError: an option out of range.

    Example:
        >>> check_augmenter_options(batch_p=0.5, cam_scale=0.5)
        >>> check_augmenter_options(cam_scale=0)
        Traceback (most recent call last):
        ...
        ValueError: cam_scale must be a number in (0, 1], got 0
    """
    check_float("batch_p", batch_p, low=0.0, high=1.0)
    check_float("cam_scale", cam_scale, low=0.0, high=1.0, low_open=True)
    check_choice("targets", targets, _TARGETS)
    check_int("num_classes", num_classes, low=1, optional=True)
    check_int("seed", seed, optional=True)
    check_int("warmup_steps", warmup_steps, low=0)
    check_float("ema_decay", ema_decay, low=0.0, high=1.0, low_open=True, high_open=True, optional=True)
    check_int("rank", rank, low=0, optional=True)


class DeprecatedBatchP:
    """The deprecated ``p`` attribute of the augmenter and the callback: ``batch_p``, with a ``DeprecationWarning``."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        self._warn(obj)
        return obj.batch_p

    def __set__(self, obj: Any, value: float) -> None:
        self._warn(obj)
        obj.batch_p = check_float("batch_p", value, low=0.0, high=1.0)

    @staticmethod
    def _warn(obj: Any) -> None:
        warnings.warn(f"{type(obj).__name__}.p is deprecated: use batch_p (the per-batch gate)", DeprecationWarning,
                      stacklevel=3)


class SaliencyAugmenter:
    """Augment training batches with a saliency transform driven by the CAMs of the model being trained.

    Drop-in for timm's ``mixup_fn``: ``images, soft_labels = aug(images, labels)``.

    Example:
        >>> import torch, salaug
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 4))
        >>> aug = salaug.SaliencyAugmenter(net, salaug.SaliencyMix(num_classes=4), target_layer="1", seed=0)
        >>> images, soft = aug(torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1]))
        >>> images.shape, soft.shape, aug.last.augmented
        (torch.Size([6, 3, 16, 16]), torch.Size([6, 4]), True)
        >>> state = aug.state_dict()            # resume: the same stream continues
        >>> state["steps"], state["augmented"]
        (1, 1)

    Args:
        model: the classifier being trained (``(B, C, H, W) -> (B, K)`` logits); may be wrapped by
            DDP / ``torch.compile`` (the CAM engine runs the inner module).
        transform: a salaug transform (``salaug.SnapMix(num_classes=10)``...).
        cam: CAM method name (``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``, ``"hirescam"``,
            ``"layercam"``, ``"eigencam"``, ``"scorecam"``, ``"ablationcam"``), a ``BaseCAM`` class, or a
            CAM object built on ``model``.
        target_layer: dotted name of the CAM layer inside ``model`` (``"layer4"``), a module of
            ``model``, or ``None`` for the last layer with a spatial ``(B, C, h, w)`` output (found on
            the first call from full-size images).
        batch_p: probability that a batch goes to the transform at all, drawn once per call; the
            default 1.0 sends every batch, and the transform's own ``p`` (per sample) decides which
            images are mixed. A skipped batch still gets ``(B, K)`` one-hot labels, so the label
            format never flickers.
        p: deprecated name of ``batch_p`` (a ``DeprecationWarning``); set the per-sample
            probability on the transform instead.
        cam_scale: resolution factor of the CAM forward, in ``(0, 1]``; ``0.5`` runs it on half-size
            images (about 4x cheaper for a CNN) and upsamples the maps.
        targets: ``"labels"`` (CAM of each image's label; ``(B, K)`` labels act as class weights) or
            ``"predicted"`` (CAM of the predicted class).
        num_classes: number of classes K; ``None`` takes the transform's, else the model's output width.
        seed: seed of the augmentation stream; ``None`` reads ``torch.initial_seed()`` here.
        warmup_steps: number of first calls during which the transform gets flat saliency (its
            random-placement variant, with area labels), while CAMs are uninformative.
        ema_decay: ``None`` (CAMs from the live weights) or a decay in ``(0, 1)`` such as ``0.999``: CAMs
            from an exponential moving average of the weights, ``ema = decay * ema + (1 - decay) * w``,
            kept in a deep copy of the model (made on the first call, BatchNorm statistics copied)
            and updated at every call; the model itself is never touched.
        rank: this process's rank for its own random stream; ``None`` asks ``torch.distributed``
            (0 when it is not initialised).
        labels_from: where the soft labels come from. ``"cam"``: a CAM forward of each batch feeds
            the transform (boxes and labels). ``"forward"``: no CAM pass at all. A box mix (SnapMix,
            SaliencyMix / CutMix, ResizeMix) draws its boxes on flat saliency, and the returned
            ``(B, K)`` label tensor holds the area labels until **your own training forward** of the
            returned images (through ``model``) fills it in place (:mod:`salaug.forward_labels`:
            GradCAM evidence of both classes at ``target_layer`` for a CNN, the last block's CLS
            attention for a ViT, i.e. TransMix). Run ``model(images)`` on the returned images, with
            gradients, before the next call; keep the label tensor you got (``.to(device)`` on
            another device makes a copy the forward does not fill). ``cam``, ``cam_scale``,
            ``targets`` and ``ema_decay`` keep their defaults; the model runs exactly one forward per
            step. ``"auto"`` (the default): ``"forward"`` for a SnapMix with saliency labels (its
            boxes are random: the CAM only sets the label) when those options are at their
            defaults, else ``"cam"``; with ``"auto"`` a call given ``saliency=`` (masks, precomputed
            maps) takes that saliency's labels, with ``"forward"`` it only places the boxes.
        label_blend: with ``labels_from="forward"``, the weight in ``[0, 1]`` of the model's evidence
            against the area share; ``None``: 1.0 for CNNs, 0.5 for ViTs (TransMix).

    Attributes:
        last: :class:`AugmenterRecord` of the last call (``None`` before the first).
        steps: number of calls so far (the position in the random stream).
        augmented: number of calls that transformed their batch.
        model, ema_decay: the arguments (read-only).
        batch_p, cam_scale, targets, num_classes, warmup_steps, transform: the arguments; changes
            take effect at the next call.

    Raises:
        TypeError: ``model`` not an ``nn.Module``, ``transform`` not a salaug transform, or an
            option of the wrong type.
        ValueError: options out of range; unknown CAM name or target layer.
    """

    p = DeprecatedBatchP()  # the old name of batch_p

    def __init__(
        self,
        model: nn.Module,
        transform: SaliencyTransform,
        cam: str | type[BaseCAM] | BaseCAM = "gradcam",
        target_layer: str | nn.Module | None = None,
        *,
        batch_p: float = 1.0,
        cam_scale: float = 1.0,
        targets: Literal["labels", "predicted"] = "labels",
        num_classes: int | None = None,
        seed: int | None = None,
        warmup_steps: int = 0,
        ema_decay: float | None = None,
        rank: int | None = None,
        labels_from: Literal["auto", "cam", "forward"] = "auto",
        label_blend: float | None = None,
        p: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be the torch.nn.Module being trained, got {type(model).__name__}")
        self._configure(transform, cam, target_layer, batch_p=resolve_batch_p(batch_p, p, type(self).__name__),
                        cam_scale=cam_scale, targets=check_targets("targets", targets, type(self).__name__),
                        num_classes=num_classes, seed=seed, warmup_steps=warmup_steps, ema_decay=ema_decay, rank=rank,
                        labels_from=labels_from, label_blend=label_blend)
        self._bind(model)

    def _configure(self, transform: SaliencyTransform, cam: str | type[BaseCAM] | BaseCAM,
                   target_layer: str | nn.Module | None, *, batch_p: float, cam_scale: float, targets: str,
                   num_classes: int | None, seed: int | None, warmup_steps: int, ema_decay: float | None,
                   rank: int | None, labels_from: str = "auto", label_blend: float | None = None) -> None:
        """Check and store everything but the model (an adapter binds the model later)."""
        check_transform(transform)
        check_augmenter_options(batch_p=batch_p, cam_scale=cam_scale, targets=targets, num_classes=num_classes,
                                seed=seed, warmup_steps=warmup_steps, ema_decay=ema_decay, rank=rank)
        self.labels_from = check_forward_label_options(transform, labels_from, label_blend, cam=cam,
                                                       cam_scale=cam_scale, targets=targets, ema_decay=ema_decay)
        self._given_saliency_labels = labels_from == "auto"  # an explicit saliency= keeps its own labels
        self.label_blend = None if label_blend is None else float(label_blend)
        self._forward: ForwardLabels | None = None
        if ema_decay is not None and isinstance(cam, BaseCAM):
            raise ValueError(
                "ema_decay needs to build the CAM on the moving-average copy of the model, which a CAM object "
                "built on the model does not allow; pass the CAM as a name (cam='gradcam') or class instead"
            )
        self.transform = transform
        self.batch_p = batch_p
        self.cam_scale = float(cam_scale)
        self.targets = targets
        classes = num_classes if num_classes is not None else transform.num_classes
        self.num_classes: int | None = int(classes) if classes is not None else None
        self.seed: int | None = int(seed) if seed is not None else None
        self.warmup_steps = int(warmup_steps)
        self.rank_override = int(rank) if rank is not None else None
        self.steps = 0
        self.augmented = 0
        self.last: AugmenterRecord | None = None
        self._cam_spec = cam
        self._layer_spec = target_layer
        self._ema = ModelEMA(ema_decay) if ema_decay is not None else None
        self._model: nn.Module | None = None
        self._cam: BaseCAM | None = None
        self._ema_cam: BaseCAM | None = None
        self._checked_classes = False
        self._checked_sizes: set[tuple[int, int]] = set()  # image sizes whose CAM layer output was checked
        self._generator = torch.Generator()

    def _bind(self, model: nn.Module) -> None:
        """Attach the model: the seed (if none was given), the CAM (when its layer is known), the checks."""
        if model is self._model:
            return
        if isinstance(self._cam_spec, BaseCAM):
            _check_cam_model(self._cam_spec, model)
        if self._ema is not None:
            self._ema.check(unwrap_model(model), self._owner)
            self._ema.module = None  # an average of another model's weights
        self._model = model
        if self.seed is None:
            self.seed = torch.initial_seed() % (2**62)
        # Built now when the layer is known, so a wrong name fails here and not at the first batch.
        known = isinstance(self._cam_spec, BaseCAM) or self._layer_spec is not None
        from_forward = self.labels_from == "forward"
        self._cam = create_cam(self._cam_spec, model, self._layer_spec) if known and not from_forward else None
        if self._forward is not None:
            self._forward.cancel()
        self._forward = ForwardLabels(model, self._layer_spec, blend=self.label_blend) if from_forward else None
        self._ema_cam = None
        self._checked_classes = False
        self._checked_sizes = set()

    # ------------------------------------------------------------------ properties
    @property
    def _owner(self) -> str:
        return type(self).__name__  # the class named in error messages

    @property
    def model(self) -> nn.Module:
        """The model being trained (read-only)."""
        if self._model is None:
            raise RuntimeError(f"{self._owner} has no model yet: the Lightning callback binds the LightningModule at "
                               "setup('fit')")
        return self._model

    @property
    def ema_decay(self) -> float | None:
        """The EMA decay, or ``None`` when the CAMs come from the live weights (read-only)."""
        return self._ema.decay if self._ema is not None else None

    @property
    def rank(self) -> int:
        """The rank whose random stream this process draws from."""
        if self.rank_override is not None:
            return self.rank_override
        dist = torch.distributed
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @property
    def cam(self) -> BaseCAM | None:
        """The CAM on the live model (``None`` until the first call when the layer is automatic)."""
        return self._cam

    @property
    def ema_model(self) -> nn.Module | None:
        """The moving-average copy of the model (``None`` without ``ema_decay`` or before the first call)."""
        return self._ema.module if self._ema is not None else None

    def in_warmup(self, step: int | None = None) -> bool:
        """Whether call ``step`` (default: the next one) gets flat saliency."""
        return (self.steps if step is None else step) < self.warmup_steps

    def __repr__(self) -> str:
        cam = self._cam_spec if isinstance(self._cam_spec, str) else type(self._cam_spec).__name__
        layer = self._layer_spec if isinstance(self._layer_spec, (str, type(None))) else type(self._layer_spec).__name__
        extra = f", ema_decay={self.ema_decay}" if self.ema_decay is not None else ""
        return (f"{type(self).__name__}({type(self.transform).__name__}, cam={cam!r}, target_layer={layer!r}, "
                f"batch_p={self.batch_p}, cam_scale={self.cam_scale}, warmup_steps={self.warmup_steps}{extra})")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The stream position (``seed``, ``steps``, ``augmented``) and, with ``ema_decay``, the EMA weights."""
        state: dict[str, Any] = {"seed": self.seed, "steps": self.steps, "augmented": self.augmented}
        ema = self._ema.state_dict() if self._ema is not None else None
        if ema is not None:
            state["ema"] = ema
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the stream position and, with ``ema_decay``, the EMA weights.

        Raises:
            TypeError: ``state_dict`` is not a mapping, or an entry has the wrong type.
            ValueError: a missing or out-of-range entry (``seed``, ``steps``, ``augmented``), or EMA
                weights that do not fit the model (another architecture).
        """
        seed, steps, augmented = check_stream_state(state_dict, self._owner)
        self._restore(seed, steps, augmented, state_dict.get("ema"))

    def _restore(self, seed: int | None, steps: int, augmented: int, ema: Any) -> None:
        """Set the checked stream position (``seed=None`` keeps the seed) and load the EMA weights, if used."""
        if ema is not None and self._ema is not None:
            self._ema.load_state_dict(ema, unwrap_model(self._model) if self._model is not None else None, self._owner)
        self.seed = self.seed if seed is None else seed
        self.steps, self.augmented = steps, augmented

    # ------------------------------------------------------------------ hooks for adapters
    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context entered around every forward of the model made here (CAM, first-call probe).

        Override to add e.g. the training's autocast; the transform runs outside it.
        """
        return contextlib.nullcontext()

    def compute_saliency(self, images: Tensor, labels: Tensor) -> Tensor:
        """CAMs of ``images`` at ``cam_scale`` (from the EMA copy with ``ema_decay``), side-effect free.

        Args:
            images: ``(B, C, H, W)``.
            labels: ``(B,)`` class indices or ``(B, K)`` soft labels (used with ``targets="labels"``).

        Returns:
            ``(B, 1, H, W)`` float32 in ``[0, 1]`` on ``images.device``.
        """
        cam = self._live_cam(images)
        if self._ema is not None and self._ema.module is not None:
            if self._ema_cam is None or self._ema_cam.model is not self._ema.module:
                self._ema_cam = create_cam(self._cam_spec, self._ema.module, cam.target_layer_name)
            cam = self._ema_cam
        targets = None if self.targets == "predicted" else (labels if labels.ndim == 1 else labels.float())
        with self.forward_context():
            return cam(self._cam_input(images), targets, output_size=(images.shape[-2], images.shape[-1]))

    # ------------------------------------------------------------------ the call
    def __call__(self, images: Tensor, labels: Tensor, saliency: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Augment one batch.

        Args:
            images: ``(B, C, H, W)`` floating point.
            labels: ``(B,)`` integer class indices or ``(B, K)`` probabilities.
            saliency: optional ``(B, 1, H, W)`` (or ``(B, 1, h, w)``) maps in ``[0, 1]`` to use instead of
                the CAM (masks, precomputed maps); the model then runs no CAM forward.

        Returns:
            ``(images, soft_labels)``: ``(B, C, H, W)`` and ``(B, K)`` float32 rows summing to 1.

        Raises:
            TypeError, ValueError: malformed images or labels, NaN / inf images (CPU), a
                ``num_classes`` that differs from the model's outputs, a ``cam_scale`` too small
                for the images (see messages).
        """
        images = check_images(images, finite=True)
        self._check_labels(labels, images)
        use_model = saliency is None and self._forward is None
        # forward labels: the model runs once per step, the user's forward (which checks the classes)
        first = not self._checked_classes and self._forward is None
        if first or (use_model and tuple(images.shape[-2:]) not in self._checked_sizes):
            self._first_call(images, use_model=use_model)
        if labels.ndim == 1 and self.num_classes is not None:
            check_class_indices(labels, self.num_classes, "label indices", f"num_classes={self.num_classes}")
        step = self.steps
        generator = self._generator.manual_seed(self._stream_key(step))
        self.steps += 1
        if self._ema is not None:
            self._ema.update(unwrap_model(self.model), self.forward_context)
        k = self.num_classes
        augment = self.batch_p >= 1.0 or bool(torch.rand((), generator=generator) < self.batch_p)
        warm = self.in_warmup(step)
        if not augment:
            self.last = AugmenterRecord(step, False, warm, images, labels)
            return images, to_soft_labels(labels, images.shape[0], k, images.device)
        from_forward = self._forward is not None and not (saliency is not None and self._given_saliency_labels)
        if warm or (saliency is None and from_forward):  # flat: random placement, area labels
            saliency = torch.ones((images.shape[0], 1, *images.shape[-2:]), device=images.device)
        elif saliency is None:
            saliency = self.compute_saliency(images, labels)
        out, params = self._transform(images, saliency, labels, k, generator)
        if from_forward and not warm:
            self._arm_forward_labels(images, labels, out, params)
        self.augmented += 1
        self.last = AugmenterRecord(step, True, warm, images, labels, saliency, out, params)
        return out.images, out.labels

    # ------------------------------------------------------------------ machinery
    def _arm_forward_labels(self, images: Tensor, labels: Tensor, out: SalientBatch, params: Params) -> None:
        """Hand ``out.labels`` (area labels so far) to the forward-label capture, which fills it in place."""
        assert self._forward is not None
        own = to_soft_labels(labels, images.shape[0], self.num_classes, images.device)
        transform = self.transform
        assert isinstance(transform, MixTransform)  # forward labels take box mixes only (checked when configured)
        area = transform.area_share(params, (images.shape[-2], images.shape[-1]))
        self._forward.arm(out.images, out.labels, own, params, area)

    def _stream_key(self, step: int) -> int:
        # One stream per (seed, rank, call counter): a resumed run (which restores the counter)
        # continues the same stream on every rank without storing generator state per rank.
        assert self.seed is not None, "seeded when the model is bound"
        return (self.seed + self.rank * _RANK_STRIDE + step * _MIX) % (2**63 - 1)

    def _transform(self, images: Tensor, saliency: Tensor, labels: Tensor, k: int | None,
                   generator: torch.Generator) -> tuple[SalientBatch, Params]:
        return self.transform(images, saliency, labels, num_classes=k, return_params=True, generator=generator)

    def _cam_input(self, images: Tensor) -> Tensor:
        if self.cam_scale >= 1.0:
            return images
        return F.interpolate(images, scale_factor=self.cam_scale, mode="bilinear", align_corners=False,
                             antialias=True)

    def _live_cam(self, images: Tensor) -> BaseCAM:
        if self._cam is None:
            # Automatic layer, chosen on full-size images: at cam_scale the last spatial layer can
            # collapse to 1x1 and the probe would silently pick an earlier one.
            inner = unwrap_model(self.model)
            with self.forward_context(), eval_mode(inner):
                name, _ = probe_target_layer(inner, self._as_model_dtype(images[:1], inner))
            self._cam = create_cam(self._cam_spec, self.model, name)
        return self._cam

    @staticmethod
    def _as_model_dtype(images: Tensor, model: nn.Module) -> Tensor:
        """Images cast to the model's parameter dtype, as the CAM engine casts them."""
        dtype = model_dtype(model)
        return images if dtype is None or images.dtype == dtype else images.to(dtype)

    def _check_labels(self, labels: object, images: Tensor) -> None:
        b = images.shape[0]
        if not isinstance(labels, Tensor):
            raise TypeError(
                f"labels must be a torch.Tensor, (B,) class indices or (B, K) probabilities, got "
                f"{type(labels).__name__}; convert with torch.as_tensor(labels)"
            )
        if labels.ndim == 2 and labels.shape[1] == 1 and labels.shape[0] == b and self.num_classes != 1:
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}: (B, 1) reads as one class per row; pass (B,) class "
                "indices with labels.squeeze(1)"
            )
        if labels.ndim not in (1, 2) or labels.shape[0] != b:
            raise ValueError(
                f"labels must have shape (B,) or (B, K) with B={b} (the images' batch size), got "
                f"{tuple(labels.shape)}"
            )
        if labels.ndim == 1 and (labels.is_floating_point() or labels.dtype == torch.bool):
            raise TypeError(
                f"(B,) labels must be integer class indices, got {labels.dtype}; use labels.long(), or pass "
                "(B, K) float probabilities"
            )
        if labels.ndim == 2 and not labels.is_floating_point():
            raise TypeError(
                f"(B, K) labels must be float probabilities, got {labels.dtype}; use labels.float(), or pass "
                "(B,) class indices"
            )

    def _first_call(self, images: Tensor, *, use_model: bool) -> None:
        """One-image probe: the model's output width against ``num_classes``; the CAM layer's size.

        Runs on the first call and again for every new image size (when the CAM is used).
        """
        inner = unwrap_model(self.model)
        if any(t.is_meta for t in inner.parameters()) or any(t.is_meta for t in inner.buffers()):
            raise ValueError(
                f"the model ({type(inner).__name__}) has parameters on the 'meta' device: they hold no values, so "
                "it can compute neither logits nor CAMs; materialise it first (model.to_empty(device=...) and load "
                "or initialise the weights) before augmenting"
            )
        if use_model and min(math.floor(n * self.cam_scale) for n in images.shape[-2:]) < 1:
            raise ValueError(
                f"cam_scale={self.cam_scale} shrinks the {images.shape[-2]}x{images.shape[-1]} images to nothing; "
                "raise cam_scale (1.0 runs the CAM at full size)"
            )
        x = self._as_model_dtype(self._cam_input(images[:1]) if use_model else images[:1], inner)
        layer = self._live_cam(images).target_layer if use_model else None
        found: dict[str, Any] = {}

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                found["shape"] = tuple(output.shape)

        try:
            with Hooks() as hooks, self.forward_context(), torch.no_grad(), eval_mode(inner):
                if layer is not None:
                    hooks.on_output(layer, hook)
                logits = inner(x)
        except RuntimeError as err:
            if use_model and self.cam_scale < 1.0:
                raise ValueError(
                    f"the model failed on the {x.shape[-2]}x{x.shape[-1]} CAM input that cam_scale={self.cam_scale} "
                    f"makes of the {images.shape[-2]}x{images.shape[-1]} images ({err}); raise cam_scale"
                ) from err
            raise
        if not self._checked_classes:
            self._check_num_classes(logits)
            self._checked_classes = True
        if not use_model:
            return
        shape = found.get("shape")
        if shape is not None and len(shape) == 4 and shape[-1] * shape[-2] <= 1:
            name = self._cam.target_layer_name if self._cam is not None else "?"
            raise ValueError(
                f"at cam_scale={self.cam_scale} the {images.shape[-2]}x{images.shape[-1]} images become "
                f"{x.shape[-2]}x{x.shape[-1]} CAM inputs, for which target layer {name!r} outputs a "
                f"{shape[-2]}x{shape[-1]} feature map: a CAM needs at least two positions to point anywhere "
                "(every map would be flat and the transform would place its boxes at random). Raise cam_scale, "
                "use larger images, or choose a target layer before the last downsampling"
            )
        self._checked_sizes.add(tuple(images.shape[-2:]))  # type: ignore[arg-type]

    def _check_num_classes(self, logits: object) -> None:
        width = int(logits.shape[1]) if isinstance(logits, Tensor) and logits.ndim == 2 else None
        if width is None:
            if self.num_classes is None:
                raise TypeError(
                    "cannot infer num_classes: the model's forward does not return (B, K) logits; pass "
                    "num_classes= (and a model returning logits for the CAM)"
                )
            return  # the CAM, if used, reports the output format itself
        if self.num_classes is None:
            self.num_classes = width
        elif self.num_classes != width:
            source = "num_classes=" if self.transform.num_classes != self.num_classes else \
                f"the transform's num_classes ({type(self.transform).__name__}(num_classes=...))"
            raise ValueError(
                f"{source} is {self.num_classes} but the model outputs {width} classes, so the (B, "
                f"{self.num_classes}) soft labels could not be its cross-entropy targets; build the transform "
                f"with num_classes={width} (or fix the model's head)"
            )


# ---------------------------------------------------------------------------------------------------- helpers
def _check_cam_model(cam: BaseCAM, model: nn.Module) -> None:
    """Refuse a CAM object built on a model other than ``model`` (or one of its submodules)."""
    inner = unwrap_model(model)
    if not any(m is cam.model for m in inner.modules()):
        raise ValueError(
            f"cam={type(cam).__name__}(...) was built on another model ({type(cam.model).__name__}) than the one "
            f"being trained ({type(inner).__name__}): its CAMs would not follow the training. Build it on this "
            f"model ({type(cam).__name__}(model, target_layer)) or pass the method's name (cam='gradcam')"
        )


def check_stream_state(state: object, owner: str, names: tuple[str, str, str] = ("seed", "steps", "augmented"), *,
                       seed_optional: bool = False) -> tuple[int | None, int, int]:
    """``(seed, steps, augmented)`` from a state dict, each entry checked and named in the error.

    Args:
        state: what ``load_state_dict`` received.
        owner: the class name, for the message.
        names: the keys of the seed, the step counter and the augmented-batch counter.
        seed_optional: accept a ``None`` seed (a callback saved before its seed was drawn).

    Raises:
        TypeError: ``state`` is not a mapping, or an entry is not an int.
        ValueError: a missing entry, a negative counter, or more augmented batches than steps.
    """
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{owner}.load_state_dict needs the dict its state_dict() returned, got {type(state).__name__}"
        )
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(
            f"{owner}.load_state_dict: the state has no {', '.join(repr(m) for m in missing)} entr"
            f"{'y' if len(missing) == 1 else 'ies'} (it has {sorted(map(str, state))[:8]}); pass what "
            f"{owner}.state_dict() returned, not another object's state (a model's state_dict, a truncated dict)"
        )
    seed_name, steps_name, aug_name = names
    seed = check_int(f"state_dict[{seed_name!r}]", state[seed_name], optional=seed_optional)
    steps, augmented = (check_int(f"state_dict[{n!r}]", state[n], low=0) for n in names[1:])
    if augmented > steps:
        raise ValueError(f"{owner}.load_state_dict: state_dict[{aug_name!r}]={augmented} exceeds "
                         f"state_dict[{steps_name!r}]={steps}; the state is corrupt")
    return seed, steps, augmented
