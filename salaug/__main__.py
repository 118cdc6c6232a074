"""``python -m salaug COMMAND ...``: the same as the ``salaug`` console script."""

from salaug.cli import main

raise SystemExit(main())
