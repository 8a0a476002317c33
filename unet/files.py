"""Small untrusted files (a checkpoint, a manifest, a mask image) read whole, local or at any fsspec URL:
only a regular file of bounded size is read, so that a directory, a device such as /dev/zero or a
multi-gigabyte object is refused in one line instead of filling memory. Outside unet/io (it uses fsspec
alone), so that unet/nn's checkpoint reader may use it too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec

from unet.errors import UNetError, redact_text


def read_small_file(url: str, storage_options: Mapping[str, Any] | None, *, what: str, expected: str,
                    limit: int, error: type[UNetError] = UNetError) -> bytes:
    """The bytes of the regular file at ``url``, at most ``limit`` of them. Errors (of type ``error``) start
    with ``what`` (e.g. "checkpoint s3://b/m.safetensors") and say ``expected`` (e.g. "a safetensors file")."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        info = fs.info(path)
        kind, size = info.get("type"), info.get("size")
        if kind == "directory":
            raise error(f"{what}: expected {expected}, found a directory")
        if kind != "file":
            raise error(f"{what}: expected {expected}, found something that is not a regular file ({kind})")
        if size is not None and size > limit:
            raise error(f"{what}: expected at most {limit} bytes, found {size}")
        return fs.cat_file(path)
    except FileNotFoundError:
        raise error(f"{what}: file not found (expected {expected})") from None
    except (IsADirectoryError, NotADirectoryError):
        raise error(f"{what}: expected {expected}, found a directory or a path through a file") from None
    except PermissionError:
        raise error(f"{what}: access denied; check the credentials in --storage-option or the AWS_* "
                        "environment") from None
    except UNetError:
        raise
    except Exception as e:  # noqa: BLE001 - each filesystem has its own errors (botocore, aiohttp, …)
        raise error(f"{what}: cannot be read ({type(e).__name__}: {redact_text(str(e))[:200]})") from None
