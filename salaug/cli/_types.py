"""Typed ``argparse`` helpers shared by every ``salaug`` subcommand.

Each one parses one string or raises :class:`argparse.ArgumentTypeError` with the reason and the
fix, so that a bad argument always ends in argparse's one-line ``error:`` and exit code 2, before any
work (training, CAM passes) starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HelpFormatter",
    "LoadedWeights",
    "accelerator",
    "at_least",
    "cam_name",
    "demo_image_size",
    "existing_dir",
    "fraction",
    "int_range",
    "nonnegative_int",
    "output_dir",
    "output_file",
    "positive_float",
    "positive_int",
    "probability",
    "seed",
    "torch_device",
    "weights_file",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, ``(default: ...)``, except where there is none to show
    (``None``, a ``store_true`` flag's ``False``) or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------
# argparse types: each parses one string or raises ArgumentTypeError with the reason and the fix
# ---------------------------------------------------------------------------------------------
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1.

    Example:
        >>> positive_int("3")
        3
    """
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def int_range(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse type for integers in ``[minimum, maximum]``; ``why`` explains the bounds.

    Example:
        >>> int_range(16, 512)("32")
        32
    """
    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            reason = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}{reason}, got {text!r}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid ... value" messages
    return parse


def demo_image_size(text: str) -> int:
    """An image side the demo's data is drawn at: the rule of
    :func:`salaug.diagnosis.checkpoint.check_demo_image_size` (the same that checkpoints obey).

    Example:
        >>> demo_image_size("32")
        32
    """
    from salaug.diagnosis.checkpoint import check_demo_image_size

    value = _int(text)
    try:
        return check_demo_image_size(value, what="")
    except ValueError as exc:  # " must be an integer in [...] (...), got 8": argparse names the argument
        raise argparse.ArgumentTypeError(str(exc).strip().rsplit(", got ", 1)[0] + f", got {text!r}") from None


demo_image_size.__name__ = "int"  # argparse names the type in its "invalid ... value" messages


def at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type for integers >= ``minimum`` (see :func:`int_range`)."""
    return int_range(minimum, None, why)


def seed(text: str) -> int:
    """A random seed: an integer in ``[0, 2**32 - 1]`` (what numpy and Lightning accept)."""
    value = _int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 4294967295], got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in ``[0, 1]``."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in ``(0, 1]`` (a scale factor that may shrink but not vanish)."""
    value = _float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def existing_dir(text: str) -> str:
    """A directory that exists."""
    from pathlib import Path

    p = Path(text).expanduser()
    if not p.exists():
        raise argparse.ArgumentTypeError(f"directory {text!r} does not exist")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return str(p)


def output_file(text: str) -> str:
    """A file path that can be written: not a directory, in a directory we can write to (missing
    parent directories are created when the file is written)."""
    from salaug.data._paths import check_output_file

    try:
        return str(check_output_file(text, "output file"))
    except (OSError, TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def output_dir(text: str) -> str:
    """A directory path that can be written (created if missing); an existing file is refused."""
    from salaug.data._paths import check_output_dir

    try:
        return str(check_output_dir(text, "output directory"))
    except (OSError, TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class LoadedWeights:
    """A weights file read by :func:`weights_file`.

    Attributes:
        path: the file.
        state: its state dict (name -> tensor), unwrapped from a checkpoint's ``"state_dict"``.
        checkpoint: everything the file holds (e.g. ``salaug demo``'s metadata beside the weights).
    """

    path: str
    state: Any
    checkpoint: Any = None


def weights_file(text: str) -> LoadedWeights:
    """A local ``torch.save`` file of a ``state_dict`` (or a checkpoint holding one), loaded safely
    (``weights_only=True``: no code from the file runs)."""
    from pathlib import Path

    import torch

    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the weights file (torch.save output)")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"weights file {text!r} does not exist")
    try:
        checkpoint = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a foreign file (KeyError on text, ...)
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as PyTorch weights: {_why_unreadable(p, exc)}; give a file written by "
            "torch.save(model.state_dict(), path)"
        ) from None
    state = checkpoint
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise argparse.ArgumentTypeError(
            f"{text!r} does not hold a state_dict of tensors (got {type(state).__name__}); save it with "
            "torch.save(model.state_dict(), path)"
        )
    return LoadedWeights(str(p), state, checkpoint)


def _why_unreadable(path: Any, exc: BaseException) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in our words (torch's
    own message suggests ``weights_only=False``, which would run code from an untrusted file)."""
    import pickle
    import re

    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if unsafe:
        return (f"it holds a Python object ({unsafe.group(1)}), not only tensors; such files are refused "
                "because loading them runs code from the file")
    if head.startswith(b"PK"):
        return "a truncated or corrupt torch.save archive"
    if isinstance(exc, pickle.UnpicklingError) or head.startswith(b"\x80"):
        return "not a torch.save file of tensors (or a corrupt one)"
    return "not a torch.save file"


def torch_device(text: str) -> str:
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``) that is available here."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps") from None
    _check_available(device.type, text)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"device {text!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
        )
    return text


def accelerator(text: str) -> str:
    """A Lightning accelerator name (``cpu``, ``cuda``, ``gpu``, ``mps`` or ``auto``) available here."""
    name = text.lower()
    if name not in ("cpu", "cuda", "gpu", "mps", "auto"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, mps or auto")
    _check_available("cuda" if name == "gpu" else name, text)
    return name


def _check_available(kind: str, text: str) -> None:
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r}: CUDA is not available here; use cpu")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"device {text!r}: MPS is not available here; use cpu")
    if kind not in ("cpu", "cuda", "mps", "auto"):
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported here; use cpu, cuda or mps")


def cam_name(text: str) -> str:
    """A CAM method name of :data:`salaug.cam.CAM_METHODS` (case-insensitive)."""
    from salaug.cam import CAM_METHODS

    key = text.lower().replace("gradcampp", "gradcam++")
    if key not in CAM_METHODS:
        raise argparse.ArgumentTypeError(f"unknown CAM method {text!r}; choose one of {', '.join(CAM_METHODS)}")
    return key
