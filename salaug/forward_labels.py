"""Soft labels of a mixed batch from the training forward the user already runs (no extra pass).

A box mix (SnapMix's random boxes, CutMix, ResizeMix) needs no saliency to draw its boxes; only
its label needs to know how much of each object the mixed image shows. :class:`ForwardLabels`
reads that from the model's own forward of the *mixed* batch: it is armed with the batch's label
tensor when the batch is mixed, and fills that tensor **in place** while the user's
``model(images)`` runs, so the loss reads final labels and the user's code does not change::

    images, soft = aug(images, labels)               # soft: area labels until the forward ends
    loss = F.cross_entropy(model(images), soft)      # the forward filled `soft` in place

The rules (``share`` is the partner's label share, ``area`` the pasted box's share of the image):

* **CNNs** (a convolutional target layer): GradCAM maps of the mixed image for the target's class
  (``M_a``) and the partner's class (``M_b``) from the captured activations, ``ReLU(sum_k w_k A_k)``
  with ``w = mean_hw(dS/dA)`` — for a global-average-pool + linear head that is the classic CAM,
  each location's contribution to the class logit, so both classes' maps are in the same units.
  ``cam = e_in / (e_in + e_out)`` with ``e_in`` the partner's evidence inside the pasted box and
  ``e_out`` the target's evidence outside it; the gradients come from ``torch.autograd.grad`` through
  the head only (``retain_graph=True``: the user's backward is unaffected, no ``.grad`` touched).
* **ViTs** (TransMix, Chen et al. 2022): the last block's CLS-to-patch attention (head mean),
  recomputed from that block's captured input; ``cam`` = attention inside the box over the whole row.

``share = blend * cam + (1 - blend) * area`` (``area`` where the model shows no evidence at all or
the numbers are not finite); by default ``blend`` is 1 for the CNN rule and 0.5 for TransMix, then
``labels = (1 - share) * y + share * y[perm]`` on mixed rows. The label arithmetic runs in float32
with autocast off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug.boxes import box_mask
from salaug.cam.attention import attention_input, cls_attention, is_attention, tokens_from_mask, transmix_share
from salaug.cam.base import _no_autocast, weighted_sum
from salaug.cam.hooks import Hooks
from salaug.cam.layers import _POOLING_HEADS, is_compiled, pick_recorded_layer, resolve_target_layer, unwrap_model
from salaug.transforms.base import MixTransform, Params
from salaug.transforms.labels import evidence_share, mix_soft_labels

__all__ = ["ForwardLabels", "pasted_region", "supports_forward_labels"]

#: default blends: the CNN rule uses the evidence alone, TransMix the mean of attention and area
CAM_BLEND = 1.0
ATTENTION_BLEND = 0.5
_BOX_KEYS = ("dst_boxes", "boxes")  # where a box mix keeps the boxes its partner's pixels fill


def supports_forward_labels(transform: object) -> bool:
    """Whether ``transform`` is a box mix whose labels the forward can set.

    The box mixes: SnapMix, SaliencyMix / CutMix, ResizeMix.
    """
    return isinstance(transform, MixTransform) and any(k in transform.required_params for k in _BOX_KEYS)


def pasted_region(params: Params, size: tuple[int, int]) -> Tensor:
    """``(B, 1, H, W)`` float: 1 where a mixed sample shows its partner's pixels, from a box mix's params."""
    key = next((k for k in _BOX_KEYS if k in params), None)
    if key is None:
        raise ValueError(f"forward labels need a box mix's params (one of {_BOX_KEYS}), got keys {sorted(params)}")
    mask = box_mask(params[key], size) & params["applied"].view(-1, 1, 1, 1)
    return mask.float()


class _Pending:
    """One armed batch: where its labels go and what the rule needs."""

    def __init__(self, images: Tensor, out: Tensor, labels: Tensor, params: Params, area: Tensor) -> None:
        self.shape = tuple(images.shape)
        self.out = out
        self.labels = labels.detach().float()
        self.perm = params["perm"]
        self.applied = params["applied"]
        self.region = pasted_region(params, (images.shape[-2], images.shape[-1]))
        self.area = area.float() * self.applied
        self.acts: Tensor | None = None
        self.layer_calls = 0


class ForwardLabels:
    """Fill a mixed batch's soft labels during the model's own forward of it (one forward per step).

    Hooks are added by :meth:`arm` and removed as soon as the labels are filled (or by
    :meth:`cancel`); between batches the model carries none.

    Args:
        model: the classifier being trained (may be wrapped by DDP; hooks go on the inner module).
            The forward that fills the labels is this module's: call it on the images returned.
        target_layer: a convolutional layer (dotted name or module) for the CNN rule, an attention
            module (``nn.MultiheadAttention`` or a timm-style attention with ``qkv``) for the ViT rule,
            or ``None``: the last attention module if the model has one, else the last layer with a
            spatial ``(B, C, h, w)`` output, chosen during the first armed forward.
        blend: weight of the model's evidence against the area share, in ``[0, 1]``; ``None``: ``1.0``
            for the CNN rule (evidence alone), ``0.5`` for the ViT rule (TransMix's mean of both).
        num_prefix_tokens: leading tokens that are not patches (ViT: 1 for CLS).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``blend`` outside ``[0, 1]``; unknown ``target_layer``.
        RuntimeError: a ``torch.compile``'d model (its compiled forward ignores hooks).
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module | None = None, *,
                 blend: float | None = None, num_prefix_tokens: int = 1) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if is_compiled(model) or any(is_compiled(m) for m in model.modules()):
            raise RuntimeError(
                "forward labels read the training forward through hooks, which a torch.compile'd model ignores; "
                "pass the eager model (compile it after building the augmenter is not enough either), or use "
                "labels_from='cam'"
            )
        if blend is not None and (isinstance(blend, bool) or not isinstance(blend, (int, float))
                                  or not 0.0 <= float(blend) <= 1.0):
            raise ValueError(
                f"blend must be a number in [0, 1] (0: area labels, 1: evidence only) or None, got {blend!r}"
            )
        self.model = model
        self._blend = None if blend is None else float(blend)
        self.num_prefix_tokens = int(num_prefix_tokens)
        root = unwrap_model(model)
        self._root = root
        self._layer_name, self._layer = self._resolve(root, target_layer)
        self._hooks = Hooks()
        self._pending: _Pending | None = None
        self._seen: list[tuple[nn.Module, Tensor]] = []

    # ------------------------------------------------------------------ public
    @property
    def kind(self) -> str:
        """``"attention"`` (ViT rule), ``"cam"`` (CNN rule) or ``"auto"`` (CNN layer chosen on the first forward)."""
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
        """Dotted name of the layer read (``None`` until the first forward when chosen automatically)."""
        return self._layer_name

    @property
    def pending(self) -> bool:
        """Whether armed labels are waiting for their forward."""
        return self._pending is not None

    def arm(self, images: Tensor, out: Tensor, labels: Tensor, params: Params, area: Tensor) -> None:
        """Wait for the forward of ``images`` and fill ``out`` then.

        Args:
            images: ``(B, C, H, W)`` the mixed images the caller will run the model on.
            out: ``(B, K)`` float label tensor returned to the caller; overwritten in place.
            labels: ``(B, K)`` the samples' own (unmixed) soft labels.
            params: the box mix's params (``applied``, ``perm`` and its boxes).
            area: ``(B,)`` the partner's area share.

        Raises:
            RuntimeError: the previous batch's labels were never filled (its forward did not run).
        """
        if self._pending is not None:
            shape = self._pending.shape
            self.cancel()
            raise RuntimeError(
                f"the labels of the previous augmented batch {shape} were never filled: its forward did not run "
                f"through {type(self._root).__name__} (or its target layer did not run). Run model(images) on the "
                "images the augmenter returned before augmenting the next batch"
            )
        self._pending = _Pending(images, out, labels, params, area)
        self._hooks.on_input(self._root, self._check_input)
        if self._layer is None:
            self._seen = []
            self._hooks.on_spatial_outputs(self._root, self._seen, skip=_POOLING_HEADS)
            self._hooks.on_output(self._root, self._fill_from_logits)
        elif is_attention(self._layer):
            self._hooks.on_input(self._layer, self._fill_from_attention)
        else:
            self._hooks.on_output(self._layer, self._capture)
            self._hooks.on_output(self._root, self._fill_from_logits)

    def cancel(self) -> None:
        """Drop the armed batch and remove the hooks (its labels keep the area share)."""
        self._hooks.remove()
        self._pending = None
        self._seen = []

    # ------------------------------------------------------------------ hooks
    def _check_input(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pending = self._pending
        x = args[0] if args else next(iter(kwargs.values()), None)
        if pending is None or not isinstance(x, Tensor) or tuple(x.shape) == pending.shape:
            if not torch.is_grad_enabled() and pending is not None:
                self.cancel()
                raise RuntimeError(
                    "the forward of the augmented batch ran without gradients (torch.no_grad / inference_mode); "
                    "forward labels are filled by the training forward: run it with gradients enabled"
                )
            return
        self.cancel()
        raise RuntimeError(
            f"a forward of other inputs {tuple(x.shape)} ran while the labels of the augmented batch {pending.shape} "
            "were waiting for its forward; run model(images) on the images the augmenter returned first"
        )

    def _capture(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        pending = self._pending
        if pending is not None and isinstance(output, Tensor):
            pending.acts = output
            pending.layer_calls += 1

    def _fill_from_logits(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            if self._layer is None:
                self._choose_layer(pending)
            logits = _logits(output, pending)
            acts = _captured(pending, self._layer_name)
            maps_own, maps_partner = self._cam_maps(acts, logits, pending)
            region = F.interpolate(pending.region, size=acts.shape[-2:], mode="area")[:, 0]
            self._fill(pending, evidence_share(maps_own, maps_partner, region, pending.area, self.blend))
        finally:
            self.cancel()

    def _fill_from_attention(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            tokens = attention_input(module, args, kwargs)
            attn = cls_attention(module, tokens, num_prefix_tokens=self.num_prefix_tokens)
            grid = _token_grid(attn.shape[1], pending.shape[-2:])
            with _no_autocast(attn.device):
                share = transmix_share(attn, tokens_from_mask(pending.region, grid), pending.area, self.blend)
            self._fill(pending, share)
        finally:
            self.cancel()

    # ------------------------------------------------------------------ rule
    def _cam_maps(self, acts: Tensor, logits: Tensor, pending: _Pending) -> tuple[Tensor, Tensor]:
        """ReLU'd GradCAM maps ``(B, h, w)`` of the mixed images for their own and their partner's class."""
        if not acts.requires_grad:
            raise RuntimeError(
                f"the activations of {self._layer_name!r} carry no gradient (a forward under torch.no_grad, or a "
                "frozen trunk up to that layer); forward labels need the training forward with gradients"
            )
        if logits.shape[1] != pending.labels.shape[1]:
            raise ValueError(
                f"the model outputs {logits.shape[1]} classes but the labels have {pending.labels.shape[1]}; "
                "set num_classes to the model's number of outputs"
            )
        maps = []
        with _no_autocast(acts.device), torch.enable_grad():
            for weights in (pending.labels, pending.labels[pending.perm]):
                score = (logits.float() * weights).sum()
                (grads,) = torch.autograd.grad(score, acts, retain_graph=True, allow_unused=True)
                if grads is None:
                    raise RuntimeError(f"the logits do not depend on target layer {self._layer_name!r}")
                g, a = grads.detach().float(), acts.detach().float()
                maps.append(F.relu(weighted_sum(g.mean((2, 3)), a)))
        return maps[0], maps[1]

    def _fill(self, pending: _Pending, share: Tensor) -> None:
        labels = mix_soft_labels(pending.labels, pending.perm, share * pending.applied)
        with torch.no_grad():
            pending.out.copy_(labels.to(pending.out.dtype))

    # ------------------------------------------------------------------ layers
    def _resolve(self, root: nn.Module, target_layer: str | nn.Module | None) -> tuple[str | None, nn.Module | None]:
        if target_layer is not None:
            return resolve_target_layer(root, target_layer)
        for name, module in reversed(list(root.named_modules())):
            if is_attention(module):
                return name, module
        return None, None

    def _choose_layer(self, pending: _Pending) -> None:
        chosen = pick_recorded_layer(self._seen)
        if chosen is None:
            raise RuntimeError(
                f"no layer of {type(self._root).__name__} gave a (B, C, h, w) output in the forward; pass target_layer"
            )
        self._layer = chosen[0]
        self._layer_name = next(n for n, m in self._root.named_modules() if m is chosen[0])
        pending.acts, pending.layer_calls = chosen[1], 1


def _logits(output: Any, pending: _Pending) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != pending.shape[0]:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise RuntimeError(f"forward labels need the model to return (B, K) logits for the batch, got {got}")
    return output


def _captured(pending: _Pending, name: str | None) -> Tensor:
    if pending.acts is None:
        raise RuntimeError(f"target layer {name!r} did not run in the forward of the augmented batch")
    if pending.layer_calls != 1:
        raise RuntimeError(f"target layer {name!r} ran {pending.layer_calls} times in one forward; pick a layer "
                           "that runs once (e.g. a stage output such as ResNet's layer4)")
    if pending.acts.ndim != 4:
        raise RuntimeError(f"target layer {name!r} gave {tuple(pending.acts.shape)}; the CNN rule needs (B, C, h, w)")
    return pending.acts


def _token_grid(tokens: int, size: tuple[int, ...]) -> tuple[int, int]:
    """The ``(gh, gw)`` patch grid of ``tokens`` patches over an ``(H, W)`` image (square patches)."""
    h, w = int(size[0]), int(size[1])
    patch = math.sqrt(h * w / tokens)
    gh, gw = round(h / patch), round(w / patch)
    if gh * gw != tokens:
        raise RuntimeError(f"{tokens} patch tokens do not tile a {h}x{w} image with square patches; "
                           "set num_prefix_tokens to the number of non-patch tokens")
    return gh, gw
