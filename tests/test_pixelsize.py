"""Pixel sizes read from real files (OME-Zarr scales with units, SVS MPP, OME-TIFF physical sizes, TIFF
resolution tags, GeoTIFFs written by GDAL, projected and geographic, Zarr georeferencing attributes), and
in the job: the input's pyramid level nearest the model's pixel size (or --level) is segmented, an input
with none within 25 % refused, an input without one given the checkpoint's (said once), and the output's
OME scale is the level's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import tifffile
import torch
import zarr
from affine import Affine
from helpers import segment

from unet import UNet, predict_image, save_checkpoint
from unet.errors import UNetError
from unet.io.pixelsize import Level, PixelSize, checkpoint_pixel_size, input_levels
from unet.io.source import SourceSpec, open_source
from unet.job.level import choose_level


def _levels(url: str, level: int | None = None):
    return input_levels(open_source(SourceSpec(url, level)))


def _sizes(levels, unit: str):
    return [None if lv.pixel_size is None else tuple(round(v, 9) for v in lv.pixel_size.in_unit(unit))
            for lv in levels]


def ome_zarr(path, unit: str | None, base: float, levels: int = 3, shape=(101, 67)):
    """An OME-NGFF 0.5 image with ``levels`` levels, each half the last, pixel size ``base`` at level 0."""
    root = zarr.open_group(str(path), mode="w")
    datasets = []
    for k in range(levels):
        h, w = -(-shape[0] // 2 ** k), -(-shape[1] // 2 ** k)
        root.create_array(str(k), shape=(h, w), dtype="uint8", chunks=(32, 32), fill_value=0)
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [base * 2 ** k, base * 2 ** k]}]})
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "yx"]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    return str(path)


def test_ome_zarr_scales_and_units(tmp_path):
    levels = _levels(ome_zarr(tmp_path / "a.zarr", "micrometer", 0.25), level=1)
    assert [lv.shape for lv in levels] == [(101, 67), (51, 34), (26, 17)]
    assert _sizes(levels, "micrometer") == [(0.25, 0.25), (0.5, 0.5), (1.0, 1.0)]
    assert _sizes(_levels(ome_zarr(tmp_path / "b.zarr", "nanometer", 500.0, 1)), "micrometer") == [(0.5, 0.5)]
    assert _sizes(_levels(ome_zarr(tmp_path / "c.zarr", None, 0.25, 1)), "micrometer") == [None]


def test_svs_mpp_and_pyramid(tmp_path):
    path = tmp_path / "slide.svs"
    image = np.zeros((256, 192), np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), description="Aperio Image Library v12.0.15\n256x192 |AppMag = 40|MPP = 0.2520",
                  subifds=1)
        tif.write(image[::2, ::2], tile=(64, 64), subfiletype=1)
    levels = _levels(str(path))
    assert [lv.shape for lv in levels] == [(256, 192), (128, 96)]
    assert _sizes(levels, "micrometer") == [(0.252, 0.252), (0.504, 0.504)]


def test_ome_tiff_physical_size_and_resolution_tags(tmp_path):
    ome = tmp_path / "cells.ome.tif"
    tifffile.imwrite(ome, np.zeros((40, 30), np.uint8), metadata={"PhysicalSizeX": 0.65, "PhysicalSizeY": 0.6,
                                                                  "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    assert _sizes(_levels(str(ome)), "micrometer") == [(0.6, 0.65)]
    res = tmp_path / "res.tif"
    tifffile.imwrite(res, np.zeros((40, 30), np.uint8), resolution=(20000, 20000), resolutionunit="CENTIMETER")
    assert _sizes(_levels(str(res)), "micrometer") == [(0.5, 0.5)]
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((40, 30), np.uint8), resolution=(1, 1), resolutionunit="NONE")
    assert _sizes(_levels(str(plain)), "micrometer") == [None]


@pytest.mark.parametrize("crs, transform, expected", [
    ("EPSG:32633", Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), (10.0, 10.0)),
    ("EPSG:2263", Affine(3.0, 0.0, 1e6, 0.0, -3.0, 2e5), (0.9144, 0.9144)),     # US survey feet
    ("EPSG:4326", Affine(0.001, 0.0, 12.0, 0.0, -0.001, 48.0), None),            # degrees: no size
])
def test_geotiff_transform_in_the_crs_linear_unit(tmp_path, crs, transform, expected):
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(np.zeros((1, 30, 40), np.uint8))
    got = _sizes(_levels(str(path)), "meter")[0]
    assert got == expected if expected is None else np.allclose(got, expected, rtol=1e-5)


def test_zarr_georeferencing_attributes(tmp_path):
    path = tmp_path / "geo.zarr"
    array = zarr.create_array(str(path), shape=(20, 30), dtype="uint8", chunks=(10, 10))
    array.attrs.update({"transform": [2.5, 0, 100, 0, -2.5, 900], "crs": "EPSG:32633"})
    assert _sizes(_levels(str(path)), "meter") == [(2.5, 2.5)]


def test_checkpoint_pixel_size_and_bad_values():
    assert checkpoint_pixel_size({"pixel_size": {"value": 0.5, "unit": "micrometer"}}, "m").in_unit("micrometer") == (0.5, 0.5)
    assert checkpoint_pixel_size({}, "m") is None
    assert PixelSize.of(0.5, "micrometer").mismatch(PixelSize.of(0.6, "micrometer")) == pytest.approx(1 / 6)
    for value in (0, -1, float("nan")):
        with pytest.raises(UNetError, match=f"--pixel-size: expected a pixel size > 0, found {value}"):
            PixelSize.of(value, "micrometer")
    with pytest.raises(UNetError, match="expected pixel_size as"):
        checkpoint_pixel_size({"pixel_size": {"value": "x"}}, "m")


# -- the level the job segments --------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    return UNet(depth=2, base_channels=2).eval()


def _checkpoint(model, path, size: float | None):
    save_checkpoint(model, path, **({"pixel_size": {"value": size, "unit": "micrometer"}} if size else {}))
    return str(path)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """An OME-Zarr image of 0.25, 0.5 and 1 µm levels, each filled with its own random pixels."""
    url = ome_zarr(tmp_path_factory.mktemp("ome") / "slide.zarr", "micrometer", 0.25, shape=(181, 133))
    group = zarr.open_group(url, mode="r+")
    rng = np.random.default_rng(6)
    for k in range(3):
        group[str(k)][:] = rng.integers(0, 256, group[str(k)].shape, dtype=np.uint8)
    return url, group


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("trained, argv, level", [(0.5, [], 1), (0.5, ["--level", "0"], 0)])
def test_the_level_nearest_the_models_pixel_size_is_segmented(model, pyramid, tmp_path, trained, argv, level):
    url, group = pyramid
    out, report = tmp_path / "out.zarr", tmp_path / "r.json"
    ckpt = _checkpoint(model, tmp_path / "m.safetensors", trained)
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", 64, "--report", report, *argv) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:],
                                  predict_image(model, group[str(level)][:]).argmax(0))
    r = json.loads(report.read_text())["outputs"][0]
    size = 0.25 * 2 ** level
    assert r["level"] == level and r["pixel_size"] == {"value": [size, size], "unit": "micrometer"}
    scale = zarr.open_group(str(out)).attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [size, size]


@pytest.mark.parametrize("trained, level", [(0.25, 0), (0.2, 0), (0.3, 0), (0.4, 1), (0.62, 1), (0.9, 2), (1.25, 2),
                                            (0.15, None), (0.36, None), (1.7, None)])  # None: none within 25 %
def test_the_nearest_level_within_a_quarter(trained, level):
    levels = [Level(k, (100 >> k, 80 >> k), PixelSize.of(0.25 * 2 ** k, "micrometer")) for k in range(3)]
    model = PixelSize.of(trained, "micrometer")
    assert choose_level(levels, model, 2, "in.zarr").level == 2                 # --level wins
    assert choose_level(levels, None, None, "in.zarr").level == 0               # no model size: level 0
    if level is None:
        with pytest.raises(UNetError, match="within 25%"):
            choose_level(levels, model, None, "in.zarr")
        return
    choice = choose_level(levels, model, None, "in.zarr")
    assert (choice.level, choice.pixel_size, choice.note) == (level, levels[level].pixel_size, None)


@pytest.mark.usefixtures("ray_cluster")
def test_no_level_within_a_quarter_is_refused_naming_the_levels(model, pyramid, tmp_path, capsys):
    url, _ = pyramid
    ckpt = _checkpoint(model, tmp_path / "m.safetensors", 0.1)
    assert segment(url, tmp_path / "out.zarr", "--checkpoint", ckpt) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "within 25% of the checkpoint's pixel size 0.1 µm" in err
    assert "0: 181 x 133 px, 0.25 µm; 1: 91 x 67 px, 0.5 µm; 2: 46 x 34 px, 1 µm" in err
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.usefixtures("ray_cluster")
def test_an_input_without_a_pixel_size_assumes_the_checkpoints_once(model, tmp_path, capsys):
    url = str(tmp_path / "plain.zarr")
    zarr.create_array(url, data=np.zeros((40, 50), np.uint8))
    ckpt = _checkpoint(model, tmp_path / "m.safetensors", 0.5)
    assert segment(url, tmp_path / "out.zarr", "--checkpoint", ckpt) == 0
    assert capsys.readouterr().err.count("no pixel size found; assuming the checkpoint's 0.5 µm") == 1


@pytest.mark.usefixtures("ray_cluster")
def test_a_tiff_levels_micrometres_become_the_outputs_ome_scale(model, tmp_path):
    path = tmp_path / "slide.svs"
    image = np.random.default_rng(3).integers(0, 256, (128, 96), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(32, 32), description="Aperio Image Library\n128x96 |MPP = 0.25", subifds=1)
        tif.write(image[::2, ::2], tile=(32, 32), subfiletype=1)
    out = tmp_path / "out.zarr"
    assert segment(path, out, "--checkpoint", _checkpoint(model, tmp_path / "m.safetensors", 0.5)) == 0
    ms = zarr.open_group(str(out)).attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert ms["axes"][0]["unit"] == "micrometer"
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], predict_image(model, image[::2, ::2]).argmax(0))
