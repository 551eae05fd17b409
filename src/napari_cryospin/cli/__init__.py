"""The ``cryospin`` command line: one sub-command per module of this package.

Every failure goes through one funnel (``error_funnel.explain``): one line on stderr with the cause and
the fix, exit status 2 for bad settings or input, 1 for the machine (disk, permissions, memory) or a bug,
128 + N when signal N stopped a run. ``--debug`` prints the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback

from ..engine.error_funnel import exit_status, explain
from .stop_signals import RunStopped

_COMMANDS = ("simulate", "backproject", "evaluate", "reconstruct", "expand", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="cryospin", description="Ab-initio cryo-EM reconstruction with cryoSPIN."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"napari_cryospin.cli.{name}")
        module.add_parser(sub)
    for command in sub.choices.values():  # also accepted after the sub-command
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cryospin`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.run(args) or 0)
    except RunStopped as stopped:
        name = signal.Signals(stopped.signum).name
        sys.stderr.write(f"cryospin {args.command}: {name}: {stopped.message}\n")
        return stopped.exit_status
    except (Exception, KeyboardInterrupt) as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"cryospin {args.command}: error: {explain(exc)}\n")
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
