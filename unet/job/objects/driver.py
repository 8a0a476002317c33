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
    instances/_unet/bands/   contour models: each block's outer 2 * grow pixels (.npz)
    instances/_unet/inner/   contour models: each block's sums of grown objects away from its rim
    instances/_unet/rims/    contour models: each block's rim ids, from the rim pass
    instances/_unet/grown/   contour models: each block's sums of grown objects, the rim pass's markers
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

from unet.io.georef import crs_name, level_transform
from unet.io.ome import label_metadata
from unet.io.output import OutputSpec, create_label_array, done_keys, filesystem, write_ome_metadata
from unet.io.urls import open_store
from unet.job.objects.merge import MergedObjects, grown_table, id_dtype, merge_blocks, object_columns
from unet.job.objects.summary import BlockObjects, GrownSums
from unet.job.objects.tables import write_polygons, write_table
from unet.job.plan import Block, BlockPlan, neighbourhood
from unet.job.prepare import PreparedJob
from unet.job.rounds import Call, run_pyramids, run_round
from unet.job.scheduler import Scheduler
from unet.job.spec import GROWN, INSTANCES, SUMMARIES, ActorMethod, BlockFailure, JobSpec, ObjectsSpec, SkipReason


def create_instances(spec: ObjectsSpec) -> None:
    """The instances group, its job state and the scratch array of local ids (the id levels come later)."""
    out = spec.instances
    group = zarr.create_group(open_store(out.url, out.storage_options), overwrite=True)
    state = group.create_group("_unet", attributes={"description": "unet --objects state: local ids, block "
                                                                   "summaries, outlines, done-markers"})
    create_label_array(state, "local", out, out.shape, "int32")


@dataclass
class RelabelJob:
    """The relabelling pass of one output (and a contour model's rim pass before it): a ``RoundJob`` whose
    output is the instance image."""

    spec: JobSpec                  # the job's own, with the instance image as its output
    plan: BlockPlan
    luts: dict[str, np.ndarray]    # block key -> global id of each local id (a contour model's: seed id)
    merged: MergedObjects          # a contour model's: its seeds until the rim pass's sums are totalled
    done: set[str] = field(default_factory=set)
    failed: list[BlockFailure] = field(default_factory=list)  # the prepared job's own list: it reaches the report
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    final: object = None           # a contour model's new id of each seed id, as a Ray object reference

    def rim(self, block: Block) -> Call:
        """The rim pass's call: the blocks within grow pixels, with their lookup tables."""
        method = _objects_of(self.spec).method
        assert method is not None, "a rim pass without a contour model"
        return Call(ActorMethod.RIM, ([(b, self.luts[b.key]) for b in neighbourhood(self.plan, block, method.grow)],))

    def relabel(self, block: Block) -> Call:
        final = () if self.final is None else (self.final,)
        return Call(ActorMethod.RELABEL, (self.luts[block.key], *final))


def run_objects(scheduler: Scheduler, jobs: Sequence[PreparedJob], class_names: Sequence[str]) -> None:
    """Merge each finished job's objects (a contour model's: its seeds, then regrow its blocks' rims and
    total the grown objects), relabel its blocks, build the instance pyramid, write the table (and
    outlines), and record the counts per class: everything before the output is marked complete."""
    todo = [job for job in jobs if job.spec.objects is not None and not job.failed]
    relabels = [_prepare_relabel(job) for job in todo]
    contour = [r for r in relabels if _objects_of(r.spec).method is not None]
    run_round(scheduler, contour, lambda r: r.plan, RelabelJob.rim)
    for relabel in contour:
        if not relabel.failed:
            _total_grown(relabel)
    run_round(scheduler, relabels, lambda r: r.plan, RelabelJob.relabel)
    run_pyramids(scheduler, relabels)
    for job, relabel in zip(todo, relabels):
        if not job.failed:
            job.object_counts = _finish_objects(job, relabel.merged, class_names)


def _objects(job: PreparedJob) -> ObjectsSpec:
    return _objects_of(job.spec)


def _objects_of(spec: JobSpec) -> ObjectsSpec:
    assert spec.objects is not None, "a job without --objects"
    return spec.objects


def _prepare_relabel(job: PreparedJob) -> RelabelJob:
    """Read every block's summary, merge, and create the id levels with the dtype the count needs (a
    contour model's seeds are all kept: ``min_area`` judges grown objects)."""
    spec = _objects(job)
    blocks = list(job.plan)
    summaries = [BlockObjects.from_bytes(data) for data in _read_all(spec.instances, SUMMARIES, blocks)]
    merged = merge_blocks(summaries, 0 if spec.method else spec.min_area)
    _create_id_levels(spec.instances, id_dtype(merged.count))
    return RelabelJob(replace(job.spec, output=spec.instances), job.plan,
                      {b.key: lut for b, lut in zip(blocks, merged.luts)}, merged,
                      done=done_keys(spec.instances, GROWN) if spec.method else done_keys(spec.instances),
                      failed=job.failed)


def _total_grown(relabel: RelabelJob) -> None:
    """After the rim pass: the table of grown objects, and the new id of each seed for the relabelling."""
    import ray

    spec = _objects_of(relabel.spec)
    sums = [GrownSums.from_bytes(data) for data in _read_all(spec.instances, GROWN, list(relabel.plan))]
    table, final = grown_table(relabel.merged, sums, spec.min_area)
    relabel.merged, relabel.final = MergedObjects(table, []), ray.put(final)
    relabel.done = done_keys(spec.instances)


def _read_all(out: OutputSpec, folder: str, blocks: list[Block]) -> list[bytes]:
    """One small object per block from ``folder`` of the output, in the blocks' order."""
    fs, path = filesystem(out.url, out.storage_options)
    found = fs.cat([posixpath.join(path, folder, b.key) for b in blocks])
    return [found[posixpath.join(path, folder, b.key)] for b in blocks]


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
    transform, crs = level_transform(source.georef, source.scale), crs_name(source.georef)  # of the level segmented
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
