"""TIFF, SVS and GeoTIFF inputs: one pyramid level of the first series as a read-only Zarr array
(tifffile's Zarr 3 store), its axes, its size relative to level 0, and the GeoTIFF tags."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile
import zarr

from unet.errors import UNetError
from unet.io.urls import fs_and_path, is_local, local_path

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
GEOTIFF_TAGS = {33550: "ModelPixelScaleTag", 33922: "ModelTiepointTag", 34264: "ModelTransformationTag",
                34735: "GeoKeyDirectoryTag", 34736: "GeoDoubleParamsTag", 34737: "GeoAsciiParamsTag",
                42112: "GDAL_METADATA", 42113: "GDAL_NODATA"}
_ROLES = {"Y": "y", "X": "x", "S": "c", "C": "c", "T": "t"}  # any other TIFF axis is a stack ("z")
_REMOTE_BLOCK_SIZE = 2**21  # fsspec's default (50 MB on S3) would fetch far more than one tile per seek


@dataclass(frozen=True)
class TiffLevel:
    """One pyramid level of a TIFF's first series, as a Zarr array in its native axis order."""

    array: zarr.Array
    axes: str                 # tifffile's axis letters, e.g. "YXS"
    roles: str                # one of t, c, z, y, x per axis
    scale: list[float]        # per axis: size of a pixel of this level in level-0 pixels
    georef: dict[str, Any]    # {"geotiff": {tag name: value}} of level 0, or {}


def open_tiff_level(url: str, storage_options: Mapping[str, Any], level: int, name: str) -> TiffLevel:
    """Open pyramid ``level`` of the TIFF at ``url``."""
    if is_local(url):
        handle = local_path(url)
    else:
        fs, path = fs_and_path(url, storage_options)
        handle = fs.open(path, "rb", block_size=_REMOTE_BLOCK_SIZE)
    try:
        series = tifffile.TiffFile(handle).series[0]
    except (tifffile.TiffFileError, IndexError) as e:
        raise UNetError(f"input {name}: expected a readable TIFF image, found {e}") from None
    if level >= len(series.levels):
        shapes = ", ".join(f"{i} {lvl.shape}" for i, lvl in enumerate(series.levels))
        raise UNetError(f"input {name}: expected pyramid level {level}, found levels {shapes}; "
                        f"choose one of them with --level")
    array = zarr.open_array(series.aszarr(level=level), mode="r", zarr_format=2)
    axes = series.levels[level].get_axes(None)
    level0_shape = series.levels[0].get_shape(None)
    return TiffLevel(array=array, axes=axes, roles="".join(_ROLES.get(a, "z") for a in axes),
                     scale=[level_factor(full, part) for full, part in zip(level0_shape, array.shape)],
                     georef=_geotiff_tags(series.levels[0].keyframe))


def is_tiff_header(head: bytes) -> bool:
    """Whether the first 4 bytes of a file are a TIFF signature."""
    return head[:4] in TIFF_MAGIC


def level_factor(full: int, part: int) -> float:
    """The downsampling factor from ``full`` to ``part`` pixels: an integer when rounding explains the sizes."""
    ratio = full / part
    nearest = max(1, round(ratio))
    return float(nearest) if part in (full // nearest, math.ceil(full / nearest)) else ratio


def _geotiff_tags(page: tifffile.TiffPage) -> dict[str, Any]:
    tags = {name: _jsonable(page.tags[code].value) for code, name in GEOTIFF_TAGS.items() if code in page.tags}
    return {"geotiff": tags} if tags else {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00")
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value
