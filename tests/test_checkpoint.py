"""Checkpoints are data, never code: round trips, and every kind of bad file refused with a CheckpointError
naming the file, without unpickling anything."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from unet import CheckpointError, InputContract, UNet, UNetError, load_checkpoint, save_checkpoint
from unet.nn.checkpoint import checkpoint_bytes, read_checkpoint_bytes

METADATA = {"class_names": ["background", "cell"], "provenance": {"run": "2025-01-01", "epochs": 3},
            "note": "ünïcode ok"}


def _model(**kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(**{"depth": 3, "base_channels": 2, **kwargs}).eval()


@pytest.fixture
def saved(tmp_path) -> tuple[UNet, Path]:
    model = _model(in_channels=2, num_classes=3, upsampling="upsample_conv", batch_norm=True, dropout=0.1,
                   input=InputContract(channels=2, dtype="uint16", value_range=(0, 4095), offset=(100, 200),
                                       scale=(50, 60)))
    with torch.no_grad():  # non-trivial batch-norm statistics, so buffers must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, **METADATA)
    return model, path


def _same_outputs(a: UNet, b: UNet, channels: int) -> bool:
    x = torch.randn(2, channels, 52, 60)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# -- round trips -----------------------------------------------------------------------------------
def test_round_trip_gives_identical_model_config_and_metadata(saved):
    model, path = saved
    loaded, metadata = load_checkpoint(path)
    assert loaded.config == model.config
    assert metadata == METADATA
    assert _same_outputs(model, loaded, 2)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not loaded.training


@pytest.mark.parametrize("as_", [str, Path, lambda p: f"file://{p}"])
def test_load_from_path_kinds_and_from_bytes(saved, as_):
    model, path = saved
    from_path, _ = load_checkpoint(as_(path))
    from_bytes, metadata = load_checkpoint(path.read_bytes())
    assert metadata == METADATA and read_checkpoint_bytes(as_(path)) == path.read_bytes()
    assert _same_outputs(from_path, from_bytes, 2) and _same_outputs(model, from_bytes, 2)


def test_checkpoint_bytes_hold_the_same_checkpoint_as_the_file(saved):
    model, path = saved
    loaded, metadata = load_checkpoint(checkpoint_bytes(model, **METADATA))
    assert metadata == METADATA and loaded.config == model.config and _same_outputs(model, loaded, 2)
    assert os.listdir(path.parent) == [path.name]               # the atomic write leaves nothing behind


def test_every_header_length_loads():
    """A safetensors file starts with its header length, little-endian: a length of 128 mod 256 begins
    with the byte 0x80, the same as a pickle. Such a checkpoint is still a valid checkpoint."""
    model = _model(depth=2, base_channels=1)
    lengths = set()
    for k in range(0, 264, 3):                                   # header lengths step by 8: cover all 32
        data = checkpoint_bytes(model, note="x" * k)
        lengths.add(struct.unpack("<Q", data[:8])[0] % 256)
        loaded, metadata = load_checkpoint(data)
        assert metadata == {"note": "x" * k}
    assert 128 in lengths and len(lengths) == 32
    base = struct.unpack("<Q", checkpoint_bytes(model, note="")[:8])[0]
    for k in range(0x4B50 - base - 8, 0x4B50 - base + 8):        # a header of 0x4B50 bytes begins with "PK"
        data = checkpoint_bytes(model, note="x" * k)
        if data.startswith(b"PK"):
            assert load_checkpoint(data)[1] == {"note": "x" * k}
            break
    else:
        pytest.fail("no header of 0x4B50 bytes")


# -- refusals --------------------------------------------------------------------------------------
def _refused(source, name: str | None = None, *words: str) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(source)
    assert isinstance(err.value, UNetError) and isinstance(err.value, ValueError)
    message = str(err.value)
    if name is not None:
        assert name in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def test_missing_file_is_refused(tmp_path):
    _refused(tmp_path / "nope.safetensors", str(tmp_path / "nope.safetensors"), "not found")


def test_directory_is_refused(tmp_path):
    _refused(tmp_path, str(tmp_path), "directory")


@pytest.mark.parametrize("cut", [lambda n: n // 2, lambda n: n - 1, lambda n: 9 * n // 10, lambda n: 0,
                                 lambda n: 3, lambda n: 8, lambda n: 20],
                         ids=["half", "last byte", "90%", "empty", "3 bytes", "length only", "20 bytes"])
def test_truncated_file_is_refused(saved, cut):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[:cut(len(data))])
    _refused(path, str(path))


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_are_refused(tmp_path, seed):
    path = tmp_path / f"random{seed}.safetensors"
    rng = np.random.default_rng(seed)
    data = rng.bytes(int(rng.integers(1, 5000)))
    if seed == 0:
        data = b"\x80" + data                                    # looks like a pickle at first
    path.write_bytes(data)
    _refused(path, str(path))


def _forbid_unpickling(monkeypatch) -> None:
    """Fail loudly if anything tries to unpickle or torch.load from here on."""
    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle a checkpoint")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)


class CreatesMarker:
    """Unpickling this creates a directory: proof that a pickle was (not) executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_pickle_is_refused_without_unpickling(tmp_path, protocol, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(CreatesMarker(marker), protocol=protocol))
    pickle.loads(path.read_bytes())                             # it really would run code
    assert marker.exists()
    marker.rmdir()
    _forbid_unpickling(monkeypatch)
    _refused(path, str(path))
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["state_dict", "evil"])
@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_file_is_refused_without_unpickling(tmp_path, payload, zip_format, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    obj = _model().state_dict() if payload == "state_dict" else {"x": CreatesMarker(marker)}
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    if payload == "evil":  # make sure the file really would run code when unpickled
        assert not marker.exists()
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.rmdir()
    _forbid_unpickling(monkeypatch)
    message = _refused(path, str(path))
    assert "pickle" in message
    assert not marker.exists()


def test_plain_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(_model().state_dict(), path)
    _refused(path, str(path), "unet-checkpoint")
    safetensors.torch.save_file(_model().state_dict(), path, metadata={"format": "pt"})
    _refused(path, str(path), "unet-checkpoint", "'pt'")


def _edit_header(data: bytes, edit) -> bytes:
    """Rewrite the JSON header of a safetensors file; tensor offsets are relative, so the data stays valid."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    edit(header["__metadata__"])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + size:]


def _set_config(key, value):
    def edit(meta):
        config = json.loads(meta["config"])
        config[key] = value
        meta["config"] = json.dumps(config)
    return edit


@pytest.mark.parametrize("edit,words", [
    (_set_config("base_channels", 3), ["does not match", "shape"]),
    (_set_config("depth", 4), ["does not match", "missing"]),
    (_set_config("depth", 2), ["does not match", "unexpected"]),
    (_set_config("batch_norm", False), ["does not match"]),
    (_set_config("num_classes", 5), ["does not match", "outc"]),
    (_set_config("colour", "blue"), ["config", "colour"]),
    (_set_config("depth", 1), ["config", "depth"]),
    (lambda meta: meta.update(config="{not json"), ["config"]),
    (lambda meta: meta.pop("config"), ["config"]),
    (lambda meta: meta.update(format_version="99"), ["version", "99"]),
    (lambda meta: meta.update(metadata="[unclosed"), ["header"]),
])
def test_header_that_does_not_fit_is_refused(saved, edit, words):
    _, path = saved
    path.write_bytes(_edit_header(path.read_bytes(), edit))
    _refused(path, str(path), *words)


def _edit_tensors(data: bytes, edit) -> bytes:
    """Rewrite the tensor entries of a safetensors header, the data left as it is."""
    (size,) = struct.unpack("<Q", data[:8])
    tensors = json.loads(data[8:8 + size])
    metadata = tensors.pop("__metadata__")
    edit(tensors)
    raw = json.dumps({"__metadata__": metadata, **tensors}).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + size:]


def _first(entries: dict) -> dict:
    return entries[sorted(entries)[0]]


@pytest.mark.parametrize("edit,words", [
    (_set_config("base_channels", 2**20), ["expected at most 1e+09 parameters", "base_channels 1048576"]),
    (_set_config("base_channels", 2**62), ["config"]),
    (_set_config("base_channels", 2.5), ["config"]),
    (_set_config("in_channels", "1"), ["config"]),
])
def test_config_that_asks_for_a_huge_or_impossible_network_is_refused_before_any_allocation(saved, edit, words,
                                                                                            monkeypatch):
    """The header alone decides: the real network is never built (it would be a 39 TB allocation)."""
    _, path = saved
    path.write_bytes(_edit_header(path.read_bytes(), edit))
    built, init = [], UNet.__init__

    def spy(self, *args, **kwargs):
        if torch.get_default_device().type != "meta":  # the meta device allocates nothing
            built.append(args)
        init(self, *args, **kwargs)
    monkeypatch.setattr(UNet, "__init__", spy)
    _refused(path, str(path), *words)
    assert not built


@pytest.mark.parametrize("edit,words", [
    (lambda t: _first(t).update(dtype="F16", data_offsets=[_first(t)["data_offsets"][0],
                                                           _first(t)["data_offsets"][1]]), ["bytes"]),
    (lambda t: _first(t).update(dtype="F64"), ["needs", "bytes"]),
    (lambda t: _first(t).update(dtype="C64"), ["expected a dtype"]),
    (lambda t: _first(t).update(shape=[-1]), ["shape and two data offsets"]),
    (lambda t: _first(t).update(data_offsets=[0, 10**12]), ["needs"]),
    (lambda t: [e.update(data_offsets=[e["data_offsets"][0] + 4, e["data_offsets"][1] + 4]) for e in t.values()],
     ["gap"]),
    (lambda t: t.clear(), ["truncated or padded"]),
])
def test_tensor_entries_that_do_not_fit_the_file_are_refused(saved, edit, words):
    _, path = saved
    path.write_bytes(_edit_tensors(path.read_bytes(), edit))
    _refused(path, str(path), *words)


def test_tensor_of_another_dtype_than_the_config_implies_is_refused(tmp_path):
    """Same shapes, half the bytes: a float16 checkpoint of a float32 network is not silently cast."""
    model = _model()
    half = {k: v.half() for k, v in model.state_dict().items()}
    header = {"format": "unet-checkpoint", "format_version": "1", "config": json.dumps(model.config.to_dict())}
    path = tmp_path / "half.safetensors"
    path.write_bytes(safetensors.torch.save(half, metadata=header))
    _refused(path, str(path), "is F16 of shape", "the config implies F32")


def test_checkpoint_larger_than_any_network_is_refused_unread(saved, monkeypatch):
    _, path = saved
    monkeypatch.setattr("unet.nn.checkpoint.MAX_CHECKPOINT_BYTES", 100)
    monkeypatch.setattr("fsspec.implementations.local.LocalFileSystem.cat_file",
                        lambda *a, **k: pytest.fail("the file was read"))
    _refused(path, str(path), "expected at most 100 bytes")


def test_unchanged_header_edit_still_loads(saved):
    """The editing helper itself keeps a valid checkpoint valid, so the refusals above are about the edits."""
    model, path = saved
    path.write_bytes(_edit_header(path.read_bytes(), lambda meta: None))
    assert _same_outputs(model, load_checkpoint(path)[0], 2)


def test_bytes_source_is_named_in_errors():
    _refused(b"\x80\x04garbage", "<bytes>", "pickle")


def test_save_leaves_no_partial_file_when_metadata_is_not_json(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises((TypeError, ValueError)):
        save_checkpoint(_model(), path, bad=object())
    assert os.listdir(tmp_path) == []


def test_device_or_fifo_is_refused_unread(tmp_path):
    """/dev/zero has no end: only regular files are read."""
    _refused("/dev/zero", "/dev/zero", "not a regular file")
    os.mkfifo(tmp_path / "fifo")
    _refused(tmp_path / "fifo", str(tmp_path / "fifo"), "not a regular file")
