"""Input mosaics: a Zarr array, an OME-Zarr image (NGFF 0.4/0.5, also bioformats2raw's layout) or a
TIFF/SVS/GeoTIFF, local or at any fsspec URL, opened as one 2-D image read in (C, h, w) windows.

Which axis holds channels in a plain array: the spec's ``axes`` ("yx", "cyx" or "yxc"); without it a 2-D
array is "yx" and a 3-D array is "cyx" when its first dimension is at most 16, else "yxc" when its last one
is, else it is refused. OME-Zarr and TIFF inputs take their axes from their metadata, and a singleton time
or z axis is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import fsspec
import numpy as np
import zarr
import zarr.errors

from unet.errors import UNetError, redact, redact_text
from unet.io import multiscales
from unet.io.tiff import is_tiff_header, open_tiff_level
from unet.io.urls import fs_and_path, is_local, local_path, open_store, protocol

PLAIN_AXES = ("yx", "cyx", "yxc")
MAX_CHANNELS = 16  # a dimension this small, first or last, holds channels in a plain 3-D array
ZARR_KEYS = ("zarr.json", ".zarray", ".zgroup")
_GEOREF_KEYS = {"crs", "crs_wkt", "transform", "geotransform", "GeoTransform", "spatial_ref", "grid_mapping",
                "geotiff"}
_GEOREF_PREFIXES = ("proj:", "spatial:")
_PROBE_S3_CONFIG = {"connect_timeout": 3, "read_timeout": 10, "retries": {"total_max_attempts": 2}}


@dataclass(frozen=True)
class SourceSpec:
    """Where an input is and how to read it: small and picklable, so Ray actors open it themselves."""

    url: str                  # local path or fsspec URL of a Zarr array/group or a TIFF file
    level: int | None = None  # pyramid level; None means 0
    axes: str | None = None   # plain arrays only: "yx", "cyx" or "yxc"; None infers it (module docstring)
    storage_options: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __repr__(self) -> str:  # the URL may hold credentials or a signed query: never show them
        return f"SourceSpec(url={redact(self.url)!r}, level={self.level!r}, axes={self.axes!r})"

    def __post_init__(self) -> None:
        if self.axes is not None and self.axes not in PLAIN_AXES:
            raise UNetError(f"input {redact(self.url)}: expected axes {', '.join(PLAIN_AXES)}, "
                            f"found {self.axes!r}")
        if self.level is not None and (not isinstance(self.level, int) or self.level < 0):
            raise UNetError(f"input {redact(self.url)}: expected a pyramid level >= 0, found {self.level!r}")


@dataclass(frozen=True, eq=False)
class Source:
    """One 2-D image of an input; ``read`` returns windows as (C, h, w) arrays of the stored dtype."""

    spec: SourceSpec
    shape: tuple[int, int]                # (H, W) of the chosen level
    channels: int
    dtype: np.dtype                       # stored dtype, in native byte order
    chunks: tuple[int, int]               # storage chunk (inner chunk when sharded) along (y, x)
    scale: tuple[float, float]            # pixel size (y, x); TIFF: in level-0 pixels; (1.0, 1.0) if unknown
    translation: tuple[float, float]      # position of pixel (0, 0); (0.0, 0.0) if unknown
    units: tuple[str | None, str | None]  # units of (y, x) when known
    georef: dict                          # georeferencing attributes to carry over; {} when none
    is_ome: bool                          # the URL is an OME-Zarr image (or bioformats2raw) group
    ome_path: str                         # path of the OME image group inside the URL: "" or "0"
    array: Any = field(repr=False)        # the Zarr array of the level, in its native axis order
    roles: str = field(repr=False)        # one of t, c, z, y, x per native axis, e.g. "tczyx"

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """The window ``[rows, cols]`` as a new writable (C, h, w) array; reads only the chunks it touches."""
        rows, cols = self._window(rows, 0), self._window(cols, 1)
        key = tuple(rows if r == "y" else cols if r == "x" else slice(None) if r == "c" else 0 for r in self.roles)
        out = self.array[key]
        kept = "".join(r for r in self.roles if r in "cyx")
        if "c" not in kept:
            out = out[np.newaxis]                                        # (1, h, w)
        elif kept != "cyx":
            out = out.transpose([kept.index(a) for a in "cyx"])          # (C, h, w)
        return np.ascontiguousarray(out, dtype=self.dtype)

    def _window(self, window: slice, axis: int) -> slice:
        size = self.shape[axis]
        start = 0 if window.start is None else window.start
        stop = size if window.stop is None else window.stop
        if window.step not in (None, 1) or not 0 <= start <= stop <= size:
            raise IndexError(f"input {redact(self.spec.url)}: window {start}:{stop}:{window.step} along "
                             f"{'yx'[axis]} is not a unit-step range inside 0:{size}")
        return slice(start, stop)


def open_source(spec: SourceSpec) -> Source:
    """Open the image ``spec`` names; UNetError (one line) for anything missing, unreachable or unusable."""
    name = redact(spec.url)
    if _is_tiff(spec.url, spec.storage_options, name):
        tiff = open_tiff_level(spec.url, spec.storage_options, spec.level or 0, name)
        return _source(spec, name, tiff.array, tiff.roles, axis_names=tiff.axes, scale=tiff.scale,
                       georef=tiff.georef)
    with metadata_errors(f"input {name}"):
        node = _open_zarr(spec.url, spec.storage_options, name)
        if isinstance(node, zarr.Array):
            return _open_plain(spec, name, node, {})
        return _open_group(spec, name, node)


@contextmanager
def metadata_errors(what: str) -> Iterator[None]:
    """Metadata is untrusted JSON: whatever error its parsing raises (zarr's, OME's) becomes one line
    about ``what`` (e.g. "input s3://b/m.zarr")."""
    try:
        yield
    except UNetError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, NotImplementedError,
            RecursionError) as e:
        raise UNetError(f"{what}: expected valid Zarr metadata, found {type(e).__name__}: "
                        f"{redact_text(str(e))[:200]}") from None


NOT_FOUND = "not found (expected a Zarr array or group, an OME-Zarr image or a TIFF file)"


def _is_tiff(url: str, storage_options: Mapping[str, Any], name: str) -> bool:
    """Whether ``url`` is a TIFF file (False: a Zarr location); UNetError if it is missing or unreachable."""
    if is_local(url):
        path = local_path(url)
        if not os.path.exists(path):
            raise UNetError(f"input {name}: {NOT_FOUND}")
        if os.path.isdir(path):
            return False
        with open(path, "rb") as f:
            head = f.read(4)
    else:
        probed = _probe_remote(url, storage_options, name)
        if probed is None:
            return False
        head = probed
    if not is_tiff_header(head):
        raise UNetError(f"input {name}: expected a Zarr store (a directory or prefix) or a TIFF file, "
                        f"found a file that is neither")
    return True


def _probe_remote(url: str, storage_options: Mapping[str, Any], name: str) -> bytes | None:
    """The first bytes of a remote file, or None for a Zarr location; fails fast when storage is unreachable.

    Zarr metadata keys are looked for first: over HTTP a Zarr location may not exist as such, or may answer
    with a directory listing that looks like a file.
    """
    fs, path = _probe_filesystem(url, storage_options)
    hierarchy = not urlsplit(url).query  # a signed URL names one object: nothing can be appended to it
    try:
        if hierarchy and any(fs.exists(f"{path.rstrip('/')}/{key}") for key in ZARR_KEYS):
            return None
        return None if fs.info(path).get("type") == "directory" else fs.cat_file(path, start=0, end=4)
    except FileNotFoundError:
        raise UNetError(f"input {name}: {NOT_FOUND}") from None
    except PermissionError as e:
        raise UNetError(f"input {name}: access denied ({redact_text(str(e))}); check the credentials "
                        f"in --storage-option or the AWS_* environment") from None
    except Exception as e:  # noqa: BLE001 - each filesystem has its own network errors (botocore, aiohttp, …)
        raise UNetError(f"input {name}: cannot reach the storage ({type(e).__name__}: "
                        f"{redact_text(str(e))}); check the endpoint URL and network") from None


def _probe_filesystem(url: str, storage_options: Mapping[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """A filesystem for one existence check: on S3 with short timeouts and one retry, so errors come fast."""
    if protocol(url) not in ("s3", "s3a"):
        return fs_and_path(url, storage_options)
    config = {**storage_options.get("config_kwargs", {}), **_PROBE_S3_CONFIG}
    fs, path = fs_and_path(url, {**storage_options, "config_kwargs": config, "skip_instance_cache": True})
    fs.retries = 1
    return fs, path


def _open_zarr(url: str, storage_options: Mapping[str, Any], name: str) -> zarr.Array | zarr.Group:
    store = open_store(url, storage_options, read_only=True)
    try:
        return zarr.open(store=store, mode="r")
    except zarr.errors.NodeNotFoundError:
        raise UNetError(f"input {name}: expected a Zarr array or group, "
                        f"found no {'/'.join(ZARR_KEYS)}") from None


def _open_group(spec: SourceSpec, name: str, group: zarr.Group) -> Source:
    """An OME-Zarr image (at the group or its child "0", bioformats2raw) or the group's only image array."""
    for path in ("", "0"):
        image = group if path == "" else group.get(path)
        if isinstance(image, zarr.Group):
            multiscale = multiscales.find_multiscales(image.attrs)
            if multiscale is not None:
                return _open_ome(spec, name, image, multiscale, path)
    arrays = [key for key, array in group.arrays() if array.ndim >= 2]
    if len(arrays) != 1:
        found = f"arrays {', '.join(sorted(arrays))}" if arrays else "no array of 2 or more dimensions"
        raise UNetError(f"input {name}: expected an OME-Zarr image or a group holding one image array, "
                        f"found {found}; point the URL at the array to segment")
    array = group[arrays[0]]
    assert isinstance(array, zarr.Array)
    return _open_plain(spec, name, array, dict(group.attrs))


def _open_ome(spec: SourceSpec, name: str, image: zarr.Group, multiscale: Mapping, ome_path: str) -> Source:
    level = spec.level or 0
    path = multiscales.level_path(multiscale, level, name)
    array = image.get(path)
    if not isinstance(array, zarr.Array):
        raise UNetError(f"input {name}: expected the array {path!r} of level {level} listed in the "
                        f"multiscales metadata, found nothing there")
    roles = multiscales.axis_roles(multiscale, array.ndim, name)
    scale, translation = multiscales.level_transform(multiscale, level, array.ndim, name)
    return _source(spec, name, array, roles, scale=scale, translation=translation,
                   units=multiscales.axis_units(multiscale, array.ndim), georef=_georef(array.attrs, image.attrs),
                   is_ome=True, ome_path=ome_path)


def _open_plain(spec: SourceSpec, name: str, array: zarr.Array, group_attrs: Mapping[str, Any]) -> Source:
    if spec.level:
        raise UNetError(f"input {name}: expected level 0 of a plain array (it has a single level), "
                        f"found level {spec.level}; drop --level or point at an OME-Zarr image")
    roles = _plain_roles(spec.axes, array.shape, name)
    return _source(spec, name, array, roles, georef=_georef(array.attrs, group_attrs))


def _plain_roles(axes: str | None, shape: tuple[int, ...], name: str) -> str:
    """The axes of a plain array: given, or inferred from its shape (module docstring)."""
    if len(shape) not in (2, 3):
        raise UNetError(f"input {name}: expected a 2-D (y, x) or 3-D (with channels) array, found shape "
                        f"{shape}; point at an OME-Zarr image or a 2-D/3-D array")
    if axes is not None:
        if len(axes) != len(shape):
            raise UNetError(f"input {name}: axes {axes!r} name {len(axes)} dimensions, found a "
                            f"{len(shape)}-D array of shape {shape}; pass axes with {len(shape)} letters")
        return axes
    if len(shape) == 2:
        return "yx"
    if shape[0] <= MAX_CHANNELS:
        return "cyx"
    if shape[-1] <= MAX_CHANNELS:
        return "yxc"
    raise UNetError(f"input {name}: cannot tell which dimension of shape {shape} holds channels (neither the "
                    f"first nor the last is <= {MAX_CHANNELS}); pass axes cyx or yxc")


def _source(spec: SourceSpec, name: str, array: zarr.Array, roles: str, *, axis_names: Sequence[str] | None = None,
            scale: Sequence[float] | None = None, translation: Sequence[float] | None = None,
            units: Sequence[str | None] | None = None, georef: dict | None = None, is_ome: bool = False,
            ome_path: str = "") -> Source:
    """A Source over ``array`` whose native axes have ``roles``; per-axis metadata is reduced to (y, x)."""
    _check_roles(roles, axis_names or roles, array.shape, name)
    layout = "".join(r for r in roles if r in "cyx")
    if spec.axes is not None and spec.axes != layout:
        raise UNetError(f"input {name}: axes {spec.axes!r} given, but its metadata says {layout!r}; "
                        f"drop --axes for OME-Zarr and TIFF inputs")
    if array.dtype.kind not in "buif":
        raise UNetError(f"input {name}: expected an image of integers, floats or booleans, "
                        f"found dtype {array.dtype}; convert the input")
    y, x = roles.index("y"), roles.index("x")
    return Source(spec=spec, shape=(array.shape[y], array.shape[x]),
                  channels=array.shape[roles.index("c")] if "c" in roles else 1,
                  dtype=array.dtype.newbyteorder("="), chunks=(array.chunks[y], array.chunks[x]),
                  scale=(float(scale[y]), float(scale[x])) if scale else (1.0, 1.0),
                  translation=(float(translation[y]), float(translation[x])) if translation else (0.0, 0.0),
                  units=(units[y], units[x]) if units else (None, None), georef=georef or {},
                  is_ome=is_ome, ome_path=ome_path, array=array, roles=roles)


def _check_roles(roles: str, axis_names: Sequence[str], shape: tuple[int, ...], name: str) -> None:
    """One y, one x, at most one channel axis; every other axis (time, z, page stacks) of size 1."""
    axes = "".join(axis_names)
    for role, axis, size in zip(roles, axis_names, shape):
        if role in "tz" and size != 1:
            what = "a time series" if role == "t" else "a stack"
            raise UNetError(f"input {name}: expected one 2-D image, found {what} of {size} along axis "
                            f"{axis!r} (axes {axes}, shape {shape}); extract one plane first")
    if sorted(r for r in roles if r in "cyx") not in (["x", "y"], ["c", "x", "y"]):
        raise UNetError(f"input {name}: expected axes with one y, one x and at most one channel axis, "
                        f"found {axes} (shape {shape})")


def _georef(*attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Georeferencing attributes worth carrying to the output; earlier mappings win."""
    found: dict[str, Any] = {}
    for attrs in reversed(attributes):
        found.update({k: v for k, v in attrs.items() if k in _GEOREF_KEYS or k.startswith(_GEOREF_PREFIXES)})
    return found
