"""A finished label image (classes, or object ids) as a Cloud-Optimized GeoTIFF, written through GDAL.

The COG's overviews are the output's own pyramid levels — a 2x2 mode for classes, decimation for ids —
never resampled again by GDAL (which would average classes or mix ids): each Zarr level is copied window by
window into a tiled GeoTIFF, a VRT lists levels 1, 2, … as the overviews of level 0, and GDAL's COG driver
copies that into one file with ``OVERVIEWS=FORCE_USE_EXISTING``. No step holds more than a window and
GDAL's capped block cache, whatever the image's size. The file is written beside its destination (or in
the system's temporary folder for a URL) and moved (uploaded) into place only when whole, so a file at the
destination is always a complete COG.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from unet.errors import UNetError, redact
from unet.io.urls import fs_and_path, is_local, local_path, open_store, protocol

COG_SUFFIXES = (".tif", ".tiff")
BLOCKSIZE = 512                  # the COG's tile (GDAL's default)
WINDOW = 2048                    # pixels per side of one copied window: 4 MB of uint8, 32 MB of uint64
GDAL_CACHE_MB = 256
_CREATION = {"COMPRESS": "DEFLATE", "BLOCKSIZE": BLOCKSIZE, "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}
_GDAL_DTYPES = {"uint8": "Byte", "uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64"}


@dataclass(frozen=True)
class CogSpec:
    """Where a COG goes and what it shows: the Zarr label group's levels (arrays "0", "1", …), its
    pixel-to-CRS transform and CRS (None: pixel coordinates), and per-class colours (classes only)."""

    url: str
    transform: Affine | None = None
    crs: str | None = None
    colors: Sequence[tuple[int, int, int, int]] | None = None
    storage_options: dict = field(default_factory=dict, repr=False, compare=False, hash=False)


def check_cog_destination(url: str, storage_options: dict) -> None:
    """Refuse, before anything runs, a destination that cannot take the COG: not a .tif path, a local
    folder that does not exist or cannot be written, or a URL whose storage does not take writes."""
    name = redact(url)
    if not url.lower().endswith(COG_SUFFIXES):
        raise UNetError(f"--cog {name}: expected a path ending in .tif or .tiff, found {posixpath.basename(name)!r}")
    if is_local(url):
        folder = os.path.dirname(os.path.abspath(local_path(url)))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UNetError(f"--cog {name}: expected a writable folder {folder}, found "
                            f"{'none' if not os.path.isdir(folder) else 'it read-only'}")
        return
    try:
        fs, path = fs_and_path(url, storage_options)
        probe = f"{path}.unet-probe"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - each filesystem refuses in its own way (HTTP: NotImplementedError)
        raise UNetError(f"--cog {name}: expected a location that takes writes (a local path, s3://, gs://, "
                        f"…), found {protocol(url)}:// refusing them ({type(e).__name__})") from None


def write_cog(spec: CogSpec, zarr_url: str, storage_options: dict) -> int:
    """Write the label group at ``zarr_url`` (levels "0", "1", …) as a COG at ``spec.url``; returns its
    size in bytes."""
    store = open_store(zarr_url, storage_options, read_only=True)
    group = zarr.open_group(store, mode="r")
    levels = [zarr.open_array(store, path=str(k), mode="r") for k in range(_count_levels(group))]
    with _staging(spec.url) as folder, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        paths = [_copy_level(level, os.path.join(folder, f"level{k}.tif")) for k, level in enumerate(levels)]
        vrt = os.path.join(folder, "levels.vrt")
        _write_vrt(vrt, paths, levels, spec)
        cog = os.path.join(folder, "out.tif")
        rasterio.shutil.copy(vrt, cog, driver="COG", OVERVIEWS="FORCE_USE_EXISTING", **_CREATION)
        size = os.path.getsize(cog)
        _publish(cog, spec)
    return size


def cog_exists(spec: CogSpec) -> bool:
    fs, path = fs_and_path(spec.url, spec.storage_options)
    return fs.exists(path)


def _count_levels(group: zarr.Group) -> int:
    n = 0
    while str(n) in group:
        n += 1
    return n


def _copy_level(array: zarr.Array, path: str) -> str:
    """One Zarr level into a tiled GeoTIFF (no georeferencing: the VRT carries it), window by window."""
    h, w = array.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dst = rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype=array.dtype.name,
                            tiled=True, blockxsize=BLOCKSIZE, blockysize=BLOCKSIZE, compress="DEFLATE",
                            bigtiff="IF_SAFER")
    with dst:
        for r0, c0 in _windows(h, w):
            r1, c1 = min(r0 + WINDOW, h), min(c0 + WINDOW, w)
            pixels = np.asarray(array[r0:r1, c0:c1])                          # (h', w')
            dst.write(pixels[None], window=Window(c0, r0, c1 - c0, r1 - r0))
    return path


def _windows(h: int, w: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, h, WINDOW):
        for c0 in range(0, w, WINDOW):
            yield r0, c0


def _write_vrt(path: str, levels_paths: list[str], levels: list[zarr.Array], spec: CogSpec) -> None:
    """A VRT of level 0 whose band lists the coarser levels as its overviews; georeferencing and colours
    are set here."""
    h, w = levels[0].shape
    root = ET.Element("VRTDataset", rasterXSize=str(w), rasterYSize=str(h))
    if spec.transform is not None:
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in spec.transform.to_gdal())
    if spec.crs:
        ET.SubElement(root, "SRS").text = CRS.from_user_input(spec.crs).to_wkt()
    band = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_DTYPES[levels[0].dtype.name], band="1")
    if spec.colors:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for r, g, b, a in spec.colors:
            ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(a))
    _source(ET.SubElement(band, "SimpleSource"), levels_paths[0], h, w)
    for level_path, level in zip(levels_paths[1:], levels[1:]):
        overview = ET.SubElement(band, "Overview")
        ET.SubElement(overview, "SourceFilename", relativeToVRT="0").text = level_path
        ET.SubElement(overview, "SourceBand").text = "1"
    ET.ElementTree(root).write(path)


def _source(element: ET.Element, path: str, h: int, w: int) -> None:
    ET.SubElement(element, "SourceFilename", relativeToVRT="0").text = path
    ET.SubElement(element, "SourceBand").text = "1"
    ET.SubElement(element, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
    ET.SubElement(element, "DstRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))


@contextmanager
def _staging(url: str) -> Iterator[str]:
    """A temporary folder for the intermediate files: beside a local destination (one file system, so
    the final move is a rename), else in the system's temporary folder; removed afterwards."""
    parent = os.path.dirname(os.path.abspath(local_path(url))) if is_local(url) else None
    folder = tempfile.mkdtemp(prefix=".unet-cog-", dir=parent)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _publish(path: str, spec: CogSpec) -> None:
    """Move (or upload) the finished file to its destination in one step."""
    if is_local(spec.url):
        os.replace(path, local_path(spec.url))
        return
    fs, remote = fs_and_path(spec.url, spec.storage_options)
    fs.put_file(path, remote)

