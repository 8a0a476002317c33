"""What every command line shares: one-line errors with exit code 2, tracebacks only under --debug."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from unet.errors import UNetError

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; print bad input as one line on stderr and return 2 (re-raise under --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args)
    except UNetError as e:
        if "--debug" in args:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
