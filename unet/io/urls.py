"""URLs and storage options: redaction for logs, `--storage-option KEY=VALUE` parsing, credentials from the
driver's environment for Ray actors, and location comparison (an output must not sit inside its input)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import fsspec

from unet.errors import UNetError, redact

_S3_PROTOCOLS = ("s3", "s3a")


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
        except ValueError:
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
    return options


def _location(url: str) -> tuple[str, str]:
    """(protocol, normalised path) of a URL: local paths resolved, no credentials, query or trailing '/'."""
    if is_local(url):
        return "file", os.path.realpath(local_path(url))
    scheme = protocol(url)
    parts = urlsplit(redact(url.split("::")[0]))
    path = (parts.netloc + parts.path).rstrip("/")
    return ("s3" if scheme in _S3_PROTOCOLS else scheme), path


def same_store(a: str, b: str) -> bool:
    """Whether two URLs name the same location."""
    return _location(a) == _location(b)


def is_inside(child: str, parent: str) -> bool:
    """Whether ``child`` is ``parent`` itself or lies below it."""
    (child_protocol, child_path), (parent_protocol, parent_path) = _location(child), _location(parent)
    if child_protocol != parent_protocol:
        return False
    return child_path == parent_path or child_path.startswith(parent_path.rstrip("/") + "/")
