"""Speed and memory of the segmentation job, measured side by side in one run so that ratios hold on a
noisy machine: network only, end to end (Zarr to Zarr on local Ray), the pipeline's ceiling with a trivial
network, the driver's memory on huge plans, scaling over workers, and the paper's network.

    python benchmarks/run.py [--quick] [--size MPX] [--out benchmarks/results/benchmarks.json]

Prints a markdown table (for the README) and writes JSON with the machine described. Minutes on 2 CPU
cores (--quick: about two); not run in CI. Peers (MONAI, dask map_overlap) are not measured yet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import ProcessTreeMeter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "benchmarks.json"
CHUNK = 1024
SCENE = 2048                       # side of the synthetic scene that is repeated over the mosaic
BENCH_NET = dict(depth=4, base_channels=16)
TRIVIAL_NET = dict(depth=2, base_channels=1)
PAPER_NET = dict(depth=5, base_channels=64)
PAPER_TILE = 572


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures; ``--quick`` shrinks every part of it."""

    out: Path
    size_mpx: float                # the end-to-end mosaic
    scaling_mpx: float             # the (smaller) mosaic of the scaling and block-size rows
    tile_steps: tuple[int, ...]    # candidate tiles, by the output step they advance (divides the block)
    blocks: tuple[int, ...]        # block sizes of the end-to-end rows; the first is the headline
    net_tiles: int                 # tiles per network-only measurement
    paper_tiles: int
    plan_blocks: tuple[int, ...]   # block counts of the dry-run memory rows
    quick: bool


def build_config(argv: Sequence[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke check in about two minutes")
    p.add_argument("--size", type=float, help="end-to-end mosaic in Mpx (default 64, quick 4)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    a = p.parse_args(argv)
    size = a.size or (4.0 if a.quick else 64.0)
    if size < 4:
        raise SystemExit(f"--size: expected at least 4 Mpx (one {SCENE}-px scene), found {size}")
    if a.quick:
        return BenchConfig(a.out, size, size, (256, 512), (2048, 1024), 2, 1, (10**2, 10**4, 10**6), True)
    return BenchConfig(a.out, size, max(4.0, size / 4), (256, 512, 1024), (4096, 2048), 3, 2,
                       (10**2, 10**4, 10**6), False)


# -- machine ----------------------------------------------------------------------------------------

def machine() -> dict:
    """What the figures were measured on."""
    import ray
    import torch
    import zarr

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "zarr": zarr.__version__,
            "ray": ray.__version__, "numpy": np.__version__, "os": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_at_start": load()}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- networks ---------------------------------------------------------------------------------------

def make_model(depth: int, base_channels: int):
    """A He-initialised U-Net in eval mode, 1 uint8 channel in, 2 classes out."""
    from unet.model import InputContract, UNet

    contract = InputContract(channels=1, dtype="uint8", value_range=(0.0, 255.0), offset=(127.5,), scale=(127.5,))
    return UNet(1, 2, depth, base_channels, input=contract).eval()


def aligned_tile(model, step: int) -> int:
    """The smallest valid tile whose output covers ``step`` px: tiles then advance by ``step`` exactly and
    blocks that are multiples of it waste only the few pixels of output past the step."""
    return model.round_input_size(step + sum(model.margins), "up")


def network_rate(model, tile: int, n_tiles: int) -> dict:
    """Output Mpx/s of ``TilePredictor.forward`` on in-memory uint8 tiles, one tile per call, after a
    warm-up call; also the CPU seconds per output Mpx it cost this process."""
    from unet.plan import network_flops
    from unet.predict import TilePredictor

    predictor = TilePredictor(model, tile=tile, batch_size=1, device="cpu")
    tiles = np.random.default_rng(0).integers(0, 256, (n_tiles, 1, tile, tile), dtype=np.uint8)  # (N, 1, t, t)
    predictor.forward(tiles[:1])
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n_tiles):
        predictor.forward(tiles[i:i + 1])                                          # (1, 2, out, out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mpx = n_tiles * predictor.out_tile ** 2 / 1e6
    return {"tile": tile, "out_tile": predictor.out_tile, "tiles": n_tiles, "seconds": round(wall, 3),
            "mpx_per_s": mpx / wall, "cpu_s_per_mpx": cpu / mpx,
            "gflop_per_s": n_tiles * network_flops(model, tile) / wall / 1e9, "load": load()}


# -- data -------------------------------------------------------------------------------------------

def write_mosaic(path: Path, side: int) -> None:
    """A uint8 nuclei micrograph of side x side px, one synthetic scene repeated, chunks of 1024 px."""
    import zarr

    from unet.synthetic import nuclei_scene

    scene = nuclei_scene((SCENE, SCENE), 0).image                                  # (2048, 2048)
    array = zarr.create_array(str(path), shape=(side, side), chunks=(CHUNK, CHUNK), dtype=np.uint8)
    for y in range(0, side, SCENE):
        array[y:y + SCENE, :] = np.tile(scene, (1, side // SCENE))                 # (2048, side)


def mosaic_side(mpx: float) -> int:
    return max(SCENE, round(math.sqrt(mpx * 1e6) / SCENE) * SCENE)


def checkpoint_path(model, tmp: Path) -> Path:
    return tmp / f"unet-d{model.config.depth}-c{model.config.base_channels}.safetensors"


def save_model(model, tmp: Path) -> None:
    from unet.checkpoint import save_checkpoint

    save_checkpoint(model, checkpoint_path(model, tmp), class_names=["background", "foreground"])


# -- the job ----------------------------------------------------------------------------------------

def run_job(model, mosaic: Path, tmp: Path, *, block: int, tile: int, workers: int, cpus: int) -> dict:
    """One in-process run of the job, Zarr to Zarr, with ``model`` saved by ``save_model``; its report plus the CPU seconds of the whole process
    tree (driver and Ray) and the workers' peak RSS."""
    from unet.segment import main

    out, report, checkpoint = tmp / "out.zarr", tmp / "report.json", checkpoint_path(model, tmp)
    argv = [str(mosaic), str(out), "--checkpoint", str(checkpoint), "--chunk", str(CHUNK), "--block", str(block),
            "--tile", str(tile), "--workers", str(workers), "--cpus-per-worker", str(cpus), "--no-progress",
            "--report", str(report)]
    with ProcessTreeMeter("BlockRunner") as meter:
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"segment.main exited with {code}: {' '.join(argv)}")
    r = json.loads(report.read_text())
    shutil.rmtree(out)
    mpx = r["new_pixels"] / 1e6
    return {"block": block, "tile": tile, "workers": r["workers"], "cpus_per_worker": r["cpus_per_worker"],
            "mpx": mpx, "seconds": round(r["seconds"], 2), "mpx_per_s": r["mpx_per_s"], "cpu_s": round(meter.cpu_seconds, 2),
            "cores_busy": meter.cpu_seconds / r["seconds"], "worker_peak_rss_mb": meter.peak_rss / 2**20,
            "tile_waste": tile_waste(model, block, tile), "load": load()}


def tile_waste(model, block: int, tile: int) -> float:
    """Output pixels computed per output pixel kept on one block."""
    from unet.tiling import tile_origins

    out = model.output_size(tile)
    return (len(tile_origins(0, block, out, model.grid)) * out / block) ** 2


def dry_run_rss(checkpoint: Path, tmp: Path, blocks: int, block: int = CHUNK) -> dict:
    """Peak RSS of a subprocess running the job's --dry-run on a virtual mosaic of ``blocks`` blocks:
    only the array's metadata exists, Zarr stores no chunk."""
    import zarr

    side = math.isqrt(blocks) * block
    path = tmp / f"virtual-{blocks}.zarr"
    zarr.create_array(str(path), shape=(side, side), chunks=(block, block), dtype=np.uint8, overwrite=True)
    argv = [sys.executable, str(ROOT / "jobs" / "segment.py"), str(path), str(tmp / "virtual-out.zarr"),
            "--checkpoint", str(checkpoint), "--chunk", str(CHUNK), "--block", str(block), "--dry-run"]
    started = time.perf_counter()
    with open(tmp / "dry-run.log", "w+") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)                     # the rusage of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"dry run exited with {proc.returncode}: {log.read()[-2000:]}")
    return {"blocks": blocks, "shape": [side, side], "gpx": side * side / 1e9,
            "seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": usage.ru_maxrss / 1024}


# -- the run ----------------------------------------------------------------------------------------

def measure_network(cfg: BenchConfig) -> tuple[list[dict], int]:
    """Row 1: every candidate tile; the fastest per output pixel is the one the job then uses."""
    model = make_model(**BENCH_NET)
    rows = [network_rate(model, aligned_tile(model, step), cfg.net_tiles) for step in cfg.tile_steps]
    for r in rows:
        print(f"network only, tile {r['tile']}: {r['mpx_per_s']:.3f} Mpx/s", flush=True)
    return rows, max(rows, key=lambda r: r["mpx_per_s"])["tile"]


def measure_end_to_end(cfg: BenchConfig, tmp: Path, tile: int) -> tuple[list[dict], list[dict]]:
    """Rows 2 and 5: the job with the benchmark network, each run followed by a network-only check of the
    same tile so that its efficiency compares figures taken minutes, not a quarter of an hour, apart."""
    model = make_model(**BENCH_NET)
    save_model(model, tmp)
    big, small = tmp / "big.zarr", tmp / "small.zarr"
    write_mosaic(big, mosaic_side(cfg.size_mpx))
    write_mosaic(small, mosaic_side(cfg.scaling_mpx))
    cores = os.cpu_count() or 1
    runs = [(big, cfg.blocks[0], 1, cores)] + [(small, b, 1, cores) for b in cfg.blocks[1:]]
    runs.append((small, cfg.blocks[-1], cores, 1))
    before = network_rate(model, tile, cfg.net_tiles)["mpx_per_s"]
    e2e, scaling = [], []
    for mosaic, block, workers, cpus in runs:
        r = run_job(model, mosaic, tmp, block=block, tile=tile, workers=workers, cpus=cpus)
        after = network_rate(model, tile, cfg.net_tiles)
        r["network_mpx_per_s"] = (before + after["mpx_per_s"]) / 2
        r["efficiency"] = r["mpx_per_s"] / r["network_mpx_per_s"]
        r["cpu_s_outside_network"] = r["cpu_s"] - r["mpx"] * r["tile_waste"] * after["cpu_s_per_mpx"]
        before = after["mpx_per_s"]
        print(f"end to end, block {block}, {workers} x {cpus} cores: {r['mpx_per_s']:.3f} Mpx/s, "
              f"efficiency {r['efficiency']:.2f}", flush=True)
        if workers == 1:
            e2e.append(r)
        if mosaic == small and block == cfg.blocks[-1]:
            scaling.append(r)
    return e2e, scaling


def measure_ceiling(cfg: BenchConfig, tmp: Path) -> dict:
    """Row 3: the job with the cheapest U-Net; its CPU time, less the network's, is the pipeline's."""
    model = make_model(**TRIVIAL_NET)
    save_model(model, tmp)
    tile = aligned_tile(model, 1024)
    net = network_rate(model, tile, 4)
    cores = os.cpu_count() or 1
    r = run_job(model, tmp / "big.zarr", tmp, block=cfg.blocks[0], tile=tile, workers=1, cpus=cores)
    outside = r["cpu_s"] - r["mpx"] * r["tile_waste"] * net["cpu_s_per_mpx"]
    r.update(network_mpx_per_s=net["mpx_per_s"], network_cpu_s_per_mpx=net["cpu_s_per_mpx"],
             cpu_s_outside_network=outside, mpx_per_core_s=r["mpx"] / outside)
    print(f"pipeline ceiling: {r['mpx_per_s']:.2f} Mpx/s, {r['mpx_per_core_s']:.1f} Mpx per core-second", flush=True)
    return r


def measure_memory(cfg: BenchConfig, tmp: Path) -> list[dict]:
    """Row 4: the driver's peak RSS on plans of growing block counts, in fresh processes."""
    checkpoint = checkpoint_path(make_model(**BENCH_NET), tmp)
    rows = [dry_run_rss(checkpoint, tmp, n) for n in cfg.plan_blocks]
    for r in rows:
        print(f"driver dry run, {r['blocks']} blocks: {r['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def measure_paper(cfg: BenchConfig) -> dict:
    """Row 6: the paper's network on its own tile."""
    r = network_rate(make_model(**PAPER_NET), PAPER_TILE, cfg.paper_tiles)
    print(f"paper network, tile {PAPER_TILE}: {r['mpx_per_s']:.3f} Mpx/s", flush=True)
    return r


def table(res: dict) -> str:
    """The results as a markdown table, machine and load below it."""
    rows = [("1", f"network only, tile {r['tile']} -> {r['out_tile']}" + (" (chosen)" if r["tile"] == res["chosen_tile"] else ""),
             f"{r['mpx_per_s']:.3f}", f"{r['gflop_per_s']:.0f} GFLOP/s, load {r['load'][0]}") for r in res["network"]]
    rows += [("2", f"end to end, {r['mpx']:.0f} Mpx, block {r['block']}, tile {r['tile']}, 1 x {r['cpus_per_worker']:g} cores",
              f"{r['mpx_per_s']:.3f}", f"efficiency {r['efficiency']:.2f}, {r['cores_busy']:.1f} cores busy, tile waste "
              f"{r['tile_waste'] - 1:.1%}, worker peak {r['worker_peak_rss_mb']:.0f} MB, load {r['load'][0]}")
             for r in res["end_to_end"]]
    c = res["ceiling"]
    rows.append(("3", f"pipeline ceiling: cheapest U-Net (depth 2, 1 filter), {c['mpx']:.0f} Mpx, block {c['block']}",
                 f"{c['mpx_per_s']:.2f}", f"**{c['mpx_per_core_s']:.1f} Mpx per core-second outside the network**, "
                 f"{c['cores_busy']:.1f} cores busy, worker peak {c['worker_peak_rss_mb']:.0f} MB"))
    rows += [("4", f"driver peak RSS, --dry-run, {r['blocks']:.0e} blocks ({r['gpx']:.3g} Gpx)", "",
              f"{r['peak_rss_mb']:.0f} MB, {r['seconds']} s") for r in res["driver_memory"]]
    rows += [("5", f"scaling, {r['mpx']:.0f} Mpx, block {r['block']}, {r['workers']} x {r['cpus_per_worker']:g} cores",
              f"{r['mpx_per_s']:.3f}", f"efficiency {r['efficiency']:.2f}") for r in res["scaling"]]
    p = res["paper_network"]
    rows.append(("6", f"paper's network (depth 5, 64 filters), network only, tile {p['tile']} -> {p['out_tile']}",
                 f"{p['mpx_per_s']:.3f}", f"{p['gflop_per_s']:.0f} GFLOP/s, {p['tiles']} tile(s)"))
    m = res["machine"]
    lines = ["| # | measurement | Mpx/s | notes |", "| --- | --- | ---: | --- |"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines.append(f"\n{m['cpu']}, {m['cores']} cores; torch {m['torch']}, zarr {m['zarr']}, ray {m['ray']}; {m['date']}; "
                 f"load average {m['load_average_at_start'][0]} at start, {res['load_average_at_end'][0]} at end; "
                 f"peers (MONAI, dask) not yet measured. `{res['command']}`")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import ray

    cfg = build_config(argv)
    started = time.perf_counter()
    results = {"command": "python benchmarks/run.py" + (" --quick" if cfg.quick else ""), "machine": machine(),
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="unet-bench-") as name:
            tmp = Path(name)
            results["network"], tile = measure_network(cfg)
            results["chosen_tile"] = tile
            results["end_to_end"], results["scaling"] = measure_end_to_end(cfg, tmp, tile)
            results["ceiling"] = measure_ceiling(cfg, tmp)
            results["driver_memory"] = measure_memory(cfg, tmp)
            results["paper_network"] = measure_paper(cfg)
    finally:
        ray.shutdown()
    results["peers"] = {"monai_sliding_window_inference": "not yet measured", "dask_map_overlap": "not yet measured"}
    results["load_average_at_end"] = load()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table(results))
    print(f"\nwrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
