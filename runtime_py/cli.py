"""``python -m runtime_py COMMAND ...``: one small argparse dispatcher for the toolkit's commands.

A command is one function ``add_<name>_parser(subparsers)`` that adds its sub-parser and sets
``handler=<function(args) -> int>`` as a default. To add a command, append its
``"module:function"`` to :data:`SUBCOMMANDS`; modules are imported only when the parser is built,
and handlers should import heavy dependencies lazily so that ``--help`` stays fast.

Errors a user can fix (bad inputs, unavailable backends, missing files) are printed as one
``error: ...`` line with exit status 2; anything else is a bug and keeps its traceback.

``--verbose`` (before or after the command) shows the known-harmless third-party messages that are
otherwise hidden (:mod:`runtime_py.third_party_logs`).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Callable, Sequence

from .third_party_logs import show_hidden_messages

#: ``"module:function"`` of every command's ``add_<name>_parser``, in the order shown by --help.
SUBCOMMANDS: list[str] = [
    "runtime_py.render_cli:add_render_parser",
    "runtime_py.checkpoints.cli:add_convert_parser",
    "runtime_py.checkpoints.synthetic_cli:add_make_checkpoint_parser",
    "runtime_py.parity_cli:add_parity_parser",
    "runtime_py.golden:add_golden_parser",
]


class CLIError(Exception):
    """A command-line usage problem the user can fix; printed without a traceback."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions printed as ``error: <message>`` instead of a traceback.

    Imported when an error is raised, not at start-up: ``--help`` loads no torch.
    """
    from .backends.base import BackendUnavailableError
    from .golden import GoldenError
    from .images import InputError
    from .tiling import TilingError

    return (CLIError, InputError, TilingError, BackendUnavailableError, GoldenError)


def _load_builder(spec: str) -> Callable[[argparse._SubParsersAction], None]:
    module_name, _, function_name = spec.partition(":")
    return getattr(import_module(module_name), function_name)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="python -m runtime_py",
        description="MagicBokeh mobile toolkit: render, convert and compare bokeh models.",
    )
    verbose_help = "also show the known-harmless third-party messages that are hidden by default"
    parser.add_argument("--verbose", action="store_true", help=verbose_help)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in SUBCOMMANDS:
        _load_builder(spec)(subparsers)
    for command in subparsers.choices.values():  # also accepted after the command
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` when None), run the command, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        show_hidden_messages()
    handler = getattr(args, "handler", None)
    if handler is None:  # a command that forgot set_defaults(handler=...)
        parser.error(f"command {args.command!r} has no handler")
    try:
        return int(handler(args) or 0)
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
