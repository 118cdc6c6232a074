"""The one capture of a target layer's activations (and their gradients) in a forward.

:class:`LayerCapture` is what the CAM engine and the forward-label source share: it watches one
layer through a forward hook held by a :class:`~salaug.cam.hooks.Hooks` job (so it is removed with
the job, also when the forward raises), checks what the layer gave, and differentiates a score
with respect to it by ``torch.autograd.grad`` (never ``.backward()``, no parameter ``.grad``).

Three ways to keep the output, one per caller:

* ``"leaf"``: the CAM engine's own forward. The trunk runs without a graph; the hook switches
  gradients on and hands the rest of the network a copy of a detached leaf, so only the head is
  recorded and in-place consumers (``ReLU(inplace=True)``) cannot alter the captured values.
* ``"graph"``: a training forward. The output is kept as produced (its graph is the training
  step's); gradients are taken with ``retain_graph=True`` so the caller's backward is unaffected.
  Behind a frozen trunk (an output that needs no gradient in a forward with gradients on) the
  output is kept as a leaf, as in ``"leaf"``: the head's graph starts there.
* ``"copy"``: a detached copy, for methods that need no gradient (EigenCAM, the perturbation CAMs);
  ``stop=True`` ends the forward right after the layer (nothing after it runs).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> capture = LayerCapture(net[0], "0", keep="graph")
    >>> with Hooks() as hooks:
    ...     capture.attach(hooks)
    ...     logits = net(torch.rand(2, 3, 8, 8))
    >>> acts = capture.activations()
    >>> grads = capture.gradients(logits[:, 0].sum(), retain_graph=True)
    >>> acts.shape == grads.shape == (2, 4, 8, 8), len(net[0]._forward_hooks)
    (True, 0)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from salaug.cam.hooks import Hooks

__all__ = ["Keep", "LayerCapture", "StopForward", "check_layer_output", "check_ran_once"]

Keep = Literal["leaf", "graph", "copy"]


class StopForward(Exception):
    """Raised by a capture with ``stop=True`` to end a forward once the layer has run."""


def check_layer_output(output: object, name: str, *, tokens_ok: bool = False) -> Tensor:
    """The layer's output as a tensor, ``(B, C, h, w)`` unless ``tokens_ok`` (a ``reshape`` follows).

    Raises:
        ValueError: a tuple / list / dict output (named as such), or a tensor of another rank.
    """
    if isinstance(output, (tuple, list)):
        raise ValueError(
            f"target layer {name!r} returns a {type(output).__name__} of {len(output)}, not a tensor (an LSTM, an "
            "attention module or a block returning extras); choose a layer whose output is one (B, C, h, w) tensor, "
            "e.g. the block that contains it"
        )
    if not isinstance(output, Tensor):
        raise ValueError(
            f"target layer {name!r} returns {type(output).__name__}, not a tensor; choose a layer whose output is "
            "a (B, C, h, w) tensor"
        )
    if not tokens_ok and output.ndim != 4:
        hint = (" (token output: pass reshape=salaug.cam.vit_reshape or your own (B, N, D) -> (B, D, h, w) function)"
                if output.ndim == 3 else "")
        raise ValueError(
            f"target layer {name!r} outputs shape {tuple(output.shape)}, but CAMs need a (B, C, h, w) feature "
            f"map{hint}; choose a convolutional layer (e.g. ResNet 'layer4') or pass reshape="
        )
    return output


def check_ran_once(calls: int, name: str, where: str = "in one forward") -> None:
    """A target layer must run exactly once per forward (0: not reached, 2+: a reused module)."""
    if calls == 0:
        raise RuntimeError(f"target layer {name!r} did not run during the model's forward")
    if calls > 1:
        raise ValueError(
            f"target layer {name!r} ran {calls} times {where} (a module the model reuses, e.g. one shared ReLU, or "
            "several forwards); choose a module that runs once per forward, such as the block containing it"
        )


class LayerCapture:
    """Capture one layer's output in a forward and differentiate scores with respect to it.

    Args:
        layer: the module to watch.
        name: its dotted name, for messages.
        keep: ``"leaf"``, ``"graph"`` or ``"copy"`` (see the module docstring).
        stop: end the forward once the layer has run (raises :class:`StopForward` out of it).
        tokens_ok: accept a non-4-D output (a ``reshape`` is applied by the caller).
    """

    def __init__(self, layer: nn.Module, name: str, *, keep: Keep = "graph", stop: bool = False,
                 tokens_ok: bool = False) -> None:
        self.layer, self.name, self.keep, self.stop, self.tokens_ok = layer, name, keep, stop, tokens_ok
        self.enabled = True  # a capture armed across a forward it does not own can skip that forward
        self.reset()

    def reset(self) -> None:
        """Forget what was captured (before a new forward)."""
        self.acts: Tensor | None = None
        self.calls = 0

    def attach(self, hooks: Hooks) -> None:
        """Watch :attr:`layer` through ``hooks`` (removed with them)."""
        hooks.on_output(self.layer, self._hook)

    def _hook(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> Tensor | None:
        if not self.enabled:
            return None
        acts = check_layer_output(output, self.name, tokens_ok=self.tokens_ok)
        self.calls += 1
        if self.keep == "graph" and (acts.requires_grad or not torch.is_grad_enabled()):
            self.acts = acts  # the training step's own graph (or none: gradients() says so)
            return None
        if self.keep == "copy":
            self.acts = acts.detach() if self.stop else acts.detach().clone()
            if self.stop:
                raise StopForward
            return None
        # "leaf", or "graph" behind a frozen trunk: the head is recorded from a detached leaf
        torch.set_grad_enabled(True)  # the engine's enclosing no_grad() restores the mode on exit
        self.acts = acts.detach().requires_grad_(True)
        return self.acts.clone()  # a non-leaf for the rest of the network: in-place consumers are fine

    def activations(self, where: str = "in one forward") -> Tensor:
        """The captured output, checked to come from exactly one run of the layer."""
        check_ran_once(self.calls, self.name, where)
        assert self.acts is not None
        return self.acts

    def gradients(self, score: Tensor, *, retain_graph: bool = False) -> Tensor:
        """``d score / d activations`` by ``torch.autograd.grad`` (no parameter ``.grad`` is touched).

        Raises:
            RuntimeError: the activations carry no graph (a forward without gradients, a frozen trunk
                up to the layer), or the score does not depend on them.
        """
        acts = self.activations()
        if not acts.requires_grad or not score.requires_grad:
            raise RuntimeError(
                f"the activations of target layer {self.name!r} carry no gradient (a forward under torch.no_grad / "
                "inference_mode, or a frozen trunk up to that layer); run the forward with gradients enabled"
            )
        (grads,) = torch.autograd.grad(score, acts, retain_graph=retain_graph, allow_unused=True)
        if grads is None:
            raise RuntimeError(f"the logits do not depend on target layer {self.name!r}")
        return grads
