"""Resolve the target layer of a CAM, unwrap models, reshape token outputs.

A target layer is given as

* a dotted name relative to the model: ``"layer4"``, ``"features.28"``, ``"net.layer4"``; integer
  parts index ``nn.Sequential`` / ``nn.ModuleList`` children and may be negative
  (``"features.-1"`` is the last block of ``features``);
* an ``nn.Module`` that lives inside the model;
* ``None``: the **last module, in execution order, whose output is a 4-D ``(B, C, h, w)`` tensor
  with more than one spatial position** and that runs once per forward (a reused module, such as
  a block's shared ReLU, is no target; adaptive pooling layers are skipped, so VGG resolves to
  ``features`` rather than its ``avgpool``). It is found by a probe forward of one image, in eval
  mode and without gradients, on the first call (or by watching the first ``record()`` forward).
  Because a container's forward hook fires after its children's, a ResNet resolves to ``layer4``
  and a MobileNet to ``features``, the layers the CAM literature uses.

Token models (ViT) need an explicit layer and a ``reshape`` callable such as :func:`vit_reshape`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from salaug.cam.hooks import Hooks

__all__ = ["unwrap_model", "resolve_target_layer", "probe_target_layer", "vit_reshape", "is_compiled"]

POOLING_HEADS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper (``OptimizedModule``)."""
    return hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the eager module behind ``torch.compile`` / ``DataParallel`` / ``DistributedDataParallel``.

    Forward hooks added to a compiled model after compilation are ignored by PyTorch, so the CAM
    engine runs the original module (``model._orig_mod``) eagerly; the parameters are shared.

    Args:
        model: any ``nn.Module``.

    Returns:
        The innermost wrapped module (``model`` itself when it is not a wrapper).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    seen = 0
    while seen < 8:
        seen += 1
        compiled = getattr(model, "_orig_mod", None)  # set by torch.compile's OptimizedModule
        if isinstance(compiled, nn.Module):
            model = compiled
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            break
    return model


def _walk(model: nn.Module, name: str) -> nn.Module | None:
    module = model
    for part in name.split("."):
        if part == "":
            return None
        child = module._modules.get(part)
        if child is None and isinstance(module, (nn.Sequential, nn.ModuleList)):
            try:
                index = int(part)
            except ValueError:
                return None
            try:
                child = module[index]
            except IndexError:
                return None
        if child is None:
            return None
        module = child
    return module


def resolve_target_layer(
    model: nn.Module, target_layer: str | nn.Module, *, wrapper: nn.Module | None = None
) -> tuple[str, nn.Module]:
    """Find the target layer inside ``model``.

    Args:
        model: the (unwrapped) model.
        target_layer: dotted name or a module inside ``model``.
        wrapper: the object the user passed (e.g. a compiled model); names such as
            ``"_orig_mod.layer4"`` are also tried against it.

    Returns:
        ``(name, module)``; the name is ``""`` for the model itself.

    Raises:
        ValueError: unknown name (the closest names are listed) or a module not inside ``model``.
        TypeError: ``target_layer`` is neither a string nor a module.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_target_layer(net, "-1")[0]
        '1'
    """
    if isinstance(target_layer, str):
        module = _walk(model, target_layer)
        if module is None and wrapper is not None and wrapper is not model:
            module = _walk(wrapper, target_layer)
        # a module reached through the wrapper only counts if it is inside the model
        name = None if module is None else _name_of(model, module)
        if module is None or name is None:
            names = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(target_layer, names, n=5, cutoff=0.5)
            hint = f"; closest: {close}" if close else ""
            last = names[-5:] if names else []
            raise ValueError(
                f"target_layer {target_layer!r} is not a submodule of {type(model).__name__}{hint} "
                f"(the model has {len(names)} named submodules, the last ones are {last})"
            )
        return name, module
    if isinstance(target_layer, nn.Module):
        name = _name_of(model, target_layer)
        if name is None:
            raise ValueError(
                f"target_layer {type(target_layer).__name__} is not a submodule of {type(model).__name__}; "
                "pass a module taken from this model (e.g. model.layer4) or its dotted name"
            )
        return name, target_layer
    raise TypeError(
        f"target_layer must be a dotted name, an nn.Module inside the model, or None; got {type(target_layer).__name__}"
    )


def _name_of(model: nn.Module, module: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def probe_target_layer(model: nn.Module, images: Tensor) -> tuple[str, nn.Module]:
    """Find the default target layer with one forward of ``images[:1]`` (no grad, caller's modes).

    The caller is responsible for eval mode; this function only adds and removes hooks.

    Args:
        model: the unwrapped model.
        images: ``(B, C, H, W)``; only the first image is used.

    Returns:
        ``(name, module)`` of the last module whose output is ``(B, C, h, w)`` with ``h * w > 1``
        (or, failing that, with any spatial size), adaptive pooling and modules that run more
        than once per forward excluded.

    Raises:
        ValueError: if no module outputs a 4-D tensor.
    """
    records: list[tuple[nn.Module, Tensor]] = []
    with Hooks() as hooks, torch.no_grad():
        hooks.on_spatial_outputs(model, records, skip=POOLING_HEADS)
        model(images[:1])
    chosen = pick_recorded_layer(records)
    module = chosen[0] if chosen is not None else None
    if module is None:
        raise ValueError(
            f"could not find a target layer automatically: no submodule of {type(model).__name__} outputs a "
            "(B, C, h, w) tensor (once per forward); pass target_layer (and reshape= for token outputs, e.g. "
            "salaug.cam.vit_reshape)"
        )
    name = _name_of(model, module)
    assert name is not None
    return name, module


def pick_recorded_layer(records: list[tuple[nn.Module, Tensor]]) -> tuple[nn.Module, Tensor] | None:
    """Choose, among ``(module, output)`` records in execution order, the default target layer.

    The last record with more than one spatial position (else the last one), among modules that
    ran exactly once (a module the model reuses, such as one shared ReLU, cannot be a target).
    """
    counts: dict[int, int] = {}
    for module, _ in records:
        counts[id(module)] = counts.get(id(module), 0) + 1
    once = [r for r in records if counts[id(r[0])] == 1]
    spatial = [r for r in once if r[1].shape[-1] * r[1].shape[-2] > 1]
    chosen = spatial or once
    return chosen[-1] if chosen else None


def vit_reshape(
    tokens: Tensor, *, prefix_tokens: int | None = None, grid: tuple[int, int] | None = None
) -> Tensor:
    """Turn ViT tokens ``(B, N, D)`` into a feature map ``(B, D, h, w)``.

    Made for torchvision's ``vit_b_16`` family (one class token first, a square patch grid), and
    usable as ``GradCAM(model, "encoder.layers.encoder_layer_11.ln_1", reshape=vit_reshape)``. For
    other layouts, bind the keywords with ``functools.partial``.

    Args:
        tokens: ``(B, N, D)`` token sequence.
        prefix_tokens: how many leading tokens (class / register / distillation) to drop. ``None``:
            0 when ``N`` is a perfect square, else 1 when ``N - 1`` is.
        grid: ``(h, w)`` of the patch grid; ``None``: square.

    Returns:
        ``(B, D, h, w)`` tensor (a permuted copy, differentiable).

    Raises:
        ValueError: if the input is not 3-D or the tokens do not form the grid.

    Example:
        >>> vit_reshape(torch.zeros(2, 1 + 14 * 14, 768)).shape
        torch.Size([2, 768, 14, 14])
    """
    if not isinstance(tokens, Tensor) or tokens.ndim != 3:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"vit_reshape expects tokens of shape (B, N, D), got {shape}")
    n = tokens.shape[1]
    if prefix_tokens is None:
        if grid is not None:
            prefix_tokens = n - grid[0] * grid[1]
        elif math.isqrt(n) ** 2 == n:
            prefix_tokens = 0
        elif n > 1 and math.isqrt(n - 1) ** 2 == n - 1:
            prefix_tokens = 1
        else:
            raise ValueError(
                f"vit_reshape cannot infer the patch grid from {n} tokens; pass prefix_tokens= and/or grid="
            )
    patches = n - prefix_tokens
    if grid is None:
        side = math.isqrt(max(patches, 0))
        grid = (side, side)
    if prefix_tokens < 0 or grid[0] * grid[1] != patches:
        raise ValueError(
            f"vit_reshape: {n} tokens minus {prefix_tokens} prefix tokens do not form a {grid[0]}x{grid[1]} grid"
        )
    out = tokens[:, prefix_tokens:, :].reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[2])
    return out.permute(0, 3, 1, 2).contiguous()


ReshapeFn = Callable[[Tensor], Tensor]
