"""Input validation shared by every public entry point (internal).

Shape and dtype checks cost nothing and always run. Checks that read tensor *values* (saliency in
``[0, 1]``, label indices in range, soft-label rows) need a host sync when the tensor lives on an
accelerator, which would stall the training loop; so by default they run on CPU tensors only.
:func:`salaug.validation.set_value_checks` chooses when they run (the mode lives here).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, TypeVar, overload

import torch
import torch.nn.functional as F
from torch import Tensor

T = TypeVar("T")
ValueChecks = Literal["cpu", "always", "never"]
_value_checks: ValueChecks = "cpu"  # set by salaug.validation.set_value_checks


def value_checks_on(tensor: Tensor) -> bool:
    """Whether value-reading checks should run for ``tensor`` under the current mode
    (:func:`salaug.validation.set_value_checks`)."""
    if _value_checks == "always":
        return True
    if _value_checks == "never":
        return False
    return tensor.device.type == "cpu"


def check_images(images: object, name: str = "images", *, finite: bool = False, masks: bool = False) -> Tensor:
    """Check that ``images`` is a floating-point ``(B, C, H, W)`` tensor and return it.

    With ``finite=True`` and value checks on (see :func:`salaug.validation.set_value_checks`) the values must also be
    finite (the transforms ask for it: a NaN image would be pasted into its partner and poison two
    samples). ``masks=True`` also accepts bool and integer tensors (masks, label maps).

    Raises:
        TypeError: if it is not a tensor, or not floating point (nor bool / integer with ``masks``).
        ValueError: if it is not 4-D, the batch is empty, or (value checks) it holds NaN / inf.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        hint = " (add a batch dimension with images.unsqueeze(0))" if images.ndim == 3 else ""
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}{hint}")
    if not images.is_floating_point() and (images.is_complex() or not masks):
        raise TypeError(
            f"{name} must be a floating-point tensor{' (or bool / integer masks)' if masks else ''}, got "
            f"{images.dtype}; convert with images.float() / 255 (or "
            "torchvision.transforms.v2.ToDtype(torch.float32, scale=True))"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {tuple(images.shape)}; skip empty batches before "
                         "transforming them")
    if images.shape[-2] == 0 or images.shape[-1] == 0:
        raise ValueError(f"{name} have no pixels: shape {tuple(images.shape)}")
    if finite and images.is_floating_point() and value_checks_on(images) and not all_finite(images):
        bad = (~torch.isfinite(images)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN or inf values (samples {bad[:8]}{'...' if len(bad) > 8 else ''}); "
                         "fix the data pipeline (e.g. a division by a zero std) or drop these samples")
    return images


def all_finite(x: Tensor) -> bool:
    """Whether ``x`` holds no NaN / inf: one min-max pass (NaN propagates), far cheaper than isfinite."""
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _stride_compatible(small: tuple[int, int], large: tuple[int, int]) -> bool:
    """Whether ``small`` is ``large`` divided by one stride, up to a pixel of rounding per side."""
    (h, w), (bh, bw) = small, large

    def strides(n: int, big: int) -> tuple[float, float]:
        return big / (n + 1), (big / (n - 1) if n > 1 else float("inf"))

    (ylo, yhi), (xlo, xhi) = strides(h, bh), strides(w, bw)
    return max(ylo, xlo) <= min(yhi, xhi)


def check_saliency_shape(saliency: object, name: str = "saliency") -> Tensor:
    """Check that ``saliency`` is a floating-point ``(B, 1, h, w)`` (or ``(B, h, w)``) map batch with pixels.

    The one shape check of saliency maps (transforms, metrics, pictures); values are not read.

    Returns:
        The maps as ``(B, 1, h, w)`` (a ``(B, h, w)`` input gets its channel dimension).

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: another shape, or no pixels.

    Example:
        >>> check_saliency_shape(torch.zeros(2, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """
    if not isinstance(saliency, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, H, W), got {type(saliency).__name__}")
    if saliency.ndim == 3:
        saliency = saliency.unsqueeze(1)
    if saliency.ndim != 4 or saliency.shape[1] != 1:
        hint = f"; average the channels with {name}.mean(1, keepdim=True)" if saliency.ndim == 4 else ""
        raise ValueError(f"{name} must have shape (B, 1, H, W) (or (B, H, W)), got {tuple(saliency.shape)}{hint}")
    if not saliency.is_floating_point():
        raise TypeError(f"{name} must be floating point in [0, 1], got {saliency.dtype}; convert a 0/1 mask with "
                        f"{name}.float() (an 8-bit map with {name}.float() / 255)")
    if saliency.shape[-2] == 0 or saliency.shape[-1] == 0:
        raise ValueError(f"{name} has no pixels: shape {tuple(saliency.shape)}")
    return saliency


def check_saliency(saliency: object, images: Tensor) -> Tensor:
    """Validate a saliency map against its images and bring it to their size, as float32.

    Args:
        saliency: ``(B, 1, h, w)`` (or ``(B, h, w)``) values in ``[0, 1]``; a map of another size
            is resized with :func:`resize_saliency` (area average when larger than the images,
            bilinear when smaller). Its size must be the images' divided
            by one stride (each side within one pixel), like a feature map of the images.
            A map on another device is moved to the images' device.
        images: ``(B, C, H, W)``.

    Returns:
        ``(B, 1, H, W)`` float32 on ``images.device``.

    Raises:
        TypeError: if ``saliency`` is not a floating-point tensor.
        ValueError: on a batch or shape mismatch, a map whose aspect ratio differs from the
            images' by more than a feature-map stride's rounding, or (value checks) values outside
            ``[0, 1]`` or NaN / inf.
    """
    saliency = check_saliency_shape(saliency)
    if saliency.shape[0] != images.shape[0]:
        raise ValueError(
            f"saliency batch size {saliency.shape[0]} does not match images batch size {images.shape[0]}"
        )
    size, big = tuple(saliency.shape[-2:]), tuple(images.shape[-2:])
    if size != big:
        small, large = (size, big) if size[0] * size[1] <= big[0] * big[1] else (big, size)
        if not _stride_compatible(small, large):  # type: ignore[arg-type]
            raise ValueError(
                f"saliency of size {size[0]}x{size[1]} cannot be resized to images of {big[0]}x{big[1]} without "
                f"distortion (aspect {size[1] / size[0]:.3g} vs {big[1] / big[0]:.3g}); compute it on these images "
                "(e.g. a CAM of this batch), or crop it to the images' aspect first"
            )
    saliency = saliency.to(device=images.device, dtype=torch.float32)
    if value_checks_on(saliency):
        lo, hi = torch.aminmax(saliency)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError("saliency contains NaN or inf values; fix its source (a CAM of images holding NaN?) or "
                             "replace them, e.g. saliency.nan_to_num(0.0, posinf=1.0, neginf=0.0)")
        if not (lo >= 0 and hi <= 1):
            raise ValueError(
                f"saliency values must lie in [0, 1], got min {float(lo):.4g}, max {float(hi):.4g}; "
                "normalise it per image, e.g. with salaug.normalize_saliency(saliency)"
            )
    if size != big:
        saliency = resize_saliency(saliency, (big[0], big[1]))
    return saliency


def resize_saliency(saliency: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``(B, 1, h, w)`` maps to ``size`` without losing mass, clamped to ``[0, 1]``.

    Downscaling (both sides shrink or stay) averages each output pixel's area, so a small salient
    region keeps its share of the map (bilinear sampling would step over it and give zeros);
    otherwise bilinear interpolation (``align_corners=False``, antialiased where a side shrinks).

    Example:
        >>> s = torch.zeros(1, 1, 8, 8); s[..., 0, 0] = 1.0
        >>> resize_saliency(s, (2, 2)).flatten().tolist()
        [0.0625, 0.0, 0.0, 0.0]
    """
    h, w = saliency.shape[-2:]
    if (h, w) == tuple(size):
        return saliency
    if size[0] <= h and size[1] <= w:
        out = F.interpolate(saliency, size=size, mode="area")
    else:
        out = F.interpolate(saliency, size=size, mode="bilinear", align_corners=False,
                            antialias=size[0] < h or size[1] < w)
    return out.clamp_(0, 1)


def check_class_indices(indices: Tensor, num_classes: int, name: str, context: str) -> None:
    """Raise if ``(B,)`` integer ``indices`` leave ``[0, num_classes)`` (value check: see module doc).

    Raises:
        ValueError: naming ``name``, the valid range, ``context`` and the offending extremes.
    """
    if not value_checks_on(indices):
        return
    lo, hi = torch.aminmax(indices)
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes - 1}] for {context}, got min {int(lo)}, max {int(hi)}; "
            "check the labels or the number of classes"
        )


# -- constructor arguments ----------------------------------------------------------------------------
def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None and low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    if low is None:
        return "(finite)"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _number(name: str, value: object, *, integer: bool, low: float | None, high: float | None, low_open: bool,
            high_open: bool, optional: bool) -> float | int | None:
    """The checks of :func:`check_int` and :func:`check_float` (one implementation, two return types)."""
    if value is None and optional:
        return None
    kind = "an int" if integer else "a number"
    want = f"{kind} {_interval(low, high, low_open, high_open)}" + (" or None" if optional else "")
    wrong_kind = integer and not isinstance(value, numbers.Integral)
    if isinstance(value, (bool, torch.Tensor)) or not isinstance(value, numbers.Real) or wrong_kind:
        if isinstance(value, str):
            fix = f"pass a number, not a string, e.g. {name}={value.strip()}"
        elif integer and isinstance(value, numbers.Real) and not isinstance(value, bool):
            whole = int(float(value))
            fix = f"pass a whole number, e.g. {name}={max(whole, 1) if low else whole}"
        else:
            fix = f"pass {kind}"
        raise TypeError(f"{name} must be {want}, got {value!r} ({type(value).__name__}); {fix}")
    v = int(value) if isinstance(value, numbers.Integral) and integer else float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


@overload
def check_int(name: str, value: object, *, low: float | None = ..., high: float | None = ...,
              optional: Literal[False] = ...) -> int: ...


@overload
def check_int(name: str, value: object, *, low: float | None = ..., high: float | None = ...,
              optional: bool) -> int | None: ...


def check_int(name: str, value: object, *, low: float | None = None, high: float | None = None,
              optional: bool = False) -> int | None:
    """Check a whole-number argument and return it as an ``int`` (``None`` too with ``optional``).

    The one helper for integer arguments: bools, strings, tensors and floats (``num_classes=2.5``,
    even ``2.0``) are refused; numpy integers are accepted.

    Args:
        name: the argument's name, used in the message.
        value: what the caller passed.
        low, high: inclusive bounds (``None``: unbounded).
        optional: accept ``None`` (returned as is).

    Raises:
        TypeError: a value of the wrong type (the message names the argument and the fix).
        ValueError: a value out of range.

    Example:
        >>> check_int("num_classes", 10, low=1)
        10
        >>> check_int("num_classes", 2.5, low=1)
        Traceback (most recent call last):
        ...
        TypeError: num_classes must be an int >= 1, got 2.5 (float); pass a whole number, e.g. num_classes=2
    """
    v = _number(name, value, integer=True, low=low, high=high, low_open=False, high_open=False, optional=optional)
    return None if v is None else int(v)


@overload
def check_float(name: str, value: object, *, low: float | None = ..., high: float | None = ...,
                low_open: bool = ..., high_open: bool = ..., optional: Literal[False] = ...) -> float: ...


@overload
def check_float(name: str, value: object, *, low: float | None = ..., high: float | None = ...,
                low_open: bool = ..., high_open: bool = ..., optional: bool) -> float | None: ...


def check_float(name: str, value: object, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, optional: bool = False) -> float | None:
    """Check a real-number argument and return it as a ``float`` (``None`` too with ``optional``).

    The one helper for real arguments: bools, strings, tensors, NaN and infinities are refused;
    ints and numpy numbers are accepted and returned as ``float``.

    Args:
        name: the argument's name, used in the message.
        value: what the caller passed.
        low, high: bounds (``None``: unbounded); ``low_open`` / ``high_open`` exclude them.
        optional: accept ``None`` (returned as is).

    Raises:
        TypeError: a value of the wrong type (the message names the argument and the fix).
        ValueError: a value out of range, NaN or infinite.

    Example:
        >>> check_float("p", 1, low=0.0, high=1.0)
        1.0
        >>> check_float("alpha", 0.0, low=0.0, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be a number > 0, got 0.0
    """
    v = _number(name, value, integer=False, low=low, high=high, low_open=low_open, high_open=high_open,
                optional=optional)
    return None if v is None else float(v)


def check_interval(name: str, value: object, *, low: float | None = None, high: float | None = None,
                   low_open: bool = False) -> tuple[float, float]:
    """Check a ``(min, max)`` pair of numbers with ``min <= max``, each within the bounds.

    Raises:
        TypeError: if ``value`` is not a pair of numbers.
        ValueError: for ``min > max`` or bounds broken (see :func:`check_float`).

    Example:
        >>> check_interval("scale", (0.1, 0.4), low=0.0, high=1.0, low_open=True)
        (0.1, 0.4)
    """
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{name} must be a (min, max) pair of numbers, got {value!r}; pass e.g. {name}=(0.1, 0.5)")
    lo, hi = (check_float(f"{name}[{i}]", v, low=low, high=high, low_open=low_open) for i, v in enumerate(value))
    if lo > hi:
        raise ValueError(f"{name} must be a (min, max) pair with min <= max, got {value!r}; swap them")
    return lo, hi


def check_choice(name: str, value: T, allowed: Sequence[T]) -> T:
    """Check that ``value`` is one of ``allowed`` (compared with ``==``, types included).

    Raises:
        ValueError: naming the argument and the allowed values.
    """
    if not any(type(value) is type(a) and value == a for a in allowed):
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_flag(name: str, value: object) -> bool:
    """Check a boolean argument (``True`` / ``False`` only, not 0 / 1 or strings).

    Raises:
        TypeError: naming the argument.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_key(name: str, value: object, *, optional: bool = False) -> int | str | None:
    """Check a field key: an int position (tuple / list samples) or a str key (dict samples).

    Raises:
        TypeError: for anything else (bools included), naming the argument.

    Example:
        >>> check_key("image_key", "image"), check_key("box_key", None, optional=True)
        ('image', None)
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} must be an int position (tuple/list samples) or a str key (dict samples)"
                        f"{' or None' if optional else ''}, got {value!r}")
    return value


def check_targets(name: str, value: object, owner: str) -> Literal["labels", "predicted"]:
    """Check a ``targets`` choice, ``"labels"`` or ``"predicted"``; the old ``"label"`` warns and maps to ``"labels"``.

    Raises:
        ValueError: any other value, naming the argument and the allowed values.

    Example:
        >>> check_targets("targets", "predicted", "CAMSaliency")
        'predicted'
    """
    if isinstance(value, str) and value == "label":
        import warnings

        warnings.warn(f"{owner}({name}='label') is deprecated: the spelling is {name}='labels' everywhere in salaug",
                      DeprecationWarning, stacklevel=3)
        return "labels"
    if isinstance(value, str) and value in ("labels", "predicted"):
        return "labels" if value == "labels" else "predicted"
    raise ValueError(f"{name} must be one of ('labels', 'predicted'), got {value!r}")


def resolve_index(index: object, length: int, owner: str = "", hint: str = "") -> int:
    """A sequence index (negative counts from the end) as a position in ``[0, length)``.

    The one index check of the datasets and mask banks: ints, numpy integers and 0-d integer
    tensors are accepted.

    Args:
        index: what the caller passed.
        length: the sequence's length.
        owner: what is indexed, for the messages (default ``"a dataset of length {length}"``).
        hint: advice appended to the type error.

    Raises:
        TypeError: an index that is not an integer (bools and float tensors included).
        IndexError: an index out of range; the message names the index as given.

    Example:
        >>> resolve_index(-1, 4)
        3
        >>> resolve_index(-5, 4)
        Traceback (most recent call last):
        ...
        IndexError: index -5 out of range for a dataset of length 4 (valid: -4 to 3)
    """
    owner = owner or f"a dataset of length {length}"
    if (isinstance(index, numbers.Integral) and not isinstance(index, bool)) or (
        isinstance(index, Tensor) and index.ndim == 0
        and not (index.is_floating_point() or index.is_complex() or index.dtype == torch.bool)
    ):
        given = int(index)
    else:
        raise TypeError(f"indices of {owner} must be integers, got {index!r} ({type(index).__name__}){hint}")
    position = given + length if given < 0 else given
    if not 0 <= position < length:
        valid = f"valid: {-length} to {length - 1}" if length else "it is empty"
        raise IndexError(f"index {given} out of range for {owner} ({valid})")
    return position


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """Check an optional ``torch.Generator``.

    Raises:
        TypeError: for anything else (e.g. an int seed: the fix is shown).
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = f"torch.Generator().manual_seed({generator})" if isinstance(generator, int) else "torch.Generator()"
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}; pass e.g. {hint}")
    return generator


def check_finite(tensor: Tensor, name: str, fix: str) -> None:
    """Raise if ``tensor`` holds NaN or inf (a value check: skipped where value checks are off).

    Args:
        tensor: any floating-point tensor.
        name: what it is, for the message (``"images"``).
        fix: the advice appended to the message.

    Raises:
        ValueError: naming ``name``, how many values are not finite, in which samples (rows of
            the first dimension), and ``fix``.
    """
    if not tensor.is_floating_point() or not value_checks_on(tensor):
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        where = ""
        if tensor.ndim >= 2:
            rows = (~finite).flatten(1).any(dim=1).nonzero().flatten().tolist()
            where = f" in sample(s) {rows[:8]}{'...' if len(rows) > 8 else ''}"
        raise ValueError(f"{name} contain {bad} NaN or inf value(s) of {tensor.numel()}{where}; {fix}")


def check_image_extent(images: Tensor, name: str = "images") -> None:
    """Raise if a ``(B, C, H, W)`` batch has no channels or no pixels (shape only, always runs)."""
    _, c, h, w = images.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(
            f"{name} must have at least one channel and one pixel, got shape {tuple(images.shape)}; "
            "check the channel and spatial dimensions (expected (B, C, H, W))"
        )


def zero_nonfinite_maps(maps: Tensor) -> Tensor:
    """Replace every ``(B, ...)`` map that holds a NaN or inf by zeros (batched, no host sync).

    Example:
        >>> maps = torch.tensor([[0.5, float("nan")], [0.25, 1.0]])
        >>> zero_nonfinite_maps(maps).tolist()
        [[0.0, 0.0], [0.25, 1.0]]
    """
    ok = torch.isfinite(maps).flatten(1).all(dim=1).view((-1,) + (1,) * (maps.ndim - 1))
    return torch.where(ok, maps, torch.zeros((), dtype=maps.dtype, device=maps.device))


def size_pair(value: object) -> tuple[int, int] | None:
    """An ``(H, W)`` pair of positive ints from an int or a 2-sequence (bools refused); else ``None``.

    Example:
        >>> size_pair(32), size_pair((24, 48)), size_pair((0, 4)), size_pair(True)
        ((32, 32), (24, 48), None, None)
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, (tuple, list, torch.Size))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    return None


@overload
def check_size(name: str, value: object, *, optional: Literal[False] = ...) -> tuple[int, int]: ...


@overload
def check_size(name: str, value: object, *, optional: bool) -> tuple[int, int] | None: ...


def check_size(name: str, value: object, *, optional: bool = False) -> tuple[int, int] | None:
    """Check an ``(H, W)`` size argument (an int means square) with :func:`size_pair`, raising if it is not one.

    Raises:
        TypeError: neither an int nor a pair (bools and strings included), or a non-int side.
        ValueError: a side below 1, named by its position (``size[0]``).

    Example:
        >>> check_size("size", 8), check_size("size", (4, 6)), check_size("size", None, optional=True)
        ((8, 8), (4, 6), None)
        >>> check_size("size", (0, 8))
        Traceback (most recent call last):
        ...
        ValueError: size[0] must be an int >= 1, got 0
    """
    if value is None and optional:
        return None
    size = size_pair(value)
    if size is not None:
        return size
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        check_int(name, value, low=1)
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        for i, side in enumerate(value):
            check_int(f"{name}[{i}]", side, low=1)
    raise TypeError(f"{name} must be a positive int or an (h, w) pair of positive ints"
                    f"{' or None' if optional else ''}, got {value!r}")

