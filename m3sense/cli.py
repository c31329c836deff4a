"""The ``m3sense`` command: one parser, sub-commands contributed by each package.

Each package with commands has a light ``<package>/cli.py`` whose ``register(subparsers)``
adds them; the handler imports the heavy modules (torch, bleak) only when it runs, so
``m3sense --help`` and ``m3sense tap`` start fast. A handler returns the exit code.
Errors the user can fix (bad input files, bad flags) raise :class:`UserError`, printed
as one line with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from common.argtypes import OneLineErrorParser
from common.errors import UserError

#: Packages whose ``cli.register`` adds sub-commands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "replay.cli",
    "bus.cli",
    "inference.cli",
    "ingest.cli",
    "preprocess.cli",
    "storage.cli",
    "labstream.cli",
    "m3sense.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(  # its sub-commands' parsers are of its class too: every usage error is one line
        prog="m3sense",
        description="Streaming affect monitor for the Empatica E4: ingest, preprocess, infer, store.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if hasattr(args, "bus_keys"):  # bus security (bus/cli.py): keys read and refusals said before anything runs
            from bus.cli import apply_bus_security

            apply_bus_security(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"m3sense {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
