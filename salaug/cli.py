"""Command line: ``salaug demo`` and ``salaug precompute-masks``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``salaug`` console script (also ``python -m salaug``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="salaug", description="Saliency-guided data augmentation.")
    parser.add_argument("command", choices=["demo", "precompute-masks"], help="what to run")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from salaug.demo import main as demo_main

        return demo_main(rest)
    if command == "precompute-masks":
        from salaug.data import precompute_main

        return precompute_main(rest)
    parser.parse_args(argv[:1])  # prints the usage error and exits
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
