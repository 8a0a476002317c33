"""The job's input contract: the bad-input table (exit 2, one line, nothing written), OME-Zarr labels
written into their image, dtype rescaling, and the command line as a newcomer runs it."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from unet import InputContract, UNet, predict_image, save_checkpoint
from unet.cli import run
from unet.job.options import main

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
    write_ome_image(root / "ome.zarr", gray)
    return root, gray


def write_ome_image(path: Path, image: np.ndarray) -> None:
    """A one-level OME-NGFF 0.5 image with a pixel size, as an imaging pipeline would write it."""
    group = zarr.create_group(str(path))
    group.create_array("0", data=image, chunks=(64, 64), dimension_names=("y", "x"))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.25]}]}]}]}


BAD_INPUTS = [  # (input, argv with {root} {out} {ckpt} placeholders, words the message must contain)
    ("INPUT that does not exist", "{root}/missing {out}", "not found"),
    ("INPUT that is not Zarr, OME-Zarr or TIFF", "{root}/notzarr {out}", "expected a Zarr"),
    ("1-D array", "{root}/line.zarr {out}", "found shape (50,)"),
    ("4-D array", "{root}/4d.zarr {out}", "found shape (2, 2, 20, 20)"),
    ("--axes other than yx, cyx, yxc", "{root}/gray.zarr {out} --axes zyx", "expected axes yx, cyx, yxc"),
    ("--level the image does not have", "{root}/ome.zarr {out} --level 3", "level"),
    ("channels unlike the checkpoint's", "{root}/rgb.zarr {out}", "expected 1 channel(s)"),
    ("dtype unlike the checkpoint's", "{root}/u16.zarr {out}", "pass --input-range LO,HI"),
    ("--input-range not LO,HI", "{root}/gray.zarr {out} --input-range 5", "expected LO,HI"),
    ("--input-range with LO >= HI", "{root}/gray.zarr {out} --input-range 9,1", "expected LO < HI"),
    ("--block not a multiple of --chunk", "{root}/gray.zarr {out} --chunk 64 --block 100", "multiple of --chunk"),
    ("--shard not a multiple of --chunk", "{root}/gray.zarr {out} --chunk 64 --shard 96", "multiple of --chunk 64"),
    ("OUTPUT missing", "{root}/gray.zarr", "OUTPUT: expected an output location"),
    ("OUTPUT inside INPUT", "{root}/gray.zarr {root}/gray.zarr/labels", "expected a location outside INPUT"),
    ("OUTPUT holding something else", "{root}/gray.zarr {root}/rgb.zarr", "pass --overwrite to replace it"),
    ("--as-label on a plain array", "{root}/gray.zarr --as-label cells", "expected an OME-Zarr image as INPUT"),
    ("--as-label with an OUTPUT", "{root}/ome.zarr {out} --as-label cells", "expected no OUTPUT"),
    ("--manifest and INPUT OUTPUT", "{root}/gray.zarr {out} --manifest {root}/manifest.txt",
     "expected either --manifest or INPUT OUTPUT"),
    ("--manifest line without two fields", "--manifest {root}/manifest.txt", "expected 'INPUT OUTPUT'"),
    ("--storage-option without =", "{root}/gray.zarr {out} --storage-option anon", "expected KEY=VALUE"),
    ("--checkpoint that does not exist", "{root}/gray.zarr {out} --ckpt {root}/missing.safetensors",
     "missing.safetensors: file not found"),
    ("--checkpoint that is a pickle", "{root}/gray.zarr {out} --ckpt {root}/model.pt",
     "model.pt: expected a safetensors file, found a Python pickle"),
    ("--object-classes without --objects", "{root}/gray.zarr {out} --object-classes 1",
     "expected together with --objects"),
    ("--object-classes the checkpoint does not have", "{root}/gray.zarr {out} --objects --object-classes 7",
     "expected classes 0..1 or names"),
    ("--min-area below 0", "{root}/gray.zarr {out} --objects --min-area -1", "expected a number of pixels >= 0"),
    ("--roi that does not exist", "{root}/gray.zarr {out} --roi {root}/missing-roi.png",
     "not found (expected a 2-D Zarr array or a PNG/TIFF/JPEG mask)"),
    ("--roi that is not a 2-D mask", "{root}/gray.zarr {out} --roi {root}/4d.zarr", "expected a 2-D mask (y, x)"),
]


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
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert run(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert "Traceback" not in err and not out.exists()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


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
    assert run(main, [str(image), "--as-label", "cells", "--checkpoint", ckpt, "--chunk", "64"]) == 0
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
    assert run(main, [str(root / "u16.zarr"), str(out), "--checkpoint", ckpt, "--input-range", "0,65535"]) == 0
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
