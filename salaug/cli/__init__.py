"""Command line: ``salaug demo``, ``salaug diagnose`` and ``salaug precompute-masks``.

One module per subcommand (:mod:`salaug.cli.demo`, :mod:`salaug.cli.diagnose`,
:mod:`salaug.cli.precompute_masks`), each with ``build_parser()`` and ``main(argv) -> int``, imported
only when its command runs (``salaug demo`` pulls in Lightning, the others do not). The typed
``argparse`` helpers they share live in :mod:`salaug.cli._types` and are re-exported here.

The CLI sits on top of the library: library modules never import it, and ``import salaug`` loads
none of it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from salaug.cli import _types
from salaug.cli._types import *  # noqa: F403  (the typed argparse helpers, re-exported)

__all__ = ["COMMANDS", "main", *_types.__all__]

#: command -> (module holding its ``main(argv) -> int``, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("salaug.cli.demo", "train a small CNN on the embedded data and compare augmentations"),
    "diagnose": ("salaug.cli.diagnose", "diagnose what a trained model attends to"),
    "precompute-masks": ("salaug.cli.precompute_masks", "store CAM masks of a dataset in a file"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salaug", description="Saliency-guided data augmentation.",
        epilog="commands:\n" + "\n".join(f"  {name:18s}{help_}" for name, (_, help_) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), help="what to run (COMMAND --help for its options)")
    return parser


def _load(command: str) -> Callable[[list[str]], int]:
    module_name, _ = COMMANDS[command]
    main_of_command: Callable[[list[str]], int] = importlib.import_module(module_name).main
    return main_of_command


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``salaug`` console script (also ``python -m salaug``).

    Args:
        argv: the arguments after ``salaug`` (``None``: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 2 on a usage error (argparse exits with 2 itself).

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        usage: salaug [-h] {demo,diagnose,precompute-masks}
        ...
        0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.parse_args(argv[:1])  # prints the usage error and exits with 2
        return 2
    return _load(command)(rest)
