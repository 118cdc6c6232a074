"""DemoNet checkpoints that carry what the diagnosis needs (image size, channels, classes, width).

:func:`demo_checkpoint` is what ``salaug demo`` saves; :func:`load_demo_model` rebuilds the model
from it (or from a bare state dict, or a Lightning checkpoint) and reports the recorded image
size, so that ``salaug diagnose`` can refuse a mismatched ``--size``. No Lightning import.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug.models import DemoNet

__all__ = ["IMAGE_SIZES", "DemoCheckpoint", "check_demo_image_size", "check_image_size", "demo_checkpoint",
           "demo_model_from_state", "load_demo_model", "train_demo_model"]

#: The image sides, in pixels, the demo's data (ClutteredObjects) is drawn at here: the sides a
#: DemoNet checkpoint may record and ``salaug demo`` / ``salaug diagnose --size`` accept (one rule).
IMAGE_SIZES = (16, 512)

_META = "salaug"
_PREFIXES = ("_orig_mod.", "module.", "model.", "net.")


@dataclass(frozen=True)
class DemoCheckpoint:
    """A rebuilt :class:`salaug.models.DemoNet` and what its checkpoint records.

    Attributes:
        model: the model, in eval mode, on CPU.
        image_size: the training image side in pixels, or ``None`` (a bare state dict: unknown).
        num_classes: output logits.
        width: the first block's channels.
        in_channels: input channels (3).
        metadata: the checkpoint's whole ``"salaug"`` entry (e.g. ``class_names``, ``method``;
            empty for a bare state dict).
    """

    model: DemoNet
    image_size: int | None
    num_classes: int
    width: int
    in_channels: int = 3
    metadata: Mapping[str, Any] = field(default_factory=dict)


def check_demo_image_size(size: object, what: str = "image_size") -> int:
    """The one rule for a demo image side: an int in :data:`IMAGE_SIZES`.

    Args:
        size: the side to check.
        what: how the message names it (``"image_size"``, ``"--size"``, ...).

    Returns:
        ``size``.

    Raises:
        ValueError: ``size`` is not an int in range (the message names ``what`` and the range).

    Example:
        >>> check_demo_image_size(32)
        32
        >>> check_demo_image_size(8)
        Traceback (most recent call last):
        ...
        ValueError: image_size must be an integer in [16, 512] (ClutteredObjects draws 16 to 512 px images here), got 8
    """
    lo, hi = IMAGE_SIZES
    if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}] (ClutteredObjects draws {lo} to {hi} px images "
                         f"here), got {size!r}")
    return size


def demo_checkpoint(model: DemoNet, image_size: int) -> dict[str, Any]:
    """What to ``torch.save`` for a :class:`~salaug.models.DemoNet`: its state dict and its metadata.

    Args:
        model: the trained model.
        image_size: the side in pixels of its training images.

    Returns:
        ``{"state_dict": ..., "salaug": {"model": "DemoNet", "image_size", "in_channels",
        "num_classes", "width"}}`` (tensors and plain values: loads with ``weights_only=True``).

    Example:
        >>> ckpt = demo_checkpoint(DemoNet(num_classes=4, width=8), 32)
        >>> ckpt["salaug"]
        {'model': 'DemoNet', 'image_size': 32, 'in_channels': 3, 'num_classes': 4, 'width': 8}
        >>> load_demo_model(ckpt).image_size
        32
    """
    if not isinstance(model, DemoNet):
        raise TypeError(f"model must be a salaug.models.DemoNet, got {type(model).__name__}")
    check_demo_image_size(image_size)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    head, first = model.head[2], model.features[0]
    assert isinstance(head, torch.nn.Linear) and isinstance(first, torch.nn.Conv2d)
    return {"state_dict": state, _META: {"model": "DemoNet", "image_size": image_size, "in_channels": 3,
                                         "num_classes": head.out_features, "width": first.out_channels}}


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_demo_model(checkpoint: Mapping[str, Any]) -> DemoCheckpoint:
    """Rebuild :class:`~salaug.models.DemoNet` from what ``torch.load(path, weights_only=True)`` returned.

    Accepts the dict of :func:`demo_checkpoint`, a Lightning checkpoint (``{"state_dict": ...}``;
    image size unknown) or a bare state dict (image size unknown). Keys prefixed by a wrapper
    (``model.``, ``module.``, ``_orig_mod.``, ``net.``) are accepted. Width and classes are read
    from the weights' shapes (and checked against the metadata when present).

    Args:
        checkpoint: the loaded mapping.

    Returns:
        A :class:`DemoCheckpoint`.

    Raises:
        TypeError: ``checkpoint`` is not a mapping of tensors.
        ValueError: weights that do not fit a DemoNet, naming the first missing or unexpected key
            or the first mismatched shape; an entry that is not a tensor; metadata that
            contradicts the weights.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a mapping (a state dict or a checkpoint dict), got "
                        f"{type(checkpoint).__name__}")
    meta = checkpoint.get(_META) if isinstance(checkpoint.get(_META), Mapping) else None
    state = checkpoint["state_dict"] if isinstance(checkpoint.get("state_dict"), Mapping) else checkpoint
    state = _strip_prefix({k: v for k, v in state.items() if k != _META})
    fix = "for another architecture call salaug.diagnose(model, loader) from Python"
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"the checkpoint entry {bad[0]!r} is not a tensor; give a state dict (torch.save("
                        "model.state_dict(), path))")
    try:
        num_classes = int(state["head.2.weight"].shape[0])
        width = int(state["features.0.weight"].shape[0])
    except (KeyError, IndexError) as exc:
        raise ValueError(f"the weights do not fit salaug.models.DemoNet: missing key {exc.args[0]!r}; {fix}") from None
    model = DemoNet(num_classes=num_classes, width=width)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        more = len(missing) + len(unexpected) - 1
        raise ValueError(f"the weights do not fit salaug.models.DemoNet: {what}"
                         f"{f' (and {more} more)' if more else ''}; {fix}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"the weights do not fit salaug.models.DemoNet: {k!r} has shape {tuple(state[k].shape)}, "
                             f"expected {tuple(v.shape)}; {fix}")
    model.load_state_dict(state)
    image_size = None
    if meta is not None:
        for key, value in (("num_classes", num_classes), ("width", width)):
            if key in meta and meta[key] != value:
                raise ValueError(f"the checkpoint's metadata says {key}={meta[key]!r} but its weights have {value}; "
                                 "the file is inconsistent: save it again with salaug.diagnosis.demo_checkpoint")
        size = meta.get("image_size")
        image_size = None if size is None else check_demo_image_size(size, "the checkpoint's metadata image_size")
    return DemoCheckpoint(model=model.eval(), image_size=image_size, num_classes=num_classes, width=width,
                          metadata=dict(meta) if meta is not None else {})


def demo_model_from_state(state: Mapping[str, Any]) -> DemoNet:
    """The model of :func:`load_demo_model` (for callers that do not need the metadata)."""
    return load_demo_model(state).model


def check_image_size(checkpoint: DemoCheckpoint, size: int | None) -> int:
    """The image side to diagnose a checkpoint at: refuses a size that does not match (or cannot be checked).

    Args:
        checkpoint: from :func:`load_demo_model`.
        size: the side asked for (``--size``), or ``None`` for the recorded one.

    Returns:
        The side in pixels.

    Raises:
        ValueError: ``size`` differs from the recorded side, or neither is known (one line naming ``--size``).

    Example:
        >>> ckpt = load_demo_model(demo_checkpoint(DemoNet(num_classes=4, width=8), 32))
        >>> check_image_size(ckpt, None), check_image_size(ckpt, 32)
        (32, 32)
    """
    recorded = checkpoint.image_size
    if recorded is None:
        if size is None:
            raise ValueError("the checkpoint does not record its training image size; pass --size (the side of the "
                             "images it was trained on)")
        return check_demo_image_size(size, "--size")
    if size is not None and size != recorded:
        raise ValueError(f"--size {size} does not match the checkpoint's training image size {recorded}; drop --size "
                         f"or pass --size {recorded}")
    return recorded


def train_demo_model(train_loader: Iterable[Any], *, num_classes: int = 10, epochs: int = 4, lr: float = 3e-3,
                     width: int = 16, device: torch.device | str = "cpu", progress: bool = True) -> DemoNet:
    """Train :class:`~salaug.models.DemoNet` briefly with a plain loop (AdamW, one-cycle schedule).

    Args:
        train_loader: batches ``(images, labels, ...)``; must have a ``len``.
        num_classes: output logits.
        epochs: passes over the loader (0: the untrained model).
        lr: peak learning rate.
        width: the model's base width.
        device: where to train.
        progress: print the mean loss per epoch to stderr.

    Returns:
        The model in eval mode.
    """
    model = DemoNet(num_classes=num_classes, width=width).to(device)
    if epochs == 0:
        return model.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * len(train_loader)  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        total = torch.zeros((), device=device)
        for x, y, *_ in train_loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        if progress:
            mean = float(total) / len(train_loader)  # type: ignore[arg-type]
            print(f"epoch {epoch + 1}/{epochs}: mean loss {mean:.3f}", file=sys.stderr, flush=True)
    return model.eval()


