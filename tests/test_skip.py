"""Blocks with no data: not run through the network, yet the output equals the whole-image prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import zarr

from helpers import reference_labels, segment
from unet import UNet, predict_image
from unet.infer.predict import TilePredictor
from unet.io.source import SourceSpec, open_source
from unet.job.skip import EmptyBlocks, chunk_keys, qualifies

FILL = 0.37          # a non-zero fill value: skipped blocks must get its prediction, not background
BLOCK, TILE = 64, 92  # tiles of 92 px (52 out) on a 64-px block: each block reads itself +- the margin


def _mosaic(store, shape, chunks, shards, empty):
    """Random float32 pixels, except the rectangle ``empty`` (whole storage units) left at fill value,
    so Zarr stores none of its chunks. Returns the image as the job sees it."""
    image = np.random.default_rng(21).random(shape, dtype=np.float32)
    (r0, r1), (c0, c1) = empty
    image[r0:r1, c0:c1] = FILL
    zarr.create_array(store, data=image, chunks=chunks, shards=shards, fill_value=FILL)
    return image


def _expected_skips(shape, empty, margin):
    """Blocks whose read window (the block +- the margin) lies in ``empty``, a rectangle at the origin."""
    (_, r1), (_, c1) = empty
    rows = [min(y + BLOCK, shape[0]) for y in range(0, shape[0], BLOCK)]
    cols = [min(x + BLOCK, shape[1]) for x in range(0, shape[1], BLOCK)]
    return sum(y + margin <= r1 for y in rows) * sum(x + margin <= c1 for x in cols)


CASES = {  # name: (chunks, shards, empty rectangle in whole storage units, on S3)
    "local": ((50, 60), None, ((0, 200), (0, 300)), False),
    "sharded": ((50, 60), (100, 120), ((0, 200), (0, 240)), False),
    "s3": ((50, 60), None, ((0, 150), (0, 240)), True),
}


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("case", list(CASES))
def test_empty_blocks_are_skipped_and_output_is_exact(checkpoint, tmp_path, case, request):  # noqa: F811
    model, ckpt = checkpoint
    chunks, shards, empty, remote = CASES[case]
    shape = (301, 517)
    options = []
    if remote:
        s3 = request.getfixturevalue("s3_server")
        url = f"{request.getfixturevalue('s3_bucket')}/in.zarr"
        store = zarr.storage.FsspecStore.from_url(url, storage_options=s3.storage_options)
        options = ["--storage-option", "key=testing", "--storage-option", "secret=testing",
                   "--storage-option", f"client_kwargs.endpoint_url={s3.endpoint_url}"]
    else:
        url = store = str(tmp_path / "in.zarr")
    image = _mosaic(store, shape, chunks, shards, empty)
    out, report = tmp_path / "out.zarr", tmp_path / "r.json"
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", 32, "--block", BLOCK, "--tile", TILE,
                   "--probabilities", "--report", report, *options) == 0
    expected = _expected_skips(shape, empty, model.margin)
    assert expected >= 4
    r = json.loads(report.read_text())
    assert r["blocks_skipped_empty"] == expected and r["outputs"][0]["blocks_skipped_empty"] == expected
    assert 0 < r["network_s"] and 0 < r["network_busy"] <= 1 and r["tasks_run"] >= r["blocks_run"] == 5 * 9
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))
    np.testing.assert_allclose(zarr.open_array(str(out / "probabilities"))[:], predict_image(model, image),
                               atol=1e-3)


def test_negative_control_a_window_touching_one_stored_chunk_is_run(checkpoint, tmp_path):  # noqa: F811
    """All fill value but the chunk at rows 80:120, cols 80:120: a block of fill value whose window reaches
    that one chunk is predicted, and its prediction is not the constant one."""
    model, _ = checkpoint
    image = np.full((160, 160), FILL, np.float32)
    image[80:120, 80:120] = np.random.default_rng(2).random((40, 40), dtype=np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(40, 40), fill_value=FILL)
    source = open_source(SourceSpec(str(tmp_path / "in.zarr")))
    empty, keep = EmptyBlocks(TilePredictor(model, tile=TILE)), (lambda read: read)
    assert empty.prediction(source, (0, 40), (0, BLOCK), keep) is not None  # window rows 0:72: no stored chunk
    assert empty.prediction(source, (0, BLOCK), (0, BLOCK), keep) is None   # window 0:84 x 0:84 reaches it
    probs = predict_image(model, image)[:, :BLOCK, :BLOCK]
    assert np.abs(probs - probs[:, :1, :1]).max() > 1e-4  # a skip there would have been wrong


def test_same_padded_models_and_tiff_inputs_are_never_skipped(tmp_path):
    torch.manual_seed(0)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=(128, 128), chunks=(64, 64), dtype="float32",
                      fill_value=FILL)
    source = open_source(SourceSpec(str(tmp_path / "in.zarr")))
    same = UNet(depth=3, base_channels=4, padding="same").eval()
    valid = UNet(depth=3, base_channels=4).eval()
    keep = lambda read: read  # noqa: E731
    assert EmptyBlocks(TilePredictor(same, tile=64)).prediction(source, (0, 64), (0, 64), keep) is None
    assert EmptyBlocks(TilePredictor(valid, tile=TILE)).prediction(source, (0, 64), (0, 64), keep) is not None
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((128, 128), np.float32), tile=(64, 64))
    assert not qualifies(open_source(SourceSpec(str(tmp_path / "in.tif"))))


def test_chunk_keys_cover_channels_and_shards(tmp_path):
    zarr.create_array(str(tmp_path / "c.zarr"), shape=(3, 100, 100), chunks=(1, 30, 30), shards=(3, 60, 60),
                      dtype="uint8")
    source = open_source(SourceSpec(str(tmp_path / "c.zarr")))
    assert chunk_keys(source, (59, 61), (0, 10)) == ["c/0/0/0", "c/0/1/0"]
    assert chunk_keys(source, (0, 100), (60, 100)) == ["c/0/0/1", "c/0/1/1"]
