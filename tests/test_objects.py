"""--objects end to end on the session's Ray cluster: the instance image equals connected-component
labelling of the whole class image (scipy.ndimage.label), for several blocks and chunks; the table equals the
one computed in memory; the pyramid, metadata, outlines of a georeferenced input, resume, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import s3fs
import shapely
import torch
import zarr
from affine import Affine
from helpers import (assert_same_objects, by_first_pixel, reference_table, segment, whole_image_reference,
                     write_ome_image)

from unet import UNet, predict_image, save_checkpoint

pytestmark = pytest.mark.usefixtures("ray_cluster")
CLASSES = ["background", "cell", "debris"]
UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


@pytest.fixture(scope="module")
def three_class_checkpoint(tmp_path_factory):
    """A small random U-Net with three classes: enough objects of two classes, touching each other."""
    torch.manual_seed(7)  # on the mosaic below: ~1400 debris and ~60 cell objects, some of thousands of pixels
    model = UNet(depth=3, base_channels=4, num_classes=3).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(model, path, class_names=CLASSES)
    return model, str(path)


@pytest.fixture(scope="module")
def objects_mosaic(tmp_path_factory, three_class_checkpoint):
    """An odd-sized random image, its whole-image probabilities, and its georeferenced twin."""
    image = np.random.default_rng(8).random((173, 251), dtype=np.float32)
    root = tmp_path_factory.mktemp("in")
    zarr.create_array(str(root / "mosaic.zarr"), data=image, chunks=(50, 60))
    geo = zarr.create_array(str(root / "geo.zarr"), data=image, chunks=(50, 60))
    geo.attrs.update({"crs": "EPSG:32633", "transform": list(UTM)[:6]})
    with rasterio.open(root / "geo.tif", "w", driver="GTiff", width=image.shape[1], height=image.shape[0],
                       count=1, dtype="float32", crs="EPSG:32633", transform=UTM) as tif:
        tif.write(image[None])
    return image, predict_image(three_class_checkpoint[0], image), root


def expected_instances(probs: np.ndarray, object_classes=(1, 2), min_area: int = 0) -> np.ndarray:
    return by_first_pixel(whole_image_reference(probs.argmax(0), object_classes, min_area))


@pytest.mark.parametrize("chunk, block", [(32, 32), (32, 96), (64, 128)])
def test_instances_and_table_equal_whole_image_labelling(three_class_checkpoint, objects_mosaic, tmp_path, capsys,
                                                         chunk, block):
    _, ckpt = three_class_checkpoint
    image, probs, root = objects_mosaic
    out = tmp_path / "out.zarr"
    assert segment(root / "mosaic.zarr", out, "--checkpoint", ckpt, "--chunk", chunk, "--block", block,
                   "--tile", 92, "--objects", "--report", tmp_path / "r.json") == 0
    classes = zarr.open_array(str(out / "0"))[:]
    np.testing.assert_array_equal(classes, probs.argmax(0))
    instances = zarr.open_group(str(out / "instances"), mode="r")
    level0 = instances["0"][:]
    assert level0.dtype == np.uint32 and level0.shape == image.shape
    assert_same_objects(level0.astype(np.int64), whole_image_reference(classes))
    expected = reference_table(classes, probs.max(0), level0)
    table = pq.read_table(out / "objects.parquet").to_pydict()
    assert table["id"] == list(range(1, level0.max() + 1))
    for name, column in expected.items():
        np.testing.assert_allclose(table[name], column, rtol=1e-5, err_msg=name)
    assert table["class_name"] == [CLASSES[c] for c in table["class"]]
    crossing = [(y0 // block, x0 // block) != ((y1 - 1) // block, (x1 - 1) // block) for y0, x0, y1, x1 in
                zip(table["bbox_y0"], table["bbox_x0"], table["bbox_y1"], table["bbox_x1"])]
    assert sum(crossing) >= 10  # the seams are put to the test
    report = json.loads((tmp_path / "r.json").read_text())
    counts = report["outputs"][0]["objects"]
    assert counts == {name: table["class"].count(c) for c, name in enumerate(CLASSES) if c}
    assert f"objects: {counts['cell']} cell, {counts['debris']} debris" in capsys.readouterr().err
    assert zarr.open_group(str(out)).attrs["unet"]["status"] == "complete"


def test_pyramid_and_metadata_of_instances(three_class_checkpoint, objects_mosaic, tmp_path, capsys):
    _, ckpt = three_class_checkpoint
    _, probs, root = objects_mosaic
    out, args = tmp_path / "out.zarr", ("--checkpoint", ckpt, "--chunk", 32, "--block", 32, "--objects")
    assert segment(root / "mosaic.zarr", out, *args) == 0
    counts = capsys.readouterr().err.split("objects: ")[1]
    assert segment(root / "mosaic.zarr", out, *args) == 0  # complete: nothing runs, the counts are recalled
    assert capsys.readouterr().err.split("objects: ")[1] == counts
    group = zarr.open_group(str(out / "instances"), mode="r")
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    level0 = group["0"][:]
    assert len(datasets) == len(zarr.open_group(str(out)).attrs["ome"]["multiscales"][0]["datasets"]) > 2
    for k, dataset in enumerate(datasets):
        np.testing.assert_array_equal(group[dataset["path"]][:], level0[::2 ** k, ::2 ** k], err_msg=f"level {k}")
    assert group.attrs["ome"]["image-label"] == {}
    assert not (out / "objects.geojson").exists()


def test_object_classes_by_name_and_min_area(three_class_checkpoint, objects_mosaic, tmp_path):
    _, ckpt = three_class_checkpoint
    _, probs, root = objects_mosaic
    out = tmp_path / "out.zarr"
    assert segment(root / "mosaic.zarr", out, "--checkpoint", ckpt, "--chunk", 32, "--block", 64, "--objects",
                   "--object-classes", "debris", "--min-area", 3) == 0
    level0 = zarr.open_array(str(out / "instances" / "0"))[:].astype(np.int64)
    np.testing.assert_array_equal(level0, expected_instances(probs, (2,), min_area=3))
    table = pq.read_table(out / "objects.parquet").to_pydict()
    assert set(table["class"]) == {2} and min(table["area_px"]) >= 3


@pytest.mark.parametrize("name", ["geo.zarr", "geo.tif"])
def test_georeferenced_input_gets_outlines_in_its_crs(three_class_checkpoint, objects_mosaic, tmp_path, name):
    _, ckpt = three_class_checkpoint
    _, probs, root = objects_mosaic
    out = tmp_path / "out.zarr"
    assert segment(root / name, out, "--checkpoint", ckpt, "--chunk", 32, "--block", 32, "--objects") == 0
    collection = json.loads((out / "objects.geojson").read_text())
    table = pq.read_table(out / "objects.parquet").to_pydict()
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert [f["id"] for f in collection["features"]] == table["id"]
    for feature, area, x0, y0, x1, y1 in zip(collection["features"], table["area_px"], table["bbox_x0"],
                                             table["bbox_y0"], table["bbox_x1"], table["bbox_y1"]):
        outline = shapely.geometry.shape(feature["geometry"])
        assert outline.is_valid and outline.area == pytest.approx(area * 100.0)
        assert outline.bounds == pytest.approx((500000 + 10 * x0, 4000000 - 10 * y1, 500000 + 10 * x1, 4000000 - 10 * y0))
        assert feature["properties"]["area_px"] == area
    np.testing.assert_allclose(table["crs_x"], 500000 + 10 * (np.array(table["centroid_x"]) + 0.5))


def test_resume_after_an_interrupted_objects_pass(three_class_checkpoint, objects_mosaic, tmp_path):
    """A driver killed during the relabelling: some instance blocks unmarked and garbage, no table. The
    re-run segments nothing, relabels only those blocks from the stored summaries, and finishes."""
    _, ckpt = three_class_checkpoint
    _, probs, root = objects_mosaic
    out, args = tmp_path / "out.zarr", ("--checkpoint", ckpt, "--chunk", 32, "--block", 64, "--objects")
    assert segment(root / "mosaic.zarr", out, *args) == 0
    before = zarr.open_array(str(out / "instances" / "0"))[:]
    markers = sorted((out / "instances" / "_unet" / "done").glob("L0-*"))
    for marker in markers[:2]:
        marker.unlink()
    zarr.open_array(str(out / "instances" / "0"), mode="r+")[:64, :64] = 7  # block L0-0-0 is unmarked
    (out / "objects.parquet").unlink()
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["unet"] = {**group.attrs["unet"], "status": "running"}
    assert segment(root / "mosaic.zarr", out, *args, "--report", tmp_path / "r.json") == 0
    assert json.loads((tmp_path / "r.json").read_text())["blocks_run"] == 0
    np.testing.assert_array_equal(zarr.open_array(str(out / "instances" / "0"))[:], before)
    np.testing.assert_array_equal(before.astype(np.int64), expected_instances(probs))
    assert (out / "objects.parquet").exists()


def test_resume_after_the_segmentation_pass_only(three_class_checkpoint, objects_mosaic, tmp_path):
    """Killed before the merge: no id levels, no instance markers; the summaries are all there is."""
    _, ckpt = three_class_checkpoint
    _, probs, root = objects_mosaic
    out, args = tmp_path / "out.zarr", ("--checkpoint", ckpt, "--chunk", 32, "--block", 96, "--objects")
    assert segment(root / "mosaic.zarr", out, *args) == 0
    group = zarr.open_group(str(out), mode="r+")
    for level in list(group["instances"].array_keys()):
        del group["instances"][level]
    for marker in (out / "instances" / "_unet" / "done").iterdir():
        marker.unlink()
    group.attrs["unet"] = {**group.attrs["unet"], "status": "running"}
    assert segment(root / "mosaic.zarr", out, *args) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out / "instances" / "0"))[:].astype(np.int64),
                                  expected_instances(probs))


BAD = [(["--objects", "--object-classes", "3"], "--object-classes 3: expected classes 0..2"),
       (["--objects", "--object-classes", "cell,ship"], "found 'ship'"),
       (["--min-area", "5"], "--min-area: expected together with --objects"),
       (["--object-classes", "1"], "--object-classes: expected together with --objects"),
       (["--objects", "--min-area", "-1"], "--min-area: expected a number of pixels >= 0")]


@pytest.mark.parametrize("extra, words", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_object_options(three_class_checkpoint, objects_mosaic, tmp_path, capsys, extra, words):
    _, ckpt = three_class_checkpoint
    _, _, root = objects_mosaic
    out = tmp_path / "out.zarr"
    assert segment(root / "mosaic.zarr", out, "--checkpoint", ckpt, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


def test_objects_on_an_output_written_without_them_is_refused(three_class_checkpoint, objects_mosaic, tmp_path, capsys):
    _, ckpt = three_class_checkpoint
    _, probs, root = objects_mosaic
    out, args = tmp_path / "out.zarr", ("--checkpoint", ckpt, "--chunk", 64, "--block", 128)
    assert segment(root / "mosaic.zarr", out, *args) == 0
    before = (out / "zarr.json").read_bytes()
    capsys.readouterr()
    assert segment(root / "mosaic.zarr", out, *args, "--objects") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs in objects" in err and "--overwrite" in err
    assert (out / "zarr.json").read_bytes() == before and not (out / "instances").exists()
    assert segment(root / "mosaic.zarr", out, *args, "--objects", "--overwrite") == 0
    np.testing.assert_array_equal(zarr.open_array(str(out / "instances" / "0"))[:].astype(np.int64),
                                  expected_instances(probs))


def test_s3_output(three_class_checkpoint, objects_mosaic, s3_server, s3_bucket):
    """Summaries, outlines and the table go through the object store like the rest of the output."""
    _, ckpt = three_class_checkpoint
    _, probs, root = objects_mosaic
    out = f"{s3_bucket}/out.zarr"
    assert segment(root / "geo.zarr", out, "--checkpoint", ckpt, "--chunk", 64, "--block", 64, "--objects",
                   "--storage-option", f"client_kwargs.endpoint_url={s3_server.endpoint_url}") == 0
    group = zarr.open_group(zarr.storage.FsspecStore.from_url(out, storage_options=s3_server.storage_options))
    np.testing.assert_array_equal(group["instances/0"][:].astype(np.int64), expected_instances(probs))
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    with fs.open(f"{out}/objects.parquet", "rb") as f:
        assert pq.read_table(f).num_rows == group["instances/0"][:].max()
    assert len(json.loads(fs.cat_file(f"{out}/objects.geojson"))["features"]) == group["instances/0"][:].max()


def test_as_label_with_physical_units(three_class_checkpoint, tmp_path):
    """Into an OME-Zarr image's labels: the table's physical columns follow the image's pixel size."""
    model, ckpt = three_class_checkpoint
    image = np.random.default_rng(4).random((90, 110), dtype=np.float32)
    ome = tmp_path / "image.zarr"
    write_ome_image(ome, image)
    assert segment(ome, "--as-label", "cells", "--checkpoint", ckpt, "--chunk", 32, "--block", 64, "--objects") == 0
    labels = ome / "labels" / "cells"
    level0 = zarr.open_array(str(labels / "instances" / "0"))[:].astype(np.int64)
    np.testing.assert_array_equal(level0, expected_instances(predict_image(model, image)))
    table = pq.read_table(labels / "objects.parquet")
    assert json.loads(table.schema.metadata[b"unet"])["units"] == {"y": "micrometer", "x": "micrometer"}
    columns = table.to_pydict()
    np.testing.assert_allclose(columns["area"], np.array(columns["area_px"]) * 0.5 * 0.25)
    np.testing.assert_allclose(columns["centroid_x_physical"], np.array(columns["centroid_x"]) * 0.25)
