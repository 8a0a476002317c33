"""Scheduling overhead per block: the segmentation job over many tiny blocks with a trivial network, so
that what is measured is the driver's loop, Ray's calls, the Zarr writes and the done-markers per block.

    python benchmarks/scheduling.py [--blocks 10000] [--workers 2]

Prints blocks per second, wall and driver-CPU milliseconds per block (the driver runs in this process, so
its CPU time includes Ray's client threads), and the driver's RSS before and after. Starts its own local
Ray cluster with one CPU per worker; about a minute on 2 cores for 10^4 blocks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
import zarr

from unet import SegmentOptions, UNet, save_checkpoint, segment

BLOCK = 8  # pixels a side: one 8-px chunk per block


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(blocks: int, workers: int, tmp: Path) -> dict:
    """One job of about ``blocks`` level-0 blocks (a square mosaic), timed from the driver."""
    side = BLOCK * math.isqrt(blocks)
    torch.manual_seed(0)
    save_checkpoint(UNet(depth=2, base_channels=1).eval(), tmp / "tiny.safetensors")
    zarr.create_array(str(tmp / "in.zarr"), data=np.random.default_rng(0).random((side, side), np.float32),
                      chunks=(128, 128))
    rss_before, cpu_before, wall_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = segment(SegmentOptions.of(tmp / "in.zarr", tmp / "out.zarr", tmp / "tiny.safetensors", chunk=BLOCK,
                                       block=BLOCK, workers=workers, cpus_per_worker=1, progress=False))
    wall = time.perf_counter() - wall_before
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    if not result.complete:
        raise SystemExit(f"the job failed: {result.failed_blocks} failed blocks")
    tasks = len(os.listdir(tmp / "out.zarr" / "_unet" / "done"))  # level-0 and pyramid blocks
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    report = result.to_dict()
    return {"level0_blocks": report["blocks_run"], "tasks": tasks, "workers": workers, "wall_s": round(wall, 2),
            "blocks_per_s": round(tasks / wall, 1), "wall_ms_per_block": round(1000 * wall / tasks, 2),
            "worker_ms_per_block": round(1000 * wall * workers / tasks, 2),
            "driver_cpu_ms_per_block": round(1000 * cpu / tasks, 3),
            "driver_rss_mb": [round(rss_before), round(rss_mb())]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=10_000, help="level-0 blocks (rounded down to a square)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.blocks, args.workers, Path(tmp))
    print(f"{result['tasks']} blocks ({result['level0_blocks']} at level 0) on {result['workers']} workers: "
          f"{result['blocks_per_s']} blocks/s, {result['wall_ms_per_block']} ms wall per block "
          f"({result['worker_ms_per_block']} worker-ms), driver {result['driver_cpu_ms_per_block']} CPU-ms per "
          f"block, driver RSS {result['driver_rss_mb'][0]} -> {result['driver_rss_mb'][1]} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
