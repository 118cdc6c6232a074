"""The `salaug` console script dispatches to the demo and the mask precomputation."""

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
