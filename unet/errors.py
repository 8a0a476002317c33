"""The error root of every user-facing mistake, and the rule that no message carries a secret.

Each message names the input, what was expected and what was found; inputs are named by ``redact(url)``.
Redaction has two halves: URLs lose their user info and query strings wherever they appear in a text, and
every secret value the process has been given (storage options, AWS_* variables, user info, query
parameters) is masked wherever it appears, even where a library printed it without its URL.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

_CHAIN = re.compile(r"::(?=[a-zA-Z][a-zA-Z0-9+.-]*(?:://|::))")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]*[^\s\"'<>.,:;)\]]")  # a sentence's ':' is not in it
_SECRET_NAME = re.compile(r"key|secret|token|passw|credential|signature|sig$|sas|auth", re.IGNORECASE)
_SECRET_VARIABLE = re.compile(r"SECRET|TOKEN|PASSW|ACCESS_KEY|API_KEY|CREDENTIAL")
MIN_SECRET_LENGTH = 6  # shorter values cannot be told apart from ordinary words in a message
MASK = "***"
_secrets: set[str] = set()  # every secret value this process has been given; redact_text masks them


class UNetError(ValueError):
    """Bad input to the library or a job: the command line prints it as one line and exits with 2."""


class CheckpointError(UNetError):
    """A checkpoint that is missing, truncated, not safetensors, or whose config does not fit its weights."""


def redact(url: str) -> str:
    """``url`` without credentials (``user:password@``) and without any query string (signed URLs, tokens)."""
    return "::".join(_redact_one(part) for part in url_chain(url))


def redact_text(text: str) -> str:
    """``text`` (e.g. a library's error message) with every URL in it redacted and every known secret masked."""
    text = _URL_IN_TEXT.sub(lambda match: redact(match.group()), text)
    for secret in sorted(_secrets, key=len, reverse=True):  # a secret containing another goes first
        text = text.replace(secret, MASK)
    return text


def redact_json(value: Any) -> Any:
    """A JSON-like value (a report, output attributes) with ``redact_text`` applied to every string in it."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {redact_text(str(k)): redact_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(v) for v in value]
    return value


def remember_secrets(options: Mapping[str, Any]) -> None:
    """Note the secret values among (nested) storage options, e.g. ``key``, ``secret``, ``token``,
    ``headers.Authorization``: from now on ``redact_text`` masks them."""
    for name, value in options.items():
        if isinstance(value, Mapping):
            remember_secrets(value)
        elif isinstance(value, str) and _SECRET_NAME.search(str(name)):
            _remember(value)


def remember_argv_secrets(argv: Sequence[str]) -> None:
    """Note the secrets a command line holds before it is parsed, so that even a parse error that echoes
    a value is redacted: values of KEY=VALUE words with a secret-looking KEY, URLs' user info and queries."""
    for word in argv:
        for text in (word, word.partition("=")[2]):  # "--storage-option=secret=…" holds its pair past one '='
            key, sep, value = text.partition("=")
            if sep and _SECRET_NAME.search(key):
                _remember(value)
        for part in url_chain(word):
            if "://" in part:
                _, _, _, userinfo, query = split_url(part)
                remember_url_secrets(userinfo, query)


def remember_environment_secrets(environ: Mapping[str, str] = os.environ) -> None:
    """Note the values of secret environment variables (AWS_SECRET_ACCESS_KEY, *_TOKEN, …); values that
    name existing files (AWS_SHARED_CREDENTIALS_FILE) are locations, not secrets."""
    for name, value in environ.items():
        if _SECRET_VARIABLE.search(name) and not os.path.exists(value):
            _remember(value)


def _remember(value: str) -> None:
    if len(value) >= MIN_SECRET_LENGTH:
        _secrets.add(value)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message and traceback before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def _redact_one(url: str) -> str:
    if "://" not in url:
        return url  # a local path
    scheme, host, path, _, _ = split_url(url)
    return f"{scheme}://{host}{path}"


def url_chain(url: str) -> list[str]:
    """The URLs of an fsspec chain ("simplecache::s3://…"), split only where a protocol follows the '::',
    so that a password holding '::' stays in one piece."""
    return _CHAIN.split(url)


def split_url(url: str) -> tuple[str, str, str, str, str]:
    """(scheme, host, path, user info, query) of one URL, by plain string rules that never raise. User info
    is also found when its password holds a '/' or '@' (AWS secret keys may): "s3://KEY:abc/def@bucket/x";
    then more is taken as user info rather than less. "s3://bucket/key@2x" and "http://host:9000/a@b" have
    none: an '@' past the host without a password before it belongs to the path."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc = rest.split("/", 1)[0]
    password = ":" in netloc and not netloc.startswith("[") and not netloc.rpartition(":")[2].isdigit()
    at = rest.rfind("@") if "@" in netloc or password else -1  # past any '@' a password may hold
    if password and at < 0:
        at = len(netloc)  # "KEY:secret" with no host after it: all of it is user info
    userinfo, rest = (rest[:at], rest[at + 1:]) if at >= 0 else ("", rest)
    host, slash, path = rest.partition("/")
    return scheme, host, slash + path, userinfo, query


def remember_url_secrets(userinfo: str, query: str) -> None:
    """Note the user info of a URL and its query values as secrets."""
    for value in (userinfo, *userinfo.split(":"), query, *(v for _, v in parse_qsl(query))):
        _remember(value)


logging.getLogger("unet").addFilter(RedactingFilter())  # the package's logger: no secret reaches a handler
