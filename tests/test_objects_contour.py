"""--objects with a contour checkpoint (interior + boundary classes) on the session's Ray cluster: the
instance image equals unet.infer.instances of the whole class image for any --block and --chunk, with
objects cut by seams and grown across them; the table, resume, and 2-class checkpoints as before."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import torch
import zarr
from scipy import ndimage
from helpers import growth_across_seams, segment

from unet import UNet, save_checkpoint
from unet.infer.instances import InstanceMethod, instances_from_classes

pytestmark = pytest.mark.usefixtures("ray_cluster")
CLASSES = ["background", "nucleus", "boundary"]
METHOD = InstanceMethod(interior=1, boundary=2, grow=3)


@pytest.fixture(scope="module")
def contour_checkpoint(tmp_path_factory):
    """A small random U-Net with three classes, recorded as a contour model: on the mosaic below, about 700
    interiors and 10^4 boundary pixels they grow over."""
    torch.manual_seed(4)
    model = UNet(depth=3, base_channels=4, num_classes=3).eval()
    path = tmp_path_factory.mktemp("ckpt") / "contour.safetensors"
    save_checkpoint(model, path, class_names=CLASSES, instance_method=METHOD.to_metadata())
    return str(path)


@pytest.fixture(scope="module")
def contour_mosaic(tmp_path_factory):
    image = np.random.default_rng(5).random((157, 211), dtype=np.float32)
    path = tmp_path_factory.mktemp("in") / "mosaic.zarr"
    zarr.create_array(str(path), data=image, chunks=(50, 60))
    geo = zarr.create_array(str(path.with_name("geo.zarr")), data=image, chunks=(50, 60))
    geo.attrs.update({"crs": "EPSG:32633", "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0]})
    return path


def run(image, out, ckpt, *extra) -> np.ndarray:
    assert segment(image, out, "--checkpoint", ckpt, "--objects", *extra) == 0
    return zarr.open_array(str(out / "instances" / "0"))[:]


@pytest.mark.parametrize("chunk, block", [(16, 32), (32, 96), (64, 128)])
def test_instances_equal_the_whole_image_procedure(contour_checkpoint, contour_mosaic, tmp_path, capsys, chunk, block):
    out = tmp_path / "out.zarr"
    instances = run(contour_mosaic, out, contour_checkpoint, "--chunk", chunk, "--block", block, "--tile", 92,
                    "--report", tmp_path / "r.json")
    classes = zarr.open_array(str(out / "0"))[:]
    expected = instances_from_classes(classes, METHOD)
    assert instances.dtype == np.uint32
    np.testing.assert_array_equal(instances, expected)
    assert expected.max() > 30 and ((classes == 2) & (expected > 0)).sum() > 100  # grown objects, many
    assert growth_across_seams(classes, block, METHOD) > 10  # seeds in one block claim pixels of the next
    table = pq.read_table(out / "objects.parquet").to_pydict()
    ids = np.arange(1, expected.max() + 1)
    assert table["id"] == ids.tolist() and set(table["class_name"]) == {"nucleus"}
    np.testing.assert_array_equal(table["area_px"], np.bincount(expected.ravel())[1:])
    boxes = ndimage.find_objects(expected)
    np.testing.assert_array_equal(table["bbox_x0"], [b[1].start for b in boxes])
    np.testing.assert_allclose(table["centroid_y"], [c[0] for c in ndimage.center_of_mass(
        np.ones_like(expected), expected, ids)])
    counts = json.loads((tmp_path / "r.json").read_text())["outputs"][0]["objects"]
    assert counts == {"nucleus": int(expected.max())}
    err = capsys.readouterr().err
    assert f"objects: {expected.max()} nucleus" in err and "connected components" not in err
    labels = zarr.open_group(str(out)).attrs["ome"]["image-label"]
    assert [c["label-value"] for c in labels["colors"]] == [0, 1, 2]


def test_min_area_and_resume_after_an_interrupted_rim_pass(contour_checkpoint, contour_mosaic, tmp_path):
    """Objects below --min-area pixels (grown) are dropped; a driver killed during the rim pass (some rims
    lost, no instance image yet) re-runs only those rims and gives the same objects."""
    out, args = tmp_path / "out.zarr", ("--chunk", 16, "--block", 32, "--min-area", 12)
    instances = run(contour_mosaic, out, contour_checkpoint, *args)
    classes = zarr.open_array(str(out / "0"))[:]
    np.testing.assert_array_equal(instances, instances_from_classes(classes, METHOD, min_area=12))
    assert 0 < instances.max() < instances_from_classes(classes, METHOD).max()
    state = out / "instances" / "_unet"
    for path in [*sorted((state / "grown").iterdir())[:3], *(state / "done").iterdir()]:
        path.unlink()
    zarr.open_array(str(out / "instances" / "0"), mode="r+")[:] = 0
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["unet"] = {**group.attrs["unet"], "status": "running"}
    np.testing.assert_array_equal(run(contour_mosaic, out, contour_checkpoint, *args), instances)


def test_outlines_of_grown_objects(contour_checkpoint, contour_mosaic, tmp_path):
    """Georeferenced input: one outline per grown object, rim pixels included, unioned across blocks."""
    out = tmp_path / "out.zarr"
    instances = run(contour_mosaic.with_name("geo.zarr"), out, contour_checkpoint, "--chunk", 32, "--block", 32)
    features = json.loads((out / "objects.geojson").read_text())["features"]
    assert [f["id"] for f in features] == list(range(1, instances.max() + 1))
    areas = np.bincount(instances.ravel())[1:]
    for feature in features:
        outline = shapely.geometry.shape(feature["geometry"])
        assert outline.is_valid and outline.area == pytest.approx(areas[feature["id"] - 1] * 100.0)


def test_object_classes_other_than_the_interior_are_refused(contour_checkpoint, contour_mosaic, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert segment(contour_mosaic, out, "--checkpoint", contour_checkpoint, "--objects",
                   "--object-classes", "boundary") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected the interior class 'nucleus'" in err, err
    assert not out.exists()


def test_a_two_class_checkpoint_says_once_that_objects_are_connected_components(contour_mosaic, tmp_path, capsys):
    torch.manual_seed(3)
    path = tmp_path / "old.safetensors"
    save_checkpoint(UNet(depth=3, base_channels=4, num_classes=2).eval(), path, class_names=["background", "cell"])
    out = tmp_path / "out.zarr"
    instances = run(contour_mosaic, out, str(path), "--chunk", 32, "--block", 64)
    classes = zarr.open_array(str(out / "0"))[:]
    labelled, count = ndimage.label(classes == 1, structure=np.ones((3, 3)))
    assert instances.max() == count and ((instances > 0) == (labelled > 0)).all()
    assert capsys.readouterr().err.count("records no instance method") == 1


def test_the_checkpoint_min_area_is_the_default_and_min_area_0_keeps_all(contour_mosaic, tmp_path, capsys):
    """A checkpoint that records min_area (jobs/train.py --instances does, from its training objects): --objects
    drops smaller objects without a flag and says so once; --min-area wins, 0 keeps all."""
    torch.manual_seed(4)
    path = tmp_path / "min-area.safetensors"
    save_checkpoint(UNet(depth=3, base_channels=4, num_classes=3).eval(), path, class_names=CLASSES,
                    instance_method=METHOD.to_metadata(), min_area=12)
    instances = run(contour_mosaic, tmp_path / "a.zarr", str(path), "--chunk", 32, "--block", 64)
    classes = zarr.open_array(str(tmp_path / "a.zarr" / "0"))[:]
    np.testing.assert_array_equal(instances, instances_from_classes(classes, METHOD, min_area=12))
    assert capsys.readouterr().err.count("drops objects under 12 px") == 1
    every = run(contour_mosaic, tmp_path / "b.zarr", str(path), "--chunk", 32, "--block", 64, "--min-area", 0)
    np.testing.assert_array_equal(every, instances_from_classes(classes, METHOD))
    assert every.max() > instances.max() > 0 and "drops objects under" not in capsys.readouterr().err


@pytest.mark.parametrize("value", [-3, 1.5, "12", True, 10**13])
def test_a_checkpoint_with_a_bad_min_area_is_refused_in_one_line(contour_mosaic, tmp_path, capsys, value):
    path = tmp_path / "bad.safetensors"
    save_checkpoint(UNet(depth=3, base_channels=4, num_classes=3).eval(), path, class_names=CLASSES,
                    instance_method=METHOD.to_metadata(), min_area=value)
    out = tmp_path / "out.zarr"
    assert segment(contour_mosaic, out, "--checkpoint", path, "--objects") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "min_area" in err and str(path) in err, err
    assert not out.exists()
