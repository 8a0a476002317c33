"""--roi: blocks with no pixel of interest are written as background without being run; bad masks refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from helpers import reference_labels, segment
from unet import predict_image
from unet.errors import UNetError
from unet.job.roi import load_roi

pytestmark = pytest.mark.usefixtures("ray_cluster")
BLOCK = 64


def _roi_mask() -> np.ndarray:
    """A 10 x 17 mask (the proportions of a 301 x 517 mosaic) with two separate regions of interest."""
    mask = np.zeros((10, 17), np.uint8)
    mask[1, 2] = 255
    mask[6:8, 11:13] = 255
    return mask


def _save(mask: np.ndarray, path, kind: str) -> str:
    if kind == "png":
        Image.fromarray(mask).save(path.with_suffix(".png"))
        return str(path.with_suffix(".png"))
    if kind == "tiff":
        tifffile.imwrite(path.with_suffix(".tif"), mask)
        return str(path.with_suffix(".tif"))
    zarr.create_array(str(path.with_suffix(".zarr")), data=mask, chunks=(4, 4))
    return str(path.with_suffix(".zarr"))


def _covered(mask: np.ndarray, shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> bool:
    """Whether a mask pixel of interest overlaps rows x cols, each mask pixel spanning [i H/h, (i+1) H/h)."""
    ys = [i for i in range(mask.shape[0]) if i * shape[0] / mask.shape[0] < rows[1]
          and (i + 1) * shape[0] / mask.shape[0] > rows[0]]
    xs = [j for j in range(mask.shape[1]) if j * shape[1] / mask.shape[1] < cols[1]
          and (j + 1) * shape[1] / mask.shape[1] > cols[0]]
    return bool(mask[np.ix_(ys, xs)].any())


@pytest.mark.parametrize("kind", ["png", "zarr"])
def test_blocks_outside_the_roi_are_background_others_exact(checkpoint, mosaic, tmp_path, kind):  # noqa: F811
    model, ckpt = checkpoint
    image, url = mosaic
    mask = _roi_mask()
    roi, out, report = _save(mask, tmp_path / "roi", kind), tmp_path / "out.zarr", tmp_path / "r.json"
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", 32, "--block", BLOCK, "--probabilities",
                   "--roi", roi, "--report", report) == 0
    labels, probs = zarr.open_array(str(out / "0"))[:], zarr.open_array(str(out / "probabilities"))[:]
    want_labels, want_probs = reference_labels(model, image), predict_image(model, image)
    outside = 0
    for y in range(0, image.shape[0], BLOCK):
        for x in range(0, image.shape[1], BLOCK):
            rows, cols = (y, min(y + BLOCK, image.shape[0])), (x, min(x + BLOCK, image.shape[1]))
            here = np.s_[slice(*rows), slice(*cols)]
            if _covered(mask, image.shape, rows, cols):
                np.testing.assert_array_equal(labels[here], want_labels[here])
                np.testing.assert_allclose(probs[(slice(None), *here)], want_probs[(slice(None), *here)], atol=1e-3)
            else:
                outside += 1
                assert not labels[here].any() and (probs[0][here] == 1).all() and not probs[1][here].any()
    r = json.loads(report.read_text())
    assert 0 < outside < 5 * 9 and r["blocks_outside_roi"] == outside
    assert r["outputs"][0]["blocks_outside_roi"] == outside and r["blocks_run"] == 5 * 9
    assert want_labels.any()  # background is not what the network predicts everywhere
    assert zarr.open_group(str(out)).attrs["unet"]["status"] == "complete"


@pytest.mark.parametrize("kind", ["png", "tiff", "zarr"])
def test_mask_formats_read_the_same(tmp_path, kind):
    roi = load_roi(_save(_roi_mask(), tmp_path / "roi", kind), {}, (301, 517))
    np.testing.assert_array_equal(roi.mask, _roi_mask() != 0)


def test_roi_on_s3(s3_server, s3_bucket, tmp_path):
    import fsspec

    path = _save(_roi_mask(), tmp_path / "roi", "png")
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    fs.put_file(path, f"{s3_bucket}/roi.png")
    roi = load_roi(f"{s3_bucket}/roi.png", s3_server.storage_options, (301, 517))
    np.testing.assert_array_equal(roi.mask, _roi_mask() != 0)


BAD_MASKS = {  # name: (mask or None for a missing file, words the message must contain)
    "missing": (None, "not found"),
    "rgb": (np.zeros((10, 17, 3), np.uint8) + 255, "expected a 2-D mask"),
    "empty": (np.zeros((10, 17), np.uint8), "found none"),
    "aspect": (np.ones((17, 10), np.uint8), "proportions"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_bad_masks_are_refused_in_one_line(checkpoint, mosaic, tmp_path, capsys, case):  # noqa: F811
    _, ckpt = checkpoint
    _, url = mosaic
    mask, words = BAD_MASKS[case]
    roi = str(tmp_path / "absent.png") if mask is None else _save(mask, tmp_path / "roi", "png")
    out = tmp_path / "out.zarr"
    assert segment(url, out, "--checkpoint", ckpt, "--roi", roi) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--roi" in err and words in err
    assert not out.exists()


def test_text_file_and_manifest_of_many_inputs_are_refused(tmp_path):
    (tmp_path / "roi.txt").write_text("not an image")
    with pytest.raises(UNetError, match="neither"):
        load_roi(str(tmp_path / "roi.txt"), {}, (301, 517))
    manifest = tmp_path / "m.txt"
    manifest.write_text("a.zarr a-out.zarr\nb.zarr b-out.zarr\n")
    assert segment("--manifest", manifest, "--checkpoint", "x.safetensors", "--roi", "roi.png") == 2


def test_huge_or_corrupt_masks_are_refused_from_their_metadata(tmp_path, monkeypatch):
    """A mask's size is checked before its pixels are read or decoded: a 10^12-px Zarr array (metadata
    only) or a PNG of 9000 x 9000 px costs nothing; a truncated file is one line."""
    zarr.create_array(str(tmp_path / "huge.zarr"), shape=(10**6, 10**6), chunks=(1024, 1024), dtype="uint8")
    monkeypatch.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("the mask's pixels were read"))
    with pytest.raises(UNetError, match="expected a low-resolution mask"):
        load_roi(str(tmp_path / "huge.zarr"), {}, (10**6, 10**6))
    from PIL import Image

    for side in (9000, 1 << 16):  # above MAX_PIXELS; and above PIL's own decompression-bomb limit
        Image.new("1", (side, side)).save(tmp_path / "big.png")
        with pytest.raises(UNetError, match="expected a low-resolution mask"):
            load_roi(str(tmp_path / "big.png"), {}, (side, side))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "s.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "s.png").read_bytes()[:2000])
    with pytest.raises(UNetError, match="cannot be decoded"):
        load_roi(str(tmp_path / "cut.png"), {}, (64, 64))
