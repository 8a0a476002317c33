"""What a run tells its user: the ``Report`` that ``unet.segment`` returns (and ``--report`` writes as JSON
with a quicklook beside it), its one-line summary, and the plan a dry run prints instead."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from unet.errors import UNetError, redact, redact_json
from unet.infer.geometry import Calibration
from unet.io.output import STATUS_COMPLETE, OutputWriter
from unet.io.quicklook import save_quicklook
from unet.job.geometry import calibration_limit, fit_geometry, local_calibration
from unet.job.options import SegmentOptions
from unet.job.plan import Geometry, network_flops
from unet.job.prepare import PreparedJob
from unet.job.spec import BlockFailure, SkipReason
from unet.nn.model import UNet

STATUS_INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class RunStats:
    """What the run did: time, blocks, speed, and the workers it used."""

    seconds: float
    blocks_run: int
    new_pixels: int
    mpx_per_s: float
    network_s: float       # summed over the workers' forward passes
    network_cpu_s: float
    network_busy: float    # network_s over the workers' wall time
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    worker_restarts: int
    tasks_run: int
    ray_address: str       # the GCS address of the cluster the run used
    startup_s: float | None            # command (or call) to the first block handed to a worker
    startup: dict[str, float]          # the seconds of each start-up phase, in order (``unet.job.startup``)
    tiles_used: dict[int, int]         # blocks run through the network, by the tile their worker chose
    calibration: Calibration           # what the geometry was chosen from (the first worker's)


@dataclass(frozen=True)
class OutputReport:
    """One INPUT -> OUTPUT pair after the run."""

    input: str                       # redacted, as every name in a report
    output: str
    status: str                      # "complete" or "incomplete"
    shape: tuple[int, int]
    blocks: int
    blocks_skipped_empty: int
    blocks_outside_roi: int
    failed: tuple[BlockFailure, ...]
    objects: dict[str, int] | None   # --objects: objects per class
    level: int = 0                   # the input's pyramid level that was segmented
    pixel_size: dict[str, Any] | None = None  # its pixel size ({"value": [y, x], "unit": ...}), if known
    cog: tuple[dict[str, Any], ...] = ()  # --cog: the COGs written (or found written), each with its url
    geometry: Geometry | None = None  # blocks and tiles chosen, with their expected cost (None if nothing ran)

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "shape": list(self.shape), "failed": [f.to_dict() for f in self.failed]}
        for optional in ("objects", "geometry"):
            if d[optional] is None:
                del d[optional]
        if not self.cog:
            del d["cog"]
        return d


@dataclass(frozen=True)
class Report:
    """The run's outcome: one ``OutputReport`` per pair, and what the run did (None when nothing ran)."""

    outputs: tuple[OutputReport, ...]
    stats: RunStats | None = None

    @property
    def failed_blocks(self) -> int:
        return sum(len(o.failed) for o in self.outputs)

    @property
    def complete(self) -> bool:
        return all(o.complete for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of --report."""
        return {"outputs": [o.to_dict() for o in self.outputs], "failed_blocks": self.failed_blocks,
                "blocks_skipped_empty": sum(o.blocks_skipped_empty for o in self.outputs),
                "blocks_outside_roi": sum(o.blocks_outside_roi for o in self.outputs),
                **(asdict(self.stats) if self.stats is not None else {})}


def build_report(jobs: Sequence[PreparedJob], stats: RunStats | None) -> Report:
    outputs = tuple(OutputReport(
        redact(j.spec.source.url), redact(j.spec.output.url),
        STATUS_COMPLETE if j.complete or not j.failed else STATUS_INCOMPLETE, j.source.shape, len(j.plan),
        j.skipped[SkipReason.EMPTY], j.skipped[SkipReason.ROI], tuple(j.failed), j.object_counts, j.level.level,
        j.level.pixel_size.to_dict() if j.level.pixel_size else None, tuple(j.cogs), j.geometry) for j in jobs)
    return Report(outputs, stats)


def check_report_path(path: str) -> None:
    """The report is written at the end of a run: refuse, before the run, a path where it cannot be."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(parent):
        found = "a directory" if os.path.isdir(path) else f"no folder {parent}"
        raise UNetError(f"--report {path}: expected a JSON file name in an existing folder, found {found}")


def write_report(path: str, report: Report, jobs: Sequence[PreparedJob]) -> None:
    """The JSON report (redacted, as every message that leaves the process), and a PNG quicklook of each
    finished output's lowest level beside it."""
    with open(path, "w") as f:
        json.dump(redact_json(report.to_dict()), f, indent=2)
    stem = os.path.splitext(path)[0]
    for index, job in enumerate(jobs):
        if not job.failed:
            save_quicklook(lowest_level(job), f"{stem}.png" if len(jobs) == 1 else f"{stem}-{index}.png")


def lowest_level(job: PreparedJob) -> np.ndarray:
    """The smallest pyramid level of a finished output, for the quicklook."""
    return OutputWriter(job.spec.output).read(len(job.spec.output.level_shapes) - 1, (0, 10**9), (0, 10**9))


def summary_line(report: Report) -> str:
    done = sum(o.complete for o in report.outputs)
    rate = f", {report.stats.mpx_per_s:.2f} Mpx/s" if report.stats is not None else ""
    failed = f", {report.failed_blocks} block(s) failed" if report.failed_blocks else ""
    counts: Counter[str] = Counter()
    for output in report.outputs:
        counts.update(output.objects or {})
    objects = ", objects: " + ", ".join(f"{n} {name}" for name, n in counts.items()) if counts else ""
    return f"unet: {done}/{len(report.outputs)} output(s) complete{rate}{failed}{objects}"


def print_plan(jobs: Sequence[PreparedJob], model: UNet, opts: SegmentOptions) -> None:
    """The plan of a dry run: blocks and tiles chosen as the run would choose them (this machine's
    calibration, measured here if not cached), their overhang and estimated FLOPs; no pixel is read."""
    calibration = local_calibration(model, opts, calibration_limit(jobs, opts))
    print(f"calibration: {describe(calibration)}")
    for job in jobs:
        h, w = job.source.shape
        g = fit_geometry(job, calibration, opts, slots=2)
        flops = network_flops(model, g.tile)
        expected = (f", expected {g.expected_mpx_per_s:.2f} Mpx/s for the network ({g.expected_network_s:.0f} s)"
                    if g.expected_mpx_per_s else "")
        print(f"{redact(job.spec.source.url)} -> {redact(job.spec.output.url)}\n"
              f"  image {h} x {w} px, {job.source.channels} channel(s), {job.source.dtype}\n"
              f"  blocks: {len(job.plan)} of {job.plan.block} px ({job.plan.counts[0]} x {job.plan.counts[1]}), "
              f"{g.block_chosen_by}\n"
              f"  tiles: {g.tiles} of {g.tile} px in -> {g.out_tile} px out, {g.batch} a pass ({g.tile_chosen_by}; "
              f"overhang {g.overhang - 1:.1%}{expected}), {flops / 1e9:.1f} GFLOP each, "
              f"{g.tiles * opts.tta * flops / 1e12:.2f} TFLOP total" + (f" with {opts.tta} flips\n" if opts.tta > 1 else "\n") +
              f"  output levels: {len(job.spec.output.level_shapes)}, chunk {opts.chunk}"
              + (f", shard {opts.shard}" if opts.shard else "")
              + ("  [already complete]" if job.complete else ""))


def describe(calibration: Calibration) -> str:
    """The calibration in one line: device, where it came from, each candidate's network-only speed."""
    if calibration.fallback:
        return calibration.fallback
    if calibration.chosen_by != "calibration":
        return f"none (--tile given) on {calibration.device}"
    where = "from the cache" if calibration.cached else f"measured now in {calibration.seconds:.1f} s"
    speeds = ", ".join(f"{c.tile}:{c.mpx_per_s:.2f}" for c in calibration.costs)
    return f"{calibration.device}, {where}; network-only Mpx/s by tile: {speeds}"
