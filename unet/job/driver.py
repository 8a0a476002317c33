"""Running prepared jobs on Ray: workers, the block rounds (level 0, then pyramid levels no block owns),
progress, and the completion metadata written last."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import ray
from ray.autoscaler.sdk import request_resources
from tqdm import tqdm

from unet.errors import UNetError
from unet.io.ome import label_metadata
from unet.io.output import (STATUS_COMPLETE, STATUS_RUNNING, OutputWriter, create_output, register_label,
                            update_unet_attrs, write_ome_metadata)
from unet.io.urls import redact
from unet.job.actor import BlockRunner
from unet.job.objects.driver import create_instances, run_objects
from unet.job.pyramid import level_plan
from unet.job.scheduler import Scheduler, Task

log = logging.getLogger("unet")
LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class WorkerResources:
    workers: int
    cpus: float
    gpus: float


def connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS or on this node; otherwise start a local one."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return
    try:
        ray.init(address="auto", **kwargs)
    except ConnectionError:
        ray.init(**kwargs)


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


class Progress:
    """Pixels and blocks done, Mpx/s and ETA: a bar on a terminal, a log line every 30 s otherwise."""

    def __init__(self, total_pixels: int, done_pixels: int, blocks: int, enabled: bool | None):
        self.bar_enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.blocks, self.blocks_done = total_pixels, done_pixels, blocks, 0
        self.start = self.last_log = time.monotonic()
        self.new_pixels = 0
        self.network_s = self.network_cpu_s = 0.0  # time in the workers' forward passes
        self.bar = tqdm(total=total_pixels / 1e6, initial=done_pixels / 1e6, unit="Mpx", unit_scale=False,
                        disable=not self.bar_enabled, dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} Mpx [{elapsed}<{remaining}, {rate_fmt}]")

    def update(self, pixels: int, stats: dict) -> None:
        self.network_s += stats.get("network_s", 0.0)
        self.network_cpu_s += stats.get("network_cpu_s", 0.0)
        self.done += pixels
        self.new_pixels += pixels
        self.blocks_done += 1
        self.bar.update(pixels / 1e6)
        now = time.monotonic()
        if not self.bar_enabled and now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            print(f"unet: {self.blocks_done}/{self.blocks} blocks, {self.done / 1e6:.1f}/{self.total / 1e6:.1f} Mpx, "
                  f"{self.rate:.2f} Mpx/s, ETA {self.eta:.0f} s", file=sys.stderr, flush=True)

    @property
    def rate(self) -> float:
        return self.new_pixels / 1e6 / max(time.monotonic() - self.start, 1e-9)

    @property
    def eta(self) -> float:
        return (self.total - self.done) / 1e6 / max(self.rate, 1e-9)

    def close(self) -> None:
        self.bar.close()


def run_jobs(jobs: list, opts, checkpoint: bytes, class_names: list[str], provenance: dict) -> dict:
    """Segment every job's remaining blocks, build the pyramids, mark complete outputs; return stats."""
    connect_ray()
    res = worker_resources(opts.workers, opts.cpus_per_worker, opts.gpus_per_worker)
    request_workers(res)
    ref = ray.put(checkpoint)
    actor = ray.remote(BlockRunner).options(num_cpus=res.cpus, num_gpus=res.gpus, max_concurrency=2)
    device = opts.device or ("cuda" if res.gpus else "cpu")
    threads = max(1, int(res.cpus))

    def make_actor():
        return actor.remote(ref, tile=opts.tile, batch_size=opts.batch_size, device=device, amp=opts.amp,
                            threads=threads, block=opts.block_size, compile=opts.compile)

    for job in jobs:
        _start_output(job, provenance)
    scheduler = Scheduler(make_actor, res.workers, timeout=opts.block_timeout, max_attempts=opts.max_retries + 1)
    total = sum(j.source.shape[0] * j.source.shape[1] for j in jobs)
    progress = Progress(total, sum(j.pixels_done for j in jobs), sum(len(j.plan) for j in jobs), opts.progress)
    started = time.monotonic()
    try:
        _run_round(scheduler, jobs, "segment", lambda job: job.plan, progress)
        _run_pyramids(scheduler, jobs)
        run_objects(scheduler, jobs, class_names)
    finally:
        progress.close()
        scheduler.shutdown()
        request_workers(None)
    seconds = time.monotonic() - started
    for job in jobs:
        if not job.failed:
            _finish_or_report(job, class_names, seconds)
    return {"seconds": seconds, "blocks_run": progress.blocks_done, "new_pixels": progress.new_pixels, "mpx_per_s": progress.rate,
            "network_s": progress.network_s, "network_cpu_s": progress.network_cpu_s,
            "network_busy": progress.network_s / max(seconds * res.workers, 1e-9),
            "workers": res.workers, "cpus_per_worker": res.cpus, "gpus_per_worker": res.gpus,
            "worker_restarts": scheduler.replaced, "tasks_run": scheduler.completed}


def _run_round(scheduler: Scheduler, jobs: list, method: str, plan_of, progress: Progress | None,
               args_of=lambda job, block: ()) -> None:
    """One round of blocks over every job (lazily generated), skipping blocks already done; ``args_of``
    gives a block's arguments after (job spec, block)."""
    def tasks() -> Iterator[Task]:
        for index, job in enumerate(jobs):
            if job.failed:
                continue
            for block in plan_of(job):
                if block.key not in job.done:
                    yield Task(_method(job, block, method), (job.spec, block, *args_of(job, block)),
                               (index, block))

    def done(task: Task, stats: dict) -> None:
        index, block = task.tag
        jobs[index].done.add(block.key)
        if stats.get("skipped"):
            jobs[index].skipped[stats["skipped"]] += 1
        if progress is not None:
            progress.update(block.pixels, stats)

    def failed(task: Task, reason: str) -> None:
        index, block = task.tag
        jobs[index].failed.append({"block": block.key, "level": block.level, "rows": list(block.rows),
                                   "cols": list(block.cols), "error": reason})
        log.error("unet: %s of %s failed: %s", block.describe(), redact(jobs[index].spec.output.url), reason)

    scheduler.run(tasks(), done, failed)


def _method(job, block, method: str) -> str:
    """Level-0 blocks outside the job's region of interest are written as background, not segmented."""
    if method == "segment" and job.roi is not None and not job.roi.covers(block):
        return "background"
    return method


def _run_pyramids(scheduler: Scheduler, jobs: list) -> None:
    """Rounds of downsampling blocks for the levels that no block of the level above owns."""
    covered = {id(job): job.plan.level + job.plan.depth for job in jobs}
    while True:
        pending = [job for job in jobs if not job.failed and covered[id(job)] < len(job.spec.output.level_shapes) - 1]
        if not pending:
            return
        plans = {id(job): level_plan(job.spec.output, covered[id(job)] + 1, job.plan.block) for job in pending}
        _run_round(scheduler, pending, "downsample", lambda job: plans[id(job)], None)
        for job in pending:
            covered[id(job)] = plans[id(job)].level + plans[id(job)].depth


def _start_output(job, provenance: dict) -> None:
    """Create a new output, or mark a resumed one as running again."""
    attrs = {"status": STATUS_RUNNING, "fingerprint": job.fingerprint, **provenance}
    if job.existing is None:
        create_output(job.spec.output, attrs, overwrite=True)
        if job.spec.objects is not None:
            create_instances(job.spec.objects)
    elif job.existing.get("status") != STATUS_COMPLETE:
        update_unet_attrs(job.spec.output, status=STATUS_RUNNING, resumed_at=provenance["started_at"])


def _finish_or_report(job, class_names: list[str], seconds: float) -> None:
    """Mark a finished output complete; if that write is refused (no space left, access denied), list the
    output as failed — its blocks are written, and a re-run only writes the metadata."""
    try:
        _finish_output(job, class_names, seconds)
    except UNetError as e:
        job.failed.append({"block": None, "level": None, "rows": None, "cols": None, "error": str(e)})
        log.error("unet: %s", e)


def _finish_output(job, class_names: list[str], seconds: float) -> None:
    """The last write of a run: OME metadata, provenance end, status complete."""
    out, source = job.spec.output, job.source
    ome = label_metadata(len(out.level_shapes), source.scale, source.translation, source.units, class_names,
                         name=job.label_name or "labels", source_image="../../" if job.label_name else None)
    write_ome_metadata(out, ome)
    if job.label_name:
        register_label(out, job.label_name)
    update_unet_attrs(out, status=STATUS_COMPLETE, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      seconds=round(seconds, 3), pixels=source.shape[0] * source.shape[1],
                      georeferencing=source.georef or None, objects=job.object_counts)


def lowest_level(job) -> np.ndarray:
    """The smallest pyramid level of a finished output, for the quicklook."""
    return OutputWriter(job.spec.output).read(len(job.spec.output.level_shapes) - 1, (0, 10**9), (0, 10**9))
