"""--tta in the job: the output equals the mean of whole-image predictions of each flipped image, flipped
back, for any block and chunk (odd sizes, so every flipped image's pooling grid is anchored elsewhere),
also for blocks skipped as empty; a same-padded model is allowed and said once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from helpers import segment

from unet import UNet, predict_image, save_checkpoint
from unet.infer.predict import class_index

pytestmark = pytest.mark.usefixtures("ray_cluster")

FLIPS = {4: [(False, False, False), (False, False, True), (False, True, False), (False, True, True)]}
FLIPS[8] = FLIPS[4] + [(True, r, c) for _, r, c in FLIPS[4]]


def flipped_mean(model: UNet, image: np.ndarray, n: int) -> np.ndarray:
    """The reference: each flipped image predicted whole, flipped back, summed in order, divided by n."""
    total = 0
    for transpose, rows, cols in FLIPS[n]:
        flipped = image.T if transpose else image
        flipped = flipped[::-1 if rows else 1, ::-1 if cols else 1]
        probs = predict_image(model, np.ascontiguousarray(flipped))[:, ::-1 if rows else 1, ::-1 if cols else 1]
        total = total + (probs.transpose(0, 2, 1) if transpose else probs)
    return total / n


@pytest.mark.parametrize("flips, chunk, block, tile", [(4, 64, 128, 92), (8, 64, 192, 124)])
def test_job_equals_the_mean_of_flipped_whole_images(checkpoint, mosaic, tmp_path, flips, chunk, block, tile):
    model, ckpt = checkpoint
    image, url = mosaic
    out, report = tmp_path / "out.zarr", tmp_path / "r.json"
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", chunk, "--block", block, "--tile", tile,
                   "--tta", *([] if flips == 4 else ["8"]), "--probabilities", "--report", report) == 0
    expected = flipped_mean(model, image, flips)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], class_index(expected))
    np.testing.assert_allclose(zarr.open_array(str(out / "probabilities"))[:], expected, atol=1e-3)
    assert not np.array_equal(class_index(expected), class_index(predict_image(model, image)))
    attrs = zarr.open_group(str(out)).attrs["unet"]
    assert attrs["fingerprint"]["tta"] == flips and attrs["options"]["tta"] == flips
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", chunk, "--block", block, "--tile", tile) == 2


def test_empty_blocks_with_flips_are_skipped_and_exact(checkpoint, tmp_path):
    """A flipped constant image has its pooling grid at the other edge: its skipped blocks must still get
    the flipped-back prediction of the constant tile."""
    model, ckpt = checkpoint
    fill = 0.37
    image = np.random.default_rng(8).random((229, 301), dtype=np.float32)
    image[:150, :240] = fill
    url, out, report = str(tmp_path / "in.zarr"), tmp_path / "out.zarr", tmp_path / "r.json"
    zarr.create_array(url, data=image, chunks=(50, 60), fill_value=fill)
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", 32, "--block", 32, "--tile", 60, "--tta",
                   "--report", report) == 0
    assert json.loads(report.read_text())["blocks_skipped_empty"] >= 4
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], class_index(flipped_mean(model, image, 4)))


def test_same_padded_model_is_allowed_and_said_once(mosaic, tmp_path, capsys):
    torch.manual_seed(3)
    ckpt = tmp_path / "same.safetensors"
    save_checkpoint(UNet(depth=2, base_channels=2, padding="same").eval(), ckpt)
    _, url = mosaic
    assert segment(url, tmp_path / "out.zarr", "--checkpoint", ckpt, "--tta", "--tile", 64) == 0
    assert capsys.readouterr().err.count("same-padded") == 1
