"""The CAM engine: hooks, the batched forward/backward, normalisation and resizing.

How a gradient CAM is computed (one forward, no ``.backward()``):

1. every submodule is put in eval mode (BatchNorm uses and keeps its running statistics, dropout
   is off); each module's own ``training`` flag is restored afterwards, mixed modes included;
2. the model runs under ``torch.no_grad()``: the trunk before the target layer builds no autograd
   graph. A forward hook on the target layer switches gradients on and hands the rest of the
   network a copy of ``A = output.detach().requires_grad_()``, so only the head is recorded;
3. ``torch.autograd.grad(score, A)`` with ``score = sum_i score_i(logits_i)``: each image gets the
   gradient of its own target, no parameter ``.grad`` is read or written;
4. the per-method weights combine ``A`` and ``dS/dA`` in float32 (autocast is disabled there), then
   ``ReLU`` at feature resolution, per-image min-max (``(x - min) / (max - min + 1e-7)``, the
   pytorch-grad-cam rule, so an all-zero map stays zero), bilinear resize
   (``align_corners=False``) and a second per-image min-max at the output size, exactly like
   pytorch-grad-cam's ``scale_cam_image`` applied per layer and after aggregation.

Input rules, the same for all eight methods:

* **dtype**: images of any floating dtype are cast to the dtype of the model's parameters (a
  float32 model takes float16, bfloat16 and float64 images; under ``torch.autocast`` autocast then
  chooses the compute dtype as usual). The maps are always float32.
* **NaN / inf**: where value checks run (CPU tensors by default, see
  :func:`salaug.set_value_checks`), non-finite images or ``(B, K)`` target weights raise a
  ``ValueError``. Wherever a map would still hold a NaN or inf (value checks off, or a model that
  overflows on finite input), that image's map is **all zeros**, the same "no evidence" map an
  all-zero CAM gives (the transforms then fall back to their flat-saliency behaviour). No method
  ever returns a NaN map.
* **in-place consumers**: activations are captured as the target layer produced them, even when
  the next module modifies its input in place (``ReLU(inplace=True)``).

Speed: on CPU the CAM forward of a model with ``Conv2d`` layers runs on a channels-last copy of the
images (oneDNN's convolutions, pooling and BatchNorm are faster in that layout, see the speed page; the maps
agree with the contiguous layout to float rounding). A model that cannot take it (a ``.view()`` on
a feature map) is detected on its first call and keeps the contiguous layout from then on.

The caller's grad mode, inference mode, module modes and hooks are restored on exit, also when
the call raises. Inside ``torch.inference_mode()`` the engine locally leaves inference mode (the
backward needs ordinary tensors) and works on copies of inference-tensor images and targets.

A ``torch.compile``'d model (``OptimizedModule``) is run through its eager ``_orig_mod``: hooks
added after compilation are ignored by compiled code, and the parameters are shared, so the maps
are those of the same network. ``record()`` (fused mode) cannot observe a compiled forward and
raises.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._checks import (
    all_finite,
    check_class_indices,
    check_finite,
    check_image_extent,
    check_images,
    size_pair,
    value_checks_on,
    zero_nonfinite_maps,
)
from salaug.cam.capture import Keep, LayerCapture, StopForward, check_ran_once
from salaug.cam.hooks import Hooks
from salaug.cam.layers import (
    POOLING_HEADS,
    is_compiled,
    pick_recorded_layer,
    probe_target_layer,
    resolve_target_layer,
    unwrap_model,
)

__all__ = ["BaseCAM", "Targets", "check_logits", "eval_mode", "finalize_cam", "no_autocast", "weighted_sum"]


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (or buffer); ``None`` if it has none."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    for buffer in model.buffers():
        if buffer.is_floating_point():
            return buffer.dtype
    return None


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``None`` if it has neither."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return None


def model_on(model: nn.Module, device: torch.device | None) -> nn.Module:
    """``model`` itself when it already lives on ``device`` (or ``device`` is ``None``), else a copy moved there.

    The caller's model is never moved: a frozen saliency model asked to run elsewhere gets its own
    ``copy.deepcopy`` on ``device`` (a snapshot of the weights at this call).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> model_on(net, torch.device("cpu")) is net, model_on(net, torch.device("meta")) is net
        (True, False)
        >>> next(net.parameters()).device
        device(type='cpu')
    """
    if device is None or model_device(model) in (None, device):
        return model
    here = model_device(model)
    if here is not None and here.type == device.type and (device.index is None or here.index == device.index):
        return model
    import copy

    return copy.deepcopy(model).to(device)


_EPS = 1e-7
# Largest gap between channels-last and contiguous CPU maps (normalized, feature resolution) for which
# the faster channels-last layout is kept; the reference tests hold maps to 1e-4 as well.
LAYOUT_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------- #
# context helpers
# --------------------------------------------------------------------------------------------- #
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule of ``model`` in eval mode; restore each one's own flag on exit.

    The ``training`` attribute is set directly (overridden ``train()`` methods are not called), so
    nothing but the flags changes and mixed train/eval states come back exactly.

    Example:
        >>> net = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2).eval())
        >>> with eval_mode(net):
        ...     print([m.training for m in net.modules()])
        [False, False, False]
        >>> [m.training for m in net.modules()]
        [True, True, False]
    """
    was_training = [m for m in model.modules() if m.training]
    for m in was_training:
        m.training = False
    try:
        yield
    finally:
        for m in was_training:
            m.training = True


@contextlib.contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Eval mode for ``model`` and (if needed) a local exit from inference mode."""
    with contextlib.ExitStack() as stack:
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        stack.enter_context(eval_mode(model))
        yield


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # pragma: no cover - exotic device types
        return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------------------------- #
def _check_output_size(output_size: object, images_hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """``None`` -> images' size, ``"feature"`` -> ``None`` (feature resolution), int / pair -> pair."""
    if output_size is None:
        if images_hw is None:
            raise ValueError(
                "output_size is needed: the recorded forward had no (B, C, H, W) image input; "
                "pass output_size=(H, W) or 'feature'"
            )
        return images_hw
    if isinstance(output_size, str):
        if output_size == "feature":
            return None
        raise ValueError(f"output_size must be None, (H, W), an int or 'feature', got {output_size!r}")
    size = size_pair(output_size)
    if size is not None:
        return size
    raise ValueError(f"output_size must be None, (H, W) with positive ints, an int or 'feature', got {output_size!r}")


def _check_targets(targets: object, batch: int) -> Tensor | None:
    """Shape and dtype checks of ``targets`` that need no model output."""
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise TypeError("targets must be None, (B,) integer class indices or (B, K) float weights, got a bool")
    if isinstance(targets, int):
        return torch.full((batch,), targets, dtype=torch.long)
    if not isinstance(targets, Tensor):
        try:
            targets = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                "targets must be None, (B,) integer class indices or (B, K) float weights, "
                f"got {type(targets).__name__}"
            ) from exc
    if targets.ndim == 0:
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(
                f"a single target must be an integer class index, got {targets.dtype} {targets!r}; pass an int, "
                "(B,) integer indices or (B, K) float weights"
            )
        return targets.reshape(1).expand(batch)
    if targets.ndim == 1:
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(
                f"(B,) targets must be integer class indices, got dtype {targets.dtype}; use targets.long() for "
                "indices, or pass (B, K) float weights (e.g. soft labels)"
            )
    elif targets.ndim == 2:
        if not targets.is_floating_point():
            raise TypeError(
                f"(B, K) targets must be floating-point class weights, got dtype {targets.dtype}; pass (B,) "
                "integer indices for single classes"
            )
    else:
        raise ValueError(
            f"targets must have shape (B,) (class indices) or (B, K) (class weights), got {tuple(targets.shape)}"
        )
    if targets.shape[0] != batch:
        raise ValueError(
            f"targets have batch size {targets.shape[0]} but the images have {batch}; pass one target per image"
        )
    if targets.ndim == 2:
        check_finite(targets, "(B, K) targets", "pass finite class weights (e.g. torch.nan_to_num(targets, nan=0.0))")
    return targets


def check_logits(output: object, batch: int, recorded: bool = False) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != batch or not output.is_floating_point():
        got = f"shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
        if isinstance(output, Tensor) and output.dtype.is_floating_point:
            got += f" {output.dtype}"
        if recorded:
            raise TypeError(
                f"from_logits() needs the (B, K) = ({batch}, K) float logits of the forward run inside record(), "
                f"got {got}; pass that forward's output (select the logits if the model returns a tuple or dict)"
            )
        raise TypeError(
            f"the model must return logits of shape (B, K) = ({batch}, K) as one float tensor, got {got}; wrap the "
            "model so that it does, e.g. nn.Sequential(model, SelectLogits()) or a small nn.Module whose forward "
            "returns model(x)['logits'] / model(x)[0]"
        )
    return output


def _prepare_images(images: object, model: nn.Module) -> Tensor:
    """Check a ``(B, C, H, W)`` batch and cast it to the model's parameter dtype."""
    images = check_images(images)
    check_image_extent(images)
    if value_checks_on(images) and not all_finite(images):  # one min-max pass; the full scan only on failure
        check_finite(
            images, "images", "replace or drop them before computing CAMs (e.g. torch.nan_to_num(images)), and "
            "check the data pipeline (normalisation by a zero std, corrupt files)"
        )
    dtype = model_dtype(model)
    if dtype is not None and images.dtype != dtype:
        images = images.to(dtype)
    return images


class Targets:
    """Resolved targets: ``index`` ``(B,)`` long or ``weight`` ``(B, K)`` float32, on the logits' device."""

    def __init__(self, index: Tensor | None, weight: Tensor | None) -> None:
        self.index = index
        self.weight = weight

    @classmethod
    def resolve(cls, targets: Tensor | None, logits: Tensor) -> Targets:
        k = logits.shape[1]
        if targets is None:
            return cls(logits.detach().argmax(dim=1), None)
        if targets.ndim == 1:
            check_class_indices(targets, k, "target class indices", f"a model with {k} outputs")
            return cls(targets.to(device=logits.device, dtype=torch.long), None)
        if targets.shape[1] != k:
            raise ValueError(f"(B, K) targets have K={targets.shape[1]} but the model has {k} outputs")
        return cls(None, targets.to(device=logits.device, dtype=torch.float32))

    def score(self, logits: Tensor, rows: Tensor | None = None) -> Tensor:
        """Per-row target score ``(n,)`` in float32; ``rows`` maps each logits row to its image."""
        logits = logits.float()
        if self.weight is not None:
            w = self.weight if rows is None else self.weight.index_select(0, rows)
            return (logits * w).sum(dim=1)
        assert self.index is not None
        idx = self.index if rows is None else self.index.index_select(0, rows)
        return logits.gather(1, idx.unsqueeze(1)).squeeze(1)


# --------------------------------------------------------------------------------------------- #
# normalisation
# --------------------------------------------------------------------------------------------- #
def _minmax(cam: Tensor) -> Tensor:
    """Per-image ``(x - min) / (max - min + 1e-7)`` over all but the batch dimension."""
    flat = cam.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)  # two reductions: far faster than aminmax(dim=1) on CPU
    shape = (-1,) + (1,) * (cam.ndim - 1)
    return (cam - lo.view(shape)) / ((hi - lo).view(shape) + _EPS)


def finalize_cam(raw: Tensor, output_size: tuple[int, int] | None) -> Tensor:
    """ReLU, per-image min-max, bilinear resize, min-max again (pytorch-grad-cam's pipeline).

    Args:
        raw: ``(B, h, w)`` raw CAM at feature resolution.
        output_size: ``(H, W)``, or ``None`` to stay at ``(h, w)``.

    Returns:
        ``(B, 1, H, W)`` float32 in ``[0, 1]``; an all-zero (or constant) map gives zeros, and so
        does a map holding any NaN or inf (never a NaN map).

    Example:
        >>> raw = torch.tensor([[[-1.0, 1.0], [2.0, 3.0]]])
        >>> [round(v, 4) for v in finalize_cam(raw, None).flatten().tolist()]
        [0.0, 0.3333, 0.6667, 1.0]
        >>> finalize_cam(torch.zeros(1, 2, 2), (4, 4)).abs().max().item()
        0.0
    """
    with no_autocast(raw.device):
        # checked at feature resolution: a finite map in [0, 1] stays finite through the resize and
        # the second min-max, so the full-size map needs no second pass
        cam = zero_nonfinite_maps(_minmax(raw.float().clamp_min(0)).unsqueeze(1))
        if output_size is not None:
            cam = _minmax(F.interpolate(cam, size=output_size, mode="bilinear", align_corners=False))
        return cam


# --------------------------------------------------------------------------------------------- #
# the base class
# --------------------------------------------------------------------------------------------- #
class BaseCAM:
    """Batched, side-effect-free class activation maps from one target layer.

    Args:
        model: a classifier returning logits ``(B, K)``. ``torch.compile`` / ``DataParallel`` /
            ``DistributedDataParallel`` wrappers are unwrapped for the CAM forward (see the
            module docstring).
        target_layer: dotted name (``"layer4"``, ``"features.-1"``), a module inside ``model``, or
            ``None`` for the last module with a ``(B, C, h, w)`` output (found by a one-image probe
            forward on the first call; see :mod:`salaug.cam.layers`).
        reshape: callable turning the layer's output into ``(B, C, h, w)``, e.g.
            :func:`salaug.cam.vit_reshape` for ``(B, N, D)`` tokens; requires ``target_layer``.

    Calling ``cam(images, targets=None, *, output_size=None)`` returns ``(B, 1, H, W)`` float32
    maps in ``[0, 1]`` on ``images.device``:

    * ``images``: ``(B, C, H, W)`` tensor of any float dtype (cast to the model's parameter
      dtype); NaN / inf raise where value checks run.
    * ``targets``: ``None`` (the predicted class, argmax of the logits), ``(B,)`` integer class
      indices (an ``int`` is broadcast), or ``(B, K)`` float weights (the CAM of
      ``sum_k w_k * logit_k``, e.g. soft labels).
    * ``output_size``: ``None`` (the images' ``(H, W)``), an ``(H, W)`` pair (or an int), or
      ``"feature"`` (the target layer's own ``(h, w)``).

    Fused mode (training loop)::

        with cam.record():
            logits = model(x)               # the caller's own forward: train mode, grad on
        sal = cam.from_logits(logits, y)    # autograd.grad(..., retain_graph=True)
        loss.backward()                     # unchanged parameter gradients
    """

    #: registry name (``salaug.cam.CAM_METHODS`` key)
    name: ClassVar[str] = ""
    #: whether the method needs ``dS/dA``
    uses_gradients: ClassVar[bool] = True
    #: whether ``record()`` / ``from_logits()`` are available
    supports_record: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module | None = None,
        *,
        reshape: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if reshape is not None and not callable(reshape):
            raise TypeError(f"reshape must be callable (B, N, D) -> (B, D, h, w), got {type(reshape).__name__}")
        if reshape is not None and target_layer is None:
            raise ValueError(
                "reshape= needs an explicit target_layer (token models have no automatic choice); for torchvision "
                "ViTs use e.g. target_layer='encoder.layers.encoder_layer_11.ln_1'"
            )
        self._wrapper = model
        self._model = unwrap_model(model)
        self._compiled = self._model is not model and _has_compiled_wrapper(model)
        self.reshape = reshape
        self._layer: nn.Module | None = None
        self._layer_name: str | None = None
        if target_layer is not None:
            self._layer_name, self._layer = resolve_target_layer(self._model, target_layer, wrapper=model)
        self._recording: dict[str, Any] | None = None
        self._record_active = False
        # CPU layout (see _compute_fast): None: not tried yet, True: channels-last, False: contiguous.
        self._channels_last: bool | None = None if any(isinstance(m, nn.Conv2d) for m in self._model.modules()) \
            else False

    # ------------------------------------------------------------------ properties
    @property
    def model(self) -> nn.Module:
        """The eager module the CAM runs (the unwrapped model)."""
        return self._model

    @property
    def target_layer(self) -> nn.Module | None:
        """The target module (``None`` until an automatic choice is made on the first call)."""
        return self._layer

    @property
    def target_layer_name(self) -> str | None:
        """Dotted name of the target module inside :attr:`model` (``None`` until resolved)."""
        return self._layer_name

    def __repr__(self) -> str:
        layer = self._layer_name if self._layer_name is not None else "auto"
        return f"{type(self).__name__}(model={type(self._model).__name__}, target_layer={layer!r})"

    # ------------------------------------------------------------------ public calls
    def __call__(
        self,
        images: Tensor,
        targets: Tensor | int | Sequence[int] | None = None,
        *,
        output_size: tuple[int, int] | int | str | None = None,
    ) -> Tensor:
        """Compute the CAMs of a batch.

        Args:
            images: ``(B, C, H, W)`` floating-point tensor (any float dtype).
            targets: ``None``, an int (or 0-d integer tensor) for every image, ``(B,)`` integer
                indices or ``(B, K)`` float weights.
            output_size: ``None`` (``(H, W)``), ``(h, w)``, an int, or ``"feature"``.

        Returns:
            ``(B, 1, H', W')`` float32 in ``[0, 1]`` on ``images.device``; an image whose map
            would hold NaN or inf gets an all-zero map.

        Raises:
            TypeError: images not a float tensor, wrong targets dtype, model output not ``(B, K)``.
            ValueError: bad shapes, target indices out of range, NaN / inf in the images or the
                ``(B, K)`` targets (value checks), unusable target layer.
            RuntimeError: called inside this CAM's own ``record()`` block.
        """
        if self._record_active:
            raise RuntimeError(
                f"{type(self).__name__} was called inside its own record() block, whose hook would capture this "
                "call's forward; call it outside the block, or use from_logits() after the block"
            )
        images = _prepare_images(images, self._model)
        size = _check_output_size(output_size, (int(images.shape[-2]), int(images.shape[-1])))
        checked = _check_targets(targets, images.shape[0])
        with _isolated(self._model):
            if images.is_inference():
                images = images.clone()
            if checked is not None and checked.is_inference():
                checked = checked.clone()  # the backward saves the targets (gather index / weights)
            layer = self._resolve_layer(images)
            raw = self._compute_fast(images, checked, layer)
        return finalize_cam(raw, size)

    @contextlib.contextmanager
    def record(self) -> Iterator[BaseCAM]:
        """Capture the target activations of the forward run inside the block (fused mode).

        Deprecated (a ``DeprecationWarning``; removed in 0.5.0): the training forward's
        own CAM evidence is what ``SaliencyAugmenter(..., labels_from="forward")`` reads
        (:class:`salaug.sources.ForwardEvidence`), the one way to use it.

        The block's forward runs exactly as the caller set it up (train mode, grad enabled,
        autocast); nothing is changed but a temporary forward hook. Use :meth:`from_logits`
        afterwards. With ``target_layer=None`` the layer is chosen from this forward. Run exactly one
        forward per block (the target layer must run once; a second forward raises in
        :meth:`from_logits`). For the gradient methods the captured tensor is the layer's output
        object itself (its graph is needed): if the model later modifies it in place (a conv
        followed by ``ReLU(inplace=True)``), the fused CAM sees the modified values, whereas a
        direct call sees the layer's output as produced; pick a layer whose output is not modified
        in place (a block or stage output such as ResNet ``layer4``) when both must agree. EigenCAM
        keeps a copy (with an explicit ``target_layer``) and always agrees.

        Raises:
            TypeError: for methods without a fused mode (ScoreCAM, AblationCAM).
            RuntimeError: for a ``torch.compile``'d model (its compiled forward ignores hooks), or
                when this CAM is already recording (``record()`` blocks do not nest).
        """
        warnings.warn(
            f"{type(self).__name__}.record() / from_logits() are deprecated and will be removed in 0.5.0: for labels "
            "from the training forward use SaliencyAugmenter(..., labels_from='forward'); for maps, call the CAM",
            DeprecationWarning, stacklevel=3,
        )
        if not self.supports_record:
            raise TypeError(
                f"{type(self).__name__} has no fused mode: it needs extra perturbed forwards; call the CAM "
                "directly (cam(images, targets)) or use a gradient method or EigenCAM with record()"
            )
        if self._compiled:
            raise RuntimeError(
                "record() cannot capture activations of a torch.compile'd model (hooks added after compilation are "
                "ignored); call the CAM directly (it runs model._orig_mod eagerly), or build the CAM on the eager "
                "model and run the eager model inside record()"
            )
        if self._record_active:
            raise RuntimeError(
                "record() is already active for this CAM; record() blocks do not nest: leave the first block "
                "(and call from_logits()) before recording again, or use a second CAM object"
            )
        model = self._model
        sizes: list[tuple[int, int]] = []

        def size_hook(_module: nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
            if not sizes and args and isinstance(args[0], Tensor) and args[0].ndim == 4:
                sizes.append((int(args[0].shape[-2]), int(args[0].shape[-1])))

        seen: list[tuple[nn.Module, Tensor]] = []
        capture = None
        with Hooks() as hooks:
            hooks.on_input(model, size_hook)
            if self._layer is not None:
                # EigenCAM needs no graph: it keeps a copy in case the model modifies the output in place
                keep: Keep = "graph" if self.uses_gradients else "copy"
                capture = LayerCapture(self._layer, self._layer_name or type(self._layer).__name__, keep=keep,
                                       tokens_ok=self.reshape is not None)
                capture.attach(hooks)
            else:
                hooks.on_spatial_outputs(model, seen, skip=POOLING_HEADS)
            self._recording = None
            self._record_active = True
            try:
                yield self
            finally:
                self._record_active = False
        acts, calls = (capture.acts, capture.calls) if capture is not None else (None, 0)
        if self._layer is None:
            chosen = pick_recorded_layer(seen)
            if chosen is not None:
                self._layer = chosen[0]
                self._layer_name = next(n for n, m in model.named_modules() if m is chosen[0])
                acts = chosen[1]
        self._recording = {"acts": acts, "size": sizes[0] if sizes else None, "calls": max(calls, 1)}

    def from_logits(
        self,
        logits: Tensor,
        targets: Tensor | int | Sequence[int] | None = None,
        *,
        output_size: tuple[int, int] | int | str | None = None,
    ) -> Tensor:
        """CAMs from the forward captured by :meth:`record` (consumes the recording).

        Gradients come from ``torch.autograd.grad(score, A, retain_graph=True)``: the graph stays
        usable for the caller's ``loss.backward()`` and no parameter ``.grad`` is touched. The maps
        reflect the recorded forward's own mode (train-mode BatchNorm / dropout when training).

        Args:
            logits: ``(B, K)`` output of the recorded forward.
            targets: as for ``__call__``.
            output_size: as for ``__call__``; ``None`` means the recorded input's ``(H, W)``.

        Returns:
            ``(B, 1, H, W)`` float32 in ``[0, 1]``, detached (all zeros for an image whose map
            would hold NaN or inf).

        Raises:
            RuntimeError: nothing recorded, called inside the ``record()`` block, the recorded
                forward ran without gradients, or ``logits`` do not come from it.
            TypeError / ValueError: bad ``logits`` or ``targets``, as for ``__call__``.
        """
        if self._record_active:
            raise RuntimeError(
                "from_logits() was called inside the record() block; call it after the block has closed"
            )
        rec = self._recording
        if rec is None or rec["acts"] is None:
            raise RuntimeError(
                "from_logits() needs a recorded forward: run `with cam.record(): logits = model(x)` first (the target "
                "layer must run inside the block; a torch.compile'd model ignores the hook)"
            )
        self._recording = None
        check_ran_once(rec["calls"], self._layer_name or "?", "inside record() (run exactly one forward per block)")
        acts: Tensor = rec["acts"]
        batch = acts.shape[0]
        size = _check_output_size(output_size, rec["size"])
        checked = _check_targets(targets, batch)
        grads = None
        with no_autocast(acts.device):
            if self.uses_gradients:
                logits = check_logits(logits, batch, recorded=True)
                if not acts.requires_grad:
                    raise RuntimeError(
                        "the recorded forward ran without gradients (torch.no_grad / inference_mode / frozen trunk); "
                        "record a forward with grad enabled, or call the CAM directly"
                    )
                with torch.enable_grad():
                    score = Targets.resolve(checked, logits).score(logits).sum()
                if not score.requires_grad:
                    raise RuntimeError(
                        "from_logits() got logits that do not require grad; pass the output of the forward run "
                        "inside record() (with gradients enabled)"
                    )
                (grads,) = torch.autograd.grad(score, acts, retain_graph=True, allow_unused=True)
                if grads is None:
                    raise RuntimeError(
                        f"the logits do not depend on the activations of target layer {self._layer_name!r} recorded "
                        "inside record(); pass the logits of that same forward (one forward per record() block)"
                    )
            a, g = self._feature_maps(acts.detach(), grads)
            raw = self.combine(a, g)
        return finalize_cam(raw, size)

    # ------------------------------------------------------------------ machinery
    def _compute_fast(self, images: Tensor, targets: Tensor | None, layer: nn.Module) -> Tensor:
        """:meth:`_compute`, on channels-last images on CPU where that layout proved exact enough.

        CPU convolutions (oneDNN) often run faster on channels-last inputs, but on some CPUs their
        backward is less exact (gradients 3e-3 off in relative norm against float64, where the
        contiguous layout gives 4e-7). So the first CPU call computes both layouts and keeps
        channels-last only if its maps agree with the contiguous ones to
        ``LAYOUT_TOLERANCE`` (1e-4); a model that fails on channels-last (e.g. a ``.view()`` of a
        feature map) keeps the contiguous layout.
        """
        if self._channels_last is False or images.device.type != "cpu":
            return self._compute(images, targets, layer)
        if self._channels_last:
            return self._compute(images.contiguous(memory_format=torch.channels_last), targets, layer)
        raw = self._compute(images, targets, layer)
        try:
            trial = self._compute(images.contiguous(memory_format=torch.channels_last), targets, layer)
        except RuntimeError:  # the contiguous layout ran: the failure is the layout's
            self._channels_last = False
        else:
            gap = (finalize_cam(trial, None) - finalize_cam(raw, None)).abs().amax()
            self._channels_last = bool(gap <= LAYOUT_TOLERANCE)  # once per CAM, on CPU: no device sync
        return raw

    def _resolve_layer(self, images: Tensor) -> nn.Module:
        if self._layer is None:
            self._layer_name, self._layer = probe_target_layer(self._model, images)
        return self._layer

    def _feature_maps(self, acts: Tensor, grads: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Apply ``reshape`` and cast to float32: ``(B, C, h, w)`` activations (and gradients)."""
        if self.reshape is not None:
            acts = self.reshape(acts)
            grads = self.reshape(grads) if grads is not None else None
            if not isinstance(acts, Tensor) or acts.ndim != 4:
                got = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
                raise ValueError(f"reshape must return a (B, C, h, w) tensor, got {got}")
        return acts.float(), (grads.float() if grads is not None else None)

    def _capture(self, layer: nn.Module, keep: str, *, stop: bool = False) -> LayerCapture:
        name = self._layer_name or type(layer).__name__
        return LayerCapture(layer, name, keep=keep, stop=stop, tokens_ok=self.reshape is not None)  # type: ignore[arg-type]

    def _forward_with_grad(self, images: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """No-grad trunk, grad-enabled head. Returns the activation leaf and the logits."""
        capture = self._capture(layer, "leaf")
        with Hooks() as hooks, torch.no_grad():
            capture.attach(hooks)
            logits = self._model(images)
        return capture.activations(), check_logits(logits, images.shape[0])

    def _forward_capture(self, images: Tensor, layer: nn.Module, *, stop: bool = False) -> tuple[Tensor, Tensor | None]:
        """No-grad forward capturing the target output; ``stop`` ends the forward right there."""
        capture = self._capture(layer, "copy", stop=stop)
        logits = None
        with Hooks() as hooks, torch.no_grad():
            capture.attach(hooks)
            try:
                logits = self._model(images)
            except StopForward:
                pass
        if capture.acts is None:
            raise RuntimeError(f"target layer {capture.name!r} did not run during the model's forward")
        if stop:
            return capture.acts, None
        return capture.activations(), check_logits(logits, images.shape[0])

    def _compute(self, images: Tensor, targets: Tensor | None, layer: nn.Module) -> Tensor:
        """Raw CAM ``(B, h, w)`` (float32, before ReLU) for a batch; gradient methods by default."""
        leaf, logits = self._forward_with_grad(images, layer)
        with no_autocast(images.device), torch.enable_grad():
            score = Targets.resolve(targets, logits).score(logits).sum()
            if not score.requires_grad:
                raise RuntimeError(f"the logits do not depend on target layer {self._layer_name!r}")
            (grads,) = torch.autograd.grad(score, leaf, allow_unused=True)
            if grads is None:
                raise RuntimeError(f"the logits do not depend on target layer {self._layer_name!r}")
            acts, g = self._feature_maps(leaf.detach(), grads)
            return self.combine(acts, g)

    def combine(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        """Method-specific: ``(B, C, h, w)`` float32 activations (+ gradients) -> ``(B, h, w)``."""
        raise NotImplementedError


def _has_compiled_wrapper(model: nn.Module) -> bool:
    m = model
    for _ in range(8):
        if is_compiled(m):
            return True
        inner = getattr(m, "module", None)
        if not isinstance(inner, nn.Module):
            return False
        m = inner
    return False


def weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """``sum_c w[b, c] * A[b, c]``: ``(B, C)`` x ``(B, C, h, w)`` -> ``(B, h, w)`` (one batched matmul)."""
    b, c, h, w = acts.shape
    return torch.bmm(weights.unsqueeze(1), acts.reshape(b, c, h * w)).view(b, h, w)
