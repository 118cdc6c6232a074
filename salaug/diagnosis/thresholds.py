"""The model check's thresholds in one frozen record, and the deprecated constants they replace.

Every number the verdict of :class:`~salaug.diagnosis.Diagnosis` compares against is a field of
:class:`Thresholds`; :func:`salaug.diagnose` takes one (``thresholds=``) and the diagnosis keeps it,
so ``dataclasses.replace(d, thresholds=Thresholds(...))`` re-judges a measured diagnosis without
measuring again. Where each value comes from (which rows of the fault matrix chose it, which
checked it) is in the documentation's "Reading the diagnosis report" page and
``benchmarks/results/diagnosis_matrix.md``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """The numbers the verdict compares against (defaults: the library's, never set per dataset).

    Attributes:
        backbone_margin: EigenCAM's margin over its references below which the backbone's
            features miss the object.
        head_margin: AblationCAM's margin over its references below which the head ignores
            object features.
        reliance_share: share of the model's margin over chance that the background accounts
            for (BG-gap / (original - chance)) from which the model relies on the background,
            when the share's interval also excludes 0.
        background_only_margin: background-only accuracy above chance (the most frequent label's
            share) from which the model reads the background (under every fill).
        original_margin: the original accuracy must beat chance by this for any negative
            reliance result (and any share) to count.
        mixed_same_drop: the BG-gap of a fill counts when mixed-same accuracy is at most this far
            below the original accuracy (the pasted images are still images the model reads).
        object_only_share: background-only accuracy near chance counts as "not read" under a fill
            only when object-only accuracy keeps at least this share of the original's margin
            over chance ...
        collapse_ratio: ... and the predictions on object-only and mixed-rand images spread over
            at least this share of the originals' entropy (else they collapsed onto few classes).
        full_box_share: true boxes covering at least this share of the image on average leave
            nothing to judge.
        min_class_images: per-class findings only for classes with at least this many images.
        confidence: level of the reliance share's interval (a percentile bootstrap over images).
        resamples: bootstrap resamples of that interval.

    Raises:
        ValueError: a field out of range (the message names it).

    Example:
        >>> Thresholds().reliance_share <= Thresholds(reliance_share=0.3).reliance_share
        True
        >>> Thresholds(confidence=1.5)
        Traceback (most recent call last):
        ...
        ValueError: Thresholds.confidence must be in (0, 1), got 1.5
    """

    backbone_margin: float = 0.10
    head_margin: float = 0.10
    reliance_share: float = 0.10
    background_only_margin: float = 0.25
    original_margin: float = 0.10
    mixed_same_drop: float = 0.10
    object_only_share: float = 0.5
    collapse_ratio: float = 0.5
    full_box_share: float = 0.9
    min_class_images: int = 4
    confidence: float = 0.95
    resamples: int = 2000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("min_class_images", "resamples"):
                low = 1 if f.name == "resamples" else 0
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    what = "a positive" if low else "a non-negative"
                    raise ValueError(f"Thresholds.{f.name} must be {what} integer, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Thresholds.{f.name} must be a finite number, got {value!r}")
            if f.name == "confidence" and not 0 < value < 1:
                raise ValueError(f"Thresholds.confidence must be in (0, 1), got {value!r}")
            if f.name in ("object_only_share", "collapse_ratio", "full_box_share") and not 0 <= value <= 1:
                raise ValueError(f"Thresholds.{f.name} must be in [0, 1], got {value!r}")

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for :meth:`Diagnosis.to_dict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: The module constants of salaug <= 0.3 -> the field of :class:`Thresholds` that replaces them
#: (``None``: no longer read by the verdict).
_DEPRECATED = {
    "BACKBONE_MARGIN": "backbone_margin",
    "HEAD_MARGIN": "head_margin",
    "BG_GAP_THRESHOLD": None,
    "BACKGROUND_ONLY_MARGIN": "background_only_margin",
    "ORIGINAL_MARGIN": "original_margin",
    "OBJECT_ONLY_SHARE": "object_only_share",
    "COLLAPSE_RATIO": "collapse_ratio",
    "FULL_BOX_SHARE": "full_box_share",
    "MIN_CLASS_IMAGES": "min_class_images",
}
_OLD_BG_GAP = 0.15  # the absolute BG-gap threshold the verdict read before the graded share


def deprecated_constant(module: str, name: str) -> Any:
    """The value of a deprecated threshold constant, with a ``DeprecationWarning`` at the caller's line.

    Raises:
        AttributeError: ``name`` is not one of them (as a module ``__getattr__`` must).
    """
    if name not in _DEPRECATED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    field_name = _DEPRECATED[name]
    if field_name is None:
        warnings.warn(f"{module}.{name} is deprecated and will be removed in 0.5.0: the verdict no longer reads an "
                      "absolute BG-gap but the share of the model's margin over chance that the background accounts "
                      "for, Thresholds().reliance_share", DeprecationWarning, stacklevel=3)
        return _OLD_BG_GAP
    warnings.warn(f"{module}.{name} is deprecated and will be removed in 0.5.0: use "
                  f"salaug.diagnosis.Thresholds().{field_name} (pass thresholds=Thresholds({field_name}=...) to "
                  "diagnose to change it)", DeprecationWarning, stacklevel=3)
    return getattr(Thresholds(), field_name)
