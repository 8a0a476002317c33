"""The job's geometry: the block of each new output and the (tile, batch) its workers are expected to choose,
from one worker's calibration (``unet.infer.calibrate``), or from this machine's for a dry run."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from unet.infer.geometry import Calibration, choose_tile
from unet.job.options import SegmentOptions
from unet.job.plan import MAX_BLOCK, Geometry, choose_block
from unet.job.pyramid import level_plan

if TYPE_CHECKING:
    from unet.job.prepare import PreparedJob
    from unet.nn.model import UNet


def calibration_limit(jobs: Sequence[PreparedJob], opts: SegmentOptions) -> int:
    """The largest output side a candidate tile may need to cover: the largest block any job may get."""
    largest = max(max(job.source.shape) for job in jobs)
    return min(largest, opts.block or MAX_BLOCK)


def fit_geometry(job: PreparedJob, calibration: Calibration, opts: SegmentOptions, slots: int) -> Geometry:
    """Choose the block of a new output without --block (a resumed one keeps its own) for ``slots``
    blocks in flight, and record on the job the (tile, batch) its workers are expected to choose for it."""
    if opts.block is None and job.existing is None:
        choice = choose_block(calibration, job.source.shape, opts.shard or opts.chunk, slots, batch=opts.batch_size)
        replan(job, choice.block)
    plan = job.plan
    cost = choose_tile(calibration, plan.spans(0), plan.spans(1), batch=opts.batch_size)
    block_by = "--block" if opts.block else "resumed output" if job.existing is not None else calibration.chosen_by
    job.geometry = Geometry(plan.block, len(plan), block_by, cost.cost.tile, cost.cost.out_tile, cost.cost.batch,
                            "--tile" if opts.tile else calibration.chosen_by, cost.tiles, cost.passes,
                            round(cost.overhang, 4), None if cost.seconds is None else round(cost.seconds, 2),
                            cost.mpx_per_s(job.source.shape[0] * job.source.shape[1]))
    return job.geometry


def replan(job: PreparedJob, block: int) -> None:
    """Give a prepared job (nothing written yet) another block side."""
    job.plan = level_plan(job.spec.output, 0, block)
    job.spec = dataclasses.replace(job.spec, block=block)
    job.fingerprint["block"] = block


def announce(calibration: Calibration) -> None:
    """One line on stderr when the calibration was measured now, or could not run (said once per run)."""
    if calibration.fallback:
        print(f"unet: {calibration.fallback}", file=sys.stderr, flush=True)
    elif calibration.chosen_by == "calibration" and not calibration.cached:
        print(f"unet: calibrated {len(calibration.costs)} tile sizes on {calibration.device} in "
              f"{calibration.seconds:.1f} s (cached for later runs)", file=sys.stderr, flush=True)


def local_calibration(model: UNet, opts: SegmentOptions, limit: int) -> Calibration:
    """The calibration a local worker would use (this machine's device, as many torch threads as a local
    CPU worker gets), from the cache or measured here: what a dry run shows."""
    import torch

    from unet.infer.calibrate import calibrate, fixed
    from unet.infer.predict import MAX_AUTO_TILE, TilePredictor
    from unet.nn.device import resolve_device

    device = resolve_device(opts.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(opts.cpus_per_worker or min(4, os.cpu_count() or 1))))
    try:
        predictor = TilePredictor(model, tile=opts.tile, batch_size=opts.batch_size, device=device, amp=opts.amp,
                                  image_shape=(limit, limit), compile=opts.compile)
        if opts.tile:
            return fixed(predictor, limit)
        return calibrate(predictor, limit, max_tile=MAX_AUTO_TILE, cache_dir=os.environ.get("UNET_CACHE_DIR"))
    finally:
        torch.set_num_threads(threads)
