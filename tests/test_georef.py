"""Georeferencing read back from input attributes: a real GeoTIFF written by rasterio (GDAL) and opened
through tifffile gives rasterio's own transform and CRS; Zarr attributes in the usual spellings."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from unet.io.georef import affine_transform, crs_name
from unet.io.source import SourceSpec, open_source

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


@pytest.mark.parametrize("transform, crs", [(UTM, "EPSG:32633"), (Affine(0.5, 0.0, 12.0, 0.0, -0.25, 48.0), "EPSG:4326"),
                                            (Affine(2.0, 0.5, 100.0, 0.25, -3.0, 900.0), "EPSG:3857")])
def test_geotiff_written_by_gdal(tmp_path, transform, crs):
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(np.zeros((1, 30, 40), np.uint8))
    georef = open_source(SourceSpec(str(path))).georef
    assert affine_transform(georef).almost_equals(transform)
    assert CRS.from_user_input(crs_name(georef)) == CRS.from_user_input(crs)


GDAL_ORDER = [500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0]


@pytest.mark.parametrize("attrs", [
    {"transform": list(UTM)[:6], "crs": "EPSG:32633"},
    {"proj:transform": list(UTM), "proj:epsg": 32633},
    {"spatial:transform": list(UTM)[:6], "proj:code": "EPSG:32633"},
    {"GeoTransform": " ".join(map(str, GDAL_ORDER)), "spatial_ref": CRS.from_epsg(32633).to_wkt()},
    {"geotransform": GDAL_ORDER, "crs_wkt": CRS.from_epsg(32633).to_wkt()},
], ids=["rasterio", "stac", "geozarr", "gdal-string", "gdal-list"])
def test_zarr_attribute_spellings(attrs):
    assert affine_transform(attrs).almost_equals(UTM)
    assert CRS.from_user_input(crs_name(attrs)).to_epsg() == 32633


@pytest.mark.parametrize("attrs", [{}, {"crs": "EPSG:4326"}, {"transform": [1, 2, 3]}, {"GeoTransform": "a b"},
                                   {"geotiff": {"ModelPixelScaleTag": [1.0, 1.0, 0.0]}}])
def test_no_transform_means_not_georeferenced(attrs):
    assert affine_transform(attrs) is None
