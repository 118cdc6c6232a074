"""The one rule that turns the augmenter's options into a source (``labels_from``, ``cam``, ...)."""

from __future__ import annotations

from torch import nn

from salaug._checks import check_choice, check_float
from salaug.cam.base import BaseCAM
from salaug.sources.base import SaliencySource
from salaug.sources.forward import ForwardEvidence
from salaug.sources.live import ForwardContext, LiveCAM
from salaug.transforms.base import SaliencyTransform

__all__ = ["check_no_cam_options", "resolve_labels_from", "source_from_options"]


def resolve_labels_from(transform: object, labels_from: str, label_blend: object, *, cam: object,
                        cam_scale: object, targets: object, ema_decay: object) -> str:
    """Validate ``labels_from`` / ``label_blend`` and resolve ``"auto"``.

    ``"auto"`` is ``"forward"`` where :meth:`ForwardEvidence.is_default_for` the transform (a SnapMix
    whose labels read saliency: its boxes never do) and every CAM option is at its default, and
    ``"cam"`` otherwise.

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
        source = "forward" if ForwardEvidence.is_default_for(transform) and not set_options else "cam"
    if source == "cam":
        if label_blend is not None:
            raise ValueError("label_blend weighs the forward's evidence; it needs labels_from='forward'")
        return source
    if not ForwardEvidence.serves(transform):
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


def source_from_options(model: nn.Module, transform: SaliencyTransform, *, cam: str | type[BaseCAM] | BaseCAM,
                        target_layer: str | nn.Module | None, cam_scale: float, targets: str,
                        ema_decay: float | None, labels_from: str, label_blend: float | None,
                        forward_context: ForwardContext | None = None) -> SaliencySource:
    """The source the options describe: :class:`ForwardEvidence` or :class:`LiveCAM`."""
    chosen = resolve_labels_from(transform, labels_from, label_blend, cam=cam, cam_scale=cam_scale, targets=targets,
                                 ema_decay=ema_decay)
    if chosen == "forward":
        return ForwardEvidence(model, target_layer, blend=label_blend, forward_context=forward_context)
    return LiveCAM(model, cam, target_layer, cam_scale=cam_scale, targets=targets, ema_decay=ema_decay,
                   forward_context=forward_context)


def check_no_cam_options(**options: object) -> None:
    """Refuse CAM options given together with ``source=`` (they would silently not apply)."""
    defaults = {"cam": "gradcam", "target_layer": None, "cam_scale": 1.0, "targets": "labels", "ema_decay": None,
                "labels_from": "auto", "label_blend": None}
    set_options = [name for name, value in options.items() if value != defaults[name]]
    if set_options:
        raise ValueError(f"source= gives the saliency, so {', '.join(set_options)} cannot apply; build the source with "
                         "them (salaug.sources.LiveCAM(model, cam, target_layer, cam_scale=...)) or drop source=")
