"""Checkpoints are data, never code: one safetensors file whose header holds the model config (with its
input contract), a format version and the user's metadata as JSON. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec
import safetensors.torch
import torch

from unet.errors import CheckpointError, redact
from unet.files import read_small_file
from unet.nn.header import MAX_HEADER_BYTES, MAX_PARAMETERS, check_tensors, config_of, read_header
from unet.nn.model import UNet

FORMAT = "unet-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 8 * MAX_PARAMETERS + MAX_HEADER_BYTES  # float64 at most: a larger file is refused unread


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
    """The raw bytes of a checkpoint at a path or fsspec URL; a file larger than any network is not read."""
    url = os.fspath(source)
    return read_small_file(url, storage_options, what=f"checkpoint {redact(url)}", expected="a safetensors file",
                           limit=MAX_CHECKPOINT_BYTES, error=CheckpointError)


def load_checkpoint(source: str | os.PathLike | bytes, device: str | torch.device | None = None,
                    storage_options: dict | None = None, name: str | None = None) -> tuple[UNet, dict[str, Any]]:
    """Rebuild the model from a checkpoint (path, URL or bytes); returns ``(model, metadata)``. ``name``
    is what errors call it (bytes read from a file should be called by the file's name). The header is
    checked against the file and the config (``unet.nn.header``) before anything is allocated."""
    name = name or ("<bytes>" if isinstance(source, bytes) else redact(os.fspath(source)))
    data = source if isinstance(source, bytes) else read_checkpoint_bytes(source, storage_options)
    header = read_header(data, name)
    if header.metadata.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {name}: expected format {FORMAT!r} in the header, "
                              f"found {header.metadata.get('format')!r}")
    if header.metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"checkpoint {name}: expected format version {FORMAT_VERSION}, "
                              f"found {header.metadata.get('format_version')!r}")
    config, metadata = config_of(header, name)
    check_tensors(header, config, name)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for corrupt data
        raise CheckpointError(f"checkpoint {name}: corrupt safetensors data ({str(e)[:200]})") from None
    with torch.device("meta"):  # no random initialisation (a second for the paper's network): the weights come next
        model = UNet(config)
    model.load_state_dict(tensors, assign=True)
    return model.to(device or "cpu").eval(), metadata
