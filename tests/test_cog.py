"""--cog: the class image (and the instance image) as Cloud-Optimized GeoTIFFs that rio-cogeo validates
and GDAL opens with the input's CRS and transform; overviews that are the output's own pyramid levels; a
finished COG left alone by a re-run. (Destinations that cannot take one: tests/test_segment_inputs.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from helpers import segment

from unet.io.cog import CogSpec, write_cog

pytestmark = pytest.mark.usefixtures("ray_cluster")

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
SHAPE = (150, 233)  # with 32-px chunks: levels of 150x233, 75x117, 38x59, 19x30


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A float32 GeoTIFF in UTM 33N, as GDAL writes it."""
    path = tmp_path_factory.mktemp("geo") / "scene.tif"
    image = np.random.default_rng(9).random(SHAPE, dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=SHAPE[1], height=SHAPE[0], count=1, dtype="float32",
                       crs="EPSG:32633", transform=UTM) as dst:
        dst.write(image[None])
    return str(path)


def _assert_cog_matches(path, group, crs="EPSG:32633", transform=UTM):
    valid, errors, _ = cog_validate(str(path))
    assert valid, errors
    levels = sorted(int(k) for k in group.array_keys() if k.isdigit())
    with rasterio.open(path) as ds:
        assert ds.crs == rasterio.crs.CRS.from_user_input(crs) and ds.transform.almost_equals(transform)
        assert ds.overviews(1) == [2 ** k for k in levels[1:]]
        np.testing.assert_array_equal(ds.read(1), group["0"][:])
    for k in levels[1:]:
        with rasterio.open(path, overview_level=k - 1) as ds:
            np.testing.assert_array_equal(ds.read(1), group[str(k)][:])   # the pyramid's mode, not GDAL's


def test_cog_of_classes_and_instances_and_a_resumed_run(checkpoint, scene, tmp_path):
    out, cog, report = tmp_path / "out.zarr", tmp_path / "labels.tif", tmp_path / "r.json"
    argv = [scene, out, "--checkpoint", checkpoint[1], "--chunk", 32, "--block", 64, "--tile", 92,
            "--objects", "--cog", cog, "--report", report]
    assert segment(*argv) == 0
    group = zarr.open_group(str(out), mode="r")
    _assert_cog_matches(cog, group)
    with rasterio.open(cog) as ds:
        assert ds.colormap(1)[1][3] == 255 and ds.dtypes[0] == "uint8"
    instances = tmp_path / "labels-instances.tif"
    _assert_cog_matches(instances, group["instances"])
    with rasterio.open(instances) as ds:
        assert ds.dtypes[0] == group["instances/0"].dtype.name
    recorded = json.loads(report.read_text())["outputs"][0]["cog"]
    assert [r["image"] for r in recorded] == ["classes", "instances"]

    stamp = cog.stat().st_mtime_ns
    assert segment(*argv) == 0                                       # complete: nothing rewritten
    assert cog.stat().st_mtime_ns == stamp
    instances.unlink()
    assert segment(*argv) == 0                                       # only the missing COG is written
    assert cog.stat().st_mtime_ns == stamp and instances.exists()
    assert "blocks_run" not in json.loads(report.read_text())


def test_cog_without_georeferencing_and_with_many_levels(tmp_path):
    """A plain image: pixel coordinates (no CRS); the writer's windows cover odd sizes exactly."""
    out = tmp_path / "labels.zarr"
    group = zarr.open_group(str(out), mode="w")
    labels = (np.random.default_rng(2).random((1037, 611)) * 3).astype(np.uint8)
    for k in range(4):
        group.create_array(str(k), data=labels[:: 2 ** k, :: 2 ** k], chunks=(128, 128))
    path = tmp_path / "plain.tif"
    write_cog(CogSpec(str(path)), str(out), {})
    valid, errors, _ = cog_validate(str(path))
    assert valid, errors
    with rasterio.open(path) as ds:
        assert ds.crs is None and ds.overviews(1) == [2, 4, 8]
        np.testing.assert_array_equal(ds.read(1), labels)


def test_cog_to_an_object_store(s3_server, s3_bucket, tmp_path):
    """A URL destination: probed before the run, assembled locally, uploaded whole."""
    import s3fs

    from unet.io.cog import check_cog_destination

    out = tmp_path / "labels.zarr"
    group = zarr.open_group(str(out), mode="w")
    labels = (np.random.default_rng(4).random((300, 200)) * 2).astype(np.uint8)
    for k in range(2):
        group.create_array(str(k), data=labels[:: 2 ** k, :: 2 ** k], chunks=(128, 128))
    url = f"{s3_bucket}/scenes/labels.tif"
    check_cog_destination(url, s3_server.storage_options)
    write_cog(CogSpec(url, UTM, "EPSG:32633", storage_options=s3_server.storage_options), str(out), {})
    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    assert fs.ls(f"{s3_bucket}/scenes", detail=False) == [url.removeprefix("s3://")]   # no probe left behind
    local = tmp_path / "downloaded.tif"
    fs.get_file(url, str(local))
    _assert_cog_matches(local, group)
