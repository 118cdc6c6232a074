"""When salaug's input checks read tensor values.

Shape and dtype checks cost nothing and always run. Checks that read tensor *values* (saliency in
``[0, 1]``, label indices in range, soft-label rows, finite pixels) need a host sync when the
tensor lives on an accelerator, which would stall the training loop; so by default they run on CPU
tensors only. :func:`set_value_checks` turns them on everywhere (debugging) or off.
"""

from __future__ import annotations

from salaug import _checks
from salaug._checks import ValueChecks

__all__ = ["ValueChecks", "set_value_checks"]


def set_value_checks(mode: ValueChecks) -> None:
    """Choose when checks that read tensor values (and so sync with the device) run.

    Args:
        mode: ``"cpu"`` (default: only for CPU tensors, where they are free of syncs),
            ``"always"`` or ``"never"``.

    Raises:
        ValueError: for an unknown mode.

    Example:
        >>> import torch
        >>> from salaug import SnapMix
        >>> set_value_checks("never")  # e.g. a tight loop on CPU: no value is read
        >>> out = SnapMix(num_classes=2)(torch.rand(2, 3, 8, 8), torch.full((2, 1, 8, 8), 2.0), torch.arange(2))
        >>> set_value_checks("cpu")  # the default
    """
    if mode not in ("cpu", "always", "never"):
        raise ValueError(f"value checks mode must be 'cpu', 'always' or 'never', got {mode!r}")
    _checks._value_checks = mode
