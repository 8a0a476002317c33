"""What do test-time flips cost, and what do they do to foreground IoU and object F1? Train one small U-Net
per seed on synthetic touching nuclei (the border-weights benchmark's recipe), then score the same held-out
scenes without flips, with the 4 mirror flips and with the 8 symmetries of the square.

    python benchmarks/tta.py [--steps 400] [--seeds 0 1]

Prints a table and writes benchmarks/results/tta.json. Minutes on 2 CPU cores; not run in CI.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from border_weights import base_config, seed_data, training_parser

from unet import UNet, load_checkpoint
from unet.infer.predict import predict_image
from unet.train.data import data_hash
from unet.train.loop import fit
from unet.train.metrics import Scores, score

RESULTS = Path(__file__).resolve().parent / "results" / "tta.json"
ARMS = {"no flips": 1, "4 flips (--tta)": 4, "8 flips (--tta 8)": 8}


def evaluate(model: UNet, test: list[tuple[np.ndarray, np.ndarray]], flips: int) -> Scores:
    """Pooled scores over the held-out scenes."""
    scores = [score(predict_image(model, image, device="cpu", tta=flips).argmax(axis=0),
                    (labels > 0).astype(np.int64), 2, labels) for image, labels in test]
    return functools.reduce(operator.add, scores)


def seconds_per_arm(model: UNet, image: np.ndarray, repeats: int = 3) -> dict[int, float]:
    """Seconds of one scene's prediction per number of flips: the fastest of ``repeats`` rounds that take
    every arm in turn (a shared machine's load moves by tens of percent within a minute)."""
    predict_image(model, image, device="cpu")                                   # warm-up
    best = {flips: float("inf") for flips in ARMS.values()}
    for _ in range(repeats):
        for flips in best:
            start = time.perf_counter()
            predict_image(model, image, device="cpu", tta=flips)
            best[flips] = min(best[flips], time.perf_counter() - start)
    return best


def run_seed(args: argparse.Namespace, seed: int, workdir: Path) -> list[dict]:
    train_set, val_set, test = seed_data(args, seed)
    config = replace(base_config(args, seed, workdir), out=workdir / f"{seed}.safetensors")
    run = fit(config, train_set, val_set, data_hash([*train_set, *val_set]))
    model, _ = load_checkpoint(run.checkpoint)
    timings = seconds_per_arm(model, test[0][0])
    rows = []
    for arm, flips in ARMS.items():
        s, seconds = evaluate(model, test, flips), timings[flips]
        rows.append({"arm": arm, "flips": flips, "seed": seed, "predict_s": round(seconds, 4),
                     "foreground_iou": s.foreground_iou, **s.objects.to_dict()})
        print(f"seed {seed}, {arm}: object F1 {s.objects.f1:.3f}, foreground IoU {s.foreground_iou:.3f}, "
              f"{seconds:.2f} s", flush=True)
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """One row per arm and seed, then each arm's mean over the seeds and its cost against no flips (the
    ratio of one scene's prediction seconds, measured in the same rounds)."""
    title = (f"{len(args.seeds)} seed(s) x {args.steps} steps (depth {args.depth}, {args.base_channels} base "
             f"channels); scored on {args.test_scenes} held-out {args.size} x {args.size} scenes per seed")
    head = f"{'arm':<20}{'seed':>5}{'fg IoU':>8}{'precision':>11}{'recall':>8}{'F1':>7}{'predict s':>11}{'cost':>7}"
    lines = [title, "", head, "-" * len(head)]
    plain = {r["seed"]: r["predict_s"] for r in rows if r["flips"] == 1}
    for r in rows:
        lines.append(f"{r['arm']:<20}{r['seed']:>5}{r['foreground_iou']:>8.3f}{r['precision']:>11.3f}"
                     f"{r['recall']:>8.3f}{r['f1']:>7.3f}{r['predict_s']:>11.3f}{r['predict_s'] / plain[r['seed']]:>6.1f}x")
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in ("foreground_iou", "precision", "recall", "f1")}
        cost = float(np.mean([r["predict_s"] / plain[r["seed"]] for r in mine]))
        lines.append(f"{arm:<20}{'mean':>5}{mean['foreground_iou']:>8.3f}{mean['precision']:>11.3f}"
                     f"{mean['recall']:>8.3f}{mean['f1']:>7.3f}{'':>11}{cost:>6.1f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = training_parser(__doc__.splitlines()[0], RESULTS).parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            rows += run_seed(args, seed, Path(workdir))
    load_after = os.getloadavg()[0]
    print(table(rows, args))
    print(f"load average {load_before:.1f} at start, {load_after:.1f} at end; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.write_text(json.dumps({"settings": settings, "machine": platform.machine(), "torch": torch.__version__,
                                    "torch_threads": torch.get_num_threads(),
                                    "load_average": [load_before, load_after], "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
