"""The GPU path, measured in one run of under 5 minutes on one GPU: the network alone, then the job.

    python benchmarks/gpu.py [--gpx 2] [--out benchmarks/results/gpu.json]
    python benchmarks/gpu.py --smoke        # tiny sizes on whatever device there is (CPU in CI): checks the
                                            # script end to end; its figures mean nothing

Rows: (1) network only: output Mpx/s of ``TilePredictor.forward`` on in-memory uint8 tiles (host to device
through a pinned buffer, normalisation, network, softmax and class index on the device, one byte per pixel
back to the host: what a worker pays per tile) for the paper's network
(depth 5, 64 filters) and the 16-filter one (depth 4), in float32 and bf16, over a sweep of batch sizes, and
with ``--compile`` at the best bf16 batch; (2) the job end to end for each network with no tuning flag (tile,
batch and block chosen by the worker's calibration), Zarr to Zarr on local disk over a synthetic mosaic of
``--gpx`` gigapixels: Mpx/s, the share of the run the GPU spent in forward passes, the CPU seconds per Mpx of the
whole process tree (driver, Ray, worker: read, decode, mirror, write, pyramid) and the job's ratio to the
best network-only figure of the same network. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import ProcessTreeMeter  # noqa: E402
from run import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
SCENE = 2048                               # the synthetic scene repeated over the mosaic


@dataclass(frozen=True)
class Net:
    name: str
    depth: int
    base_channels: int
    tiles: tuple[int, ...]                 # network input sizes to sweep


@dataclass(frozen=True)
class GpuBenchConfig:
    out: Path
    smoke: bool
    nets: tuple[Net, ...]
    batches: tuple[int, ...]
    passes: int                            # timed forward passes per (tile, batch, precision)
    compiled: tuple[str, ...]              # nets also measured with --compile
    mosaic_side: int
    chunk: int


def build_config(argv: Sequence[str] | None) -> GpuBenchConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, any device: a check of the script")
    p.add_argument("--gpx", type=float, default=2.0, help="end-to-end mosaic in gigapixels (default 2)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    a = p.parse_args(argv)
    if a.smoke:
        nets = (Net("paper", 3, 4, (92,)), Net("16-filter", 2, 2, (60, 124)))
        return GpuBenchConfig(a.out, True, nets, (1, 2), 2, ("16-filter",), 512, 256)
    nets = (Net("paper", 5, 64, (572, 1140)), Net("16-filter", 4, 16, (604, 1116, 2140)))
    side = max(SCENE, round(math.sqrt(a.gpx * 1e9) / SCENE) * SCENE)
    return GpuBenchConfig(a.out, False, nets, (1, 2, 4, 8, 16, 32), 10, ("paper", "16-filter"), side, 1024)


# -- machine ----------------------------------------------------------------------------------------

def machine(device) -> dict:
    import torch

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), "gpu": gpu, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def make_model(depth: int, base_channels: int):
    """A He-initialised U-Net, 1 uint8 channel in, 2 classes out (the speed does not depend on training)."""
    import torch

    from unet.nn.model import InputContract, UNet

    torch.manual_seed(0)
    contract = InputContract(channels=1, dtype="uint8", value_range=(0.0, 255.0), offset=(127.5,), scale=(127.5,))
    return UNet(depth=depth, base_channels=base_channels, input=contract).eval()


# -- the network alone ------------------------------------------------------------------------------

def network_rows(cfg: GpuBenchConfig, device) -> list[dict]:
    """Every (net, tile, precision, batch) until the device runs out of memory, then --compile at the best
    bf16 batch of each net."""
    rows = []
    for net in cfg.nets:
        model = make_model(net.depth, net.base_channels)
        for tile in net.tiles:
            for amp in (False, True):
                for batch in cfg.batches:
                    row = network_rate(model, net, tile, batch, amp, False, cfg.passes, device)
                    if row is None:
                        break                                   # out of memory: larger batches would be too
                    rows.append(row)
        if net.name not in cfg.compiled:
            continue
        best = max((r for r in rows if r["net"] == net.name and r["bf16"]), key=lambda r: r["mpx_per_s"])
        compiled = network_rate(model, net, best["tile"], best["batch"], True, True, cfg.passes, device)
        if compiled is not None:
            rows.append(compiled)
    return rows


def network_rate(model, net: Net, tile: int, batch: int, amp: bool, compile: bool, passes: int, device) -> dict | None:
    """Output Mpx/s over ``passes`` forward passes of ``batch`` tiles after two warm-up passes (compilation
    happens there), and the CPU seconds per output Mpx it cost this process; None when out of memory."""
    from unet.infer.calibrate import is_out_of_memory
    from unet.job.plan import network_flops
    from unet.infer.predict import TilePredictor

    predictor = TilePredictor(model, tile=tile, batch_size=batch, device=device, amp=amp, compile=compile)
    tiles = np.random.default_rng(0).integers(0, 256, (batch, 1, tile, tile), dtype=np.uint8)  # (B, 1, t, t)
    try:
        for _ in range(2):
            predictor.forward(tiles, classes=True)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(passes):
            predictor.forward(tiles, classes=True)                      # (B, 1, out, out) uint8, on the host
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    except Exception as e:  # noqa: BLE001 - out of memory ends a sweep; anything else is a failure
        if not is_out_of_memory(e):
            raise
        _free(device)
        return None
    mpx = passes * batch * predictor.out_tile ** 2 / 1e6
    row = {"net": net.name, "depth": net.depth, "base_channels": net.base_channels, "tile": tile,
           "out_tile": predictor.out_tile, "batch": batch, "bf16": amp, "compile": compile,
           "mpx_per_s": mpx / wall, "cpu_s_per_mpx": cpu / mpx,
           "tflop_per_s": passes * batch * network_flops(model, tile) / wall / 1e12}
    print(f"network {net.name}, tile {tile}, batch {batch}, {'bf16' if amp else 'fp32'}"
          f"{', compiled' if compile else ''}: {row['mpx_per_s']:.2f} Mpx/s", flush=True)
    return row


def _free(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- the job end to end ------------------------------------------------------------------------------

def write_mosaic(path: Path, side: int, chunk: int) -> None:
    """A uint8 nuclei micrograph of side x side px: one synthetic scene repeated, zstd (Zarr's default)."""
    import zarr

    from unet.demo.nuclei import nuclei_scene

    scene = nuclei_scene((SCENE, SCENE), 0).image                                   # (2048, 2048)
    array = zarr.create_array(str(path), shape=(side, side), chunks=(chunk, chunk), dtype=np.uint8)
    strip = np.tile(scene, (1, -(-side // SCENE)))[:, :side]                        # (2048, side)
    for y in range(0, side, SCENE):
        array[y:y + SCENE, :] = strip[:min(SCENE, side - y)]


def job_rows(cfg: GpuBenchConfig, tmp: Path, device, network: list[dict]) -> list[dict]:
    """The job of each network over one mosaic written once."""
    started = time.perf_counter()
    write_mosaic(tmp / "in.zarr", cfg.mosaic_side, cfg.chunk)
    written_s = time.perf_counter() - started
    rows = []
    for net in cfg.nets:
        row = job_row(cfg, tmp, device, net)
        alone = [r for r in network if r["net"] == net.name and r["bf16"] == (device.type == "cuda")
                 and not r["compile"]]
        best = max(alone, key=lambda r: r["mpx_per_s"])
        rows.append({**row, "mosaic_written_s": round(written_s, 1), "network_alone": best,
                     "ratio_to_network": row["mpx_per_s"] / best["mpx_per_s"]})
    return rows


def job_row(cfg: GpuBenchConfig, tmp: Path, device, net: Net) -> dict:
    """The job with no tuning flag, Zarr to Zarr; its report, and the CPU time of the whole process tree."""
    from unet.nn.checkpoint import save_checkpoint
    from unet.api import main

    checkpoint, out, report = tmp / f"{net.name}.safetensors", tmp / "out.zarr", tmp / "report.json"
    save_checkpoint(make_model(net.depth, net.base_channels), checkpoint, class_names=["background", "nucleus"])
    argv = [str(tmp / "in.zarr"), str(out), "--checkpoint", str(checkpoint), "--chunk", str(cfg.chunk),
            "--no-progress", "--report", str(report)]
    if device.type == "cuda":
        argv += ["--gpus-per-worker", "1"]
    with ProcessTreeMeter("BlockRunner") as meter:
        code = main(argv)
        meter.wait_for_exit()
    if code != 0:
        raise RuntimeError(f"the job exited with {code}: {' '.join(argv)}")
    r = json.loads(report.read_text())
    shutil.rmtree(out)
    mpx = r["new_pixels"] / 1e6
    row = {"net": net.name, "mpx": mpx, "seconds": r["seconds"], "mpx_per_s": r["mpx_per_s"],
           "network_busy": r["network_busy"], "cpu_s": meter.cpu_seconds, "cpu_s_per_mpx": meter.cpu_seconds / mpx,
           "startup_s": r.get("startup_s"), "geometry": r["outputs"][0].get("geometry"), "calibration": r.get("calibration")}
    print(f"job end to end, {net.name}, {mpx:.0f} Mpx: {row['mpx_per_s']:.2f} Mpx/s, network busy "
          f"{row['network_busy']:.0%}, {row['cpu_s_per_mpx'] * 1e3:.1f} CPU-ms per Mpx", flush=True)
    return row


# -- the table --------------------------------------------------------------------------------------

def table(res: dict) -> str:
    lines = ["| net | tile -> out | batch | precision | Mpx/s | TFLOP/s | CPU-ms per Mpx |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in res["network"]:
        precision = ("bf16" if r["bf16"] else "fp32") + (", --compile" if r["compile"] else "")
        lines.append(f"| {r['net']} | {r['tile']} -> {r['out_tile']} | {r['batch']} | {precision} | "
                     f"{r['mpx_per_s']:.2f} | {r['tflop_per_s']:.2f} | {r['cpu_s_per_mpx'] * 1e3:.1f} |")
    for j in res["jobs"]:
        g = j.get("geometry") or {}
        lines.append(f"\njob end to end, {j['net']}, {j['mpx']:.0f} Mpx, defaults (tile {g.get('tile')}, batch "
                     f"{g.get('batch')}, block {g.get('block')}): **{j['mpx_per_s']:.2f} Mpx/s**, "
                     f"{j['ratio_to_network']:.2f} of the network alone at its best "
                     f"({j['network_alone']['mpx_per_s']:.2f}); GPU busy {j['network_busy']:.0%} of the run; "
                     f"{j['cpu_s_per_mpx'] * 1e3:.1f} CPU-ms per Mpx ({1 / max(j['cpu_s_per_mpx'], 1e-9):.0f} Mpx "
                     f"per core-second); start-up {j['startup_s']} s")
    m = res["machine"]
    lines.append(f"\n{m['gpu'] or m['device']}; {m['cores']} cores; torch {m['torch']} (CUDA {m['cuda']}); "
                 f"{m['date']}; load average {m['load_average_at_start'][0]} at start; {res['total_seconds']:.0f} s. "
                 f"`{res['command']}`")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import ray
    import torch

    cfg = build_config(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    res = {"command": "python benchmarks/gpu.py" + (" --smoke" if cfg.smoke else ""), "machine": machine(device),
           "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
    res["network"] = network_rows(cfg, device)
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory(prefix="unet-gpu-bench-") as name:
            res["jobs"] = job_rows(cfg, Path(name), device, res["network"])
    finally:
        if own_ray:
            ray.shutdown()
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    return write_results(cfg.out, res, table(res))


if __name__ == "__main__":
    sys.exit(main())
