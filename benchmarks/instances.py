"""Touching nuclei as separate objects: the contour recipe (interior + boundary classes, objects grown back
from the interiors; the `--instances` default) against the earlier two-class recipe (foreground with gaps,
objects = connected components), at the same time budget, on held-out synthetic scenes.

Emulates the issue's real-data run (two labelled crops of a slide, then the slide's other pixels): per
seed, one "slide" look is drawn at random (nuclei size, density, share touching, brightness, blur), two
256 x 256 uint16 training crops of that look are written to a folder and trained on with `jobs/train.py`'s
default path (`--instances --depth 4 --base-channels 16 --minutes M`: tile, batch, schedule and
validation split all chosen by the defaults); then every arm is scored on the same unseen scenes of that
look (other nuclei, other noise, other illumination): object F1 at IoU 0.5 and foreground IoU, pooled.
The seeds vary the look.

    python benchmarks/instances.py [--minutes 2] [--seeds 0 1 2] [--arms contour components]

Prints a table and writes benchmarks/results/instances.json, with the load average before and after (the
budget is wall-clock time: on a loaded machine fewer steps fit in it; the table shows the steps). Minutes
of CPU per run; not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch

from unet import UNetConfig, load_checkpoint
from unet.demo.nuclei import Scene, nuclei_scene
from unet.infer.instances import InstanceMethod, objects_from_classes
from unet.infer.predict import predict_image
from unet.train.loop import TrainConfig, train
from unet.train.metrics import Scores, score

RESULTS = Path(__file__).resolve().parent / "results" / "instances.json"
ARMS = {"contour": "contour (default)", "components": "2-class (old)"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="training budget per run (wall clock)")
    p.add_argument("--steps", type=int, help="also stop after this many steps (a load-independent budget)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per arm and seed")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--crops", type=int, default=2, help="training crops per seed")
    p.add_argument("--crop", type=int, default=256, help="training crop side, pixels")
    p.add_argument("--test-scenes", type=int, default=4, help="held-out scenes per seed")
    p.add_argument("--test-size", type=int, default=384, help="held-out scene side, pixels")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; on a machine shared with "
                                               "other work 1 thread wastes far less CPU than 2)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    p.add_argument("--keep", type=Path, help="keep the crops and checkpoints in this folder (default: a "
                   "temporary one)")
    return p.parse_args(argv)


def random_look(rng: np.random.Generator) -> dict:
    """Scene parameters of one "slide": nuclei size, density, how many touch, brightness and blur."""
    small = rng.uniform(4.0, 8.0)
    sharp = rng.uniform(0.8, 1.8)
    return {"radius": (small, small + rng.uniform(4.0, 8.0)), "density": rng.uniform(0.15, 0.4),
            "touching": rng.uniform(0.2, 0.7), "brightness": float(np.exp(rng.uniform(np.log(0.4), np.log(1.5)))),
            "blur": (sharp, sharp + 0.4)}


def draw(side: int, look: dict, seed: int) -> Scene:
    return nuclei_scene((side, side), seed, dtype=np.uint16, **look)


def write_folder(scenes: list[Scene], folder: Path) -> Path:
    """images/ and masks/ (uint16 TIFF), as a user's crops would be."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(scenes):
        tifffile.imwrite(folder / "images" / f"crop{i}.tif", s.image)
        tifffile.imwrite(folder / "masks" / f"crop{i}.tif", s.instances.astype(np.uint16))
    return folder


def evaluate(checkpoint: Path, scenes: list[Scene]) -> Scores:
    """Pooled scores: foreground IoU of the class image, object F1 of the objects ``--objects`` finds with
    the checkpoint's method and min_area (the job applies the same procedure block by block, exactly)."""
    model, meta = load_checkpoint(checkpoint)
    method = InstanceMethod.from_metadata(meta)
    total = None
    for s in scenes:
        classes = predict_image(model, s.image, device="cpu").argmax(axis=0)          # (H, W)
        objects = objects_from_classes(classes, method, meta.get("min_area", 0))
        result = score((classes > 0).astype(np.int64), s.mask.astype(np.int64), 2, s.instances, objects)
        total = result if total is None else total + result
    return total


def run_seed(args: argparse.Namespace, seed: int, workdir: Path) -> list[dict]:
    """Every arm on the same crops and the same held-out scenes."""
    look = random_look(np.random.default_rng(1000 + seed))
    data = write_folder([draw(args.crop, look, 2000 + 100 * seed + i) for i in range(args.crops)],
                        workdir / f"data{seed}")
    test = [draw(args.test_size, look, 5000 + 100 * seed + i) for i in range(args.test_scenes)]
    rows = []
    for arm in args.arms:
        config = TrainConfig(out=workdir / f"{arm}{seed}.safetensors", data=data, instances=True,
                             instance_method=arm, class_names=("background", "nucleus"),
                             network=UNetConfig(depth=args.depth, base_channels=args.base_channels),
                             minutes=args.minutes, steps=args.steps, seed=seed, device="cpu",
                             progress=sys.stderr.isatty())
        run = train(config)
        s = evaluate(run.checkpoint, test)
        min_area = load_checkpoint(run.checkpoint)[1].get("min_area", 0)
        rows.append({"arm": ARMS[arm], "seed": seed, "look": look, "steps": run.steps, "best_step": run.step,
                     "seconds": round(run.seconds, 1), "recipe": run.recipe.to_dict(), "min_area": min_area,
                     "foreground_iou": s.foreground_iou, **s.objects.to_dict()})
        print(f"seed {seed}, {ARMS[arm]}: object F1 {s.objects.f1:.3f}, foreground IoU {s.foreground_iou:.3f} "
              f"({run.steps} steps in {run.seconds:.0f} s; load {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def table(rows: list[dict], args: argparse.Namespace, load: tuple[float, float]) -> str:
    """One row per arm and seed, then each arm's mean, under a line that says what was run."""
    budget = f"{args.minutes:g} min" + (f" or {args.steps} steps" if args.steps else "")
    title = (f"{len(args.seeds)} seed(s) x {budget} per arm (depth {args.depth}, {args.base_channels} base "
             f"channels, defaults otherwise); {args.crops} training crops of {args.crop} px, scored on "
             f"{args.test_scenes} held-out {args.test_size} x {args.test_size} scenes per seed; "
             f"load average {load[0]:.1f} before, {load[1]:.1f} after")
    head = (f"{'arm':<19}{'seed':>5}{'steps':>7}{'fg IoU':>8}{'precision':>11}{'recall':>8}{'F1':>7}"
            f"{'tp':>6}{'fp':>5}{'fn':>5}")
    lines = [title, "", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['arm']:<19}{r['seed']:>5}{r['steps']:>7}{r['foreground_iou']:>8.3f}"
                     f"{r['precision']:>11.3f}{r['recall']:>8.3f}{r['f1']:>7.3f}{r['tp']:>6}{r['fp']:>5}{r['fn']:>5}")
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in ("steps", "foreground_iou", "precision",
                                                                  "recall", "f1")}
        lines.append(f"{arm:<19}{'mean':>5}{mean['steps']:>7.0f}{mean['foreground_iou']:>8.3f}"
                     f"{mean['precision']:>11.3f}{mean['recall']:>8.3f}{mean['f1']:>7.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            rows += run_seed(args, seed, args.keep or Path(workdir))
    load = (before, os.getloadavg()[0])
    print(table(rows, args, load))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.write_text(json.dumps({"settings": settings, "machine": platform.machine(), "cpus": os.cpu_count(),
                                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                                    "load_average": {"before": load[0], "after": load[1]}, "rows": rows},
                                   indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
