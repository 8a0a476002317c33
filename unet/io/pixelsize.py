"""Physical pixel sizes: of each pyramid level of an input, and in the units users give.

Read from OME-NGFF scales (with the axes' units), TIFF files (SVS ``MPP``, OME-TIFF ``PhysicalSizeX/Y``,
GeoTIFF transforms in a projected CRS's linear unit, else the resolution tags in inches or centimetres)
and the georeferencing attributes of plain Zarr arrays. Sizes are held in metres; an input whose size is
unknown (no unit, a geographic CRS in degrees, no tags) has none, rather than a guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tifffile
import zarr
from tifffile.zarr import ZarrTiffStore

from unet.errors import UNetError, redact
from unet.io import multiscales
from unet.io.georef import affine_transform, crs_name
from unet.io.source import Source, SourceSpec, open_source
from unet.io.tiff import level_factor
from unet.io.urls import fs_and_path, is_local, local_path, open_store

METRES = {"meter": 1.0, "metre": 1.0, "m": 1.0, "kilometer": 1e3, "km": 1e3, "centimeter": 1e-2, "cm": 1e-2,
          "millimeter": 1e-3, "mm": 1e-3, "micrometer": 1e-6, "micron": 1e-6, "µm": 1e-6, "um": 1e-6,
          "nanometer": 1e-9, "nm": 1e-9, "angstrom": 1e-10, "Å": 1e-10, "inch": 0.0254, "foot": 0.3048}
USER_UNITS = ("micrometer", "meter")         # what --pixel-unit takes
_TIFF_RESOLUTION_UNITS = {2: 0.0254, 3: 0.01}  # ResolutionUnit: inch, centimetre
_MPP = re.compile(r"\bMPP\s*=\s*([0-9.eE+-]+)")


@dataclass(frozen=True)
class PixelSize:
    """The size of a pixel along (y, x), in metres."""

    y: float
    x: float

    @classmethod
    def of(cls, value: float, unit: str, name: str = "--pixel-size") -> PixelSize:
        """A square pixel of ``value`` ``unit``s; UNetError unless value > 0 and the unit is known."""
        if unit not in METRES:
            raise UNetError(f"{name}: expected a unit among {', '.join(USER_UNITS)}, found {unit!r}")
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise UNetError(f"{name}: expected a pixel size > 0, found {value}")
        return cls(value * METRES[unit], value * METRES[unit])

    def in_unit(self, unit: str) -> tuple[float, float]:
        return self.y / METRES[unit], self.x / METRES[unit]

    def scaled(self, factor_y: float, factor_x: float) -> PixelSize:
        return PixelSize(self.y * factor_y, self.x * factor_x)

    def mismatch(self, other: PixelSize) -> float:
        """The larger relative difference of the two axes from ``other``'s: 0.25 means 25 % larger or smaller."""
        return max(abs(self.y / other.y - 1), abs(self.x / other.x - 1))

    def describe(self) -> str:
        unit = "micrometer" if self.x < 1e-3 else "meter"
        y, x = self.in_unit(unit)
        shown = f"{x:.4g}" if math.isclose(x, y, rel_tol=1e-6) else f"{y:.4g} x {x:.4g}"
        return f"{shown} {'µm' if unit == 'micrometer' else 'm'}"

    def to_dict(self) -> dict[str, Any]:
        """As recorded in reports and output metadata: (y, x) in the unit that suits the size."""
        unit = "micrometer" if self.x < 1e-3 else "meter"
        return {"value": list(self.in_unit(unit)), "unit": unit}


@dataclass(frozen=True)
class Level:
    """One pyramid level of an input: its index, (h, w) and physical pixel size (None: unknown)."""

    index: int
    shape: tuple[int, int]
    pixel_size: PixelSize | None


def input_levels(source: Source) -> list[Level]:
    """Every pyramid level of the input that ``source`` (any level of it) was opened from."""
    if source.is_ome:
        return _ome_levels(source)
    if isinstance(source.array.store_path.store, ZarrTiffStore):
        return _tiff_levels(source)
    return [Level(0, source.shape, _georef_size(source.georef))]


def folder_pixel_size(paths: Sequence[Path]) -> PixelSize | None:
    """The pixel size that the TIFF files among ``paths`` record (training images), None when none does;
    UNetError when two disagree by more than 1 %."""
    found: list[tuple[Path, PixelSize]] = []
    for path in paths:
        if path.suffix.lower() in (".tif", ".tiff"):
            size = input_levels(open_source(SourceSpec(str(path))))[0].pixel_size
            found += [(path, size)] if size is not None else []
    for path, size in found[1:]:
        if size.mismatch(found[0][1]) > 0.01:
            raise UNetError(f"image {path}: expected the pixel size of {found[0][0].name} "
                            f"({found[0][1].describe()}), found {size.describe()}; pass --pixel-size to choose one")
    return found[0][1] if found else None


def checkpoint_pixel_size(metadata: Mapping[str, Any], name: str) -> PixelSize | None:
    """The pixel size a model was trained at, from its metadata ({"value": V or [Vy, Vx], "unit": U})."""
    entry = metadata.get("pixel_size")
    if entry is None:
        return None
    try:
        value, unit = entry["value"], entry["unit"]
        vy, vx = (value, value) if isinstance(value, int | float) else (float(value[0]), float(value[1]))
    except (KeyError, TypeError, ValueError, IndexError):
        raise UNetError(f"checkpoint {name}: expected pixel_size as {{'value': V, 'unit': U}}, found {entry!r}") from None
    return PixelSize(PixelSize.of(vy, unit, name).y, PixelSize.of(vx, unit, name).x)


def _ome_levels(source: Source) -> list[Level]:
    store = open_store(source.spec.url, source.spec.storage_options, read_only=True)
    image = zarr.open_group(store, path=source.ome_path, mode="r")
    multiscale = multiscales.find_multiscales(image.attrs) or {}
    y, x = source.roles.index("y"), source.roles.index("x")
    units = multiscales.axis_units(multiscale, len(source.roles))
    fy, fx = METRES.get(units[y] or ""), METRES.get(units[x] or "")
    levels = []
    for index, dataset in enumerate(multiscale["datasets"]):
        path = "/".join(p for p in (source.ome_path, str(dataset["path"])) if p)
        shape = zarr.open_array(store, path=path, mode="r").shape
        scale, _ = multiscales.level_transform(multiscale, index, len(shape), redact(source.spec.url))
        size = PixelSize(scale[y] * fy, scale[x] * fx) if fy is not None and fx is not None else None
        levels.append(Level(index, (shape[y], shape[x]), size))
    return levels


def _tiff_levels(source: Source) -> list[Level]:
    with _open_tiff(source) as tif:
        series = tif.series[0]
        full = _tiff_pixel_size(tif, source.georef)
        shapes = [tuple(level.get_shape(None)[level.get_axes(None).index(a)] for a in "YX") for level in series.levels]
    (h0, w0) = shapes[0]
    return [Level(index, (h, w), full.scaled(level_factor(h0, h), level_factor(w0, w)) if full else None)
            for index, (h, w) in enumerate(shapes)]


def _open_tiff(source: Source) -> tifffile.TiffFile:
    url = source.spec.url
    if is_local(url):
        return tifffile.TiffFile(local_path(url))
    fs, path = fs_and_path(url, source.spec.storage_options)
    return tifffile.TiffFile(fs.open(path, "rb", block_size=2**21))


def _tiff_pixel_size(tif: tifffile.TiffFile, georef: Mapping[str, Any]) -> PixelSize | None:
    """Level 0's pixel size: SVS MPP, OME-TIFF physical sizes, a GeoTIFF transform, resolution tags."""
    page = tif.pages.first
    description = page.description or ""
    mpp = _MPP.search(description) if "Aperio" in description else None
    if mpp:
        return PixelSize.of(float(mpp.group(1)), "micrometer", "SVS MPP")
    if tif.is_ome and tif.ome_metadata:
        size = _ome_tiff_size(tif.ome_metadata)
        if size is not None:
            return size
    if georef.get("geotiff"):
        return _georef_size(georef)
    return _resolution_size(page)


def _ome_tiff_size(xml: str) -> PixelSize | None:
    image = tifffile.xml2dict(xml).get("OME", {}).get("Image", {})
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    try:
        y = float(pixels["PhysicalSizeY"]) * METRES[pixels.get("PhysicalSizeYUnit", "µm")]
        x = float(pixels["PhysicalSizeX"]) * METRES[pixels.get("PhysicalSizeXUnit", "µm")]
    except (KeyError, ValueError):
        return None
    return PixelSize(y, x) if y > 0 and x > 0 else None


def _resolution_size(page: tifffile.TiffPage) -> PixelSize | None:
    """From XResolution/YResolution (pixels per inch or centimetre); a unitless resolution says nothing."""
    unit = _TIFF_RESOLUTION_UNITS.get(int(page.tags.valueof("ResolutionUnit", 2)))
    xres, yres = page.tags.valueof("XResolution"), page.tags.valueof("YResolution")
    if unit is None or not xres or not yres:
        return None
    per_x, per_y = xres[0] / xres[1], yres[0] / yres[1]
    return PixelSize(unit / per_y, unit / per_x) if per_x > 0 and per_y > 0 else None


def _georef_size(georef: Mapping[str, Any]) -> PixelSize | None:
    """The pixel size of a georeferenced image in a projected CRS (None for degrees or an unknown CRS)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    transform, crs = affine_transform(georef), crs_name(georef)
    if transform is None or crs is None:
        return None
    try:
        parsed = CRS.from_user_input(crs)
    except CRSError:
        return None
    if not parsed.is_projected:
        return None
    metres = parsed.linear_units_factor[1]
    return PixelSize(math.hypot(transform.b, transform.e) * metres, math.hypot(transform.a, transform.d) * metres)


def describe_levels(levels: Sequence[Level]) -> str:
    """"0: 40000 x 30000 px, 0.25 µm; 1: …", for messages."""
    return "; ".join(f"{lvl.index}: {lvl.shape[0]} x {lvl.shape[1]} px, "
                     f"{lvl.pixel_size.describe() if lvl.pixel_size else 'unknown size'}" for lvl in levels)
