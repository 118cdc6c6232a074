"""The `salaug` console script dispatches to the demo, the mask precomputation and the diagnosis."""

import pytest

from salaug.cli import main


def test_help_and_usage(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main([]) == 2


def test_unknown_command_is_an_argparse_error():
    with pytest.raises(SystemExit) as err:
        main(["train"])
    assert err.value.code == 2


@pytest.mark.parametrize("command, text", [("demo", "--method"), ("precompute-masks", "--arch")])
def test_subcommand_help(command, text, capsys):
    with pytest.raises(SystemExit) as err:
        main([command, "--help"])
    assert err.value.code == 0
    assert text in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "precompute-masks", "diagnose"))


def test_diagnose_is_dispatched_lazily_with_the_remaining_arguments(monkeypatch):
    import sys
    import types

    seen = []
    fake = types.ModuleType("salaug.diagnosis")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "salaug.diagnosis", fake)
    assert main(["diagnose", "--x", "1"]) == 7
    assert seen == [["--x", "1"]]


def test_diagnose_without_its_module_is_a_clear_usage_error(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "salaug.diagnosis", None)  # as if the module were absent
    with pytest.raises(SystemExit) as err:
        main(["diagnose"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "salaug diagnose: error:" in message and "salaug.diagnosis" in message and "Traceback" not in message


def test_a_missing_dependency_of_a_command_is_not_hidden(monkeypatch):
    import sys

    class Finder:  # the module exists but one of its own imports is missing
        def find_spec(self, name, path=None, target=None):
            if name == "salaug.diagnosis":
                raise ModuleNotFoundError("No module named 'somedep'", name="somedep")
            return None

    monkeypatch.delitem(sys.modules, "salaug.diagnosis", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(ModuleNotFoundError, match="somedep"):
        main(["diagnose"])
