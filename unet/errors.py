"""The error root of every user-facing mistake, and the rule that no message carries a secret.

Each message names the input, what was expected and what was found; inputs are named by ``redact(url)``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


class UNetError(ValueError):
    """Bad input to the library or a job: the command line prints it as one line and exits with 2."""


class CheckpointError(UNetError):
    """A checkpoint that is missing, truncated, not safetensors, or whose config does not fit its weights."""


def redact(url: str) -> str:
    """``url`` without credentials (``user:password@``) and without any query string (signed URLs, tokens)."""
    return "::".join(_redact_one(part) for part in url.split("::"))  # fsspec chains: "simplecache::s3://…"


def redact_text(text: str) -> str:
    """``text`` (e.g. a library's error message) with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda match: redact(match.group()), text)


def _redact_one(url: str) -> str:
    if "://" not in url:
        return url  # a local path
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
