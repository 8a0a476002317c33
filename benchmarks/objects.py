"""What --objects costs: the segmentation job on the benchmark mosaic with and without it, side by side.

    python benchmarks/objects.py [--size MPX] [--repeats N] [--contour] [--out benchmarks/results/objects.json]

The target (issues 7 and 11) is at most 20% more time. ``--contour`` measures a contour model's objects
(issue 11: three classes, interiors grown over boundary pixels, a rim pass) against the same model without
--objects. Runs alternate (plain, objects, plain, ...) so that a
change of load on the machine hits both; the table shows each run and the ratio of the medians. Uses the
mosaic, model and tile of benchmarks/run.py; not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH_NET, CHUNK, aligned_tile, checkpoint_path, load, machine, make_model, mosaic_side, save_model, write_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONTOUR_CLASSES = ["background", "nucleus", "boundary"]


def contour_model(seed: int):
    """The benchmark network with 3 classes, untrained (seed 0: on the nuclei scene about 10^4 interiors per
    Mpx and half the pixels boundary - more growth than a trained model makes)."""
    import torch

    from unet.nn.model import UNet

    base = make_model(**BENCH_NET)
    torch.manual_seed(seed)
    return UNet(num_classes=3, depth=base.config.depth, base_channels=base.config.base_channels,
                input=base.config.input).eval()


def save_contour_model(model, tmp: Path) -> None:
    from unet.infer.instances import InstanceMethod
    from unet.nn.checkpoint import save_checkpoint

    save_checkpoint(model, checkpoint_path(model, tmp), class_names=CONTOUR_CLASSES,
                    instance_method=InstanceMethod().to_metadata())


def run_once(mosaic: Path, checkpoint: Path, tmp: Path, block: int, tile: int, objects: bool,
             input_range: tuple[float, float] | None = None) -> dict:
    """One in-process run of the job; its wall time (driver included: merge, table) and object counts."""
    from unet import SegmentOptions, segment

    out = tmp / "out.zarr"
    options = SegmentOptions.of(mosaic, out, checkpoint, chunk=CHUNK, block=block, tile=tile, progress=False,
                                objects=objects, input_range=input_range)
    started = time.perf_counter()
    report = segment(options)
    if not report.complete:
        raise RuntimeError(f"segment failed: {options}")
    seconds = time.perf_counter() - started
    r = report.to_dict()
    shutil.rmtree(out)
    return {"objects": objects, "seconds": round(seconds, 2), "job_seconds": round(r["seconds"], 2),
            "counts": r["outputs"][0].get("objects"), "load": load()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=float, default=16.0, help="mosaic in Mpx (default 16)")
    p.add_argument("--block", type=int, default=2048, help="block side in px (default 2048)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each kind (default 2)")
    p.add_argument("--seed", type=int, help="seed of the untrained model (default 4: about 5000 objects per "
                                            "Mpx on the nuclei scene; 0 gives speckle)")
    p.add_argument("--contour", action="store_true", help="a 3-class contour model (default seed 0)")
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of an untrained network "
                                                   "(a uint16 one reads the uint8 mosaic rescaled)")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/objects.json, or "
                                            "objects-contour.json with --contour)")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else 0 if a.contour else 4
    out = a.out or RESULTS / ("objects-contour.json" if a.contour else "objects.json")
    import ray

    # a cluster of our own: "auto" would join whatever Ray runs on this node, with its code and its load
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    import torch

    torch.manual_seed(seed)  # the object count depends on the (untrained) model: the same every run
    if a.checkpoint:
        from unet.nn.checkpoint import load_checkpoint

        model = load_checkpoint(a.checkpoint)[0]
    else:
        model = contour_model(seed) if a.contour else make_model(**BENCH_NET)
    tile = aligned_tile(model, 512)
    input_range = (0.0, 255.0) if model.config.input.dtype != "uint8" else None
    runs = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        mosaic = tmp / "mosaic.zarr"
        write_mosaic(mosaic, mosaic_side(a.size))
        checkpoint = a.checkpoint or checkpoint_path(model, tmp)
        if not a.checkpoint:
            (save_contour_model if a.contour else save_model)(model, tmp)
        for _ in range(a.repeats):
            for objects in (False, True):
                runs.append(run_once(mosaic, checkpoint, tmp, a.block, tile, objects, input_range))
                print(json.dumps(runs[-1]), file=sys.stderr)
    ray.shutdown()
    plain = statistics.median(r["job_seconds"] for r in runs if not r["objects"])
    with_objects = statistics.median(r["job_seconds"] for r in runs if r["objects"])
    result = {"machine": machine(), "mpx": mosaic_side(a.size) ** 2 / 1e6, "block": a.block, "tile": tile, "seed": seed,
              "model": (f"trained {a.checkpoint.name}" if a.checkpoint else
                        "contour (3 classes, grow 3)" if a.contour else "2 classes"), "runs": runs,
              "ratio": with_objects / plain}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    objects = sum(next(r["counts"] for r in runs if r["objects"]).values())
    print(f"| model | mosaic | block | objects | plain (s) | --objects (s) | ratio | load |\n"
          f"| --- | --- | --- | --- | --- | --- | --- | --- |\n"
          f"| {result['model']} | {result['mpx']:.0f} Mpx | {a.block} | {objects} | {plain:.1f} | {with_objects:.1f} "
          f"| {result['ratio']:.2f} | {runs[0]['load'][0]:.1f}-{runs[-1]['load'][0]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
