"""The job's input contract: the bad-input table (exit 2, one line, nothing written), OME-Zarr labels
written into their image, dtype rescaling, and the command line as a newcomer runs it."""

from __future__ import annotations

import json
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from cases import BAD_INPUTS
from helpers import run_segment, write_ome_image

from unet import InputContract, UNet, predict_image, save_checkpoint
from unet.api import main
from unet.cli import run
from unet.errors import UNetError
from unet.job.options import SegmentOptions
from unet.nn.checkpoint import checkpoint_bytes

pytestmark = pytest.mark.usefixtures("ray_cluster")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def uint8_checkpoint(tmp_path_factory):
    """A small model trained (so its contract says) on uint8 values 0..255."""
    torch.manual_seed(1)
    contract = InputContract(channels=1, dtype="uint8", value_range=(0.0, 255.0), offset=(128.0,), scale=(64.0,))
    model = UNet(depth=3, base_channels=4, input=contract).eval()
    path = tmp_path_factory.mktemp("ckpt") / "u8.safetensors"
    save_checkpoint(model, path, class_names=["background", "cell"])
    return model, str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (130, 170), dtype=np.uint8)
    zarr.create_array(str(root / "gray.zarr"), data=gray, chunks=(64, 64))
    zarr.create_array(str(root / "line.zarr"), data=np.zeros(50, np.uint8))
    zarr.create_array(str(root / "4d.zarr"), data=np.zeros((2, 2, 20, 20), np.uint8))
    zarr.create_array(str(root / "rgb.zarr"), data=np.zeros((3, 40, 40), np.uint8))
    zarr.create_array(str(root / "u16.zarr"), data=gray.astype(np.uint16) * 257, chunks=(64, 64))
    (root / "notzarr").mkdir()
    (root / "notzarr" / "readme.txt").write_text("hello")
    (root / "manifest.txt").write_text(f"{root / 'gray.zarr'}\n")
    (root / "model.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    save_checkpoint(UNet(depth=2, base_channels=2, input=InputContract(channels=1, dtype="uint8")),
                    root / "at-2um.safetensors", pixel_size={"value": 2.0, "unit": "micrometer"})
    write_ome_image(root / "ome.zarr", gray)
    write_hostile_inputs(root)
    return root, gray


def write_hostile_inputs(root: Path) -> None:
    """Inputs whose metadata alone must be refused: absurd arrays (no chunk is written), a checkpoint whose
    config asks for a 39 TB network beside small tensors, a plain file where an OUTPUT would go, manifests."""
    zarr.create_array(str(root / "pixel-chunks.zarr"), shape=(100_000, 100_000), chunks=(1, 1), dtype="uint8")
    zarr.create_array(str(root / "huge.zarr"), shape=(31_622_777,) * 2, chunks=(1024, 1024), dtype="uint8")
    zarr.create_array(str(root / "empty.zarr"), shape=(0, 10), dtype="uint8")
    contract = InputContract(channels=1, dtype="uint8", value_range=(0.0, 255.0))
    data = checkpoint_bytes(UNet(depth=3, base_channels=4, input=contract))
    (root / "huge-config.safetensors").write_bytes(with_config(data, base_channels=2**20))
    (root / "plain.txt").write_text("not an output")
    (root / "twice.txt").write_text(f"{root / 'gray.zarr'} {root / 'a.zarr'}\n{root / 'u16.zarr'} {root / 'a.zarr'}/\n")
    (root / "binary.txt").write_bytes(b"\xff\xfe gray.zarr out.zarr\n")


def with_config(data: bytes, **changes) -> bytes:
    """A checkpoint's bytes with its header's config changed, the tensors left as they are."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    header["__metadata__"]["config"] = json.dumps({**json.loads(header["__metadata__"]["config"]), **changes})
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + size:]


@pytest.mark.parametrize("name, argv, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(uint8_checkpoint, images, tmp_path, capsys,
                                                         name, argv, words):
    root, _ = images
    out = tmp_path / "out.zarr"
    args = argv.format(root=root, out=out).split()
    if "--ckpt" in args:
        args[args.index("--ckpt")] = "--checkpoint"
    else:
        args += ["--checkpoint", uint8_checkpoint[1]]
    before = snapshot(root)
    assert run(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert "Traceback" not in err and "s3cr3t" not in err and not out.exists()
    assert snapshot(root) == before


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    """(size, modification time) of everything under ``root``: an existing output must stay as it was."""
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("output", ["{input}", "{input}/inner.zarr"])
def test_output_inside_input_is_refused(uint8_checkpoint, images, capsys, output):
    root, _ = images
    url = str(root / "gray.zarr")
    before = sorted(p.name for p in Path(url).rglob("*"))
    assert run(main, [url, output.format(input=url), "--checkpoint", uint8_checkpoint[1]]) == 2
    assert "outside INPUT" in capsys.readouterr().err
    assert sorted(p.name for p in Path(url).rglob("*")) == before


@pytest.mark.parametrize("where", ["missing-bucket", "unreachable"])
def test_unreachable_object_store_is_refused(uint8_checkpoint, images, s3_server, tmp_path, capsys, where):
    root, _ = images
    endpoint = s3_server.endpoint_url if where == "missing-bucket" else "http://127.0.0.1:9"
    argv = [str(root / "gray.zarr"), "s3://no-such-bucket-here/out.zarr", "--checkpoint", uint8_checkpoint[1],
            "--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
    if where == "unreachable":
        argv[0:2] = ["s3://bucket/in.zarr", str(tmp_path / "out.zarr")]
    assert run(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "out.zarr").exists()


def test_as_label_writes_into_the_ome_image(uint8_checkpoint, images, tmp_path):
    model, ckpt = uint8_checkpoint
    root, gray = images
    image = tmp_path / "image.zarr"
    write_ome_image(image, gray)
    assert run_segment(image, "", ckpt, as_label="cells", chunk=64).complete
    labels = zarr.open_group(str(image / "labels" / "cells"), mode="r")
    np.testing.assert_array_equal(labels["0"][:], predict_image(model, gray).argmax(0))
    assert zarr.open_group(str(image / "labels"), mode="r").attrs["ome"]["labels"] == ["cells"]
    ms = labels.attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.25]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert labels.attrs["ome"]["image-label"]["source"] == {"image": "../../"}


def test_input_range_rescales_a_uint16_mosaic(uint8_checkpoint, images, tmp_path):
    model, ckpt = uint8_checkpoint
    root, gray = images
    out = tmp_path / "out.zarr"
    assert run_segment(root / "u16.zarr", out, ckpt, input_range=(0.0, 65535.0)).complete
    expected = predict_image(model, gray.astype(np.float32)).argmax(0)  # 257*v/65535*255 == v
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], expected)


def test_command_line_help_and_errors_as_a_newcomer_sees_them(images, tmp_path):
    script = [sys.executable, str(ROOT / "jobs" / "segment.py")]
    shown = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--checkpoint" in shown.stdout and "exit codes" in shown.stdout
    failed = subprocess.run([*script, str(tmp_path / "nope.zarr"), str(tmp_path / "o.zarr"),
                             "--checkpoint", str(tmp_path / "nope.safetensors")],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0
    assert "nope.safetensors" in failed.stderr and "not found" in failed.stderr


@pytest.mark.parametrize("field, value, words", [
    ("workers", 0, "--workers: expected an integer from 1 to 10000, found 0"),
    ("tile", 572.0, "--tile: expected an integer"),
    ("batch_size", True, "--batch-size: expected an integer"),
    ("block_timeout", float("inf"), "--block-timeout: expected a number > 0"),
    ("cpus_per_worker", 0.0, "--cpus-per-worker: expected a number > 0"),
    ("gpus_per_worker", -1, "--gpus-per-worker: expected a number >= 0"),
    ("device", "tpu", "--device: expected cpu, cuda or cuda:N"),
])
def test_options_built_in_python_are_range_checked_as_the_command_line_is(field, value, words):
    with pytest.raises(UNetError, match=re.escape(words)):
        SegmentOptions(pairs=(("in.zarr", "out.zarr"),), checkpoint="m.safetensors", **{field: value})
