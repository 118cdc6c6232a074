"""Labels of a mixed batch from the training forward the user already runs: :class:`ForwardEvidence`.

A box mix (SnapMix's random boxes, CutMix, ResizeMix) needs no saliency to draw its boxes; only
its label needs to know how much of each object the mixed image shows. :class:`ForwardEvidence`
reads that from the model's own forward of the *mixed* batch. Its boxes are drawn flat (no map is
built), and the label tensor it hands back is a :class:`PendingLabels`: it is **filled in place**
when ``model(images)`` runs on the returned images, and until then it cannot be used::

    images, soft = aug(images, labels)              # soft: PendingLabels, waiting for the forward
    loss = F.cross_entropy(model(images), soft)     # the forward filled `soft`; the loss reads it

The rules (``share`` is the partner's label share, ``area`` the pasted box's share of the image):

* **CNNs** (a convolutional target layer): the CAM method's own maps (GradCAM's combine, from the
  captured activations and ``torch.autograd.grad`` through the head with ``retain_graph=True``) for
  each sample's class (``M_a``) and its partner's (``M_b``); ``e_in`` is the partner's evidence
  inside the pasted box, ``e_out`` the sample's outside it, ``cam = e_in / (e_in + e_out)``.
* **ViTs** (TransMix, Chen et al. 2022): the last block's class-token attention (pooled attention
  for a ViT without a class token), recomputed from that block's captured input; ``cam`` is the
  attention inside the box over the whole row.

``share = blend * cam + (1 - blend) * area`` (the area share where the model shows no evidence),
``labels = (1 - share) * y + share * y[perm]`` on mixed rows, in float32 with autocast off.

The protocol cannot go silently wrong:

* a use of the labels before the forward (a copy such as ``soft.double()`` or ``soft.clone()``,
  a loss, a print) raises, naming why they are not filled yet;
* a forward of other images (another batch, a validation step) is ignored: it fills nothing;
* a forward of the mixed images that raises (an out-of-memory a loop recovers from) removes the
  hooks and drops the batch with a warning; its labels then raise if used;
* a forward under ``torch.no_grad`` of the mixed images raises (the evidence needs gradients);
* a batch whose forward never ran is dropped with a warning at the next call (or by
  :meth:`ForwardEvidence.cancel`); the model carries hooks only between a call and its forward.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug.boxes import box_mask
from salaug.cam import create_cam
from salaug.cam.attention import attention_input, cls_attention, is_attention, tokens_from_mask
from salaug.cam.base import BaseCAM, check_logits, eval_mode, no_autocast
from salaug.cam.capture import LayerCapture
from salaug.cam.hooks import Hooks
from salaug.cam.layers import is_compiled, probe_target_layer, resolve_target_layer, unwrap_model
from salaug.sources.base import SaliencySource
from salaug.sources.live import ForwardContext
from salaug.transforms.base import MixTransform, Params, SaliencyTransform, SalientBatch
from salaug.transforms.labels import evidence_share, mix_soft_labels, to_soft_labels, transmix_share
from salaug.transforms.mix import SnapMix

__all__ = ["ForwardEvidence", "PendingLabels", "pasted_region"]

#: default blends: the CNN rule uses the evidence alone, TransMix the mean of attention and area
CAM_BLEND = 1.0
ATTENTION_BLEND = 0.5
_BOX_KEYS = ("dst_boxes", "boxes")  # where a box mix keeps the boxes its partner's pixels fill
_MAX_PREFIX = 16  # class, distillation and register tokens a ViT may put before its patches


def pasted_region(params: Params, size: tuple[int, int]) -> Tensor:
    """``(B, 1, H, W)`` float: 1 where a mixed sample shows its partner's pixels, from a box mix's params."""
    key = next((k for k in _BOX_KEYS if k in params), None)
    if key is None:
        raise ValueError(f"forward labels need a box mix's params (one of {_BOX_KEYS}), got keys {sorted(params)}")
    return (box_mask(params[key], size) & params["applied"].view(-1, 1, 1, 1)).float()


# ---------------------------------------------------------------------------------------------------- labels
_METADATA: set[Any] = {
    Tensor.size, Tensor.dim, Tensor.numel, Tensor.__len__, Tensor.is_floating_point, Tensor.data_ptr,
    Tensor.element_size, Tensor.nelement, Tensor.stride, Tensor.is_contiguous, Tensor.get_device,
    *(getattr(Tensor, name).__get__ for name in ("shape", "ndim", "dtype", "device", "requires_grad", "is_cuda",
                                                 "layout", "is_leaf", "grad_fn")),
}


class PendingLabels(Tensor):
    """A ``(B, K)`` label tensor that the forward of its mixed images fills in place.

    Until then every use that reads its values (a loss, ``.clone()``, ``.double()``, a copy to
    another device, printing) raises a ``RuntimeError`` naming why; shape, dtype and device can be
    read, and ``.to()`` calls that change nothing return the tensor itself. Once filled it is an
    ordinary tensor: every result computed from it is a plain ``torch.Tensor``.
    """

    _salaug_state: str
    _salaug_batch: str
    _salaug_hint: Any

    @staticmethod
    def wrap(labels: Tensor, batch: str, hint: Any = None) -> PendingLabels:
        """``labels`` (its storage, overwritten later) as a waiting :class:`PendingLabels`.

        ``hint``: a callable giving a sentence on what the capture saw so far (for the error).
        """
        out = labels.as_subclass(PendingLabels)
        out._salaug_state, out._salaug_batch, out._salaug_hint = "waiting", batch, hint
        return out

    @property
    def filled(self) -> bool:
        """Whether the forward has written the labels."""
        return self._salaug_state == "filled"

    def _fill(self, labels: Tensor) -> None:
        with torch._C.DisableTorchFunctionSubclass(), torch.no_grad():
            self.copy_(labels.to(self.dtype))
        self._salaug_state, self._salaug_hint = "filled", None  # no reference back to the source

    def _why(self) -> str:
        if self._salaug_state == "dropped":
            return (f"the labels of augmented batch {self._salaug_batch} were dropped: their forward raised, or it "
                    "never ran before the next batch was augmented; augment the batch again")
        seen = self._salaug_hint() if self._salaug_hint is not None and self._salaug_state == "waiting" else ""
        return (f"the labels of augmented batch {self._salaug_batch} are filled by the model's forward of the images "
                f"returned with them, which has not run yet{seen}. Run model(images) first (with gradients, through "
                "the model the augmenter was built on), then use the labels; a copy taken before that forward "
                "(.clone(), .double(), .to(other device)) would hold no labels. Move images and labels to the model's "
                "device before augmenting; a training_step must call self(x), not a submodule. Or pass "
                "labels_from='cam' (a CAM forward of its own, labels ready at once)")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        waiting = [a for a in _tensors(args, kwargs) if isinstance(a, PendingLabels) and not a.filled]
        with torch._C.DisableTorchFunctionSubclass():
            if not waiting or func in _METADATA:
                return func(*args, **kwargs)
            if func in (Tensor.to, Tensor.contiguous, Tensor.float, Tensor.type_as, Tensor.cuda, Tensor.cpu):
                result = func(*args, **kwargs)
                if result is waiting[0]:  # a no-op conversion returns the tensor itself
                    return result
            if func is Tensor.__repr__:
                return f"PendingLabels(shape={tuple(waiting[0].shape)}, {waiting[0]._salaug_state})"
        raise RuntimeError(waiting[0]._why())

    def __deepcopy__(self, memo: dict[int, Any]) -> Tensor:
        if not self.filled:
            raise RuntimeError(self._why())
        with torch._C.DisableTorchFunctionSubclass():
            return self.clone()


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
    found: list[Tensor] = []
    stack: list[Any] = [*args, *kwargs.values()]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


# ---------------------------------------------------------------------------------------------------- source
class _Batch:
    """One armed batch: its images, where its labels go, and what the rule needs."""

    def __init__(self, step: str, images: Tensor, out: PendingLabels, own: Tensor, params: Params,
                 area: Tensor) -> None:
        self.step = step
        self.images = images
        self.out = out
        self.own = own
        self.perm, self.applied = params["perm"], params["applied"]
        self.params = params
        self.area = area.float() * self.applied
        self.in_forward = False   # our root forward is running
        self.entered = False      # our root forward started at least once
        self.calls: list[bool] = []  # the root forwards running now, outermost first: ours or not
        self.tokens: Tensor | None = None


class ForwardEvidence(SaliencySource):
    """Labels completed from the model's own forward of the mixed batch (no pass of its own).

    Args:
        model: the classifier being trained (may be wrapped by DDP; hooks go on the inner module).
            The forward that fills the labels is this module's: call it on the images returned.
        target_layer: a convolutional layer (dotted name or module) for the CNN rule, an attention
            module (``nn.MultiheadAttention`` or a timm-style attention with ``qkv``) for the ViT
            rule, or ``None``: the last attention module if the model has one, else the layer a
            :class:`~salaug.sources.LiveCAM` would choose (the last spatial output, found by the
            same one-image probe on the first batch).
        blend: weight of the model's evidence against the area share, in ``[0, 1]``; ``None``:
            ``1.0`` for the CNN rule, ``0.5`` for the ViT rule (TransMix).
        num_prefix_tokens: ViT tokens before the patches (class, register tokens); ``None`` reads
            the model's ``num_prefix_tokens`` attribute, else infers it from the token count and the
            image size. ``0`` (no class token, global pooling) reads the pooled attention.
        forward_context: a callable giving the context of the first batch's layer probe.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``blend`` outside ``[0, 1]``; an unknown ``target_layer``.
        RuntimeError: a ``torch.compile``'d model (its compiled forward ignores hooks).
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module | None = None, *,
                 blend: float | None = None, num_prefix_tokens: int | None = None,
                 forward_context: ForwardContext | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if is_compiled(model) or any(is_compiled(m) for m in model.modules()):
            raise RuntimeError(
                "forward labels read the training forward through hooks, which a torch.compile'd model ignores; "
                "pass the eager model, or use labels_from='cam'"
            )
        if blend is not None and (isinstance(blend, bool) or not isinstance(blend, (int, float))
                                  or not 0.0 <= float(blend) <= 1.0):
            raise ValueError(f"blend must be a number in [0, 1] (0: area labels, 1: evidence only) or None, "
                             f"got {blend!r}")
        self.model = model
        self._blend = None if blend is None else float(blend)
        self._prefix = num_prefix_tokens
        self.forward_context: ForwardContext = forward_context or contextlib.nullcontext
        self._root = unwrap_model(model)
        self._layer_name: str | None = None
        self._layer: nn.Module | None = None
        if target_layer is not None:
            self._layer_name, self._layer = resolve_target_layer(self._root, target_layer)
        else:
            attention = [(n, m) for n, m in self._root.named_modules() if is_attention(m)]
            self._layer_name, self._layer = attention[-1] if attention else (None, None)
        self._cam: BaseCAM | None = None
        self._hooks = Hooks()
        self._capture: LayerCapture | None = None
        self._batch: _Batch | None = None

    def __repr__(self) -> str:
        return f"ForwardEvidence(target_layer={self._layer_name!r}, blend={self._blend})"

    # ------------------------------------------------------------------ the rule's choice
    @staticmethod
    def serves(transform: object) -> bool:
        """Whether ``transform`` is a box mix whose labels the forward can set (SnapMix, SaliencyMix, ResizeMix)."""
        return isinstance(transform, MixTransform) and any(k in transform.required_params for k in _BOX_KEYS)

    @staticmethod
    def is_default_for(transform: object) -> bool:
        """The ``labels_from="auto"`` rule: a SnapMix with saliency labels (its boxes never read saliency)."""
        return isinstance(transform, SnapMix) and transform.labels == "saliency"

    def check_transform(self, transform: SaliencyTransform) -> None:
        if not self.serves(transform):
            raise ValueError(
                "labels_from='forward' needs a box mix whose labels only depend on the box (SnapMix, SaliencyMix / "
                f"CutMix, ResizeMix), got {type(transform).__name__}; use labels_from='cam' for it"
            )

    @property
    def kind(self) -> str:
        """``"attention"`` (ViT rule), ``"cam"`` (CNN rule) or ``"auto"`` (CNN layer chosen on the first batch)."""
        if self._layer is None:
            return "auto"
        return "attention" if is_attention(self._layer) else "cam"

    @property
    def blend(self) -> float:
        """The weight of the evidence against the area share (the rule's default unless set)."""
        if self._blend is not None:
            return self._blend
        return ATTENTION_BLEND if self.kind == "attention" else CAM_BLEND

    @property
    def target_layer_name(self) -> str | None:
        """Dotted name of the layer read (``None`` until the first batch when chosen automatically)."""
        return self._layer_name

    @property
    def pending(self) -> bool:
        """Whether a batch's labels are waiting for its forward."""
        return self._batch is not None

    # ------------------------------------------------------------------ protocol
    def saliency(self, images: Tensor, labels: Tensor) -> None:
        return None  # the boxes are drawn flat: no map is built

    def labels(self, images: Tensor, labels: Tensor, out: SalientBatch, params: Params,
               transform: SaliencyTransform, step: int | None = None) -> PendingLabels:
        """Arm the capture for the forward of ``out.images``; return its :class:`PendingLabels`."""
        self.check_transform(transform)
        assert isinstance(transform, MixTransform)
        if self._batch is not None:
            warnings.warn(f"the labels of augmented batch {self._batch.step} were never filled: no forward of its "
                          "images ran before the next batch was augmented; that batch is dropped (its labels raise "
                          "if used)", RuntimeWarning, stacklevel=3)
            self.cancel()
        if self._layer is None:
            self._choose_layer(out.images)
        name = f"{step}" if step is not None else "#?"
        size = (out.images.shape[-2], out.images.shape[-1])
        own = to_soft_labels(labels, images.shape[0], out.labels.shape[1], images.device)
        batch = _Batch(name, out.images, PendingLabels.wrap(out.labels, name, self._seen_so_far), own, params,
                       transform.area_share(params, size))
        self._arm(batch)
        return batch.out

    def cancel(self) -> None:
        """Drop the waiting batch (its labels raise if used) and remove every hook."""
        batch, self._batch = self._batch, None
        self._hooks.remove()
        self._capture = None
        if batch is not None and not batch.out.filled:
            batch.out._salaug_state, batch.out._salaug_hint = "dropped", None

    def _seen_so_far(self) -> str:
        batch, capture = self._batch, self._capture
        if batch is None or batch.entered:
            return ""
        root = type(self._root).__name__
        if capture is not None and capture.calls:
            return (f" (target layer {self._layer_name!r} ran, but not inside a forward of {root} itself: a submodule "
                    f"was called on the images, e.g. self.net(x) in a training_step; call {root}'s forward, self(x))")
        return f" (no forward of {root} on these images has started)"

    # ------------------------------------------------------------------ hooks
    def _arm(self, batch: _Batch) -> None:
        self._batch = batch
        assert self._layer is not None and self._layer_name is not None
        self._hooks.on_input(self._root, self._enter)
        if is_attention(self._layer):
            self._hooks.on_input(self._layer, self._keep_tokens)
        else:
            self._capture = LayerCapture(self._layer, self._layer_name, keep="graph")
            self._capture.attach(self._hooks)
        self._hooks.on_output(self._root, self._exit, always=True)

    def _enter(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        batch = self._batch
        if batch is None:
            return
        x = args[0] if args else next(iter(kwargs.values()), None)
        # ours: the mixed images, not nested in our own forward. Any other forward (other images, or
        # one that wraps ours, as Lightning's DDP redirection wraps training_step) fills nothing.
        mine = not batch.in_forward and _same_images(x, batch.images)
        if mine and not torch.is_grad_enabled():
            self.cancel()
            raise RuntimeError(
                "the forward of the augmented batch ran without gradients (torch.no_grad / inference_mode); forward "
                "labels are filled by the training forward: run it with gradients enabled (or pass labels_from='cam')"
            )
        batch.calls.append(mine)
        self._set_capture(mine)
        if mine:
            batch.in_forward = batch.entered = True
            batch.tokens = None
            if self._capture is not None:
                self._capture.reset()

    def _keep_tokens(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        batch = self._batch
        if batch is not None and batch.calls and batch.calls[-1]:
            batch.tokens = attention_input(module, args, kwargs)

    def _exit(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        batch = self._batch
        if batch is None or not batch.calls:
            return
        mine = batch.calls.pop()
        self._set_capture(not batch.calls or batch.calls[-1])  # outside any root forward: a submodule's calls
        if not mine:
            return
        batch.in_forward = False
        if output is None:  # the forward raised (always-called hook): drop the batch, leave no hook
            self.cancel()
            warnings.warn(f"the forward of augmented batch {batch.step} raised; its labels were dropped and the "
                          "hooks removed (augment the next batch as usual)", RuntimeWarning, stacklevel=2)
            return
        try:
            share = self._attention_share(batch) if self.kind == "attention" else self._cam_share(batch, output)
            batch.out._fill(mix_soft_labels(batch.own, batch.perm, share * batch.applied))
        finally:
            self.cancel()

    def _set_capture(self, enabled: bool) -> None:
        if self._capture is not None:
            self._capture.enabled = enabled

    # ------------------------------------------------------------------ rules
    def _cam_share(self, batch: _Batch, output: Any) -> Tensor:
        assert self._capture is not None
        logits = check_logits(output, batch.own.shape[0])
        if logits.shape[1] != batch.own.shape[1]:
            raise ValueError(f"the model outputs {logits.shape[1]} classes but the labels have {batch.own.shape[1]}; "
                             "set num_classes to the model's number of outputs")
        acts = self._capture.activations("in the forward of the augmented batch")
        h, w = acts.shape[-2:]
        if h * w <= 1:
            warnings.warn(f"target layer {self._layer_name!r} gives a 1x1 map for these "
                          f"{tuple(batch.images.shape[-2:])} images: there is nowhere to point, so the forward "
                          "labels are the area labels; choose a layer before the last downsampling",
                          RuntimeWarning, stacklevel=3)
        cam = self._method()
        maps = []
        with no_autocast(acts.device), torch.enable_grad():
            for weights in (batch.own, batch.own[batch.perm]):
                grads = self._capture.gradients((logits.float() * weights).sum(), retain_graph=True)
                maps.append(F.relu(cam.combine(acts.detach().float(), grads.detach().float())))
        size = (batch.images.shape[-2], batch.images.shape[-1])
        region = F.interpolate(pasted_region(batch.params, size), size=(h, w), mode="area")[:, 0]
        return evidence_share(maps[0], maps[1], region, batch.area, self.blend)

    def _attention_share(self, batch: _Batch) -> Tensor:
        if batch.tokens is None:
            raise RuntimeError(f"attention module {self._layer_name!r} did not run in the forward of the augmented "
                               "batch")
        assert self._layer is not None
        size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        prefix, grid = self._token_layout(batch.tokens, size)
        attn = cls_attention(self._layer, batch.tokens, num_prefix_tokens=prefix)
        with no_autocast(attn.device):
            return transmix_share(attn, tokens_from_mask(pasted_region(batch.params, size), grid), batch.area,
                                  self.blend)

    def _token_layout(self, tokens: Tensor, size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """``(num_prefix_tokens, (gh, gw))``: the model's own count, or the first that tiles the image."""
        assert self._layer is not None
        length = int(tokens.shape[1] if getattr(self._layer, "batch_first", True) else tokens.shape[0])
        known = self._prefix if self._prefix is not None else getattr(self._root, "num_prefix_tokens", None)
        for prefix in ([int(known)] if isinstance(known, int) else range(_MAX_PREFIX + 1)):
            grid = _square_grid(length - prefix, size)
            if grid is not None:
                return prefix, grid
        raise RuntimeError(
            f"the {length} tokens of {self._layer_name!r} do not tile a {size[0]}x{size[1]} image with square patches "
            f"after {known if known is not None else 'any number of'} prefix tokens; pass num_prefix_tokens to "
            "ForwardEvidence, or labels_from='cam' with a CAM target layer"
        )

    def _method(self) -> BaseCAM:
        if self._cam is None:
            self._cam = create_cam("gradcam", self._root, self._layer)
        return self._cam

    def _choose_layer(self, images: Tensor) -> None:
        with self.forward_context(), eval_mode(self._root):
            self._layer_name, self._layer = probe_target_layer(self._root, images[:1])


def _same_images(x: object, images: Tensor) -> bool:
    """Whether ``x`` is the mixed batch: the same tensor, a view of it, or a copy of it (checked on values)."""
    if not isinstance(x, Tensor) or x.shape != images.shape:
        return False
    if x is images or (x.data_ptr() == images.data_ptr() and x.stride() == images.stride() and x.dtype == images.dtype):
        return True
    # a copy (another layout, dtype or device): compared on values; costs one read, only on this path
    other = x.detach().to(device=images.device, dtype=torch.float32)
    return bool(torch.allclose(other, images.detach().float(), rtol=1e-2, atol=1e-3))


def _square_grid(tokens: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """The ``(gh, gw)`` grid of ``tokens`` square patches over an ``(H, W)`` image, or ``None``."""
    if tokens <= 0:
        return None
    h, w = size
    patch = math.sqrt(h * w / tokens)
    gh, gw = round(h / patch), round(w / patch)
    return (gh, gw) if gh * gw == tokens and gh and gw and h % gh == 0 and w % gw == 0 else None
