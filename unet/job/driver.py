"""Running prepared jobs on Ray (driver side): the actor pool, the block rounds (level 0, then pyramid
levels no block owns, then --objects), and the completion metadata written last.

The actor class comes in as an argument (``unet.api`` passes ``unet.job.actor.BlockRunner``): the driver
speaks to actors only through ``unet.job.spec``, and never imports the actor side.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources

from unet.errors import UNetError
from unet.io.ome import label_metadata
from unet.io.output import (STATUS_COMPLETE, STATUS_RUNNING, create_output, register_label, update_unet_attrs,
                            write_ome_metadata)
from unet.infer.geometry import Calibration
from unet.job import startup
from unet.job.geometry import announce, calibration_limit, fit_geometry
from unet.job.level import output_scale
from unet.job.objects.driver import create_instances, run_objects
from unet.job.options import SegmentOptions
from unet.job.plan import Block
from unet.job.prepare import PreparedJob
from unet.job.progress import Progress
from unet.job.report import RunStats
from unet.job.rounds import Call, run_pyramids, run_round
from unet.job.scheduler import Scheduler, WorkerStartError
from unet.job.spec import ActorMethod, BlockFailure

log = logging.getLogger("unet")


@dataclass(frozen=True)
class WorkerResources:
    workers: int
    cpus: float
    gpus: float


def worker_resources(workers: int | None, cpus: float | None, gpus: float) -> WorkerResources:
    """Default: one worker per GPU; on CPU, one per ``cpus`` cores (4, or all of them if fewer). An
    autoscaling cluster may have no GPU node yet: then ``--workers`` says how many to launch (default 1)."""
    total = ray.cluster_resources()
    if gpus == 0 and workers is None and total.get("GPU", 0) >= 1:
        gpus = 1.0
    cpus = cpus or (1.0 if gpus else min(4.0, total.get("CPU", 1.0)))
    if workers is None:
        workers = int(total.get("GPU", 0) // gpus) if gpus else int(total.get("CPU", 1.0) // cpus)
    return WorkerResources(max(1, workers), cpus, gpus)


def request_workers(res: WorkerResources | None) -> None:
    """Ask the autoscaler for room for every worker (``None``: withdraw the request), so that an autoscaling
    cluster launches the GPU nodes the workers need instead of the job waiting for them. The request stays
    until replaced, hence the withdrawal when the run ends; a cluster without an autoscaler ignores it."""
    bundles = [] if res is None else [{"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus else {})}] * res.workers
    request_resources(bundles=bundles)


def run_jobs(jobs: Sequence[PreparedJob], opts: SegmentOptions, checkpoint: bytes, class_names: list[str],
             provenance: dict[str, Any], runner: type) -> RunStats:
    """Segment every job's remaining blocks on actors of class ``runner`` (a ``BlockActor``), build the
    pyramids, mark complete outputs; return what the run did."""
    startup.ready()
    startup.mark("ray")
    res = worker_resources(opts.workers, opts.cpus_per_worker, opts.gpus_per_worker)
    request_workers(res)
    ref = ray.put(checkpoint)
    actor: Any = ray.remote(runner).options(num_cpus=res.cpus, num_gpus=res.gpus, max_concurrency=2)
    device = opts.device or ("cuda" if res.gpus else "cpu")
    threads = max(1, int(res.cpus))
    limit = calibration_limit(jobs, opts)

    def make_actor() -> Any:
        return actor.remote(ref, tile=opts.tile, batch_size=opts.batch_size, device=device, amp=opts.amp,
                            threads=threads, limit=limit, compile=opts.compile, tta=opts.tta,
                            cache_dir=os.environ.get("UNET_CACHE_DIR"))

    started = time.monotonic()
    scheduler = Scheduler(make_actor, res.workers, timeout=opts.block_timeout, max_attempts=opts.max_retries + 1)
    progress = None
    try:
        calibration: Calibration = scheduler.ask_first(ActorMethod.CALIBRATION)
        startup.mark("first worker and its calibration")
        for job in jobs:
            fit_geometry(job, calibration, opts, res.workers * scheduler.per_worker)
            _start_output(job, provenance)
        announce(calibration)  # after the outputs exist: an output that cannot be created is one line alone
        total = sum(j.source.shape[0] * j.source.shape[1] for j in jobs)
        progress = Progress(total, sum(j.pixels_done for j in jobs), sum(len(j.plan) for j in jobs), opts.progress)
        run_round(scheduler, jobs, lambda job: job.plan, _level0_call, progress)
        run_pyramids(scheduler, jobs)
        run_objects(scheduler, jobs, class_names)
    except WorkerStartError as e:
        raise WorkerStartError(f"{e} (check --device and --gpus-per-worker)") from None
    finally:
        if progress is not None:
            progress.close()
        scheduler.shutdown()
        request_workers(None)
    seconds = time.monotonic() - started
    for job in jobs:
        if not job.failed:
            _finish_or_report(job, class_names, seconds)
    startup_s, phases = startup.breakdown(scheduler.first_task_at)
    return RunStats(seconds, progress.blocks_done, progress.new_pixels, progress.new_pixels / 1e6 / max(seconds, 1e-9),
                    progress.network_s, progress.network_cpu_s, progress.network_s / max(seconds * res.workers, 1e-9),
                    res.workers, res.cpus, res.gpus, scheduler.replaced, scheduler.completed,
                    ray.get_runtime_context().gcs_address, startup_s, phases, dict(progress.tiles_used), calibration)


def _level0_call(job: PreparedJob, block: Block) -> Call:
    """Level-0 blocks outside the job's region of interest are written as background, not segmented."""
    if job.roi is not None and not job.roi.covers(block):
        return Call(ActorMethod.BACKGROUND)
    return Call(ActorMethod.SEGMENT)


def _start_output(job: PreparedJob, provenance: dict[str, Any]) -> None:
    """Create a new output, or mark a resumed one as running again."""
    attrs = {"status": STATUS_RUNNING, "fingerprint": job.fingerprint, **provenance}
    if job.existing is None:
        create_output(job.spec.output, attrs, overwrite=True)
        if job.spec.objects is not None:
            create_instances(job.spec.objects)
    elif not job.complete:
        update_unet_attrs(job.spec.output, status=STATUS_RUNNING, resumed_at=provenance["started_at"])


def _finish_or_report(job: PreparedJob, class_names: list[str], seconds: float) -> None:
    """Mark a finished output complete; if that write is refused (no space left, access denied), list the
    output as failed — its blocks are written, and a re-run only writes the metadata."""
    try:
        _finish_output(job, class_names, seconds)
    except UNetError as e:
        job.failed.append(BlockFailure(str(e)))
        log.error("unet: %s", e)


def _finish_output(job: PreparedJob, class_names: list[str], seconds: float) -> None:
    """The last write of a run: OME metadata, provenance end, status complete."""
    out, source = job.spec.output, job.source
    scale, units = output_scale(source, job.level)
    ome = label_metadata(len(out.level_shapes), scale, source.translation, units, class_names,
                         name=job.label_name or "labels", source_image="../../" if job.label_name else None)
    write_ome_metadata(out, ome)
    if job.label_name:
        register_label(out, job.label_name)
    update_unet_attrs(out, status=STATUS_COMPLETE, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      seconds=round(seconds, 3), pixels=source.shape[0] * source.shape[1],
                      georeferencing=source.georef or None, objects=job.object_counts, level=job.level.level,
                      pixel_size=job.level.pixel_size.to_dict() if job.level.pixel_size else None)
