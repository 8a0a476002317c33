"""URLs and storage options: checks at the trust boundary (``check_url``; redaction itself is in
unet/errors.py), `--storage-option KEY=VALUE` parsing, credentials from the driver's environment for Ray
actors, and location comparison (an output must not sit inside its input)."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from unet.errors import UNetError, redact, remember_secrets, remember_url_secrets, split_url, url_chain

_S3_PROTOCOLS = ("s3", "s3a")
_NEEDS_HOST = ("s3", "s3a", "gs", "gcs", "http", "https", "az", "abfs", "abfss")
_SIGNED = ("http", "https")  # where a query string can sign a URL to one object


def check_url(url: str, what: str, *, output: bool = False) -> None:
    """Refuse, in one line, a URL that cannot be used as given: an unknown scheme, credentials in it (never
    shown: they belong in --storage-option or the environment), no host, or a query string where none can
    work (on an OUTPUT, or outside http(s)). Secrets it carries are remembered for redaction first."""
    for part in url_chain(url):
        if "://" not in part:
            continue
        scheme, host, _, userinfo, query = split_url(part)
        remember_url_secrets(userinfo, query)
        name = f"{what} {redact(url)}"
        if userinfo:
            raise UNetError(f"{name}: expected no credentials in the URL, found user info (not shown); pass them "
                            "with --storage-option (e.g. key=…, secret=… for S3) or the AWS_* environment variables")
        _check_scheme(scheme, name)
        if not host and scheme in _NEEDS_HOST:
            raise UNetError(f"{name}: expected a bucket or host after {scheme}://, found none")
        if query and (output or scheme not in _SIGNED):
            where = "on an OUTPUT (it is a folder of many objects)" if output else f"on {scheme}:// URLs"
            raise UNetError(f"{name}: expected no query string {where}, found one (not shown); drop the '?…' part")


def _check_scheme(scheme: str, name: str) -> None:
    """The scheme must be one fsspec knows, with its library installed."""
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*", scheme):
        raise UNetError(f"{name}: expected a URL scheme such as s3:// or https://, found an invalid one")
    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise UNetError(f"{name}: expected a storage protocol fsspec knows (file, s3, gs, https, …), "
                        f"found {scheme[:20]!r}") from None
    except ImportError:
        raise UNetError(f"{name}: the library for {scheme}:// is not installed; install the fsspec "
                        f"implementation for {scheme[:20]!r} (e.g. gcsfs for gs://)") from None


def is_local(url: str) -> bool:
    """Whether ``url`` is a local path or a ``file://`` URL."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    """The absolute local path of a local path or ``file://`` URL."""
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def protocol(url: str) -> str:
    """The fsspec protocol of ``url`` ("file" for local paths; the outermost one of a chain)."""
    return url.split("::")[0].split("://")[0] if "://" in url else "file"


def fs_and_path(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def open_store(url: str, storage_options: Mapping[str, Any] | None = None, read_only: bool = False):
    """The Zarr store at ``url``: a LocalStore for local paths, an FsspecStore for any other URL."""
    from zarr.storage import FsspecStore, LocalStore

    if is_local(url):
        return LocalStore(local_path(url), read_only=read_only)
    return FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Options from repeated ``KEY=VALUE`` strings; values are JSON when they parse, dotted keys nest.

    ``["anon=true", "client_kwargs.endpoint_url=http://h:9000"]`` ->
    ``{"anon": True, "client_kwargs": {"endpoint_url": "http://h:9000"}}``.
    """
    options: dict[str, Any] = {}
    for number, pair in enumerate(pairs, start=1):
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():  # never echo the pair: it may be a secret without its key
            raise UNetError(f"storage option #{number}: expected KEY=VALUE (e.g. anon=true), "
                            f"found {'no' if not sep else 'an empty key before the'} '='")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = text
        *parents, leaf = key.strip().split(".")
        _merge(options, parents + [leaf], value, number)
    return options


def _merge(options: dict[str, Any], keys: list[str], value: Any, number: int) -> None:
    node = options
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if last and isinstance(value, dict) and isinstance(node.get(key), dict):
            for sub_key, sub_value in value.items():
                _merge(node[key], [sub_key], sub_value, number)
            return
        if last:
            node[key] = value
            return
        if key in node and not isinstance(node[key], dict):
            raise UNetError(f"storage option #{number}: key {'.'.join(keys[:depth + 1])!r} was already "
                            f"given a value, so it cannot also have sub-keys; give it once")
        node = node.setdefault(key, {})


def check_storage_options(options: Mapping[str, Any], prefix: str = "") -> None:
    """Remember the secrets among ``options`` for redaction, and check every endpoint URL they name."""
    remember_secrets(options)
    for name, value in options.items():
        if isinstance(value, Mapping):
            check_storage_options(value, f"{prefix}{name}.")
        elif "endpoint" in str(name) and isinstance(value, str):
            check_url(value, f"storage option {prefix}{name}")


def resolve_storage_options(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Complete options for ``url``: for s3:// URLs, fold in the driver's AWS environment variables.

    Ray actors may not see the driver's environment, so the driver passes the returned dict to them.
    Explicit options win; anonymous access gets no credentials.
    """
    options = copy.deepcopy(dict(storage_options or {}))
    if protocol(url) not in _S3_PROTOCOLS:
        return options
    env = os.environ
    if not options.get("anon") and "profile" not in options:
        for option, variable in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"),
                                 ("token", "AWS_SESSION_TOKEN")):
            if option not in options and env.get(variable):
                options[option] = env[variable]
    client_kwargs = options.setdefault("client_kwargs", {})
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
        client_kwargs["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region and "region_name" not in client_kwargs:
        client_kwargs["region_name"] = region
    if not client_kwargs:
        del options["client_kwargs"]
    remember_secrets(options)
    return options


def location(url: str) -> tuple[str, str]:
    """(protocol, normalised path) of a URL: local paths resolved, no credentials, query or trailing '/'."""
    if is_local(url):
        return "file", os.path.realpath(local_path(url))
    scheme = protocol(url)
    _, host, path, _, _ = split_url(url.split("::")[0])
    return ("s3" if scheme in _S3_PROTOCOLS else scheme), (host + path).rstrip("/")


def same_store(a: str, b: str) -> bool:
    """Whether two URLs name the same location."""
    return location(a) == location(b)


def is_inside(child: str, parent: str) -> bool:
    """Whether ``child`` is ``parent`` itself or lies below it."""
    (child_protocol, child_path), (parent_protocol, parent_path) = location(child), location(parent)
    if child_protocol != parent_protocol:
        return False
    return child_path == parent_path or child_path.startswith(parent_path.rstrip("/") + "/")
