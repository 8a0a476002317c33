"""A checkpoint checked from its safetensors header alone, before any tensor or network is allocated.

A checkpoint may come from an untrusted bucket: its JSON header declares every tensor's dtype, shape and
byte range, and its metadata the config of the network to build. Both are checked here against the file's
size and against each other — the network the config implies is built on PyTorch's meta device, which
allocates nothing — so that a config asking for 2^20 base channels next to small tensors is refused in
one line instead of attempting a 39 TB allocation.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import TypeGuard

import torch

from unet.errors import CheckpointError
from unet.nn.config import UNetConfig
from unet.nn.model import UNet

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
MAX_PARAMETERS = 10**9          # 32x the paper's network (31,030,658); 4 GB of float32
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
_PICKLE_SIGNATURES = {b"\x80": "a Python pickle", b"PK": "a torch.save (zip/pickle) archive"}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # byte range inside the data section


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def read_header(data: bytes, name: str) -> Header:
    """The header of the safetensors file ``data``, its byte ranges checked against the file's size."""
    _refuse_pickles(data, name)
    if len(data) < 8:
        raise CheckpointError(f"checkpoint {name}: expected a safetensors file, found {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(len(data) - 8, MAX_HEADER_BYTES):
        raise CheckpointError(f"checkpoint {name}: truncated or not safetensors (header claims {size} bytes, "
                              f"file has {len(data) - 8})")
    try:
        raw = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"checkpoint {name}: expected a safetensors JSON header, "
                              "found unparsable bytes") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {name}: expected a JSON object as header, found {type(raw).__name__}")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"checkpoint {name}: expected header metadata of strings, found {type(metadata).__name__}")
    tensors = {key: _entry(key, value, name) for key, value in raw.items()}
    _check_layout(tensors, len(data) - 8 - size, name)
    return Header(tensors, metadata)


def _refuse_pickles(data: bytes, name: str) -> None:
    looks_like_safetensors = data[8:9] == b"{"  # its 8-byte header length may itself begin with 0x80 or "PK"
    for signature, kind in _PICKLE_SIGNATURES.items():
        if data.startswith(signature) and not looks_like_safetensors:
            raise CheckpointError(f"checkpoint {name}: expected a safetensors file, found {kind}; "
                                  "pickles are never loaded (they can run code)")


def _entry(key: str, value: object, name: str) -> TensorEntry:
    """A tensor's header entry: a known dtype, a shape of sizes >= 0, a byte range that fits them."""
    shown = key[:60]
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint {name}: tensor {shown!r}: expected an entry of dtype, shape and "
                              f"data offsets, found {type(value).__name__}")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"checkpoint {name}: tensor {shown!r}: expected a dtype of "
                              f"{', '.join(DTYPES)}, found {str(dtype)[:20]!r}")
    if not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
        raise CheckpointError(f"checkpoint {name}: tensor {shown!r}: expected a shape and two data offsets "
                              "of integers >= 0, found something else")
    size = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != size:
        raise CheckpointError(f"checkpoint {name}: tensor {shown!r}: its shape {tuple(shape)} needs {size} "
                              f"bytes, found a range of {offsets[1] - offsets[0]}")
    return TensorEntry(dtype, tuple(shape), (offsets[0], offsets[1]))


def _ints(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                           for v in value)


def _check_layout(tensors: dict[str, TensorEntry], data_bytes: int, name: str) -> None:
    """The tensors' byte ranges tile the data section exactly: no gap, no overlap, nothing past its end."""
    end = 0
    for entry in sorted(tensors.values(), key=lambda e: e.offsets):
        if entry.offsets[0] != end:
            raise CheckpointError(f"checkpoint {name}: expected tensor data to follow each other, found a "
                                  f"{'gap' if entry.offsets[0] > end else 'overlap'} at byte {end}")
        end = entry.offsets[1]
    if end != data_bytes:
        raise CheckpointError(f"checkpoint {name}: truncated or padded: the header declares {end} bytes of "
                              f"tensors, the file holds {data_bytes}")


def config_of(header: Header, name: str) -> tuple[UNetConfig, dict]:
    """The network config and the user's metadata recorded in the header."""
    try:
        config = UNetConfig.from_dict(json.loads(header.metadata["config"]))
        metadata = json.loads(header.metadata.get("metadata", "{}"))
    except KeyError as e:
        raise CheckpointError(f"checkpoint {name}: invalid model config in header (missing {e})") from None
    except (TypeError, ValueError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {name}: invalid model config in header ({str(e)[:200]})") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {name}: expected the metadata as a JSON object, "
                              f"found {type(metadata).__name__}")
    return config, metadata


def check_tensors(header: Header, config: UNetConfig, name: str) -> None:
    """The header's tensors are the ones ``config`` implies (names, shapes, dtypes), and not too many."""
    expected = implied_tensors(config, name)
    count = sum(math.prod(shape) for shape, _ in expected.values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"checkpoint {name}: expected at most {MAX_PARAMETERS:.0e} parameters, found a "
                              f"config that implies {count:.3g} (base_channels {config.base_channels}, "
                              f"depth {config.depth})")
    found = {k: (e.shape, e.dtype) for k, e in header.tensors.items()}
    if found == expected:
        return
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    detail = (f"missing {missing[:3]}" if missing else f"unexpected {[k[:60] for k in extra[:3]]}" if extra
              else f"{wrong[0]} is {_show(found[wrong[0]])}, the config implies {_show(expected[wrong[0]])}")
    raise CheckpointError(f"checkpoint {name}: config does not match weights: {detail}")


def implied_tensors(config: UNetConfig, name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, safetensors dtype)} of the network ``config`` describes, built on the meta device."""
    dtype_names = {v: k for k, v in DTYPES.items()}
    try:
        with torch.device("meta"):
            model = UNet(config)
    except (RuntimeError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {name}: invalid model config in header ({str(e)[:200]})") from None
    return {k: (tuple(v.shape), dtype_names[v.dtype]) for k, v in model.state_dict().items()}


def _show(entry: tuple[tuple[int, ...], str]) -> str:
    shape, dtype = entry
    return f"{dtype} of shape {shape}"
