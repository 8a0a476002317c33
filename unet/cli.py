"""What every command line shares: one-line errors with exit code 2, tracebacks only under --debug, and
every message redacted on its way out (URLs' credentials and queries, every secret the process was given)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from unet.errors import RedactingFilter, UNetError, redact_text, remember_environment_secrets

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UNetErrors (one line, exit 2) instead of a usage block and SystemExit."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):  # values may be secrets: name only the options
            words = message.split(":", 1)[1].split()
            options = [w.split("=", 1)[0] for w in words if w.startswith("-")]
            message = (f"unrecognized arguments: {' '.join(options) or 'none that are options'}"
                       + (f" and {len(words) - len(options)} other value(s)" if len(words) > len(options) else ""))
        raise UNetError(f"{self.prog}: {message}; see --help")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; print bad input as one line on stderr and return 2 (its traceback too under
    --debug); any other error prints its traceback and returns 1. Everything printed is redacted."""
    args = list(sys.argv[1:] if argv is None else argv)
    remember_environment_secrets()
    for handler in (logging.lastResort, *logging.getLogger().handlers):
        if handler is not None and not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    try:
        return main(args)
    except UNetError as e:
        if "--debug" in args:
            print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 - a bug: its traceback goes to stderr, redacted like everything else
        print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        return EXIT_BUG


def one_line(error: BaseException) -> str:
    """An error's message as one redacted line (library messages may span lines)."""
    return " ".join(redact_text(str(error)).split())
