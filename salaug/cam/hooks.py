"""The one owner of forward hooks: every hook salaug puts on a model is added and removed here.

A :class:`Hooks` object holds the hooks of one job (a CAM forward, a recording, the forward-label
capture of one batch). They are added together and removed together, also when the job raises, so
no hook outlives its job.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> seen = []
    >>> with Hooks() as hooks:
    ...     hooks.on_output(net[0], lambda module, args, output: seen.append(tuple(output.shape)))
    ...     _ = net(torch.rand(2, 3, 8, 8))
    >>> seen, len(net[0]._forward_hooks)
    ([(2, 4, 6, 6)], 0)
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["Hooks"]

OutputHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]
InputHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any]


class Hooks:
    """The forward hooks of one job, removed together (:meth:`remove`, or leaving the ``with`` block)."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    @property
    def active(self) -> bool:
        """Whether any hook is registered."""
        return bool(self._handles)

    def on_output(self, module: nn.Module, fn: OutputHook, *, always: bool = False) -> None:
        """Call ``fn(module, args, output)`` after each forward of ``module`` (a return value replaces the output).

        ``always``: also when the forward raises (``output`` is then ``None``), so a job waiting for
        the forward can clean up; an exception ``fn`` raises then is turned into a warning by torch.
        """
        self._handles.append(module.register_forward_hook(fn, always_call=always))

    def on_input(self, module: nn.Module, fn: InputHook) -> None:
        """Call ``fn(module, args, kwargs)`` before each forward of ``module``."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def on_spatial_outputs(self, model: nn.Module, records: list[tuple[nn.Module, Tensor]],
                           skip: tuple[type[nn.Module], ...] = ()) -> None:
        """Append ``(module, output)`` to ``records`` for every submodule whose output is ``(B, C, h, w)``.

        ``model`` itself and modules of the ``skip`` types (e.g. pooling heads) are left out; the
        records come in execution order (a module that runs twice appears twice).
        """

        def keep_4d(module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, Tensor) and output.ndim == 4 and not isinstance(module, skip):
                records.append((module, output))

        for m in model.modules():
            if m is not model:
                self.on_output(m, keep_4d)

    def remove(self) -> None:
        """Remove every hook of this job (idempotent)."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()
