"""Checkpoints are data, never code: one safetensors file whose header holds the model config (with its
input contract), a format version and the user's metadata as JSON. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import fsspec
import safetensors.torch
import torch

from unet.errors import CheckpointError, redact
from unet.nn.config import UNetConfig
from unet.nn.model import UNet

FORMAT = "unet-checkpoint"
FORMAT_VERSION = 1
_PICKLE_SIGNATURES = {b"\x80": "a Python pickle", b"PK": "a torch.save (zip/pickle) archive"}


def checkpoint_bytes(model: UNet, **metadata: Any) -> bytes:
    """The checkpoint of ``model`` as bytes; ``metadata`` must be JSON-serialisable."""
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
              "config": json.dumps(model.config.to_dict()), "metadata": json.dumps(metadata)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return safetensors.torch.save(tensors, metadata=header)


def save_checkpoint(model: UNet, path: str | os.PathLike, **metadata: Any) -> None:
    """Write ``model`` and ``metadata`` to ``path`` (a local path or fsspec URL), atomically when local."""
    data = checkpoint_bytes(model, **metadata)
    path = os.fspath(path)
    if "://" in path and not path.startswith("file://"):
        with fsspec.open(path, "wb") as f:
            f.write(data)
        return
    path = path.removeprefix("file://")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_checkpoint_bytes(source: str | os.PathLike, storage_options: dict | None = None) -> bytes:
    """The raw bytes of a checkpoint at a path or fsspec URL."""
    url = os.fspath(source)
    name = redact(url)  # a signed URL's query string is a secret
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {name}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {name}: expected a safetensors file, found a directory") from None


def load_checkpoint(source: str | os.PathLike | bytes, device: str | torch.device | None = None,
                    storage_options: dict | None = None, name: str | None = None) -> tuple[UNet, dict[str, Any]]:
    """Rebuild the model from a checkpoint (path, URL or bytes); returns ``(model, metadata)``. ``name``
    is what errors call it (bytes read from a file should be called by the file's name)."""
    name = name or ("<bytes>" if isinstance(source, bytes) else redact(os.fspath(source)))
    data = source if isinstance(source, bytes) else read_checkpoint_bytes(source, storage_options)
    header = _header(data, name)
    try:
        config = UNetConfig.from_dict(json.loads(header["config"]))
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {name}: invalid model config in header ({e})") from None
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error type for corrupt data
        raise CheckpointError(f"checkpoint {name}: corrupt safetensors data ({e})") from None
    with torch.device("meta"):  # no random initialisation (a second for the paper's network): the weights come next
        model = UNet(config)
    _check_weights(model, tensors, name)
    model.load_state_dict(tensors, assign=True)
    return model.to(device or "cpu").eval(), metadata


def _header(data: bytes, name: str) -> dict[str, str]:
    """The checkpoint's safetensors metadata, after refusing anything that is not our format."""
    looks_like_safetensors = data[8:9] == b"{"  # its 8-byte header length may itself begin with 0x80 or "PK"
    for signature, kind in _PICKLE_SIGNATURES.items():
        if data.startswith(signature) and not looks_like_safetensors:
            raise CheckpointError(f"checkpoint {name}: expected a safetensors file, found {kind}; "
                                  "pickles are never loaded (they can run code)")
    if len(data) < 8:
        raise CheckpointError(f"checkpoint {name}: expected a safetensors file, found {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise CheckpointError(f"checkpoint {name}: truncated or not safetensors (header claims {size} bytes, "
                              f"file has {len(data) - 8})")
    try:
        meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise CheckpointError(f"checkpoint {name}: expected a safetensors JSON header, found unparsable bytes") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {name}: expected format {FORMAT!r} in the header, "
                              f"found {meta.get('format')!r}")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"checkpoint {name}: expected format version {FORMAT_VERSION}, "
                              f"found {meta.get('format_version')!r}")
    return meta


def _check_weights(model: UNet, tensors: dict[str, torch.Tensor], name: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected == found:
        return
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [k for k in expected.keys() & found.keys() if expected[k] != found[k]]
    detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
              else f"{wrong[0]} has shape {found[wrong[0]]}, the config implies {expected[wrong[0]]}")
    raise CheckpointError(f"checkpoint {name}: config does not match weights: {detail}")
