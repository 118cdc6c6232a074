"""Saliency-guided augmentation for any training loop: one call per batch, timm's ``mixup_fn`` shape.

:class:`SaliencyAugmenter` is a transform plus a saliency source (:mod:`salaug.sources`), built on
the model being trained and called on each training batch::

    aug = salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=10), target_layer="layer4")
    for images, labels in loader:
        images, soft_labels = aug(images, labels)        # (B, C, H, W), (B, K)
        loss = F.cross_entropy(model(images), soft_labels)

Per call it asks the source for saliency (by default for SnapMix none at all: its labels are
completed by the forward above, :class:`~salaug.sources.ForwardEvidence`; for the other transforms
a CAM forward of the batch, :class:`~salaug.sources.LiveCAM`), applies the transform (whose own
``p`` decides, per sample, which images are mixed) and returns the new images and ``(B, K)`` soft
labels. It owns what a loop would otherwise have to get right:

* **Reproducible randomness.** Call ``n`` draws from a generator seeded by ``(seed, rank, n)``, so a
  run resumed from :meth:`~SaliencyAugmenter.state_dict` continues the same stream, and every DDP
  rank (``torch.distributed`` rank, or ``rank=``) draws its own.
* **No side effects on the model.** Module modes, BatchNorm statistics, parameter ``.grad`` and
  hooks stay as they were; forward labels hook the model only between a call and its forward.
* **The start of training.** For the first ``warmup_steps`` calls the transform gets flat saliency
  (its random-placement variant, with area labels), whatever the source.
* **Clear errors at the start.** On the first call: the model's parameters on the meta device, its
  output width against ``num_classes``; on every call: the channel count against the model's first
  convolution, channels-last ``(B, H, W, C)`` batches, label shapes and (on CPU) NaN / inf images.

No Lightning import: :class:`salaug.SaliencyAugmentation` composes this class.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from salaug._checks import check_choice, check_class_indices, check_float, check_images, check_int, check_targets
from salaug.cam.base import BaseCAM, eval_mode, model_dtype
from salaug.cam.layers import unwrap_model
from salaug.sources import ForwardEvidence, LiveCAM, SaliencySource, as_source
from salaug.sources.live import ForwardContext
from salaug.sources.options import check_no_cam_options, source_from_options
from salaug.transforms.base import Params, SaliencyTransform, SalientBatch, check_transform
from salaug.transforms.labels import to_soft_labels

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
        saliency: ``(B, 1, H, W)`` saliency given to the transform; ``None`` when not augmented or flat.
        output: the transform's :class:`~salaug.SalientBatch` with the labels returned (a
            :class:`~salaug.sources.PendingLabels` until the forward, for forward labels); ``None`` when
            not augmented.
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
    """Augment training batches with a saliency transform and a saliency source on the model being trained.

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
            CAM object built on ``model`` (for :class:`~salaug.sources.LiveCAM`).
        target_layer: dotted name of the layer inside ``model`` (``"layer4"``), a module of
            ``model``, or ``None`` for the last layer with a spatial ``(B, C, h, w)`` output (a
            one-image probe of the first batch; the last attention module of a ViT for forward labels).
        batch_p: probability that a batch goes to the transform at all, drawn once per call; the
            default 1.0 sends every batch, and the transform's own ``p`` (per sample) decides which
            images are mixed. A skipped batch still gets ``(B, K)`` one-hot labels.
        cam_scale, targets, ema_decay: the :class:`~salaug.sources.LiveCAM` options (resolution of
            the CAM forward; ``"labels"`` or ``"predicted"`` class; CAMs from a moving average of
            the weights).
        num_classes: number of classes K; ``None`` takes the transform's, else the model's output width.
        seed: seed of the augmentation stream; ``None`` reads ``torch.initial_seed()`` here.
        warmup_steps: number of first calls during which the transform gets flat saliency.
        rank: this process's rank for its own random stream; ``None`` asks ``torch.distributed``.
        labels_from: ``"cam"``: a CAM forward of each batch feeds the transform (boxes and labels),
            :class:`~salaug.sources.LiveCAM`. ``"forward"``: no pass of its own; a box mix (SnapMix,
            SaliencyMix / CutMix, ResizeMix) draws its boxes flat and the returned label tensor (a
            :class:`~salaug.sources.PendingLabels`) is filled in place by **your own training
            forward** of the returned images through ``model`` (:class:`~salaug.sources.ForwardEvidence`);
            using the labels before that forward raises. ``"auto"`` (the default): ``"forward"`` for a
            SnapMix with saliency labels and default CAM options, else ``"cam"``.
        label_blend: with forward labels, the weight in ``[0, 1]`` of the model's evidence against
            the area share; ``None``: 1.0 for CNNs, 0.5 for ViTs (TransMix).
        source: a :class:`~salaug.sources.SaliencySource` (or a callable ``(images, labels) -> maps``)
            instead of the one the CAM options describe, e.g. :class:`~salaug.sources.Flat` or
            :class:`~salaug.sources.ModelFree`; the CAM options must then keep their defaults.
        forward_context: a callable giving the context entered around every forward made here
            (e.g. a trainer's autocast); the transform runs outside it.
        p: deprecated name of ``batch_p`` (a ``DeprecationWarning``).

    Attributes:
        source: the :class:`~salaug.sources.SaliencySource` in use.
        last: :class:`AugmenterRecord` of the last call (``None`` before the first).
        steps: number of calls so far (the position in the random stream).
        augmented: number of calls that transformed their batch.
        transform, batch_p, num_classes, warmup_steps, seed: the arguments; changes take effect at
            the next call.

    Raises:
        TypeError: ``model`` not an ``nn.Module``, ``transform`` not a salaug transform, or an
            option of the wrong type.
        ValueError: options out of range; unknown CAM name or target layer; ``source`` with CAM options.
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
        source: SaliencySource | Any = None,
        forward_context: ForwardContext | None = None,
        p: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be the torch.nn.Module being trained, got {type(model).__name__}")
        check_transform(transform)
        targets = check_targets("targets", targets, type(self).__name__)
        check_augmenter_options(batch_p=batch_p, cam_scale=cam_scale, targets=targets, num_classes=num_classes,
                                seed=seed, warmup_steps=warmup_steps, ema_decay=ema_decay, rank=rank)
        self.model = model
        self.transform = transform
        self.batch_p = resolve_batch_p(batch_p, p, type(self).__name__)
        self.forward_context: ForwardContext = forward_context or contextlib.nullcontext
        if source is None:
            self.source = source_from_options(model, transform, cam=cam, target_layer=target_layer,
                                              cam_scale=cam_scale, targets=targets, ema_decay=ema_decay,
                                              labels_from=labels_from, label_blend=label_blend,
                                              forward_context=self.forward_context)
        else:
            check_no_cam_options(cam=cam, target_layer=target_layer, cam_scale=cam_scale, targets=targets,
                                  ema_decay=ema_decay, labels_from=labels_from, label_blend=label_blend)
            self.source = as_source(source)
            self.source.check_transform(transform)
        classes = num_classes if num_classes is not None else transform.num_classes
        self.num_classes: int | None = int(classes) if classes is not None else None
        self.seed: int = int(seed) if seed is not None else torch.initial_seed() % (2**62)
        self.warmup_steps = int(warmup_steps)
        self.rank_override = int(rank) if rank is not None else None
        self.steps = 0
        self.augmented = 0
        self.last: AugmenterRecord | None = None
        self._checked_classes = False
        self._channels = _first_conv_channels(unwrap_model(model))
        self._generator = torch.Generator()

    # ------------------------------------------------------------------ properties
    @property
    def labels_from(self) -> str:
        """``"forward"`` (ForwardEvidence), ``"cam"`` (LiveCAM) or ``"source"`` (a source passed in)."""
        if isinstance(self.source, ForwardEvidence):
            return "forward"
        return "cam" if isinstance(self.source, LiveCAM) else "source"

    @property
    def rank(self) -> int:
        """The rank whose random stream this process draws from."""
        if self.rank_override is not None:
            return self.rank_override
        dist = torch.distributed
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def in_warmup(self, step: int | None = None) -> bool:
        """Whether call ``step`` (default: the next one) gets flat saliency."""
        return (self.steps if step is None else step) < self.warmup_steps

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.transform).__name__}, source={self.source!r}, "
                f"batch_p={self.batch_p}, warmup_steps={self.warmup_steps})")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The stream position (``seed``, ``steps``, ``augmented``) and the source's state (e.g. EMA weights)."""
        return {"seed": self.seed, "steps": self.steps, "augmented": self.augmented, **self.source.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the stream position and the source's state.

        Raises:
            TypeError: ``state_dict`` is not a mapping, or an entry has the wrong type.
            ValueError: a missing or out-of-range entry (``seed``, ``steps``, ``augmented``), or EMA
                weights that do not fit the model (another architecture).
        """
        seed, steps, augmented = check_stream_state(state_dict, type(self).__name__)
        self.source.load_state_dict(dict(state_dict), type(self).__name__)
        self.seed = self.seed if seed is None else seed
        self.steps, self.augmented = steps, augmented

    def cancel(self) -> None:
        """Drop a batch whose labels wait for a forward that will not run (its hooks go with it)."""
        self.source.cancel()

    def compute_saliency(self, images: Tensor, labels: Tensor) -> Tensor | None:
        """The source's saliency for ``images``: ``(B, 1, H, W)`` in ``[0, 1]``, or ``None`` (flat)."""
        return self.source.saliency(images, labels)

    # ------------------------------------------------------------------ the call
    def __call__(self, images: Tensor, labels: Tensor, saliency: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Augment one batch.

        Args:
            images: ``(B, C, H, W)`` floating point.
            labels: ``(B,)`` integer class indices or ``(B, K)`` probabilities.
            saliency: optional ``(B, 1, H, W)`` (or ``(B, 1, h, w)``) maps in ``[0, 1]`` for this batch
                (masks, precomputed maps), used instead of the source for boxes and labels.

        Returns:
            ``(images, soft_labels)``: ``(B, C, H, W)`` and ``(B, K)`` float32 rows summing to 1 (with
            forward labels, a :class:`~salaug.sources.PendingLabels` the forward of ``images`` fills).

        Raises:
            TypeError, ValueError: malformed images or labels, NaN / inf images (CPU), a
                ``num_classes`` that differs from the model's outputs (see messages).
        """
        images = check_images(images, finite=True)
        self._check_layout(images)
        _check_labels(labels, images, self.num_classes)
        if not self._checked_classes:
            self._first_call(images)
        if labels.ndim == 1 and self.num_classes is not None:
            check_class_indices(labels, self.num_classes, "label indices", f"num_classes={self.num_classes}")
        step = self.steps
        generator = self._generator.manual_seed(self._stream_key(step))
        self.steps += 1
        self.source.on_step()
        augment = self.batch_p >= 1.0 or bool(torch.rand((), generator=generator) < self.batch_p)
        warm = self.in_warmup(step)
        if not augment:
            self.last = AugmenterRecord(step, False, warm, images, labels)
            return images, to_soft_labels(labels, images.shape[0], self.num_classes, images.device)
        given = saliency is not None
        maps = saliency if given or warm else self.compute_saliency(images, labels)
        out, params = self.transform(images, maps, labels, num_classes=self.num_classes, return_params=True,
                                     generator=generator)
        if not (given or warm):
            out = out._replace(labels=self.source.labels(images, labels, out, params, self.transform, step))
        self.augmented += 1
        self.last = AugmenterRecord(step, True, warm, images, labels, maps, out, params)
        return out.images, out.labels

    # ------------------------------------------------------------------ machinery
    def _stream_key(self, step: int) -> int:
        # One stream per (seed, rank, call counter): a resumed run (which restores the counter)
        # continues the same stream on every rank without storing generator state per rank.
        return (self.seed + self.rank * _RANK_STRIDE + step * _MIX) % (2**63 - 1)

    def _check_layout(self, images: Tensor) -> None:
        """Channels against the model's first convolution; a channels-last ``(B, H, W, C)`` batch named."""
        c, expected = images.shape[1], self._channels
        if expected is None or c == expected:
            if expected is None and c > 4 and images.shape[-1] in (1, 3, 4):
                raise ValueError(_channels_last_message(images))
            return
        if images.shape[-1] == expected:
            raise ValueError(_channels_last_message(images))
        fix = "images.expand(-1, 3, -1, -1)" if c == 1 and expected == 3 else "convert the images"
        raise ValueError(
            f"the images have {c} channel(s) ({tuple(images.shape)}) but the model's first convolution takes "
            f"{expected}; {fix}, or build the model for {c}-channel input"
        )

    def _first_call(self, images: Tensor) -> None:
        """The model's parameters are real; a one-image probe of its output width against ``num_classes``.

        No probe for :class:`~salaug.sources.ForwardEvidence` (the model runs once per step, the user's
        forward, which checks the width itself).
        """
        inner = unwrap_model(self.model)
        if any(t.is_meta for t in inner.parameters()) or any(t.is_meta for t in inner.buffers()):
            raise ValueError(
                f"the model ({type(inner).__name__}) has parameters on the 'meta' device: they hold no values, so "
                "it can compute neither logits nor CAMs; materialise it first (model.to_empty(device=...) and load "
                "or initialise the weights) before augmenting"
            )
        if not isinstance(self.source, ForwardEvidence):
            dtype = model_dtype(inner)
            x = images[:1] if dtype is None or images.dtype == dtype else images[:1].to(dtype)
            with self.forward_context(), torch.no_grad(), eval_mode(inner):
                logits = inner(x)
            self._check_num_classes(logits)
        self._checked_classes = True

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
def _first_conv_channels(model: nn.Module) -> int | None:
    """``in_channels`` of the model's first convolution (module order), or ``None`` if it has none."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels) or None  # a lazy convolution knows its channels only later
    return None


def _channels_last_message(images: Tensor) -> str:
    return (f"the images {tuple(images.shape)} look channels-last, (B, H, W, C); salaug takes (B, C, H, W) batches: "
            "use images.permute(0, 3, 1, 2) (torchvision's ToTensor / ToImage give (C, H, W) samples)")


def _check_labels(labels: object, images: Tensor, num_classes: int | None) -> None:
    b = images.shape[0]
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"labels must be a torch.Tensor, (B,) class indices or (B, K) probabilities, got "
            f"{type(labels).__name__}; convert with torch.as_tensor(labels)"
        )
    if labels.ndim == 2 and labels.shape[1] == 1 and labels.shape[0] == b and num_classes != 1:
        raise ValueError(
            f"labels have shape {tuple(labels.shape)}: (B, 1) reads as one class per row; pass (B,) class "
            "indices with labels.squeeze(1)"
        )
    if labels.ndim not in (1, 2) or labels.shape[0] != b:
        raise ValueError(
            f"labels must have shape (B,) or (B, K) with B={b} (the images' batch size), got {tuple(labels.shape)}"
        )
    if labels.ndim == 1 and (labels.is_floating_point() or labels.dtype == torch.bool):
        raise TypeError(
            f"(B,) labels must be integer class indices, got {labels.dtype}; use labels.long(), or pass (B, K) float "
            "probabilities"
        )
    if labels.ndim == 2 and not labels.is_floating_point():
        raise TypeError(
            f"(B, K) labels must be float probabilities, got {labels.dtype}; use labels.float(), or pass (B,) class "
            "indices"
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
