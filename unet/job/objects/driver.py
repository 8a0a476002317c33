"""The --objects part of the segmentation job: instances merged across block seams, and their table.

Two passes, each resumable from done-markers like the main job. The segmentation pass (``segment`` of
the worker, which has the block's classes and probabilities in hand) labels its block and stores the local
ids and a small summary (``store_block_objects``). The driver then reads the summaries - never pixels -
merges them (``unet.job.objects.label.merge_blocks``), and a second round of actors rewrites every block with global
ids (``relabel_block``), after which the instance pyramid is built like the class pyramid, by decimation.
The merge is deterministic, so a resumed run recomputes the same ids from the same summaries and only
relabels the blocks that have no marker yet.

Layout inside OUTPUT:
    instances/               OME-NGFF 0.5 label image of object ids (uint32; uint64 past 2^32 - 1 objects)
    instances/0, 1, ...      level k is level 0 decimated 2^k times: created once the ids are known
    instances/_unet/local    int32 scratch: each block's local ids, from the segmentation pass
    instances/_unet/objects/ one summary (.npz) per block, written before the block's done-marker
    instances/_unet/shapes/  georeferenced inputs: one GeoJSON list of [id, polygon] per block, in pixels
    instances/_unet/done/    done-markers of the relabelling pass and of the instance pyramid
    objects.parquet          one row per object (pyarrow)
    objects.geojson          georeferenced inputs: one feature per object, outlines in the input's CRS
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import zarr

from unet.errors import UNetError
from unet.io.georef import affine_transform, crs_name
from unet.io.ome import label_metadata
from unet.io.output import OutputSpec, OutputWriter, done_keys, filesystem, write_ome_metadata
from unet.io.urls import open_store
from unet.job.objects.label import BlockObjects, MergedObjects, id_dtype, label_block, merge_blocks, object_columns
from unet.job.plan import Block, BlockPlan

if TYPE_CHECKING:  # the worker module imports this one
    from unet.job.actor import JobSpec

INSTANCES = "instances"
LOCAL, SUMMARIES, SHAPES = "_unet/local", "_unet/objects", "_unet/shapes"
TABLE, POLYGONS = "objects.parquet", "objects.geojson"


@dataclass(frozen=True)
class ObjectsSpec:
    """What the workers need for --objects; small and picklable."""

    instances: OutputSpec        # OUTPUT/instances; ``ids=True``, so its pyramid decimates
    classes: tuple[int, ...]     # the foreground classes whose connected pixels are objects
    min_area: int = 0            # objects of fewer pixels are dropped (after merging across seams)
    polygons: bool = False       # the input is georeferenced: gather outlines for objects.geojson

    @property
    def fingerprint(self) -> dict:
        return {"classes": list(self.classes), "min_area": self.min_area}


# -- command line -------------------------------------------------------------------------------------

def object_classes(text: str | None, class_names: Sequence[str]) -> tuple[int, ...]:
    """--object-classes as class indices: numbers or the checkpoint's class names; default every class
    but 0 (background)."""
    if text is None:
        return tuple(range(1, len(class_names)))
    classes = []
    for word in (w.strip() for w in text.split(",")):
        index = int(word) if word.isdigit() else class_names.index(word) if word in class_names else -1
        if not 0 <= index < len(class_names):
            raise UNetError(f"--object-classes {text}: expected classes 0..{len(class_names) - 1} or names "
                            f"({', '.join(class_names)}) of the checkpoint, found {word!r}")
        classes.append(index)
    return tuple(sorted(set(classes)))


def objects_spec(output: OutputSpec, classes: tuple[int, ...], min_area: int, georeferenced: bool) -> ObjectsSpec:
    instances = replace(output, url=posixpath.join(output.url.rstrip("/"), INSTANCES), probabilities=False,
                        ids=True)
    return ObjectsSpec(instances, classes, min_area, georeferenced)


# -- worker side --------------------------------------------------------------------------------------

def store_block_objects(writer: OutputWriter, block: Block, labels: np.ndarray, probs: np.ndarray,
                        spec: ObjectsSpec) -> None:
    """Label a block's objects; store its local ids and its summary (before the block's done-marker, so a
    resumed run finds the summary of every block done earlier without recomputing it)."""
    local, summary = label_block(labels, probs.max(axis=0), spec.classes, block.rows, block.cols)
    writer.group[f"{INSTANCES}/{LOCAL}"][slice(*block.rows), slice(*block.cols)] = local
    writer.put(f"{INSTANCES}/{SUMMARIES}/{block.key}", summary.to_bytes())


def relabel_block(writer: OutputWriter, block: Block, lut: np.ndarray, spec: ObjectsSpec) -> np.ndarray:
    """The block's global ids; for georeferenced inputs, also store its objects' outlines in pixels.

    Outlines come from rasterio.features.shapes (GDAL's polygonize) with 8-connectivity over the local ids,
    whose pieces the driver unions per object: a block yields one polygon per local object.
    """
    local = writer.group[LOCAL][slice(*block.rows), slice(*block.cols)]             # (h, w) int32
    if spec.polygons:  # GDAL loads only for georeferenced inputs
        from affine import Affine
        from rasterio.features import shapes

        pieces = [[int(lut[int(value)]), polygon] for polygon, value in
                  shapes(local, mask=local > 0, connectivity=8, transform=Affine.translation(block.cols[0], block.rows[0]))
                  if lut[int(value)]]
        writer.put(f"{SHAPES}/{block.key}", json.dumps(pieces).encode())
    return lut[local]                                                                # (h, w)


# -- driver side --------------------------------------------------------------------------------------

def create_instances(spec: ObjectsSpec) -> None:
    """The instances group, its job state and the scratch array of local ids (the id levels come later)."""
    out = spec.instances
    group = zarr.create_group(open_store(out.url, out.storage_options), overwrite=True)
    state = group.create_group("_unet", attributes={"description": "unet --objects state: local ids, block "
                                                                   "summaries, outlines, done-markers"})
    state.create_array("local", shape=out.shape, dtype="int32", chunks=(out.chunk,) * 2,
                       shards=(out.shard,) * 2 if out.shard else None, fill_value=0, dimension_names=("y", "x"))


@dataclass
class RelabelJob:
    """The relabelling pass of one output, shaped like a prepared job for the driver's rounds."""

    spec: JobSpec                  # the job's own, with the instance image as its output
    plan: BlockPlan
    luts: dict[str, np.ndarray]    # block key -> global id of each local id
    merged: MergedObjects
    done: set[str] = field(default_factory=set)
    failed: list[dict] = field(default_factory=list)  # the prepared job's own list: failures reach its report


def run_objects(scheduler, jobs: list, class_names: Sequence[str]) -> None:
    """Merge each finished job's objects, relabel its blocks, build the instance pyramid, write the table
    (and outlines), and record the counts per class: everything before the output is marked complete."""
    from unet.job.driver import _run_pyramids, _run_round  # the driver's block rounds, reused as they are

    todo = [job for job in jobs if job.spec.objects is not None and not job.failed]
    relabels = [_prepare_relabel(job) for job in todo]
    _run_round(scheduler, relabels, "relabel", lambda r: r.plan, None,
               args_of=lambda r, block: (r.luts[block.key],))
    _run_pyramids(scheduler, relabels)
    for job, relabel in zip(todo, relabels):
        if not job.failed:
            job.object_counts = _finish_objects(job, relabel.merged, class_names)


def _prepare_relabel(job) -> RelabelJob:
    """Read every block's summary, merge, and create the id levels with the dtype the count needs."""
    spec = job.spec.objects
    fs, path = filesystem(spec.instances.url, spec.instances.storage_options)
    blocks = list(job.plan)
    found = fs.cat([posixpath.join(path, SUMMARIES, b.key) for b in blocks])
    summaries = [BlockObjects.from_bytes(found[posixpath.join(path, SUMMARIES, b.key)]) for b in blocks]
    merged = merge_blocks(summaries, spec.min_area)
    _create_id_levels(spec.instances, id_dtype(merged.count))
    return RelabelJob(replace(job.spec, output=spec.instances), job.plan,
                      {b.key: lut for b, lut in zip(blocks, merged.luts)}, merged,
                      done=done_keys(spec.instances), failed=job.failed)


def _create_id_levels(out: OutputSpec, dtype: np.dtype) -> None:
    """The id arrays, unless an interrupted run already made them (the merge is deterministic, so they
    have the same dtype)."""
    group = zarr.open_group(open_store(out.url, out.storage_options), mode="r+")
    for level, shape in enumerate(out.level_shapes):
        if str(level) not in group:
            group.create_array(str(level), shape=shape, dtype=dtype, chunks=(out.chunk,) * 2,
                               shards=(out.shard,) * 2 if out.shard else None, fill_value=0,
                               dimension_names=("y", "x"))


def _finish_objects(job, merged: MergedObjects, class_names: Sequence[str]) -> dict[str, int]:
    """Write the table, the outlines and the instances' OME metadata; return the counts per class."""
    spec, source = job.spec.objects, job.source
    columns = object_columns(merged, class_names, source.scale, source.translation)
    transform, crs = affine_transform(source.georef), crs_name(source.georef)
    if transform is not None:
        columns["crs_x"], columns["crs_y"] = transform @ (columns["centroid_x"] + 0.5, columns["centroid_y"] + 0.5)
    table = _write_table(job.spec.output, columns, source.units, crs)
    if spec.polygons:
        _write_polygons(job.spec.output, spec.instances, job.plan, table.to_pylist(), transform, crs)
    write_ome_metadata(spec.instances, label_metadata(len(spec.instances.level_shapes), source.scale,
                                                      source.translation, source.units, None, name=INSTANCES))
    counts = Counter(columns["class_name"].tolist())
    return {name: counts.get(name, 0) for name in (class_names[c] for c in spec.classes)}


def _write_table(out: OutputSpec, columns: dict[str, np.ndarray], units, crs: str | None):
    """objects.parquet, with the units of the physical columns and the CRS in the schema metadata; returns
    the pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    meta = {"units": {"y": units[0], "x": units[1]}, "coordinates": "pixel centres; bbox stops exclusive",
            "crs": crs}
    table = table.replace_schema_metadata({"unet": json.dumps(meta)})
    fs, path = filesystem(out.url, out.storage_options)
    with fs.open(posixpath.join(path, TABLE), "wb") as f:
        pq.write_table(table, f)
    return table


def _write_polygons(out: OutputSpec, instances: OutputSpec, plan: BlockPlan, rows: list[dict], transform,
                    crs: str | None) -> None:
    """objects.geojson: the pieces of each object (one per block it touches) unioned with shapely in pixel
    coordinates, where shared edges match exactly, then mapped to the input's CRS. A piece that touches
    itself at a corner (8-connectivity) is made valid first, so an outline may be a MultiPolygon."""
    import shapely
    from shapely.geometry import mapping, shape

    fs, path = filesystem(instances.url, instances.storage_options)
    pieces: dict[int, list] = defaultdict(list)
    for data in fs.cat([posixpath.join(path, SHAPES, b.key) for b in plan]).values():
        for object_id, polygon in json.loads(data):
            pieces[object_id].append(shapely.make_valid(shape(polygon)))
    matrix = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    header = {"type": "FeatureCollection", **({"crs": _geojson_crs(crs)} if crs else {})}
    out_fs, out_path = filesystem(out.url, out.storage_options)
    with out_fs.open(posixpath.join(out_path, POLYGONS), "w") as f:  # streamed: one line per object
        f.write(json.dumps(header)[:-1] + ', "features": [\n')
        for n, row in enumerate(rows):
            outline = shapely.affinity.affine_transform(shapely.union_all(pieces[row["id"]]), matrix)
            feature = {"type": "Feature", "id": row["id"], "geometry": mapping(outline), "properties": row}
            f.write(("," if n else "") + json.dumps(feature) + "\n")
        f.write("]}\n")


def _geojson_crs(crs: str) -> dict:
    """The (pre-RFC 7946) ``crs`` member that GDAL and QGIS read: an OGC URN when the CRS has an EPSG code."""
    from rasterio.crs import CRS

    try:
        code = CRS.from_user_input(crs).to_epsg()
    except Exception:  # noqa: BLE001 - rasterio raises its own CRSError for anything it cannot parse
        code = None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{code}" if code else crs}}
