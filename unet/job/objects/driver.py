"""The driver side of --objects: instances merged across block seams, and their table.

Two passes, each resumable from done-markers like the main job. The segmentation pass (``segment`` of
the actor, which has the block's classes and probabilities in hand) labels its block and stores the local
ids and a small summary (``unet.job.objects.actor``). The driver then reads the summaries - never pixels -
merges them (``unet.job.objects.merge``), and a second round of actors rewrites every block with global
ids (``relabel``), after which the instance pyramid is built like the class pyramid, by decimation.
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

import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import zarr

from unet.io.georef import affine_transform, crs_name
from unet.io.ome import label_metadata
from unet.io.output import OutputSpec, create_label_array, done_keys, filesystem, write_ome_metadata
from unet.io.urls import open_store
from unet.job.objects.merge import MergedObjects, id_dtype, merge_blocks, object_columns
from unet.job.objects.summary import BlockObjects
from unet.job.objects.tables import write_polygons, write_table
from unet.job.plan import BlockPlan
from unet.job.prepare import PreparedJob
from unet.job.rounds import Call, run_pyramids, run_round
from unet.job.scheduler import Scheduler
from unet.job.spec import INSTANCES, SUMMARIES, ActorMethod, BlockFailure, JobSpec, ObjectsSpec, SkipReason


def create_instances(spec: ObjectsSpec) -> None:
    """The instances group, its job state and the scratch array of local ids (the id levels come later)."""
    out = spec.instances
    group = zarr.create_group(open_store(out.url, out.storage_options), overwrite=True)
    state = group.create_group("_unet", attributes={"description": "unet --objects state: local ids, block "
                                                                   "summaries, outlines, done-markers"})
    create_label_array(state, "local", out, out.shape, "int32")


@dataclass
class RelabelJob:
    """The relabelling pass of one output: a ``RoundJob`` whose output is the instance image."""

    spec: JobSpec                  # the job's own, with the instance image as its output
    plan: BlockPlan
    luts: dict[str, np.ndarray]    # block key -> global id of each local id
    merged: MergedObjects
    done: set[str] = field(default_factory=set)
    failed: list[BlockFailure] = field(default_factory=list)  # the prepared job's own list: it reaches the report
    skipped: Counter[SkipReason] = field(default_factory=Counter)


def run_objects(scheduler: Scheduler, jobs: Sequence[PreparedJob], class_names: Sequence[str]) -> None:
    """Merge each finished job's objects, relabel its blocks, build the instance pyramid, write the table
    (and outlines), and record the counts per class: everything before the output is marked complete."""
    todo = [job for job in jobs if job.spec.objects is not None and not job.failed]
    relabels = [_prepare_relabel(job) for job in todo]
    run_round(scheduler, relabels, lambda r: r.plan, lambda r, block: Call(ActorMethod.RELABEL, (r.luts[block.key],)))
    run_pyramids(scheduler, relabels)
    for job, relabel in zip(todo, relabels):
        if not job.failed:
            job.object_counts = _finish_objects(job, relabel.merged, class_names)


def _objects(job: PreparedJob) -> ObjectsSpec:
    assert job.spec.objects is not None, "a job without --objects"
    return job.spec.objects


def _prepare_relabel(job: PreparedJob) -> RelabelJob:
    """Read every block's summary, merge, and create the id levels with the dtype the count needs."""
    spec = _objects(job)
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
            create_label_array(group, str(level), out, shape, dtype)


def _finish_objects(job: PreparedJob, merged: MergedObjects, class_names: Sequence[str]) -> dict[str, int]:
    """Write the table, the outlines and the instances' OME metadata; return the counts per class."""
    spec, source = _objects(job), job.source
    columns = object_columns(merged, class_names, source.scale, source.translation)
    transform, crs = affine_transform(source.georef), crs_name(source.georef)
    if transform is not None:
        x, y = transform @ (columns["centroid_x"] + 0.5, columns["centroid_y"] + 0.5)  # type: ignore[operator]
        columns["crs_x"], columns["crs_y"] = np.asarray(x), np.asarray(y)
    table = write_table(job.spec.output, columns, source.units, crs)
    if spec.polygons:
        assert transform is not None, "outlines only for georeferenced inputs"
        write_polygons(job.spec.output, spec.instances, job.plan, table.to_pylist(), transform, crs)
    write_ome_metadata(spec.instances, label_metadata(len(spec.instances.level_shapes), source.scale,
                                                      source.translation, source.units, None, name=INSTANCES))
    counts = Counter(columns["class_name"].tolist())
    return {name: counts.get(name, 0) for name in (class_names[c] for c in spec.classes)}
