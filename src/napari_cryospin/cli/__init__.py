"""The ``cryospin`` command line: one sub-command per module of this package.

Errors that come from the user's files (``ValueError`` subclasses such as ``ParticleFileError``) are
printed as one line naming the file and the fix, with exit status 2 — never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

_COMMANDS = ("simulate", "backproject", "evaluate", "reconstruct", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="cryospin", description="Ab-initio cryo-EM reconstruction with cryoSPIN."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"napari_cryospin.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cryospin`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, MemoryError) as exc:
        sys.stderr.write(f"cryospin {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"cryospin {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
