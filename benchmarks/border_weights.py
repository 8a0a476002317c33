"""Do the paper's border weights help to separate touching nuclei? Train the same two-class U-Net (the
`--instance-method components` recipe, constant learning rate, as when this was measured) twice, with and
without the w0 * exp(-(d1 + d2)^2 / 2 sigma^2) term (same seed, data, steps and everything else), on
synthetic touching nuclei, and compare object-level F1 at IoU 0.5 on scenes not used for training.

    python benchmarks/border_weights.py [--steps 400] [--seeds 0 1]

Prints a table and writes benchmarks/results/border_weights.json. Minutes on 2 CPU cores; not run in CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unet import UNetConfig, load_checkpoint
from unet.demo.nuclei import nuclei_scene
from unet.infer.predict import predict_image
from unet.train.data import Sample, data_hash, make_sample
from unet.train.loop import TrainConfig, fit
from unet.train.losses import LossConfig
from unet.train.metrics import Scores, score

RESULTS = Path(__file__).resolve().parent / "results" / "border_weights.json"
ARMS = ("with border weights", "without")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return training_parser(__doc__.splitlines()[0], RESULTS).parse_args(argv)


def training_parser(description: str, results: Path) -> argparse.ArgumentParser:
    """The options of a benchmark that trains on synthetic nuclei (this one, and benchmarks/tta.py)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="training steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one pair of runs per seed")
    p.add_argument("--train-scenes", type=int, default=6, help="training images (one more for validation)")
    p.add_argument("--test-scenes", type=int, default=8, help="held-out images scored at the end")
    p.add_argument("--size", type=int, default=192, help="scene side in pixels")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--tile", type=int, default=188, help="network input size of a training tile")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--out", type=Path, default=results, help="JSON results")
    return p


def scenes(n: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Dense, mostly touching nuclei: (image uint8, instance labels) pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = nuclei_scene((size, size), rng, density=0.35, touching=0.7)
        out.append((s.image, s.instances))
    return out


def as_samples(pairs: list[tuple[np.ndarray, np.ndarray]], prefix: str) -> list[Sample]:
    return [make_sample(f"{prefix}{i}", image, labels, 2, instances=True) for i, (image, labels) in enumerate(pairs)]


def evaluate(checkpoint: Path, test: list[tuple[np.ndarray, np.ndarray]]) -> Scores:
    """Pooled scores against the original instances (no gaps): what a user of the masks would count."""
    model, _ = load_checkpoint(checkpoint)
    total = None
    for image, labels in test:
        pred = predict_image(model, image, device="cpu").argmax(axis=0)
        s = score(pred, (labels > 0).astype(np.int64), 2, labels)
        total = s if total is None else total + s
    return total


def run_pair(args: argparse.Namespace, seed: int, workdir: Path) -> dict[str, dict]:
    """Both arms for one seed: identical but for the border term."""
    train_set, val_set, test = seed_data(args, seed)
    base = base_config(args, seed, workdir)
    results = {}
    for arm, border in zip(ARMS, (True, False)):
        config = replace(base, out=workdir / f"{seed}-{border}.safetensors", loss=LossConfig(border_weights=border))
        run = fit(config, train_set, val_set, data_hash([*train_set, *val_set]))
        s = evaluate(run.checkpoint, test)
        results[arm] = {"seed": seed, "seconds": round(run.seconds, 1), "best_step": run.step,
                        "foreground_iou": s.foreground_iou, **s.objects.to_dict()}
        print(f"seed {seed}, {arm}: object F1 {s.objects.f1:.3f}, foreground IoU {s.foreground_iou:.3f} "
              f"({run.seconds:.0f} s)", flush=True)
    return results


def seed_data(args: argparse.Namespace, seed: int) -> tuple[list[Sample], list[Sample], list[tuple[np.ndarray, np.ndarray]]]:
    """A seed's training and validation samples, and its held-out (image, instances) scenes."""
    pairs = scenes(args.train_scenes + 1, args.size, seed=1000 + seed)
    test = scenes(args.test_scenes, args.size, seed=2000 + seed)
    return as_samples(pairs[:-1], "train"), as_samples(pairs[-1:], "val"), test


def base_config(args: argparse.Namespace, seed: int, workdir: Path) -> TrainConfig:
    return TrainConfig(data=workdir, out=workdir / "x.safetensors", instances=True,
                       instance_method="components", schedule="constant",
                       network=UNetConfig(depth=args.depth, base_channels=args.base_channels), tile=args.tile,
                       batch_size=args.batch_size, steps=args.steps, seed=seed, progress=sys.stderr.isatty(),
                       class_names=("background", "nucleus"))


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The runs, one row per arm and seed, then each arm's mean over the seeds, under a line that says what
    was run: how many seeds, steps and scenes."""
    title = (f"{len(args.seeds)} seed(s) x {args.steps} steps per arm (depth {args.depth}, {args.base_channels} "
             f"base channels, batch {args.batch_size} of {args.tile} px); {args.train_scenes} training scenes, "
             f"scored on {args.test_scenes} held-out {args.size} x {args.size} scenes per seed")
    head = f"{'arm':<22}{'seed':>5}{'fg IoU':>8}{'precision':>11}{'recall':>8}{'F1':>7}{'tp':>6}{'fp':>5}{'fn':>5}"
    lines = [title, "", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['arm']:<22}{r['seed']:>5}{r['foreground_iou']:>8.3f}{r['precision']:>11.3f}"
                     f"{r['recall']:>8.3f}{r['f1']:>7.3f}{r['tp']:>6}{r['fp']:>5}{r['fn']:>5}")
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in ("foreground_iou", "precision", "recall", "f1")}
        lines.append(f"{arm:<22}{'mean':>5}{mean['foreground_iou']:>8.3f}{mean['precision']:>11.3f}"
                     f"{mean['recall']:>8.3f}{mean['f1']:>7.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            rows += [{"arm": arm, **r} for arm, r in run_pair(args, seed, Path(workdir)).items()]
    print(table(rows, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.write_text(json.dumps({"settings": settings, "machine": platform.machine(), "torch": torch.__version__,
                                    "torch_threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
