"""The default path, measured: what a user who passes no tuning flag gets, side by side in one run.

    python benchmarks/defaults.py [--scale S] [--out benchmarks/results/defaults.json]

Rows: (1) the job with defaults (tile, batch and block chosen by the worker's calibration) against the same
job with each hand-picked --tile, on one mosaic: the default's share of the best; (2) end to end as a user
runs it — ``python jobs/segment.py`` in a fresh process that starts its own local Ray — against
``predict_image`` over the same mosaic held in memory (its default tile), on two mosaic sizes, with the
job's ``startup_s`` (command to first block); (3) many small inputs: one ``--manifest`` run over N inputs
against one run over a single mosaic of the same pixels (one worker pool for all: the difference is the
per-input cost). The 16-filter benchmark network (depth 4) throughout, except row 3 (the cheapest U-Net,
where per-input costs show). The calibration cache is warmed first (a first run on a machine calibrates
once, in ``startup_s``). ``--scale`` multiplies every mosaic's pixel count (default 1: sized for a shared
2-core machine; the issue's sizes are 38, 64 and 268 Mpx and 1,000 x 20 Mpx).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (BENCH_NET, TRIVIAL_NET, checkpoint_path, load, make_model, save_model,  # noqa: E402
                 write_mosaic, write_results)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "defaults.json"
CHUNK = 1024
ROWS = ("end_to_end", "tiles", "many_inputs")


@dataclass(frozen=True)
class DefaultsConfig:
    out: Path
    tiles_side: int                 # the mosaic of row 1
    hand_tiles: tuple[int, ...]     # the --tile values of row 1 (the issue's)
    end_to_end_sides: tuple[int, ...]
    inputs: int                     # row 3: this many inputs ...
    input_side: int                 # ... of this side
    rows: tuple[str, ...]           # which rows to measure
    repeats: int                    # row 1: rounds of every setting (medians kept)


def build_config(argv: Sequence[str] | None) -> DefaultsConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every mosaic's pixels (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows to measure (default {','.join(ROWS)})")
    p.add_argument("--repeats", type=int, default=3, help="row 1: rounds of every setting (default 3)")
    a = p.parse_args(argv)
    rows = tuple(a.rows.split(","))
    if not set(rows) <= set(ROWS):
        raise SystemExit(f"--rows: expected some of {', '.join(ROWS)}, found {a.rows}")

    def side(mpx: float) -> int:
        return max(CHUNK, round(math.sqrt(mpx * a.scale * 1e6) / CHUNK) * CHUNK)
    return DefaultsConfig(a.out, side(9.4), (348, 604, 860, 1116, 1372), (side(4.2), side(16.8)), 16, side(1.05),
                          rows, a.repeats)


def machine() -> dict:
    import platform

    import torch

    from unet.infer.calibrate import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_at_start": load()}


def job_argv(mosaic: Path, out: Path, checkpoint: Path, report: Path, *extra: str) -> list[str]:
    return [str(mosaic), str(out), "--checkpoint", str(checkpoint), "--chunk", str(CHUNK), "--no-progress",
            "--overwrite", "--report", str(report), *extra]


def in_process(argv: list[str]) -> dict:
    """One run of the job in this process (Ray already up); its report."""
    from unet.api import main

    if main(argv) != 0:
        raise RuntimeError(f"the job failed: {' '.join(argv)}")
    return json.loads(Path(argv[argv.index("--report") + 1]).read_text())


def tile_rows(cfg: DefaultsConfig, tmp: Path) -> dict:
    """Row 1: defaults against each hand-picked tile on one mosaic, after a warm-up run: ``cfg.repeats``
    rounds of every setting in turn, each setting's median kept (on this machine one run of the same
    setting varies by +-10 %, so the best of five single runs would be the luckiest, not the fastest)."""
    model = make_model(**BENCH_NET)
    mosaic, ckpt, report = tmp / "tiles.zarr", checkpoint_path(model, tmp), tmp / "r.json"
    write_mosaic(mosaic, cfg.tiles_side)
    in_process(job_argv(mosaic, tmp / "out.zarr", ckpt, report))  # warm-up, not counted: the first run pays
    runs = []                                                      # one-time costs (page cache, imports)
    for round_ in range(cfg.repeats):
        for tile in (None, *cfg.hand_tiles):
            extra = () if tile is None else ("--tile", str(tile))
            r = in_process(job_argv(mosaic, tmp / "out.zarr", ckpt, report, *extra))
            g = r["outputs"][0]["geometry"]
            runs.append({"round": round_, "tile": tile, "chosen_tile": g["tile"], "block": g["block"],
                         "seconds": r["seconds"], "mpx_per_s": r["mpx_per_s"], "overhang": g["overhang"],
                         "load": load()})
            print(f"tiles, round {round_ + 1}: --tile {tile or 'default'} (tile {g['tile']}, block {g['block']}): "
                  f"{r['mpx_per_s']:.3f} Mpx/s", flush=True)
    medians = {str(tile): float(np.median([r["mpx_per_s"] for r in runs if r["tile"] == tile]))
               for tile in (None, *cfg.hand_tiles)}
    default = medians.pop("None")
    best = max(medians, key=medians.__getitem__)
    chosen = next(r for r in runs if r["tile"] is None)
    return {"mpx": cfg.tiles_side ** 2 / 1e6, "runs": runs, "medians": medians, "default_mpx_per_s": default,
            "default_tile": chosen["chosen_tile"], "default_block": chosen["block"],
            "best_hand": {"tile": int(best), "mpx_per_s": medians[best]}, "default_over_best": default / medians[best]}


def end_to_end_rows(cfg: DefaultsConfig, tmp: Path) -> list[dict]:
    """Row 2: ``python jobs/segment.py`` in a fresh process with its own local Ray (wall time from spawn
    to exit), against ``predict_image`` on the mosaic in memory."""
    import zarr

    from unet.infer.predict import predict_image

    model = make_model(**BENCH_NET)
    rows = []
    for side in cfg.end_to_end_sides:
        mosaic = tmp / f"e2e-{len(rows)}.zarr"
        write_mosaic(mosaic, side)
        image = zarr.open_array(str(mosaic), mode="r")[:]                          # (side, side) uint8
        started = time.perf_counter()
        predict_image(model, image)
        memory_s = time.perf_counter() - started
        report = tmp / "e2e.json"
        argv = [sys.executable, str(ROOT / "jobs" / "segment.py"),
                *job_argv(mosaic, tmp / "e2e-out.zarr", checkpoint_path(model, tmp), report)]
        env = {**os.environ, "RAY_ADDRESS": "local"}      # a fresh local Ray, never another one on this machine
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        job_s = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"jobs/segment.py exited with {proc.returncode}: {proc.stderr[-3000:]}")
        r = json.loads(report.read_text())
        mpx = side * side / 1e6
        rows.append({"mpx": mpx, "predict_image_s": round(memory_s, 2), "job_s": round(job_s, 2),
                     "ratio": memory_s / job_s, "startup_s": r["startup_s"], "job_seconds_after_ray": r["seconds"],
                     "tile": r["outputs"][0]["geometry"]["tile"], "block": r["outputs"][0]["geometry"]["block"],
                     "load": load()})
        print(f"end to end, {mpx:.0f} Mpx: job {job_s:.1f} s (start-up {r['startup_s']} s), predict_image "
              f"{memory_s:.1f} s: ratio {memory_s / job_s:.2f}", flush=True)
    return rows


def many_inputs_row(cfg: DefaultsConfig, tmp: Path) -> dict:
    """Row 3: a manifest of ``cfg.inputs`` small inputs against one mosaic of the same pixels."""
    model = make_model(**TRIVIAL_NET)
    save_model(model, tmp)
    ckpt = checkpoint_path(model, tmp)
    side = cfg.input_side
    one = tmp / "small.zarr"
    write_mosaic(one, side)
    lines = []
    for i in range(cfg.inputs):
        os.symlink(one, tmp / f"small-{i}.zarr")
        lines.append(f"{tmp / f'small-{i}.zarr'} {tmp / f'small-out-{i}.zarr'}")
    (tmp / "manifest.txt").write_text("\n".join(lines) + "\n")
    whole_side = side * math.isqrt(cfg.inputs)
    whole = tmp / "whole.zarr"
    write_mosaic(whole, whole_side)
    report = tmp / "many.json"
    manifest = in_process(["--manifest", str(tmp / "manifest.txt"), "--checkpoint", str(ckpt), "--chunk", str(CHUNK),
                           "--no-progress", "--overwrite", "--report", str(report)])
    single = in_process(job_argv(whole, tmp / "whole-out.zarr", ckpt, report))
    row = {"inputs": cfg.inputs, "input_mpx": side * side / 1e6, "manifest_s": manifest["seconds"],
           "single_s": single["seconds"], "manifest_mpx_per_s": manifest["mpx_per_s"],
           "single_mpx_per_s": single["mpx_per_s"],
           "per_input_s": (manifest["seconds"] - single["seconds"]) / cfg.inputs,
           "ratio": manifest["mpx_per_s"] / single["mpx_per_s"], "load": load()}
    print(f"many inputs: {cfg.inputs} x {row['input_mpx']:.1f} Mpx in {manifest['seconds']:.1f} s, one mosaic of "
          f"the same pixels in {single['seconds']:.1f} s: {row['per_input_s']:.3f} s per input", flush=True)
    return row


def warm_calibration(tmp: Path) -> None:
    """One dry run per network over an empty mosaic as large as any here: the calibration a first run on
    this machine would pay, paid here."""
    import zarr

    from unet.api import main

    zarr.create_array(str(tmp / "warm.zarr"), shape=(8 * CHUNK, 8 * CHUNK), chunks=(CHUNK, CHUNK), dtype=np.uint8)
    for net in (BENCH_NET, TRIVIAL_NET):
        model = make_model(**net)
        save_model(model, tmp)
        main([str(tmp / "warm.zarr"), str(tmp / "warm-out.zarr"), "--checkpoint", str(checkpoint_path(model, tmp)),
              "--chunk", str(CHUNK), "--dry-run"])


def table(res: dict) -> str:
    lines = ["| # | measurement | result |", "| --- | --- | --- |"]
    if "tiles" in res:
        t = res["tiles"]
        hand = ", ".join(f"{tile}: {mpx:.2f}" for tile, mpx in t["medians"].items())
        lines.append(f"| 1 | defaults vs hand-picked --tile, {t['mpx']:.0f} Mpx, medians of {res['config']['repeats']} "
                     f"rounds (Mpx/s by tile: {hand}) | default {t['default_mpx_per_s']:.2f} Mpx/s (tile "
                     f"{t['default_tile']}, block {t['default_block']}): **{t['default_over_best']:.2f} of the "
                     f"best** (--tile {t['best_hand']['tile']}) |")
    for r in res.get("end_to_end", []):
        lines.append(f"| 2 | end to end incl. Ray's start, {r['mpx']:.0f} Mpx, fresh `python jobs/segment.py` vs "
                     f"`predict_image` in memory | job {r['job_s']:.1f} s (start-up {r['startup_s']} s), predict_image "
                     f"{r['predict_image_s']:.1f} s: **{r['ratio']:.2f}** |")
    m = res.get("many_inputs")
    lines += [] if m is None else [(f"| 3 | many inputs: --manifest of {m['inputs']} x {m['input_mpx']:.1f} Mpx vs one {m['inputs'] * m['input_mpx']:.0f} "
                 f"Mpx mosaic (cheapest U-Net) | {m['manifest_s']:.1f} s vs {m['single_s']:.1f} s: "
                 f"**{m['per_input_s']:.2f} s per input**, {m['ratio']:.2f} of the single mosaic's Mpx/s |")]
    mc = res["machine"]
    lines.append(f"\n{mc['cpu']}, {mc['cores']} cores; torch {mc['torch']}; {mc['date']}; load average "
                 f"{mc['load_average_at_start'][0]} at start, {res['load_average_at_end'][0]} at end; "
                 f"{res['total_seconds']:.0f} s. `{res['command']}`")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import ray

    cfg = build_config(argv)
    started = time.perf_counter()
    given = sys.argv[1:] if argv is None else list(argv)
    res = {"command": " ".join(["python benchmarks/defaults.py", *given]),
           "machine": machine(), "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
    with tempfile.TemporaryDirectory(prefix="unet-defaults-") as name:
        tmp = Path(name)
        save_model(make_model(**BENCH_NET), tmp)
        warm_calibration(tmp)
        if "end_to_end" in cfg.rows:
            res["end_to_end"] = end_to_end_rows(cfg, tmp)   # before this process starts its own Ray
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            if "tiles" in cfg.rows:
                res["tiles"] = tile_rows(cfg, tmp)
            if "many_inputs" in cfg.rows:
                res["many_inputs"] = many_inputs_row(cfg, tmp)
        finally:
            ray.shutdown()
    res["load_average_at_end"] = load()
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    return write_results(cfg.out, res, table(res))


if __name__ == "__main__":
    sys.exit(main())
