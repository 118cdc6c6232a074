"""``python -m benchmarks.payoff`` from the repository root, or ``python benchmarks/payoff``."""

import os
import sys

if not __package__:  # run as a directory: Python put this folder first on sys.path
    _HERE = os.path.dirname(os.path.abspath(__file__))
    # its modules must not shadow the standard library's (``statistics``), and the repository root,
    # which holds the ``benchmarks`` namespace package, must be importable
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))

from benchmarks.payoff.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
