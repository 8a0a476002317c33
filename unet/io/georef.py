"""Where a georeferenced input's pixels are on Earth: its affine pixel-to-CRS transform and its CRS, read
from the attributes ``Source.georef`` carries (GDAL/rasterio and STAC/GeoZarr attributes of Zarr inputs,
GeoTIFF tags of TIFF inputs).

Transforms follow rasterio's convention: ``Affine(a, b, c, d, e, f)`` maps the corner (column, row) of a
pixel to x = a*col + b*row + c, y = d*col + e*row + f.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from affine import Affine

_RASTERIO_ORDER = ("transform", "proj:transform", "spatial:transform")  # a, b, c, d, e, f (+ 0, 0, 1)
_CRS_KEYS = ("crs", "proj:code", "proj:wkt2", "crs_wkt", "spatial_ref", "proj:epsg")
_GEOKEY_CRS = (3072, 2048)  # ProjectedCSTypeGeoKey, GeographicTypeGeoKey


def affine_transform(georef: Mapping[str, Any]) -> Affine | None:
    """The pixel-to-CRS transform, or None when the attributes do not give one."""
    for key in _RASTERIO_ORDER:
        if _numbers(georef.get(key), 6, 9):
            return Affine(*georef[key][:6])
    gdal = georef.get("GeoTransform", georef.get("geotransform"))
    if isinstance(gdal, str):  # GDAL's Zarr driver writes "c a b f d e" as one string
        gdal = _floats(gdal.replace(",", " ").split())
    if _numbers(gdal, 6):
        return Affine.from_gdal(*gdal)
    return _geotiff_transform(georef.get("geotiff", {}))


def level_transform(georef: Mapping[str, Any], scale: tuple[float, float]) -> Affine | None:
    """The pixel-to-CRS transform of the pyramid level an input was opened at. A TIFF's tags describe its
    level 0, and ``scale`` (y, x) is then the level's pixel in level-0 pixels; Zarr attributes belong to the
    array that was opened."""
    transform = affine_transform(georef)
    if transform is None or "geotiff" not in georef:
        return transform
    return transform * Affine.scale(scale[1], scale[0])


def crs_name(georef: Mapping[str, Any]) -> str | None:
    """The CRS as a user input string (e.g. "EPSG:32633" or WKT), or None when unknown."""
    for key in _CRS_KEYS:
        value = georef.get(key)
        if isinstance(value, int):
            return f"EPSG:{value}"
        if isinstance(value, str) and value:
            return value
    keys: Any = georef.get("geotiff", {}).get("GeoKeyDirectoryTag")
    if _numbers(keys, 4, 10**6):
        entries = [keys[i:i + 4] for i in range(4, len(keys) - 3, 4)]   # (key id, location, count, value)
        codes = {key_id: code for key_id, location, _, code in entries if location == 0}
        for key_id in _GEOKEY_CRS:
            if 0 < codes.get(key_id, 0) < 32767:  # 32767 means user-defined
                return f"EPSG:{codes[key_id]}"
    return None


def _geotiff_transform(tags: Mapping[str, Any]) -> Affine | None:
    """ModelTransformationTag (a 4x4 matrix), else ModelPixelScaleTag with the first ModelTiepointTag."""
    matrix: Any = tags.get("ModelTransformationTag")
    if _numbers(matrix, 16):
        return Affine(matrix[0], matrix[1], matrix[3], matrix[4], matrix[5], matrix[7])
    scale: Any = tags.get("ModelPixelScaleTag")
    tie: Any = tags.get("ModelTiepointTag")
    if _numbers(scale, 2, 3) and _numbers(tie, 6, 10**6):
        col, row, _, x, y, _ = tie[:6]
        return Affine(scale[0], 0.0, x - col * scale[0], 0.0, -scale[1], y + row * scale[1])
    return None


def _floats(words: list[str]) -> list[float] | None:
    try:
        return [float(w) for w in words]
    except ValueError:
        return None


def _numbers(value: Any, least: int, most: int | None = None) -> bool:
    """Whether ``value`` is a list of ``least`` to ``most`` numbers."""
    return (isinstance(value, list | tuple) and least <= len(value) <= (most or least)
            and all(isinstance(v, int | float) for v in value))
