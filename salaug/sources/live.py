"""Saliency from a CAM forward of each batch with the model being trained: :class:`LiveCAM`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(8, 4))
    >>> source = LiveCAM(net, "gradcam", target_layer="1", cam_scale=0.5)
    >>> source.saliency(torch.rand(2, 3, 16, 16), torch.tensor([0, 3])).shape
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._checks import check_choice, check_float
from salaug.cam import create_cam
from salaug.cam.base import BaseCAM, eval_mode, model_dtype
from salaug.cam.hooks import Hooks
from salaug.cam.layers import probe_target_layer, unwrap_model
from salaug.ema import ModelEMA
from salaug.sources.base import SaliencySource

__all__ = ["LiveCAM", "ForwardContext"]

ForwardContext = Callable[[], contextlib.AbstractContextManager[Any]]
_TARGETS = ("labels", "predicted")


class LiveCAM(SaliencySource):
    """CAMs of each batch from the model being trained (or its moving average), side-effect free.

    One extra no-grad forward per batch (at ``cam_scale``; channels-last on CPU) plus a backward
    through the head only; module modes, BatchNorm statistics, ``.grad`` and hooks stay as they were.

    Args:
        model: the classifier being trained; may be wrapped by DDP / ``torch.compile`` (the CAM runs
            the inner module).
        cam: a CAM name (``"gradcam"``, ...), a ``BaseCAM`` class, or a CAM object built on ``model``.
        target_layer: dotted name or module inside ``model``; ``None``: the last layer with a spatial
            output, found by a one-image probe of the first full-size batch.
        cam_scale: resolution factor of the CAM forward in ``(0, 1]`` (maps are upsampled).
        targets: ``"labels"`` (CAM of each image's label; ``(B, K)`` labels act as class weights) or
            ``"predicted"``.
        ema_decay: ``None``, or a decay in ``(0, 1)``: CAMs from a moving average of the weights
            (:class:`salaug.ema.ModelEMA`), updated by :meth:`on_step`.
        forward_context: a callable giving the context entered around every forward made here
            (e.g. the trainer's autocast).

    Raises:
        TypeError, ValueError: options of the wrong type or out of range; a CAM object built on
            another model; ``ema_decay`` with a CAM object.
    """

    def __init__(self, model: nn.Module, cam: str | type[BaseCAM] | BaseCAM = "gradcam",
                 target_layer: str | nn.Module | None = None, *, cam_scale: float = 1.0,
                 targets: str = "labels", ema_decay: float | None = None,
                 forward_context: ForwardContext | None = None) -> None:
        check_float("cam_scale", cam_scale, low=0.0, high=1.0, low_open=True)
        self.targets = check_choice("targets", targets, _TARGETS)
        check_float("ema_decay", ema_decay, low=0.0, high=1.0, low_open=True, high_open=True, optional=True)
        if isinstance(cam, BaseCAM):
            _check_cam_model(cam, model)
            if ema_decay is not None:
                raise ValueError(
                    "ema_decay needs to build the CAM on the moving-average copy of the model, which a CAM object "
                    "built on the model does not allow; pass the CAM as a name (cam='gradcam') or class instead"
                )
        self.model = model
        self.cam_spec = cam
        self.layer_spec = target_layer
        self.cam_scale = float(cam_scale)
        self.forward_context: ForwardContext = forward_context or contextlib.nullcontext
        self.ema = ModelEMA(ema_decay) if ema_decay is not None else None
        if self.ema is not None:
            self.ema.check(unwrap_model(model), "LiveCAM")
        # built now when the layer is known, so a wrong name fails here and not at the first batch
        known = isinstance(cam, BaseCAM) or target_layer is not None
        self._cam: BaseCAM | None = create_cam(cam, model, target_layer) if known else None
        self._ema_cam: BaseCAM | None = None
        self._checked_sizes: set[tuple[int, int]] = set()

    @property
    def cam(self) -> BaseCAM | None:
        """The CAM on the live model (``None`` until the first call when the layer is automatic)."""
        return self._cam

    @property
    def ema_model(self) -> nn.Module | None:
        """The moving-average copy of the model (``None`` without ``ema_decay`` or before the first step)."""
        return self.ema.module if self.ema is not None else None

    def on_step(self) -> None:
        """Update the moving average (with ``ema_decay``); called once per training step."""
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model), self.forward_context)

    def saliency(self, images: Tensor, labels: Tensor) -> Tensor:
        """CAMs ``(B, 1, H, W)`` float32 in ``[0, 1]`` of ``images`` at ``cam_scale``, on ``images.device``."""
        self._check_size(images)
        cam = self._live_cam(images)
        if self.ema is not None and self.ema.module is not None:
            if self._ema_cam is None or self._ema_cam.model is not self.ema.module:
                self._ema_cam = create_cam(self.cam_spec, self.ema.module, cam.target_layer_name)
            cam = self._ema_cam
        targets = None if self.targets == "predicted" else (labels if labels.ndim == 1 else labels.float())
        with self.forward_context():
            return cam(self._cam_input(images), targets, output_size=(images.shape[-2], images.shape[-1]))

    def state_dict(self) -> dict[str, Any]:
        """The EMA weights (empty without ``ema_decay``)."""
        state = self.ema.state_dict() if self.ema is not None else None
        return {} if state is None else {"ema": state}

    def load_state_dict(self, state: dict[str, Any], owner: str = "LiveCAM") -> None:
        """Restore :meth:`state_dict` (EMA weights of another architecture are refused)."""
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"], unwrap_model(self.model), owner)

    def __repr__(self) -> str:
        cam = self.cam_spec if isinstance(self.cam_spec, str) else type(self.cam_spec).__name__
        layer = self.layer_spec if isinstance(self.layer_spec, (str, type(None))) else type(self.layer_spec).__name__
        ema = f", ema_decay={self.ema.decay}" if self.ema is not None else ""
        return f"LiveCAM(cam={cam!r}, target_layer={layer!r}, cam_scale={self.cam_scale}{ema})"

    # ------------------------------------------------------------------ machinery
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
                name, _ = probe_target_layer(inner, _as_model_dtype(images[:1], inner))
            self._cam = create_cam(self.cam_spec, self.model, name)
        return self._cam

    def _check_size(self, images: Tensor) -> None:
        """Once per image size: the CAM input is not empty and the target layer keeps two positions."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if size in self._checked_sizes:
            return
        if min(math.floor(n * self.cam_scale) for n in size) < 1:
            raise ValueError(f"cam_scale={self.cam_scale} shrinks the {size[0]}x{size[1]} images to nothing; raise "
                             "cam_scale (1.0 runs the CAM at full size)")
        cam = self._live_cam(images)
        inner = unwrap_model(self.model)
        x = _as_model_dtype(self._cam_input(images[:1]), inner)
        found: list[tuple[int, ...]] = []
        try:
            with Hooks() as hooks, self.forward_context(), torch.no_grad(), eval_mode(inner):
                assert cam.target_layer is not None
                hooks.on_output(cam.target_layer, lambda _m, _a, out: found.append(tuple(out.shape))
                                if isinstance(out, Tensor) else None)
                inner(x)
        except RuntimeError as err:
            if self.cam_scale < 1.0:
                raise ValueError(
                    f"the model failed on the {x.shape[-2]}x{x.shape[-1]} CAM input that cam_scale={self.cam_scale} "
                    f"makes of the {size[0]}x{size[1]} images ({err}); raise cam_scale"
                ) from err
            raise
        if found and len(found[0]) == 4 and found[0][-1] * found[0][-2] <= 1:
            raise ValueError(
                f"at cam_scale={self.cam_scale} the {size[0]}x{size[1]} images become {x.shape[-2]}x{x.shape[-1]} "
                f"CAM inputs, for which target layer {cam.target_layer_name!r} outputs a "
                f"{found[0][-2]}x{found[0][-1]} feature map: a CAM needs at least two positions to point anywhere "
                "(every map would be flat and the transform would place its boxes at random). Raise cam_scale, use "
                "larger images, or choose a target layer before the last downsampling"
            )
        self._checked_sizes.add(size)


def _as_model_dtype(images: Tensor, model: nn.Module) -> Tensor:
    """Images cast to the model's parameter dtype, as the CAM engine casts them."""
    dtype = model_dtype(model)
    return images if dtype is None or images.dtype == dtype else images.to(dtype)


def _check_cam_model(cam: BaseCAM, model: nn.Module) -> None:
    """Refuse a CAM object built on a model other than ``model`` (or one of its submodules)."""
    inner = unwrap_model(model)
    if not any(m is cam.model for m in inner.modules()):
        raise ValueError(
            f"cam={type(cam).__name__}(...) was built on another model ({type(cam.model).__name__}) than the one "
            f"being trained ({type(inner).__name__}): its CAMs would not follow the training. Build it on this "
            f"model ({type(cam).__name__}(model, target_layer)) or pass the method's name (cam='gradcam')"
        )
