"""What does --cog cost, and does its memory stay flat as the mosaic grows? Writes a synthetic label
pyramid (blobs of 3 classes, as the job writes it: 1024-px chunks, 2x2 mode levels) and converts it to a
COG in a child process per size, whose peak RSS (VmHWM) is read back.

    python benchmarks/cog.py [--sizes 4096 8192 16384]

Prints a table and writes benchmarks/results/cog.json. Minutes on 2 CPU cores; not run in CI.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from unet.io.cog import CogSpec, write_cog
from unet.io.output import OutputSpec, OutputWriter, create_output
from unet.job.pyramid import mode2x2

RESULTS = Path(__file__).resolve().parent / "results" / "cog.json"
CHUNK = 1024


def labels_of(rows: tuple[int, int], cols: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Blobs of classes 0..2 over a window, a function of position only (so any window is consistent)."""
    y, x = np.mgrid[rows[0]:rows[1], cols[0]:cols[1]].astype(np.float32)
    wave = np.sin(y / 37.0 + seed) * np.cos(x / 53.0) + 0.5 * np.sin((x + y) / 91.0)
    return np.digitize(wave, [0.2, 0.8]).astype(np.uint8)                         # (h, w)


def write_pyramid(url: str, side: int) -> OutputSpec:
    """Level 0 chunk by chunk, then each level from the one above, window by window."""
    spec = OutputSpec(url, (side, side), CHUNK, num_classes=3)
    create_output(spec, {}, overwrite=True)
    writer = OutputWriter(spec)
    for level, (h, w) in enumerate(spec.level_shapes):
        step = 4 * CHUNK
        for r0 in range(0, h, step):
            for c0 in range(0, w, step):
                rows, cols = (r0, min(r0 + step, h)), (c0, min(c0 + step, w))
                if level == 0:
                    block = labels_of(rows, cols)
                else:
                    above = spec.level_shapes[level - 1]
                    block = mode2x2(writer.read(level - 1, (2 * rows[0], min(2 * rows[1], above[0])),
                                                (2 * cols[0], min(2 * cols[1], above[1]))))
                writer.write(level, rows, cols, block)
    return spec


def _convert(url: str, path: str, queue) -> None:
    start = time.perf_counter()
    size = write_cog(CogSpec(path), url, {})
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    queue.put({"seconds": seconds, "bytes": size, "peak_rss_mb": peak / 1024})


def measure(side: int, workdir: Path) -> dict:
    url = str(workdir / f"labels-{side}.zarr")
    write_pyramid(url, side)
    queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_convert, args=(url, str(workdir / f"{side}.tif"), queue))
    child.start()
    result = queue.get()
    child.join()
    mpx = side * side / 1e6
    return {"side": side, "mpx": mpx, **result, "mpx_per_s": mpx / result["seconds"]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384], help="mosaic sides in pixels")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as workdir:
        rows = [measure(side, Path(workdir)) for side in args.sizes]
    load_after = os.getloadavg()[0]
    head = f"{'mosaic':>14}{'Mpx':>8}{'seconds':>9}{'Mpx/s':>8}{'COG MB':>8}{'peak RSS MB':>13}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['side']:>6} x {r['side']:<6}{r['mpx']:>8.0f}{r['seconds']:>9.1f}{r['mpx_per_s']:>8.1f}"
              f"{r['bytes'] / 1e6:>8.1f}{r['peak_rss_mb']:>13.0f}")
    print(f"load average {load_before:.1f} at start, {load_after:.1f} at end; {os.cpu_count()} cores; "
          f"zarr {zarr.__version__}, python {platform.python_version()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "load_average": [load_before, load_after],
                                    "chunk": CHUNK, "machine": platform.machine()}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
