"""Shared fixtures: the devices and dtypes the transform contract runs on.

``device`` is CPU always and CUDA when one is present; ``dtype`` is every floating dtype the
transforms accept for images. A test that takes them runs once per combination.
"""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """``torch.device`` to run on: ``cpu``, and ``cuda`` when available."""
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """Floating image dtype: float32, float64, float16, bfloat16."""
    return request.param


@pytest.fixture
def no_value_checks():
    """Value checks off for one test (as ``salaug.set_value_checks("never")`` on a GPU would be)."""
    import salaug
    import salaug._checks as checks

    before = checks._value_checks
    salaug.set_value_checks("never")
    yield
    salaug.set_value_checks(before)
