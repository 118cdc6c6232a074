"""The validators of salaug._checks: typed numbers, intervals, sizes, targets, indices; value checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import salaug
from salaug._checks import (
    check_float,
    check_int,
    check_interval,
    check_size,
    check_targets,
    resolve_index,
    value_checks_on,
)


# -- check_int / check_float ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [(4, 4), (np.int64(4), 4), (np.uint8(7), 7)])
def test_check_int_returns_an_int(value, expected):
    out = check_int("n", value, low=1)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value, error, match", [
    (4.0, TypeError, r"n must be an int >= 1, got 4.0 \(float\); pass a whole number, e.g. n=4"),
    (2.5, TypeError, r"e.g. n=2"),
    (True, TypeError, r"got True \(bool\); pass an int"),
    ("3", TypeError, r"pass a number, not a string, e.g. n=3"),
    (torch.tensor(3), TypeError, r"\(Tensor\)"),
    (None, TypeError, r"got None \(NoneType\)"),
    (0, ValueError, r"n must be an int >= 1, got 0$"),
])
def test_check_int_refuses_naming_the_argument_and_the_fix(value, error, match):
    with pytest.raises(error, match=match):
        check_int("n", value, low=1)


def test_check_int_bounds_and_optional():
    assert check_int("k", 5, low=1, high=5) == 5
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\], got 6"):
        check_int("k", 6, low=1, high=5)
    assert check_int("seed", None, optional=True) is None
    with pytest.raises(TypeError, match="seed must be an int >= 0 or None, got 1.5"):
        check_int("seed", 1.5, low=0, optional=True)
    assert check_int("offset", -3) == -3  # unbounded


@pytest.mark.parametrize("value, expected", [(1, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5), (np.int64(0), 0.0)])
def test_check_float_returns_a_float(value, expected):
    out = check_float("p", value, low=0.0, high=1.0)
    assert out == expected and type(out) is float


@pytest.mark.parametrize("value, kw, error, match", [
    (float("nan"), {}, ValueError, r"x must be a number \(finite\), got nan"),
    (float("inf"), {"low": 0.0}, ValueError, r"x must be a number >= 0, got inf"),
    (0.0, {"low": 0.0, "low_open": True}, ValueError, r"x must be a number > 0, got 0.0"),
    (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, ValueError, r"x must be a number in \[0, 1\), got 1.0"),
    (False, {}, TypeError, r"got False \(bool\)"),
    ("0.5", {}, TypeError, r"pass a number, not a string, e.g. x=0.5"),
    ([0.5], {}, TypeError, r"\(list\); pass a number"),
])
def test_check_float_refuses_naming_the_argument_and_the_fix(value, kw, error, match):
    with pytest.raises(error, match=match):
        check_float("x", value, **kw)


def test_check_float_and_check_int_optional():
    assert check_float("fill", None, optional=True) is None
    assert check_int("n", None, low=1, optional=True) is None
    assert check_float("x", 1, low=0) == 1.0 and type(check_float("x", 1)) is float
    with pytest.raises(TypeError, match="n must be an int >= 1 or None"):
        check_int("n", 4.0, low=1, optional=True)


# -- intervals, sizes ---------------------------------------------------------------------------------------------
def test_check_interval():
    assert check_interval("r", [1, 2]) == (1.0, 2.0) and all(type(v) is float for v in check_interval("r", (1, 2)))
    with pytest.raises(ValueError, match=r"min <= max, got \(0.5, 0.1\); swap them"):
        check_interval("scale", (0.5, 0.1))
    with pytest.raises(ValueError, match=r"scale\[1\] must be a number in \(0, 1\], got 2"):
        check_interval("scale", (0.5, 2), low=0.0, high=1.0, low_open=True)
    for bad in ("ab", 0.5, (1, 2, 3), torch.tensor([0.1, 0.2])):
        with pytest.raises(TypeError, match=r"scale must be a \(min, max\) pair of numbers"):
            check_interval("scale", bad)


def test_check_size():
    assert check_size("size", 8) == (8, 8) and check_size("size", [4, 6]) == (4, 6)
    assert check_size("size", None, optional=True) is None
    with pytest.raises(ValueError, match=r"size\[1\] must be an int >= 1, got 0"):
        check_size("size", (4, 0))
    with pytest.raises(TypeError, match="size must be a positive int or an"):
        check_size("size", None)
    with pytest.raises(TypeError, match="size must be a positive int"):
        check_size("size", True)


# -- targets ------------------------------------------------------------------------------------------------------
def test_check_targets_accepts_both_spellings_and_deprecates_label():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_targets("targets", "labels", "X") == "labels"
        assert check_targets("targets", "predicted", "X") == "predicted"
    deprecated = r"X\(targets='label'\) is deprecated: the spelling is targets='labels'"
    with pytest.warns(DeprecationWarning, match=deprecated):
        assert check_targets("targets", "label", "X") == "labels"
    for bad in ("truth", None, 1):
        with pytest.raises(ValueError, match=r"targets must be one of \('labels', 'predicted'\)"):
            check_targets("targets", bad, "X")


# -- indices ------------------------------------------------------------------------------------------------------
def test_resolve_index():
    assert [resolve_index(i, 4) for i in (0, 3, -1, -4)] == [0, 3, 3, 0]
    assert resolve_index(np.int64(-2), 4) == 2 and resolve_index(torch.tensor(1), 4) == 1
    with pytest.raises(IndexError, match=r"index -5 out of range for a dataset of length 4 \(valid: -4 to 3\)"):
        resolve_index(-5, 4)
    with pytest.raises(IndexError, match=r"index 0 out of range for the 0 masks in 'm.salm' \(it is empty\)"):
        resolve_index(0, 0, "the 0 masks in 'm.salm'")
    for bad in (1.0, True, torch.tensor(1.0), torch.tensor([1]), "1"):
        with pytest.raises(TypeError, match=r"indices of a dataset of length 4 must be integers, got .*; use get$"):
            resolve_index(bad, 4, hint="; use get")


# -- value checks -------------------------------------------------------------------------------------------------
def test_set_value_checks_is_public_and_switches_value_reads():
    from salaug.validation import set_value_checks

    assert salaug.set_value_checks is set_value_checks
    cpu = torch.zeros(1)
    meta = torch.empty(1, device="meta")
    try:
        assert value_checks_on(cpu) and not value_checks_on(meta)
        set_value_checks("always")
        assert value_checks_on(cpu) and value_checks_on(meta)
        set_value_checks("never")
        assert not value_checks_on(cpu)
    finally:
        set_value_checks("cpu")
    with pytest.raises(ValueError, match="'cpu', 'always' or 'never', got 'sometimes'"):
        set_value_checks("sometimes")  # type: ignore[arg-type]


def test_to_soft_labels_is_defined_in_the_public_labels_module():
    from salaug.transforms import labels

    assert labels.to_soft_labels.__module__ == "salaug.transforms.labels"
    import salaug._checks

    assert not hasattr(salaug._checks, "to_soft_labels")  # no re-export shim, so no import circle
    assert salaug.transforms.to_soft_labels is labels.to_soft_labels
