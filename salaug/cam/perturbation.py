"""Perturbation CAMs: ScoreCAM and AblationCAM, batched across images *and* channels.

Both need ``B * C`` extra forwards (one per image and channel of the target layer). They run in
chunks of ``batch_size`` rows, each row being one (image, channel) pair, so a chunk mixes images
and no Python loop runs per image or per channel. Everything stays on the images' device; scores
are gathered in float32 without host syncs. Like every CAM here the forwards run in eval mode
without gradients and leave the model as they found it. No fused mode: ``record()`` raises.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2))
    >>> ScoreCAM(net, "1", batch_size=8)(torch.rand(2, 3, 8, 8)).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug.cam.base import BaseCAM, Targets, no_autocast, weighted_sum
from salaug.cam.hooks import Hooks

__all__ = ["AblationCAM", "ScoreCAM"]


class _PerturbationCAM(BaseCAM):
    uses_gradients = False
    supports_record = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module | None = None,
        *,
        reshape: Callable[[Tensor], Tensor] | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int (forwards per chunk), got {batch_size!r}")
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", batch_size={self.batch_size})"

    def _chunks(self, total: int, device: torch.device) -> list[Tensor]:
        rows = torch.arange(total, device=device)
        return list(rows.split(self.batch_size))


class ScoreCAM(_PerturbationCAM):
    """Score-CAM (Wang et al. 2020), matching pytorch-grad-cam 1.5.7.

    For every image ``b`` and channel ``c``: upsample ``A_bc`` to the input size (bilinear,
    ``align_corners=True``, like pytorch-grad-cam's ``UpsamplingBilinear2d``), min-max it
    (``+1e-8``), forward ``images_b * mask``, read the target score ``s_bc``. Weights are
    ``softmax_c(s_b)``; ``cam = ReLU(sum_c w_c A_c)`` at feature resolution, then the usual
    normalisation and resize (so the maps agree with pytorch-grad-cam to float rounding).

    Args:
        model, target_layer, reshape: see :class:`~salaug.cam.base.BaseCAM`.
        batch_size: masked forwards per chunk (bounds memory: one chunk holds
            ``batch_size`` masked copies of an image).

    Call: ``(B, C, H, W)`` images -> ``(B, 1, H, W)`` float32 in ``[0, 1]``.
    """

    name = "scorecam"

    def _compute(self, images: Tensor, targets: Tensor | None, layer: nn.Module) -> Tensor:
        acts, logits = self._forward_capture(images, layer)
        assert logits is not None
        with no_autocast(images.device):
            tgt = Targets.resolve(targets, logits)
            a, _ = self._feature_maps(acts, None)
        b, c, h, w = a.shape
        size = images.shape[-2:]
        flat = a.reshape(b * c, 1, h, w)
        scores = torch.empty(b * c, device=a.device, dtype=torch.float32)
        with torch.no_grad():
            for rows in self._chunks(b * c, a.device):
                img = torch.div(rows, c, rounding_mode="floor")
                with no_autocast(images.device):
                    mask = F.interpolate(flat.index_select(0, rows), size=size, mode="bilinear", align_corners=True)
                    flat_mask = mask.flatten(1)
                    lo, hi = flat_mask.amin(dim=1), flat_mask.amax(dim=1)
                    mask = (mask - lo.view(-1, 1, 1, 1)) / (hi - lo + 1e-8).view(-1, 1, 1, 1)
                out = self._model(images.index_select(0, img) * mask.to(images.dtype))
                scores[rows] = tgt.score(out, img)
        with no_autocast(images.device):
            weights = torch.softmax(scores.view(b, c), dim=1)
            return weighted_sum(weights, a)


class AblationCAM(_PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020), matching pytorch-grad-cam 1.5.7.

    For every image ``b`` and channel ``c``, the target layer's output is replaced (by a forward
    hook) with image ``b``'s activations where channel ``c`` is set to the *ablation value*, and the
    rest of the network re-runs; ``w_c = (s - s_c) / s`` with ``s`` the original target score.
    ``cam = ReLU(sum_c w_c A_c)``, then the usual normalisation. Where ``s == 0`` (pytorch-grad-cam
    divides by zero and returns NaN) the weights are the raw drops ``s - s_c``: dividing by ``s``
    only rescales (and, for ``s < 0``, flips) an image's map, and a zero score has neither.

    Ablation value: ``0`` when the image's activations have minimum exactly 0 (post-ReLU layers,
    the common case, identical to pytorch-grad-cam), otherwise ``min - 1e7`` like
    pytorch-grad-cam. Deviation: pytorch-grad-cam re-reads the minimum after each in-place
    ablation, so in that second case its value drifts by another ``-1e7`` per channel of a chunk;
    here every channel gets the same ``min - 1e7`` (its result with ``batch_size=1``).

    **Trunk once** (``trunk_once=True``, default): the layers before the target never run per
    ablated copy (pytorch-grad-cam re-runs the whole model for every one). The hook replaces the
    target output with a chunk of ``n`` ablated rows and only the rest of the network runs on
    them, while the trunk runs on a single image:

    * **across images** (the fast path): when the rest of the network depends on nothing but the
      target output (the usual case: a whole stage or the last block as target), a chunk mixes
      (image, channel) rows of *all* images and the trunk runs on one image per chunk. This is
      checked once per CAM (one host sync, on the first call): the rest re-run on the batch's own
      activations behind a one-image trunk must reproduce the batch's logits;
    * **per image** otherwise (e.g. a target inside a residual block, whose shortcut the model
      carries from before the target): a chunk holds up to ``batch_size`` channels of one image,
      the trunk runs on that image, and its carried tensors (batch 1) broadcast against the
      ``n`` rows, which is exactly the per-row result in eval mode.

    If the model's code does not broadcast (a shape error, or logits whose batch is not ``n``),
    the engine falls back, for that call, to running the whole model on the ``n`` repeated
    images; other errors (out of memory included) propagate. ``trunk_once=False`` always runs
    the whole model per row.

    Args:
        model, target_layer: see :class:`~salaug.cam.base.BaseCAM`. ``reshape`` is not supported
            (ablating token outputs needs the inverse reshape): passing it raises ``ValueError``.
        batch_size: ablated forwards per chunk.
        trunk_once: run the layers before the target once per chunk (see above).

    Call: ``(B, C, H, W)`` images -> ``(B, 1, H, W)`` float32 in ``[0, 1]``.
    """

    name = "ablationcam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module | None = None,
        *,
        reshape: Callable[[Tensor], Tensor] | None = None,
        batch_size: int = 64,
        trunk_once: bool = True,
    ) -> None:
        if reshape is not None:
            raise ValueError(
                "AblationCAM does not support reshape= (token outputs); use ScoreCAM or a gradient CAM for ViTs"
            )
        super().__init__(model, target_layer, reshape=reshape, batch_size=batch_size)
        self.trunk_once = bool(trunk_once)
        self._shared_trunk: dict[int, bool] = {}  # id(target layer) -> the across-images path is exact

    def _compute(self, images: Tensor, targets: Tensor | None, layer: nn.Module) -> Tensor:
        acts, logits = self._forward_capture(images, layer)
        assert logits is not None
        with no_autocast(images.device):
            tgt = Targets.resolve(targets, logits)
            original = tgt.score(logits)  # (B,)
        b, c = acts.shape[:2]
        low = acts.flatten(1).amin(dim=1)
        value = torch.where(low == 0, torch.zeros_like(low), low - 1e7)  # (B,), acts.dtype
        pending: dict[str, Tensor] = {}

        def replace(_module: nn.Module, _inputs: Any, _output: Any) -> Tensor:
            return pending["acts"]

        try:
            with Hooks() as hooks, torch.no_grad():
                hooks.on_output(layer, replace)
                ablated = None
                if self.trunk_once:
                    if b > 1 and self._trunk_is_shared(images, acts, logits, layer, pending):
                        ablated = self._ablate_across_images(images, acts, value, tgt, pending)
                    else:
                        ablated = self._ablate_trunk_once(images, acts, value, tgt, pending)
                if ablated is None:
                    ablated = self._ablate_full(images, acts, value, tgt, pending)
        finally:
            pending.clear()
        with no_autocast(images.device):
            # a zero score has no scale and no sign to divide by: its weights are the raw drops
            s = original.unsqueeze(1)
            weights = (s - ablated.view(b, c)) / torch.where(s == 0, torch.ones_like(s), s)
            a, _ = self._feature_maps(acts, None)
            return weighted_sum(weights, a)

    def _ablate_full(
        self, images: Tensor, acts: Tensor, value: Tensor, tgt: Targets, pending: dict[str, Tensor]
    ) -> Tensor:
        """Chunks of ``batch_size`` (image, channel) rows across images; the whole model per row."""
        out = self._ablate_rows(acts, value, tgt, pending, lambda img: images.index_select(0, img), tolerant=False)
        assert out is not None
        return out

    def _ablate_rows(
        self,
        acts: Tensor,
        value: Tensor,
        tgt: Targets,
        pending: dict[str, Tensor],
        inputs: Callable[[Tensor], Tensor],
        tolerant: bool,
    ) -> Tensor | None:
        """Chunks of ``batch_size`` (image, channel) rows across images; the model runs on
        ``inputs(image index of each row)`` while the hook feeds the chunk's ablated rows.

        With ``tolerant``, returns ``None`` when the model does not broadcast its input against the chunk.
        """
        b, c = acts.shape[:2]
        ablated = torch.empty(b * c, device=acts.device, dtype=torch.float32)
        for rows in self._chunks(b * c, acts.device):
            img = torch.div(rows, c, rounding_mode="floor")
            chan = rows - img * c
            rep = acts.index_select(0, img)  # a copy
            n = rows.shape[0]
            rep[torch.arange(n, device=rep.device), chan] = value.index_select(0, img).view(n, 1, 1)
            pending["acts"] = rep
            if not tolerant:
                ablated[rows] = tgt.score(self._model(inputs(img)), img)
                continue
            out = _run_or_none(self._model, inputs(img))
            if out is None or not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != n:
                return None
            ablated[rows] = tgt.score(out, img)
        return ablated

    def _trunk_is_shared(
        self, images: Tensor, acts: Tensor, logits: Tensor, layer: nn.Module, pending: dict[str, Tensor]
    ) -> bool:
        """Whether the rest of the network reads nothing but the target output (cached per layer).

        Re-runs the rest on the batch's own activations behind a one-image trunk; the across-images
        path is exact iff that reproduces the batch's logits (one host sync, on the first call).
        """
        key = id(layer)
        if key not in self._shared_trunk:
            pending["acts"] = acts.clone()  # the rest of the network may modify it in place (ReLU(inplace=True))
            try:
                out = self._model(images[:1])
            except RuntimeError as err:
                if not _is_shape_error(err):
                    raise
                out = None
            ok = isinstance(out, Tensor) and out.shape == logits.shape
            if ok:
                ref = logits.float()
                tol = (1e-4 if logits.dtype == torch.float32 else 1e-2) * float(ref.abs().amax().clamp_min(1.0))
                ok = bool(((out.float() - ref).abs() <= tol).all())
            self._shared_trunk[key] = ok
        return self._shared_trunk[key]

    def _ablate_across_images(
        self, images: Tensor, acts: Tensor, value: Tensor, tgt: Targets, pending: dict[str, Tensor]
    ) -> Tensor | None:
        """Chunks of ``batch_size`` (image, channel) rows across images; the trunk on one image.

        Returns ``None`` when the model does not broadcast a batch-1 trunk against the chunk.
        """
        first = images[:1]
        return self._ablate_rows(acts, value, tgt, pending, lambda _img: first, tolerant=True)

    def _ablate_trunk_once(
        self, images: Tensor, acts: Tensor, value: Tensor, tgt: Targets, pending: dict[str, Tensor]
    ) -> Tensor | None:
        """Chunks of up to ``batch_size`` channels of one image; the trunk runs on that image once.

        Returns ``None`` when the model does not broadcast a batch-1 trunk against the chunk.
        """
        b, c = acts.shape[:2]
        ablated = torch.empty(b * c, device=acts.device, dtype=torch.float32)
        for i in range(b):
            img = torch.full((1,), i, device=acts.device, dtype=torch.long)
            for c0 in range(0, c, self.batch_size):
                n = min(self.batch_size, c - c0)
                chan = torch.arange(c0, c0 + n, device=acts.device)
                rep = acts[i : i + 1].expand(n, *acts.shape[1:]).clone()
                rep[torch.arange(n, device=rep.device), chan] = value[i : i + 1].view(1, 1, 1)
                pending["acts"] = rep
                out = _run_or_none(self._model, images[i : i + 1])
                if out is None or not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != n:
                    return None
                ablated[i * c + c0 : i * c + c0 + n] = tgt.score(out, img.expand(n))
        return ablated


_SHAPE_ERROR = re.compile(r"size|shape|dimension|broadcast|expand|must match|mat1 and mat2", re.IGNORECASE)


def _is_shape_error(err: RuntimeError) -> bool:
    """Whether ``err`` is a batch-shape mismatch (what a model that does not broadcast raises), not
    an out-of-memory or any other failure, which must propagate."""
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return False
    return bool(_SHAPE_ERROR.search(str(err)))


def _run_or_none(model: nn.Module, x: Tensor) -> Any:
    """``model(x)``, or ``None`` when it fails on a batch-shape mismatch (other errors propagate)."""
    try:
        return model(x)
    except RuntimeError as err:
        if not _is_shape_error(err):
            raise
        return None
