"""Speed and memory of the segmentation job, measured side by side in one run so that ratios hold on a
noisy machine: the network alone, the job end to end (Zarr to Zarr on local Ray), the pipeline's ceiling
with a trivial network, memory (driver on huge plans, worker against block size), peers (MONAI's sliding
window, a plain dask map_overlap), scaling over workers, the paper's network, and the scheduling overhead
per block.

    python benchmarks/run.py [--quick] [--size MPX] [--out benchmarks/results/benchmarks.json]

Prints a markdown table (for the README) and writes JSON with the machine, its load and the versions.
About 10 minutes on 2 CPU cores (--quick: about 3); not run in CI. Needs the `bench` extra (MONAI).
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
CEILING_SEED = 5                   # the cheapest U-Net with labels that are not all background
PAPER_NET = dict(depth=5, base_channels=64)
PAPER_TILE = 572
TINY_BLOCK = 32                    # the scheduling-overhead job: one 32-px chunk per block
# Runs a script and prints its own peak RSS (VmHWM) as it exits. Not getrusage: on Linux a child's
# ru_maxrss starts at its parent's RSS when it forked, so every child of a big parent seems as big.
PEAK_RSS_TAG = "peak-rss-kb:"
PEAK_RSS_WRAPPER = f"""
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("{PEAK_RSS_TAG}", hwm.split()[1], file=sys.stderr)
"""
GPU = {"name": "A10G (AWS g5)", "bf16_tflops": 70.0, "utilisation": 0.4}  # dense bf16 tensor peak; realistic share


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures; ``--quick`` shrinks every part of it."""

    out: Path
    size_mpx: float                # the end-to-end mosaic
    blocks: tuple[int, ...]        # block sizes; the first is the headline, and the side of the small mosaic
    tile_steps: tuple[int, ...]    # candidate tiles, by the output step they advance (divides the block)
    net_tiles: int                 # tiles per network-only measurement
    paper_tiles: int
    plan_blocks: tuple[int, ...]   # block counts of the dry-run memory rows
    tiny_blocks: int               # blocks of the scheduling-overhead job
    quick: bool
    ceiling_repeats: int = 3       # pairs of ceiling runs (big mosaic, one block); the figure is their median
    only: str | None = None        # "ceiling": that row alone


def build_config(argv: Sequence[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke check in about two minutes")
    p.add_argument("--size", type=float, help="end-to-end mosaic in Mpx (default 64, quick 16)")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/benchmarks.json; "
                                           "with --only ceiling, ceiling.json)")
    p.add_argument("--only", choices=["ceiling"], help="measure this row alone")
    p.add_argument("--ceiling-repeats", type=int, help="pairs of ceiling runs, median taken (default 3, quick 1)")
    a = p.parse_args(argv)
    out = a.out or (RESULTS.with_name("ceiling.json") if a.only == "ceiling" else RESULTS)
    repeats = a.ceiling_repeats or (1 if a.quick else 3)
    if repeats < 1:
        raise SystemExit(f"--ceiling-repeats: expected at least 1, found {repeats}")
    blocks = (2048, 1024) if a.quick else (4096, 2048, 1024)
    size = a.size or (16.0 if a.quick else 64.0)
    if size < 2 * blocks[0] ** 2 / 1e6:
        raise SystemExit(f"--size: expected at least {2 * blocks[0] ** 2 / 1e6:g} Mpx (two headline blocks), "
                         f"found {size}")
    if a.quick:
        return BenchConfig(out, size, blocks, (256, 512), 2, 1, (10**2, 10**4, 10**6), 2500, True, repeats, a.only)
    return BenchConfig(out, size, blocks, (256, 512, 1024), 3, 2, (10**2, 10**4, 10**6), 10**4, False, repeats,
                       a.only)


# -- machine ----------------------------------------------------------------------------------------

def machine() -> dict:
    """What the figures were measured on."""
    import dask
    import monai
    import ray
    import torch
    import zarr

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "zarr": zarr.__version__,
            "ray": ray.__version__, "numpy": np.__version__, "dask": dask.__version__, "monai": monai.__version__,
            "os": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_at_start": load()}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- networks ---------------------------------------------------------------------------------------

def make_model(depth: int, base_channels: int, padding: str = "valid", seed: int = 0):
    """A He-initialised U-Net in eval mode, 1 uint8 channel in, 2 classes out."""
    import torch

    from unet.nn.model import InputContract, UNet

    torch.manual_seed(seed)
    contract = InputContract(channels=1, dtype="uint8", value_range=(0.0, 255.0), offset=(127.5,), scale=(127.5,))
    return UNet(depth=depth, base_channels=base_channels, padding=padding, input=contract).eval()


def aligned_tile(model, step: int) -> int:
    """The smallest valid tile whose output covers ``step`` px: tiles then advance by ``step`` exactly and
    blocks that are multiples of it waste only the few pixels of output past the step."""
    return model.round_input_size(step + sum(model.margins), "up")


def network_rate(model, tile: int, n_tiles: int, threads: int | None = None) -> dict:
    """Output Mpx/s of ``TilePredictor.forward`` on in-memory uint8 tiles, one tile per call, after a
    warm-up call, on ``threads`` torch threads (default: all); also the CPU seconds per output Mpx it cost
    this process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _network_rate(model, tile, n_tiles)
    finally:
        torch.set_num_threads(before)


def _network_rate(model, tile: int, n_tiles: int) -> dict:
    from unet.infer.predict import TilePredictor
    from unet.job.plan import network_flops

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

def write_mosaic(path: Path, side: int, chunk: int = CHUNK) -> None:
    """A uint8 nuclei micrograph of side x side px, one synthetic scene repeated (zstd, Zarr's default)."""
    import zarr

    from unet.demo.nuclei import nuclei_scene

    scene = nuclei_scene((SCENE, SCENE), 0).image                                  # (2048, 2048)
    array = zarr.create_array(str(path), shape=(side, side), chunks=(chunk, chunk), dtype=np.uint8)
    strip = np.tile(scene, (1, -(-side // SCENE)))[:, :side]                       # (2048, side)
    for y in range(0, side, SCENE):
        array[y:y + SCENE, :] = strip[:min(SCENE, side - y)]


def mosaic_side(mpx: float) -> int:
    return max(SCENE, round(math.sqrt(mpx * 1e6) / SCENE) * SCENE)


def checkpoint_path(model, tmp: Path) -> Path:
    return tmp / f"unet-d{model.config.depth}-c{model.config.base_channels}.safetensors"


def save_model(model, tmp: Path) -> None:
    from unet.nn.checkpoint import save_checkpoint

    save_checkpoint(model, checkpoint_path(model, tmp), class_names=["background", "foreground"])


# -- the job ----------------------------------------------------------------------------------------

def run_job(model, mosaic: Path, tmp: Path, *, block: int, tile: int, workers: int, cpus: int,
            chunk: int = CHUNK) -> dict:
    """One in-process run of the job, Zarr to Zarr, with ``model`` saved by ``save_model``; its report plus
    the CPU seconds of the whole process tree (driver and local Ray: raylet, workers) and the workers' peak
    RSS."""
    from unet import SegmentOptions, segment

    out, checkpoint = tmp / "out.zarr", checkpoint_path(model, tmp)
    options = SegmentOptions.of(mosaic, out, checkpoint, chunk=chunk, block=block, tile=tile, workers=workers,
                                cpus_per_worker=cpus, progress=False)
    with ProcessTreeMeter("BlockRunner") as meter:
        report = segment(options)
        meter.wait_for_exit()
    if not report.complete:
        raise RuntimeError(f"segment failed: {options}")
    r = report.to_dict()
    shutil.rmtree(out)
    mpx = r["new_pixels"] / 1e6
    return {"block": block, "tile": tile, "workers": r["workers"], "cpus_per_worker": r["cpus_per_worker"],
            "mpx": mpx, "seconds": round(r["seconds"], 2), "mpx_per_s": r["mpx_per_s"], "tasks": r["tasks_run"],
            "network_s": r["network_s"], "network_cpu_s": r["network_cpu_s"], "network_busy": r["network_busy"],
            "cpu_s": round(meter.cpu_seconds, 2),
            "cores_busy": meter.cpu_seconds / r["seconds"], "worker_peak_rss_mb": meter.peak_rss / 2**20,
            "tile_waste": tile_waste(model, block, tile), "load": load()}


def tile_waste(model, block: int, tile: int) -> float:
    """Output pixels computed per output pixel kept on one block."""
    from unet.infer.tiling import tile_origins

    out = model.output_size(tile)
    return (len(tile_origins(0, block, out, model.pooling_period)) * out / block) ** 2


def dry_run_rss(checkpoint: Path, tmp: Path, blocks: int, block: int = CHUNK) -> dict:
    """Peak RSS of a subprocess running the job's --dry-run on a virtual mosaic of ``blocks`` blocks:
    only the array's metadata exists, Zarr stores no chunk."""
    import zarr

    side = math.isqrt(blocks) * block
    path = tmp / f"virtual-{blocks}.zarr"
    zarr.create_array(str(path), shape=(side, side), chunks=(block, block), dtype=np.uint8, overwrite=True)
    argv = [sys.executable, "-c", PEAK_RSS_WRAPPER, str(ROOT / "jobs" / "segment.py"), str(path),
            str(tmp / "virtual-out.zarr"), "--checkpoint", str(checkpoint), "--chunk", str(CHUNK),
            "--block", str(block), "--dry-run"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dry run exited with {proc.returncode}: {proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.rsplit(PEAK_RSS_TAG, 1)[1].split()[0])
    return {"blocks": blocks, "shape": [side, side], "gpx": side * side / 1e9,
            "seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": peak_kb / 1024}




# -- peers ------------------------------------------------------------------------------------------

def monai_rate(mosaic: Path, tile: int) -> dict:
    """MONAI's ``sliding_window_inference`` (overlap 0.25, Gaussian blending, its defaults otherwise) with
    the same-padded twin of the benchmark network over the whole mosaic held in memory: reading the Zarr
    is not timed, its output stays in memory. Same ``channels_last`` as ours; labels by argmax."""
    import torch
    import zarr
    from monai.inferers import sliding_window_inference

    model = make_model(**BENCH_NET, padding="same").to(memory_format=torch.channels_last)
    roi = model.round_input_size(tile)
    image = zarr.open_array(str(mosaic), mode="r")[:]                              # (H, W) uint8
    started = time.perf_counter()
    with torch.inference_mode():
        x = (torch.from_numpy(image)[None, None].float() - 127.5) / 127.5         # (1, 1, H, W)
        logits = sliding_window_inference(x, (roi, roi), sw_batch_size=1, predictor=model, overlap=0.25,
                                          mode="gaussian")                         # (1, 2, H, W)
        labels = logits.argmax(dim=1).to(torch.uint8)                              # (1, H, W)
    seconds = time.perf_counter() - started
    network = network_rate(model, roi, 2)
    mpx = labels.numel() / 1e6
    return {"peer": "monai", "tile": roi, "mpx": mpx, "seconds": round(seconds, 2), "mpx_per_s": mpx / seconds,
            "network_mpx_per_s": network["mpx_per_s"], "load": load()}


def dask_rate(mosaic: Path, tmp: Path, model) -> dict:
    """A plain ``dask.array.map_overlap`` over the Zarr mosaic: each 1024-px chunk plus a mirrored halo is
    one tile of the same (valid) network, labels written to Zarr; dask's threads, one torch thread each."""
    import dask
    import dask.array as da
    import torch

    from unet.infer.predict import TilePredictor, class_index

    tile = model.round_input_size(CHUNK + sum(model.margins), "up")               # output >= one chunk
    halo = tile - model.margin - CHUNK                    # the tile reads margin before, this much after
    skip = halo - model.margin                            # halo rows before the tile's first input row
    predictor = TilePredictor(model, tile=tile, batch_size=1, device="cpu")

    def predict(block: np.ndarray) -> np.ndarray:
        window = block[skip:skip + tile, skip:skip + tile]                         # (tile, tile)
        probs = predictor.forward(window[None, None])[0]                           # (2, out, out)
        return class_index(probs)[:block.shape[0] - 2 * halo, :block.shape[1] - 2 * halo]

    image = da.from_zarr(str(mosaic))
    labels = image.map_overlap(predict, depth=halo, boundary="reflect", trim=False, dtype=np.uint8,
                               chunks=image.chunks)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        with dask.config.set(scheduler="threads", num_workers=os.cpu_count()):
            labels.to_zarr(str(tmp / "dask-out.zarr"), overwrite=True)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    shutil.rmtree(tmp / "dask-out.zarr")
    mpx = image.size / 1e6
    return {"peer": "dask", "tile": tile, "mpx": mpx, "seconds": round(seconds, 2), "mpx_per_s": mpx / seconds,
            "load": load()}


# -- the run ----------------------------------------------------------------------------------------

def measure_network(cfg: BenchConfig) -> tuple[list[dict], int]:
    """Row 1: every candidate tile; the fastest per output pixel is the one the job then uses."""
    model = make_model(**BENCH_NET)
    rows = [network_rate(model, aligned_tile(model, step), cfg.net_tiles) for step in cfg.tile_steps]
    for r in rows:
        print(f"network only, tile {r['tile']}: {r['mpx_per_s']:.3f} Mpx/s", flush=True)
    return rows, max(rows, key=lambda r: r["mpx_per_s"])["tile"]


def measure_jobs(cfg: BenchConfig, tmp: Path, tile: int) -> dict[str, list[dict]]:
    """Rows 2, 4 (worker memory) and 6: the job with the benchmark network, on the big mosaic and on a small
    one of one headline block; each run is followed by a network-only check of the same tile, and its
    efficiency is against the faster of the checks just before and after it: figures taken seconds apart,
    and conservative, as the network alone varies by tens of percent within a run on a shared machine."""
    model = make_model(**BENCH_NET)
    save_model(model, tmp)
    big, small = tmp / "big.zarr", tmp / "small.zarr"
    write_mosaic(big, mosaic_side(cfg.size_mpx))
    write_mosaic(small, cfg.blocks[0])
    cores = os.cpu_count() or 1
    runs = [("end_to_end", big, cfg.blocks[0], 1, cores)]
    runs += [("block_sizes", small, block, 1, cores) for block in cfg.blocks]
    runs += [("scaling", small, cfg.blocks[1], cores, 1)]
    before = network_rate(model, tile, cfg.net_tiles)["mpx_per_s"]
    found: dict[str, list[dict]] = {"end_to_end": [], "block_sizes": [], "scaling": []}
    for kind, mosaic, block, workers, cpus in runs:
        r = run_job(model, mosaic, tmp, block=block, tile=tile, workers=workers, cpus=cpus)
        after = network_rate(model, tile, cfg.net_tiles)
        r["network_mpx_per_s"] = max(before, after["mpx_per_s"])  # the network's best speed nearby
        r["efficiency"] = r["mpx_per_s"] / r["network_mpx_per_s"]
        before = after["mpx_per_s"]
        print(f"{kind}, block {block}, {workers} x {cpus} cores: {r['mpx_per_s']:.3f} Mpx/s, "
              f"efficiency {r['efficiency']:.2f}", flush=True)
        found[kind].append(r)
    head, one_block = found["end_to_end"][0], found["block_sizes"][0]
    head["steady_efficiency"] = steady_rate(head, one_block) / head["network_mpx_per_s"]
    found["scaling"].insert(0, found["block_sizes"][1])
    return found


def steady_rate(run: dict, baseline: dict) -> float:
    """Mpx/s past the start-up: the difference of two runs with the same settings, ``baseline`` on a
    mosaic of one block (the worker's start, model load and output set-up cancel out)."""
    return (run["mpx"] - baseline["mpx"]) / max(run["seconds"] - baseline["seconds"], 1e-9)


def measure_ceiling(cfg: BenchConfig, tmp: Path) -> dict:
    """Row 3: the job with the cheapest U-Net, one worker of one core (so the forward passes' CPU time is
    their thread's, which the job reports). The CPU seconds of the whole process tree less the network's
    are the pipeline's: read, decode, mirror, write, pyramid, Ray. The same on a one-block mosaic is
    subtracted, so that the worker's start-up (imports, model load) cancels out; the mosaic is 4 times the
    end-to-end one, so that the start-up's own variation weighs little. Even so one pair of runs varies
    by tens of percent (the subtracted start-up alone by a second), so ``ceiling_repeats`` pairs are run,
    interleaved, and the medians of each side are subtracted; every pair's own figure is kept too. The
    network's seed is one whose labels follow the image (6 % foreground on the nuclei scene): seed 0's
    labels are all background, and Zarr stores no chunk equal to the fill value, so the write path would
    go unmeasured. Needs ``small.zarr`` (one headline block) in ``tmp``."""
    model = make_model(**TRIVIAL_NET, seed=CEILING_SEED)
    save_model(model, tmp)
    write_mosaic(tmp / "huge.zarr", 2 * mosaic_side(cfg.size_mpx))
    tile = aligned_tile(model, 1024)
    pairs = [tuple(run_job(model, tmp / mosaic, tmp, block=cfg.blocks[0], tile=tile, workers=1, cpus=1)
                   for mosaic in ("huge.zarr", "small.zarr")) for _ in range(cfg.ceiling_repeats)]
    shutil.rmtree(tmp / "huge.zarr")
    bigs, ones = [big for big, _ in pairs], [one for _, one in pairs]
    mpx = bigs[0]["mpx"] - ones[0]["mpx"]
    big_outside = float(np.median([cpu_outside(r) for r in bigs]))
    outside = big_outside - float(np.median([cpu_outside(r) for r in ones]))
    network = float(np.median([r["network_cpu_s"] for r in bigs]) - np.median([r["network_cpu_s"] for r in ones]))
    big = min(bigs, key=lambda r: abs(cpu_outside(r) - big_outside))             # the median run's details
    r = {**big, "baseline": ones, "repeats": len(pairs), "marginal_mpx": mpx, "cpu_s_outside_network": outside,
         "mpx_per_core_s": mpx / outside, "network_share": network / (network + outside),
         "pairs_mpx_per_core_s": [mpx / (cpu_outside(b) - cpu_outside(o)) for b, o in pairs],
         "runs": [{k: r[k] for k in ("seconds", "cpu_s", "network_cpu_s", "load")} for r in bigs]}
    print(f"pipeline ceiling: {r['mpx_per_core_s']:.1f} Mpx per core-second outside the network (pairs: "
          + ", ".join(f"{v:.0f}" for v in r["pairs_mpx_per_core_s"]) + ")", flush=True)
    return r


def cpu_outside(run: dict) -> float:
    """CPU seconds of a run's process tree outside the network's forward passes."""
    return run["cpu_s"] - run["network_cpu_s"]


def measure_overhead(cfg: BenchConfig, tmp: Path) -> dict:
    """Scheduling overhead: a job of ``tiny_blocks`` blocks of one 32-px chunk with the cheapest U-Net;
    wall and CPU time per task (the level-0 blocks and the pyramid's)."""
    model = make_model(**TRIVIAL_NET)
    save_model(model, tmp)
    side = math.isqrt(cfg.tiny_blocks) * TINY_BLOCK
    write_mosaic(tmp / "tiny.zarr", side, chunk=TINY_BLOCK)
    r = run_job(model, tmp / "tiny.zarr", tmp, block=TINY_BLOCK, tile=aligned_tile(model, TINY_BLOCK), workers=1,
                cpus=os.cpu_count() or 1, chunk=TINY_BLOCK)
    r.update(blocks=cfg.tiny_blocks, ms_per_task=1e3 * r["seconds"] / r["tasks"],
             cpu_ms_per_task=1e3 * r["cpu_s"] / r["tasks"])
    print(f"scheduling overhead: {r['ms_per_task']:.1f} ms per task over {r['tasks']} tasks", flush=True)
    return r


def measure_memory(cfg: BenchConfig, tmp: Path) -> list[dict]:
    """Row 4: the driver's peak RSS on plans of growing block counts, in fresh processes."""
    checkpoint = checkpoint_path(make_model(**BENCH_NET), tmp)
    rows = [dry_run_rss(checkpoint, tmp, n) for n in cfg.plan_blocks]
    for r in rows:
        print(f"driver dry run, {r['blocks']} blocks: {r['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def measure_peers(tmp: Path, tile: int, ours: list[dict]) -> list[dict]:
    """Row 5: MONAI and dask over the small mosaic, against our best run on it (any block size, any
    split of the cores into workers: dask, too, runs one single-threaded forward pass per core)."""
    best = max(ours, key=lambda r: r["mpx_per_s"])
    rows = [monai_rate(tmp / "small.zarr", tile), dask_rate(tmp / "small.zarr", tmp, make_model(**BENCH_NET))]
    for r in rows:
        r["ours"] = {k: best[k] for k in ("block", "workers", "cpus_per_worker", "mpx_per_s")}
        r["ours_over_theirs"] = best["mpx_per_s"] / r["mpx_per_s"]
        print(f"peer {r['peer']}: {r['mpx_per_s']:.3f} Mpx/s, ours / theirs {r['ours_over_theirs']:.2f}", flush=True)
    return rows


def gpu_estimate(net: dict, tile: int) -> dict:
    """Expected GPU throughput of a network from its FLOP count (2 per multiply-add, on the meta device):
    output Mpx/s = peak x utilisation / FLOP per output pixel. Arithmetic, not a measurement."""
    from unet.job.plan import network_flops

    model = make_model(**net)
    flops = network_flops(model, tile)
    per_px = flops / model.output_size(tile) ** 2
    rate = GPU["bf16_tflops"] * 1e12 * GPU["utilisation"] / per_px / 1e6
    return {**GPU, "net": net, "tile": tile, "gflop_per_tile": flops / 1e9, "mflop_per_px": per_px / 1e6,
            "mpx_per_s": rate, "hours_per_1e10_px": 1e10 / (rate * 1e6) / 3600}


def measure_paper(cfg: BenchConfig) -> dict:
    """The paper's network on its own tile."""
    r = network_rate(make_model(**PAPER_NET), PAPER_TILE, cfg.paper_tiles)
    print(f"paper network, tile {PAPER_TILE}: {r['mpx_per_s']:.3f} Mpx/s", flush=True)
    return r


def table(res: dict) -> str:
    """The results as a markdown table, machine and load below it."""
    rows = [("1", f"network only, tile {r['tile']} -> {r['out_tile']}" + (" (chosen)" if r["tile"] == res["chosen_tile"] else ""),
             f"{r['mpx_per_s']:.2f}", f"{r['gflop_per_s']:.0f} GFLOP/s") for r in res["network"]]
    e = res["end_to_end"][0]
    rows.append(("2", f"end to end, Zarr to Zarr on local Ray, {e['mpx']:.0f} Mpx, block {e['block']}, "
                      f"1 worker x {e['cpus_per_worker']:g} cores", f"{e['mpx_per_s']:.2f}",
                 f"**efficiency {e['efficiency']:.2f}** ({e['steady_efficiency']:.2f} past the worker's start-up); "
                 f"network busy {e['network_busy']:.0%} of the run; network alone {e['network_mpx_per_s']:.2f} Mpx/s "
                 f"at best just before or after; tile waste {e['tile_waste'] - 1:.1%}"))
    rows.append(ceiling_row(res["ceiling"]))
    rows += [("4", f"driver peak RSS, --dry-run, {r['blocks']:.0e} blocks ({r['gpx']:.3g} Gpx)", "",
              f"{r['peak_rss_mb']:.0f} MB") for r in res["driver_memory"]]
    rows += [("4", f"worker peak RSS, block {r['block']}, tile {r['tile']}", f"{r['mpx_per_s']:.2f}",
              f"{r['worker_peak_rss_mb']:.0f} MB; efficiency {r['efficiency']:.2f} on {r['mpx']:.0f} Mpx")
             for r in res["block_sizes"]]
    rows += [("5", f"peer: {peer_name(r)}, {r['mpx']:.0f} Mpx", f"{r['mpx_per_s']:.2f}",
              f"**ours / theirs {r['ours_over_theirs']:.2f}** (ours: {r['ours']['mpx_per_s']:.2f} Mpx/s, block "
              f"{r['ours']['block']}, {r['ours']['workers']} x {r['ours']['cpus_per_worker']:g} cores)"
              + (f"; their network alone {r['network_mpx_per_s']:.2f} Mpx/s" if "network_mpx_per_s" in r else ""))
             for r in res["peers"]]
    rows += [("6", f"scaling, {r['mpx']:.0f} Mpx, block {r['block']}, {r['workers']} worker(s) x {r['cpus_per_worker']:g} cores",
              f"{r['mpx_per_s']:.2f}", f"efficiency {r['efficiency']:.2f}, network busy {r['network_busy']:.0%}")
             for r in res["scaling"]]
    p = res["paper_network"]
    rows.append(("-", f"paper's network (depth 5, 64 filters), network only, tile {p['tile']} -> {p['out_tile']}",
                 f"{p['mpx_per_s']:.3f}", f"{p['gflop_per_s']:.0f} GFLOP/s"))
    for g in res["gpu_estimates"]:
        rows.append(("-", f"expected on one {g['name']}: depth {g['net']['depth']}, {g['net']['base_channels']} filters, "
                          f"tile {g['tile']} (arithmetic, not measured)", f"{g['mpx_per_s']:.0f}",
                     f"{g['gflop_per_tile']:.1f} GFLOP per tile = {g['mflop_per_px']:.2f} MFLOP per output px; "
                     f"{g['bf16_tflops']:g} TFLOP/s bf16 x {g['utilisation']:.0%}; 10^10 px in {g['hours_per_1e10_px']:.2f} h"))
    o = res["overhead"]
    rows.append(("-", f"scheduling overhead: {o['tasks']} tasks ({o['blocks']} blocks of {TINY_BLOCK} px and their pyramid)",
                 "", f"**{o['ms_per_task']:.1f} ms per task** wall, {o['cpu_ms_per_task']:.1f} CPU-ms per task"))
    return markdown(rows, res)


def markdown(rows: list[tuple[str, ...]], res: dict) -> str:
    lines = ["| # | measurement | Mpx/s | notes |", "| --- | --- | ---: | --- |"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines.append("\n" + machine_line(res))
    return "\n".join(lines)


def ceiling_row(c: dict) -> tuple[str, str, str, str]:
    pairs = ", ".join(f"{v:.0f}" for v in c["pairs_mpx_per_core_s"])
    return ("3", f"pipeline ceiling: cheapest U-Net (depth 2, 1 filter), 1 worker x 1 core, "
                 f"{c['marginal_mpx']:.0f} Mpx past start-up", f"{c['mpx_per_s']:.1f}",
            f"**{c['mpx_per_core_s']:.0f} Mpx per core-second outside the network** (read, decode, mirror, "
            f"write, pyramid, Ray; median of {c['repeats']} pairs of runs, each pair: {pairs}); "
            f"the network took {c['network_share']:.0%} of the CPU")


def machine_line(res: dict) -> str:
    m = res["machine"]
    return (f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}, zarr {m['zarr']}, ray {m['ray']}, "
            f"monai {m['monai']}, dask {m['dask']}; {m['date']}; load average {m['load_average_at_start'][0]} at "
            f"start, {res['load_average_at_end'][0]} at end; {res['total_seconds']:.0f} s. `{res['command']}`")


def peer_name(r: dict) -> str:
    if r["peer"] == "monai":
        return f"MONAI sliding_window_inference (overlap 0.25, Gaussian), same-padded twin, window {r['tile']}, in memory"
    return f"dask.array.map_overlap, Zarr to Zarr, tile {r['tile']} per 1024-px chunk"


def main(argv: Sequence[str] | None = None) -> int:
    import ray

    cfg = build_config(argv)
    started = time.perf_counter()
    command = " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    results = {"command": command, "machine": machine(),
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="unet-bench-") as name:
            tmp = Path(name)
            if cfg.only == "ceiling":
                return ceiling_only(cfg, tmp, results, started)
            results["network"], tile = measure_network(cfg)
            results["chosen_tile"] = tile
            results.update(measure_jobs(cfg, tmp, tile))
            results["ceiling"] = measure_ceiling(cfg, tmp)
            results["overhead"] = measure_overhead(cfg, tmp)
            results["driver_memory"] = measure_memory(cfg, tmp)
            results["peers"] = measure_peers(tmp, tile, results["block_sizes"] + results["scaling"])
            results["paper_network"] = measure_paper(cfg)
            results["gpu_estimates"] = [gpu_estimate(PAPER_NET, PAPER_TILE), gpu_estimate(BENCH_NET, tile)]
    finally:
        ray.shutdown()
    results["load_average_at_end"] = load()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return write_results(cfg.out, results, table(results))


def ceiling_only(cfg: BenchConfig, tmp: Path, results: dict, started: float) -> int:
    """Row 3 alone (``--only ceiling``), after one warm-up run of the job (the driver's first job imports
    and opens what later ones reuse; in the full run, the jobs before it did that)."""
    write_mosaic(tmp / "small.zarr", cfg.blocks[0])
    model = make_model(**TRIVIAL_NET, seed=CEILING_SEED)
    save_model(model, tmp)
    run_job(model, tmp / "small.zarr", tmp, block=cfg.blocks[0], tile=aligned_tile(model, 1024), workers=1, cpus=1)
    results["ceiling"] = measure_ceiling(cfg, tmp)
    results["load_average_at_end"] = load()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return write_results(cfg.out, results, markdown([ceiling_row(results["ceiling"])], results))


def write_results(out: Path, results: dict, markdown: str) -> int:
    """The end of every speed benchmark: the JSON written (numpy scalars as floats), the table printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print("\n" + markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
