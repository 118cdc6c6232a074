"""An exponential moving average of a model's weights, kept in a frozen copy of the model.

:class:`ModelEMA` is what ``SaliencyAugmenter(ema_decay=...)`` computes its CAMs from: the copy is
made on the first :meth:`~ModelEMA.update`, then every update moves each floating-point parameter
towards the live one, ``ema = decay * ema + (1 - decay) * w``, and copies the buffers (BatchNorm
statistics) as they are. The live model is only read.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from salaug._checks import check_float

__all__ = ["ModelEMA"]


class ModelEMA:
    """Moving average of a model's weights in a frozen copy (BatchNorm buffers copied, not averaged).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> ema = ModelEMA(decay=0.5)
        >>> ema.update(net)                     # the first update copies the model
        >>> with torch.no_grad():
        ...     _ = net.bias.fill_(2.0)
        >>> before = ema.module.bias.clone()
        >>> ema.update(net)                     # 0.5 * before + 0.5 * 2.0
        >>> torch.allclose(ema.module.bias, 0.5 * before + 1.0)
        True

    Args:
        decay: weight of the average at each update, in ``(0, 1)`` (e.g. ``0.999``).

    Attributes:
        decay: the decay.
        module: the averaged copy (``None`` before the first update); its parameters do not
            require grad and it is in eval mode.

    Raises:
        TypeError, ValueError: ``decay`` not a number in ``(0, 1)``.
    """

    def __init__(self, decay: float) -> None:
        check_float("ema_decay", decay, low=0.0, high=1.0, low_open=True, high_open=True)
        self.decay = float(decay)
        self.module: nn.Module | None = None
        self._pending: dict[str, Tensor] | None = None  # loaded before the copy exists

    def update(self, model: nn.Module,
               copy_context: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
               ) -> None:
        """Move the average one step towards ``model``'s weights (the first call copies ``model``).

        Args:
            model: the live model (same architecture at every call).
            copy_context: context entered around the first call's ``copy.deepcopy(model)`` (an
                adapter swaps a compiled forward for the eager one there).

        Raises:
            RuntimeError: ``model`` cannot be deep-copied.
            ValueError: ``model``'s parameters or buffers differ in number or shape from the copy's
                (another architecture); the average is left as it was.
        """
        # Under torch.inference_mode() the copy and the update would make inference tensors, which
        # a later CAM backward through the copy cannot save; both run outside it.
        with torch.inference_mode(False), torch.no_grad():
            if self.module is None:
                self.module = _frozen_copy(model, copy_context)
                if self._pending is None:
                    return  # a fresh copy already equals the weights
                self.module.load_state_dict(self._pending)
                self._pending = None
            averages, weights = list(self.module.parameters()), list(model.parameters())
            mine, buffers = list(self.module.buffers()), list(model.buffers())
            if [a.shape for a in averages + mine] != [w.shape for w in weights + buffers]:
                difference = _state_difference(self.module.state_dict(), model) or "other parameter shapes"
                raise ValueError(
                    f"ModelEMA.update: {type(model).__name__} is not the architecture the average was copied from "
                    f"({difference}); use one ModelEMA per model, or a new ModelEMA for another architecture"
                )
            for average, weight in zip(averages, weights, strict=True):
                if average.is_floating_point():
                    average.lerp_(weight.detach(), 1.0 - self.decay)
            for copy_, buffer in zip(mine, buffers, strict=True):
                copy_.copy_(buffer)

    def state_dict(self) -> dict[str, Tensor] | None:
        """A detached copy of the averaged weights (``None`` before the first update or load)."""
        if self.module is not None:
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        return self._pending

    def load_state_dict(self, state: Mapping[str, Tensor], model: nn.Module | None = None, owner: str = "ModelEMA",
                        ) -> None:
        """Restore :meth:`state_dict`; before the first update the weights wait for the copy.

        Args:
            state: the averaged weights, a state dict of the model's architecture.
            model: the live model to check ``state`` against now (``None``: :meth:`check` later).
            owner: the class named in the error.

        Raises:
            TypeError, ValueError: ``state`` does not fit ``model`` (see :meth:`check`).
        """
        if model is not None:
            check_ema_state(state, model, owner)
        if self.module is not None:
            self.module.load_state_dict(state)
        else:
            self._pending = dict(state)

    def check(self, model: nn.Module, owner: str = "ModelEMA") -> None:
        """Check weights loaded before the model was known against ``model`` (see :func:`check_ema_state`)."""
        if self._pending is not None:
            check_ema_state(self._pending, model, owner)


def _frozen_copy(model: nn.Module,
                 copy_context: Callable[[], contextlib.AbstractContextManager[object]]) -> nn.Module:
    with copy_context():
        try:
            ema = copy.deepcopy(model)
        except Exception as err:  # any failure of a user's model copy
            raise RuntimeError(
                f"ema_decay needs a copy of the model, but copy.deepcopy({type(model).__name__}) failed: {err}; "
                "make the model deep-copyable or use ema_decay=None"
            ) from err
    ema.__dict__.pop("forward", None)  # a patched (e.g. compiled) forward bound on the instance
    for param in ema.parameters():
        param.requires_grad_(False)
    return ema.eval()


def check_ema_state(ema: object, model: nn.Module, owner: str) -> None:
    """Refuse EMA weights whose entries or shapes differ from ``model``'s state dict.

    Raises:
        TypeError: ``ema`` is not a mapping.
        ValueError: missing or unexpected entries, or shapes that differ (another architecture).
    """
    if not isinstance(ema, Mapping):
        raise TypeError(f"{owner}.load_state_dict: state_dict['ema'] must be the EMA model's state dict, got "
                        f"{type(ema).__name__}")
    details = _state_difference(ema, model)
    if details:
        raise ValueError(
            f"{owner}.load_state_dict: state_dict['ema'] (the moving-average weights) does not fit the model "
            f"{type(model).__name__} ({details}); it was saved from another architecture. Resume with the same "
            "model, or drop the 'ema' entry to start the average afresh"
        )


def _state_difference(state: Mapping[str, object], model: nn.Module) -> str:
    """What differs between ``state`` and ``model``'s state dict: missing or unexpected entries,
    shapes (``""`` when they fit)."""
    own = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in shapes and shapes[k] != tuple(own[k].shape)]
    return "; ".join(part for part in (
        f"missing {missing[:4]}" if missing else "",
        f"unexpected {unexpected[:4]}" if unexpected else "",
        "shape of " + ", ".join(f"{k!r} {shapes[k]} vs {tuple(own[k].shape)}" for k in wrong[:3]) if wrong else "",
    ) if part)
