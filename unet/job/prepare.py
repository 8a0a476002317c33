"""Preparing a run: the checkpoint read once, every INPUT -> OUTPUT pair validated and planned, and what a
resumed output has done already. Validation only: nothing is written before every input has passed."""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from unet.errors import CheckpointError, UNetError, redact
from unet.infer.instances import InstanceMethod
from unet.infer.predict import TilePredictor
from unet.io.georef import affine_transform
from unet.io.output import (STATUS_COMPLETE, OutputSpec, check_output_location, check_writable, done_keys,
                            read_unet_attrs)
from unet.io.pixelsize import PixelSize, checkpoint_pixel_size
from unet.io.source import Source, SourceSpec
from unet.io.urls import is_inside, resolve_storage_options
from unet.job.level import LevelChoice, open_level
from unet.job.limits import check_plan
from unet.job.options import SegmentOptions
from unet.job.plan import BlockPlan, Geometry, check_block_size
from unet.job.pyramid import level_plan
from unet.job.roi import RegionOfInterest, load_roi
from unet.job.spec import INSTANCES, BlockFailure, JobSpec, ObjectsSpec, SkipReason
from unet.nn.checkpoint import load_checkpoint, read_checkpoint_bytes
from unet.nn.model import UNet


@dataclass(frozen=True)
class Checkpoint:
    """The run's checkpoint: its bytes (sent to the actors once), the model, its hash, class names, how its
    classes become objects, and the pixel size it was trained at (None: not recorded)."""

    data: bytes
    model: UNet
    sha256: str
    class_names: list[str]
    instance_method: InstanceMethod | None = None  # a contour model's; None: objects are connected components
    pixel_size: PixelSize | None = None  # the pixel size the model was trained at
    min_area: int = 0  # objects smaller than this are dropped by --objects unless --min-area says otherwise


@dataclass
class PreparedJob:
    """One INPUT -> OUTPUT pair, validated; nothing written yet. A ``RoundJob`` for the driver's rounds."""

    spec: JobSpec
    source: Source
    plan: BlockPlan
    fingerprint: dict[str, Any]
    existing: dict[str, Any] | None
    done: set[str] = field(default_factory=set)
    failed: list[BlockFailure] = field(default_factory=list)
    pixels_done: int = 0
    roi: RegionOfInterest | None = None
    skipped: Counter[SkipReason] = field(default_factory=Counter)  # blocks not run, by reason
    label_name: str | None = None  # set when writing INPUT/labels/NAME of an OME-Zarr image
    object_counts: dict[str, int] | None = None  # --objects: objects per class, once merged
    level: LevelChoice = LevelChoice(0, None)  # the input's pyramid level segmented, and its pixel size
    cogs: list[dict[str, Any]] = field(default_factory=list)  # --cog: the COGs written (or found written)
    geometry: Geometry | None = None  # the block and tile chosen, and their expected cost (unet.job.geometry)

    @property
    def complete(self) -> bool:
        return (self.existing or {}).get("status") == STATUS_COMPLETE


def read_checkpoint(opts: SegmentOptions) -> Checkpoint:
    data = read_checkpoint_bytes(opts.checkpoint, resolve_storage_options(opts.checkpoint, opts.storage_options))
    model, metadata = load_checkpoint(data, name=redact(opts.checkpoint))
    class_names = list(metadata.get("class_names") or [f"class {k}" for k in range(model.config.num_classes)])
    return Checkpoint(data, model, hashlib.sha256(data).hexdigest(), class_names,
                      instance_method(metadata, model, redact(opts.checkpoint)),
                      checkpoint_pixel_size(metadata, redact(opts.checkpoint)),
                      checkpoint_min_area(metadata, redact(opts.checkpoint)))


MAX_MIN_AREA = 10**12       # pixels: more than any mosaic's objects could hold


def checkpoint_min_area(metadata: dict[str, Any], name: str) -> int:
    """The smallest objects the checkpoint's training says are real (0 when it records none: a checkpoint
    trained before min_area was recorded, or on class masks)."""
    found = metadata.get("min_area", 0)
    if type(found) is not int or not 0 <= found <= MAX_MIN_AREA:
        raise CheckpointError(f"checkpoint {name}: expected metadata min_area to be a whole number of pixels "
                              f"0..{MAX_MIN_AREA}, found {str(found)[:40]!r}")
    return found


def instance_method(metadata: dict[str, Any], model: UNet, name: str) -> InstanceMethod | None:
    """How the checkpoint's class image becomes objects: its contour method, or None (connected components)."""
    method = InstanceMethod.from_metadata(metadata)
    if method is not None and max(method.interior, method.boundary) >= model.config.num_classes:
        raise CheckpointError(f"checkpoint {name}: expected instance_method classes below its "
                              f"{model.config.num_classes} classes, found {method.to_metadata()}")
    return method


def prepare_jobs(opts: SegmentOptions, checkpoint: Checkpoint) -> list[PreparedJob]:
    """Every pair of the run, validated and planned, in order. With --objects, a checkpoint that records no
    instance method (a two-class model) is said, once, to label connected components, and a min_area taken
    from the checkpoint is said once.
    A --tile the network cannot use is refused here, on the driver, rather than by every worker as it starts."""
    if opts.tile is not None:
        TilePredictor.check_tile(checkpoint.model, opts.tile)
    said_min_area = False
    if opts.objects and opts.min_area is None:
        opts = replace(opts, min_area=checkpoint.min_area)
        said_min_area = checkpoint.min_area > 0
    jobs = [prepare_job(opts, pair, checkpoint.model, checkpoint.sha256, checkpoint.class_names,
                        checkpoint.instance_method, checkpoint.pixel_size) for pair in opts.pairs]
    if opts.objects and checkpoint.instance_method is None:  # once, and only for a run that goes ahead
        print(f"unet: checkpoint {redact(opts.checkpoint)} records no instance method (a two-class model, or one "
              "trained before contour objects), so --objects labels connected components and touching objects "
              "merge", file=sys.stderr)
    if said_min_area:
        print(f"unet: --objects drops objects under {checkpoint.min_area} px (the checkpoint's min_area, chosen "
              "from its training objects; --min-area 0 keeps all)", file=sys.stderr)
    return jobs


def resume(job: PreparedJob) -> None:
    """Before the run: check that the output can be written, and find the blocks a resumed output has done."""
    check_writable(job.spec.output)
    job.done = done_keys(job.spec.output) if job.existing is not None else set()
    job.pixels_done = sum(b.pixels for b in job.plan if b.key in job.done)


def prepare_job(opts: SegmentOptions, pair: tuple[str, str], model: UNet, checkpoint_sha: str,
                class_names: Sequence[str], method: InstanceMethod | None = None,
                pixel_size: PixelSize | None = None) -> PreparedJob:
    """Open and check one INPUT -> OUTPUT pair (at the level nearest the model's ``pixel_size`` unless
    ``--level`` says) and plan its blocks; nothing is written."""
    in_url, out_url = pair
    so_in = resolve_storage_options(in_url, opts.storage_options)
    so_out = resolve_storage_options(out_url, opts.storage_options)
    source, level = open_level(SourceSpec(in_url, opts.level, opts.axes, storage_options=so_in), pixel_size)
    check_contract(source, model, opts.input_range)
    if opts.as_label:
        if not source.is_ome:
            raise UNetError(f"--as-label: expected an OME-Zarr image as INPUT, found {redact(in_url)} "
                            "(a plain array or TIFF has no labels/ group)")
        out_url = "/".join(p for p in (in_url.rstrip("/"), source.ome_path, "labels", opts.as_label) if p)
        so_out = so_in
    if not opts.as_label and is_inside(out_url, in_url):
        raise UNetError(f"OUTPUT {redact(out_url)}: expected a location outside INPUT {redact(in_url)}, "
                        "found it inside (use --as-label NAME to write labels into an OME-Zarr image)")
    check_block_size(opts.block_size, opts.chunk, opts.shard)
    check_plan(redact(in_url), source.shape, source.chunks, opts.block_size)
    out = OutputSpec(out_url, source.shape, opts.chunk, opts.shard, model.config.num_classes,
                     opts.probabilities, storage_options=so_out)
    objects = (objects_spec(out, object_classes(opts.object_classes, class_names, method), opts.min_area or 0,
                            affine_transform(source.georef) is not None, method) if opts.objects else None)
    check_output_location(out)
    existing = read_unet_attrs(out)
    block = resumed_block(opts, existing) or opts.block_size  # without --block, a new output's is chosen by cost
    fingerprint = {"checkpoint_sha256": checkpoint_sha, "input": redact(in_url), "level": level.level,
                   "axes": opts.axes, "shape": list(source.shape), "chunk": opts.chunk, "shard": opts.shard,
                   "block": block, "probabilities": opts.probabilities,
                   "input_range": list(opts.input_range) if opts.input_range else None,
                   "objects": objects.fingerprint if objects else None,
                   "roi": redact(opts.roi) if opts.roi else None, "tta": opts.tta if opts.tta > 1 else None}
    roi = load_roi(opts.roi, resolve_storage_options(opts.roi, opts.storage_options), source.shape) \
        if opts.roi else None
    if existing is not None and not opts.overwrite:
        _check_resumable(out_url, existing, fingerprint)
    existing = None if opts.overwrite else existing
    return PreparedJob(JobSpec(source.spec, out, opts.input_range, objects, block), source,
                       level_plan(out, 0, block), fingerprint, existing,
                       label_name=opts.as_label, roi=roi, object_counts=(existing or {}).get("objects"), level=level)


def resumed_block(opts: SegmentOptions, existing: dict[str, Any] | None) -> int | None:
    """Without --block, an output being resumed keeps the block side it was started with."""
    if opts.block is not None or opts.overwrite or not existing:
        return None
    block = existing.get("fingerprint", {}).get("block")
    return block if isinstance(block, int) and block > 0 and block % (opts.shard or opts.chunk) == 0 else None


def check_contract(source: Source, model: UNet, input_range: tuple[float, float] | None) -> None:
    """The input must have the channels, and the dtype, that the model was trained on."""
    contract, name = model.config.input, redact(source.spec.url)
    if source.channels != contract.channels:
        raise UNetError(f"input {name}: expected {contract.channels} channel(s) as the checkpoint was trained "
                        f"on, found {source.channels} (shape {source.shape}, check --axes)")
    trained = np.dtype(contract.dtype)
    if input_range is None and np.issubdtype(trained, np.integer) and source.dtype != trained:
        raise UNetError(f"input {name}: expected dtype {trained} as the checkpoint was trained on, found "
                        f"{source.dtype}; pass --input-range LO,HI to rescale it")
    if input_range is not None and contract.value_range is None:
        raise UNetError("--input-range: the checkpoint records no trained value range to rescale onto")


def _check_resumable(url: str, existing: dict, fingerprint: dict) -> None:
    if not existing:
        raise UNetError(f"OUTPUT {redact(url)}: expected a new location or an output of this job, found "
                        "something else there; pass --overwrite to replace it")
    before = existing.get("fingerprint", {})
    differs = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
    if differs:
        raise UNetError(f"OUTPUT {redact(url)}: expected an output of the same checkpoint and options to "
                        f"resume, found one that differs in {', '.join(differs)}; pass --overwrite to replace it")


def object_classes(text: str | None, class_names: Sequence[str],
                   method: InstanceMethod | None = None) -> tuple[int, ...]:
    """--object-classes as class indices: numbers or the checkpoint's class names; default every class
    but 0 (background), or a contour model's interior class (its only objects)."""
    if method is not None:
        if text is not None and object_classes(text, class_names) != (method.interior,):
            raise UNetError(f"--object-classes {text}: expected the interior class "
                            f"{class_names[method.interior]!r} of this contour checkpoint (its only objects), "
                            f"found other classes; omit --object-classes")
        return (method.interior,)
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


def objects_spec(output: OutputSpec, classes: tuple[int, ...], min_area: int, georeferenced: bool,
                 method: InstanceMethod | None = None) -> ObjectsSpec:
    """What the actors need for --objects: the instance image at OUTPUT/instances, the classes (and a
    contour model's method)."""
    instances = replace(output, url=posixpath.join(output.url.rstrip("/"), INSTANCES), probabilities=False,
                        ids=True)
    return ObjectsSpec(instances, classes, min_area, georeferenced, method)


def provenance(opts: SegmentOptions, model: UNet, checkpoint_sha: str, started: str) -> dict[str, Any]:
    """What produced the output, without secrets: storage options are never recorded."""
    import ray
    import torch
    import zarr

    from unet import __version__

    options = {k: v for k, v in vars(opts).items() if k not in ("storage_options", "pairs", "checkpoint")}
    return {"started_at": started, "checkpoint": redact(opts.checkpoint), "checkpoint_sha256": checkpoint_sha,
            "model": model.config.to_dict(), "options": json.loads(json.dumps(options, default=str)),
            "versions": {"unet": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
                         "ray": ray.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}}
