"""The output store: an OME-NGFF 0.5 label image in a Zarr v3 group, with per-block done-markers.

Layout of OUTPUT:
    zarr.json              group; ``attributes.unet`` holds the fingerprint, provenance and the status,
                           ``attributes.ome`` (multiscales + image-label) is written last, on completion
    0/, 1/, 2/ ...         uint8 class index (y, x), each level halved by a 2x2 mode
    probabilities/         optional (c, y, x) float16 softmax at full resolution
    _unet/                 a Zarr group holding the job's state:
    _unet/done/<key>       one empty object per finished block; read back with one listing
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import zarr

from unet.errors import UNetError, redact, redact_json
from unet.io.urls import fs_and_path, open_store

MARKERS = "_unet/done"
STATUS_RUNNING, STATUS_COMPLETE = "running", "complete"


@dataclass(frozen=True)
class OutputSpec:
    """Everything a worker needs to open the output; small and picklable."""

    url: str
    shape: tuple[int, int]
    chunk: int
    shard: int | None = None
    num_classes: int = 2
    probabilities: bool = False
    storage_options: dict = field(default_factory=dict, repr=False, compare=False, hash=False)
    ids: bool = False  # an instance image of object ids: its pyramid decimates, a mode would mix objects

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """Level 0 is the input's shape; each further level halves it until one chunk holds it."""
        shapes = [self.shape]
        while max(shapes[-1]) > self.chunk:
            h, w = shapes[-1]
            shapes.append((-(-h // 2), -(-w // 2)))
        return shapes

    @property
    def unit(self) -> int:
        """The unit of writing: a shard when sharded, else a chunk."""
        return self.shard or self.chunk


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fs_and_path(url, storage_options)
    return fs, path.rstrip("/")


def check_output_location(spec: OutputSpec) -> None:
    """An output is a folder (a prefix): refuse a location that is a plain file, or lies below one."""
    fs, path = filesystem(spec.url, spec.storage_options)
    for place in (path, *_local_parents(fs, path)):
        if fs.isfile(place):
            where = "" if place == path else f" at {place}"
            raise UNetError(f"OUTPUT {redact(spec.url)}: expected a new location or a Zarr group (a folder), "
                            f"found a plain file{where}; choose another OUTPUT or remove the file")


def _local_parents(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """The folders above a local ``path``, up to the first that exists (object stores have no folders)."""
    if not ("file" in fs.protocol or "local" in fs.protocol):
        return []
    parents = []
    while not fs.exists(path) and posixpath.dirname(path) != path:
        path = posixpath.dirname(path)
        parents.append(path)
    return parents


def read_unet_attrs(spec: OutputSpec) -> dict[str, Any] | None:
    """The ``unet`` attributes of an existing output group, {} for a foreign Zarr node, None if absent."""
    fs, path = filesystem(spec.url, spec.storage_options)
    for name in ("zarr.json", ".zgroup", ".zarray"):
        try:
            raw = fs.cat_file(posixpath.join(path, name))
        except FileNotFoundError:
            continue
        attrs = json.loads(raw).get("attributes", {}) if name == "zarr.json" else {}
        return attrs.get("unet", {})
    return {} if fs.exists(path) else None


@contextmanager
def writing(spec: OutputSpec) -> Iterator[None]:
    """Turn a refused write of the output's metadata (no space left, access denied) into one clear line."""
    try:
        yield
    except OSError as e:  # PermissionError and s3fs's translated S3 errors are OSErrors too
        raise UNetError(f"output {redact(spec.url)}: expected a writable location, found {type(e).__name__}: "
                        f"{e.strerror or e}") from None


def create_output(spec: OutputSpec, unet_attrs: dict[str, Any], overwrite: bool) -> None:
    """Create the group and every array (empty: Zarr stores no chunk that is entirely fill value)."""
    with writing(spec):
        _create_output(spec, unet_attrs, overwrite)


def _create_output(spec: OutputSpec, unet_attrs: dict[str, Any], overwrite: bool) -> None:
    if overwrite:
        fs, path = filesystem(spec.url, spec.storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    group = zarr.create_group(open_store(spec.url, spec.storage_options), overwrite=True,
                              attributes={"unet": redact_json(unet_attrs)})
    # A group of its own, so that Zarr readers listing OUTPUT see a known node, not a stray folder.
    group.create_group("_unet", attributes={"description": "unet job state: one done-marker per block"})
    for level, shape in enumerate(spec.level_shapes):
        create_label_array(group, str(level), spec, shape, "uint8")
    if spec.probabilities:
        group.create_array("probabilities", shape=(spec.num_classes, *spec.shape), dtype="float16",
                           chunks=(spec.num_classes, spec.chunk, spec.chunk),
                           shards=(spec.num_classes, spec.shard, spec.shard) if spec.shard else None,
                           fill_value=0, dimension_names=("c", "y", "x"))


def create_label_array(group: zarr.Group, name: str, spec: OutputSpec, shape: tuple[int, int],
                       dtype: Any) -> None:
    """A (y, x) array of labels (classes, or object ids) chunked and sharded as the output is, fill 0."""
    group.create_array(name, shape=shape, dtype=dtype, chunks=(spec.chunk,) * 2,
                       shards=(spec.shard,) * 2 if spec.shard else None, fill_value=0, dimension_names=("y", "x"))


def update_unet_attrs(spec: OutputSpec, **changes: Any) -> None:
    with writing(spec):
        group = zarr.open_group(open_store(spec.url, spec.storage_options), mode="r+")
        before: Any = group.attrs.get("unet", {})
        group.attrs["unet"] = redact_json({**before, **changes})


def write_ome_metadata(spec: OutputSpec, ome: dict[str, Any]) -> None:
    with writing(spec):
        group = zarr.open_group(open_store(spec.url, spec.storage_options), mode="r+")
        group.attrs["ome"] = ome


def register_label(spec: OutputSpec, name: str) -> None:
    """Add ``name`` to the ``labels`` list of the OME ``labels`` group that holds this output."""
    parent = spec.url.rstrip("/").rsplit("/", 1)[0]
    with writing(spec):
        group = zarr.open_group(open_store(parent, spec.storage_options), mode="a")
        ome: dict[str, Any] = dict(group.attrs.get("ome", {"version": "0.5"}))  # type: ignore[arg-type]
        ome["labels"] = sorted({*ome.get("labels", []), name})
        group.attrs["ome"] = ome


class OutputWriter:
    """Opens the output's arrays once and writes whole chunks of them; used inside workers."""

    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self.group = zarr.open_group(open_store(spec.url, spec.storage_options), mode="r+")
        self.levels = [self._array(str(k)) for k in range(len(spec.level_shapes))]
        self.probabilities = self._array("probabilities") if spec.probabilities else None
        self.fs, self.path = filesystem(spec.url, spec.storage_options)

    def write(self, level: int, rows: tuple[int, int], cols: tuple[int, int], labels: np.ndarray) -> None:
        self.levels[level][slice(*rows), slice(*cols)] = labels

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.levels[level][slice(*rows), slice(*cols)])

    def write_probabilities(self, rows: tuple[int, int], cols: tuple[int, int], probs: np.ndarray) -> None:
        assert self.probabilities is not None, "an output without probabilities"
        self.probabilities[:, slice(*rows), slice(*cols)] = probs.astype(np.float16)

    def write_array(self, path: str, rows: tuple[int, int], cols: tuple[int, int], data: np.ndarray) -> None:
        """Write rows x cols of another (y, x) array inside the output (e.g. --objects' local ids)."""
        self._array(path)[slice(*rows), slice(*cols)] = data

    def read_array(self, path: str, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        return np.asarray(self._array(path)[slice(*rows), slice(*cols)])

    def _array(self, path: str) -> zarr.Array:
        node = self.group[path]
        assert isinstance(node, zarr.Array), f"{path}: expected an array"
        return node

    def mark_done(self, key: str) -> None:
        self.put(posixpath.join(MARKERS, key), b"")

    def put(self, relative_path: str, data: bytes) -> None:
        """Write a small object (a done-marker, a block's summary) at a path inside the output."""
        _put(self.fs, posixpath.join(self.path, relative_path), data)


def done_keys(spec: OutputSpec, markers: str = MARKERS) -> set[str]:
    """Keys of finished blocks, from one listing of the marker prefix (another pass's: ``markers``)."""
    fs, path = filesystem(spec.url, spec.storage_options)
    fs.invalidate_cache()
    try:
        return {posixpath.basename(p) for p in fs.ls(posixpath.join(path, markers), detail=False)}
    except FileNotFoundError:
        return set()


def check_writable(spec: OutputSpec) -> None:
    """Fail early, with a clear message, when the output location cannot be written."""
    fs, path = filesystem(spec.url, spec.storage_options)
    probe = posixpath.join(path, "_unet", "write-probe")
    with writing(spec):
        _put(fs, probe, b"")
        fs.rm_file(probe)


def _put(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small object; on a local disk, create its folder first (object stores have none)."""
    if "file" in fs.protocol or "local" in fs.protocol:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
