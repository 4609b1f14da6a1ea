"""Entry point: ``python -m runtime_py COMMAND ...`` (see :mod:`runtime_py.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
