"""Shared fixtures: the devices and dtypes the hot paths (transforms, CAM engine, augmenter) run on.

``device`` follows the ``--device`` option, as in kornia's test suite: ``cpu`` (the default) runs
on the CPU only; ``cuda`` runs every device test on the CPU and on the GPU (an error when CUDA is
not available). So one ``pytest --device cuda`` covers the hot paths on a GPU machine. ``dtype``
is every floating dtype the transforms accept for images. A test that takes them runs once per
combination.
"""

from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device", action="store", default="cpu", choices=("cpu", "cuda"),
        help="devices for the tests that take the `device` fixture: cpu (default) or cuda (cpu and cuda)",
    )


def devices(config: pytest.Config) -> list[str]:
    """The device names ``--device`` asks for."""
    if config.getoption("--device") == "cpu":
        return ["cpu"]
    if not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda was given but torch.cuda.is_available() is False")
    return ["cpu", "cuda"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``device``: ``torch.device`` to run on, one test per device of ``--device``."""
    if "device" in metafunc.fixturenames:
        names = devices(metafunc.config)
        metafunc.parametrize("device", [torch.device(n) for n in names], ids=names)


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
