"""Train a U-Net on a folder of labelled images: `python jobs/train.py --data DIR --out CKPT [options]`.

DIR holds images/ and masks/ with matching file stems (PNG, TIFF or NPY). The best checkpoint by validation
score (with --instances: the mean of object F1 and foreground IoU; else foreground IoU) is written to CKPT,
with its metrics, the recipe it was trained with, the seed and a hash of the data. Without tuning flags
the tile, batch and learning-rate schedule are chosen from the images and the budget (printed at the start).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from unet.cli import ArgumentParser, add_debug_flag, run
from unet.errors import UNetError
from unet.io.pixelsize import USER_UNITS
from unet.nn.config import Padding, UNetConfig, Upsampling
from unet.train.augment import AugmentConfig
from unet.train.loop import TrainConfig, train
from unet.train.losses import LossConfig

NETWORK = UNetConfig()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="train.py", description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/")
    data.add_argument("--out", type=Path, required=True, help="checkpoint file to write (safetensors)")
    data.add_argument("--val-dir", type=Path, help="validation folder (images/, masks/) instead of a split")
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out; 0: none")
    data.add_argument("--instances", action="store_true",
                      help="masks are instance labels (0 = background): train object interiors and boundaries "
                           "(3 classes), with border weights between touching objects")
    data.add_argument("--instance-method", choices=["contour", "components"], default="contour",
                      help="with --instances: contour = interior and boundary classes, objects grown from "
                           "the interiors; components = the 2-class recipe (foreground with gaps), objects "
                           "= connected components")
    data.add_argument("--classes", type=int, help="number of classes (default: 2, or the class names')")
    data.add_argument("--class-names", help="comma-separated, e.g. background,nucleus (with --instances: "
                                            "background and object; default background,object)")
    data.add_argument("--pixel-size", type=float, help="pixel size of the training images, recorded in the "
                      "checkpoint so the job segments the input's nearest pyramid level (default: read from "
                      "TIFF/OME-TIFF metadata of the images when they have it)")
    data.add_argument("--pixel-unit", choices=USER_UNITS, default="micrometer", help="unit of --pixel-size")
    model = p.add_argument_group("model")
    # dest "network.FIELD": build_config passes these to UNetConfig as they are; the defaults are its own
    model.add_argument("--depth", dest="network.depth", type=int, default=NETWORK.depth, help="resolution levels")
    model.add_argument("--base-channels", dest="network.base_channels", type=int, default=NETWORK.base_channels,
                       help="filters on the first level")
    model.add_argument("--padding", dest="network.padding", choices=get_args(Padding), default=NETWORK.padding)
    model.add_argument("--upsampling", dest="network.upsampling", choices=get_args(Upsampling),
                       default=NETWORK.upsampling)
    model.add_argument("--batch-norm", dest="network.batch_norm", action="store_true")
    model.add_argument("--dropout", dest="network.dropout", type=float, default=NETWORK.dropout,
                       help="at the end of the contracting path")
    model.add_argument("--tile", type=int, help="network input size of a training tile (px; default: the "
                                                "smallest whose output covers the smallest image, <= 572)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help="tiles per step (default: about 256 x 256 output px)")
    opt.add_argument("--minutes", type=float, help="time budget: stop when it is spent, validation included "
                                                   "(with --steps/--epochs: whichever ends first)")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (default 1000 without --epochs/--minutes)")
    length.add_argument("--epochs", type=float, help="passes over the training pixels")
    opt.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="sgd: momentum as the paper")
    opt.add_argument("--lr", type=float, help="peak learning rate (default: 3e-3 Adam, 1e-2 SGD)")
    opt.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                     help="cosine: 5%% warm-up, then decay to 0 over the budget (steps or minutes)")
    opt.add_argument("--momentum", type=float, default=0.99, help="SGD momentum")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--val-every", type=int, help="steps between validations (default: 20 per run)")
    opt.add_argument("--augment", type=float, default=1.0, help="augmentation strength; 0: none")
    opt.add_argument("--w0", type=float, default=10.0, help="border weight between touching instances")
    opt.add_argument("--sigma", type=float, default=5.0, help="border weight width (px)")
    opt.add_argument("--no-border-weights", action="store_true")
    balance = opt.add_mutually_exclusive_group()
    balance.add_argument("--class-balance", action="store_true", dest="class_balance", default=None,
                         help="weigh classes by inverse frequency (default: yes, except for contour targets)")
    balance.add_argument("--no-class-balance", action="store_false", dest="class_balance")
    opt.add_argument("--dice", type=float, default=0.0, help="weight of a soft Dice term")
    run_ = p.add_argument_group("run")
    run_.add_argument("--seed", type=int, default=0)
    run_.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run_.add_argument("--resume", type=Path, help="start from this checkpoint's weights")
    run_.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p.parse_args(argv)


def class_names(classes: int | None, names: str | None) -> tuple[str, ...] | None:
    """The class names from --class-names, or generic ones for --classes (None: the default names)."""
    if names is None and classes is None:
        return None
    if names is None:
        n = classes or 2
        return ("background", "foreground") if n == 2 else ("background", *(f"class{i}" for i in range(1, n)))
    parsed = tuple(n.strip() for n in names.split(","))
    if classes is not None and classes != len(parsed):
        raise UNetError(f"--class-names: expected {classes} names for --classes {classes}, found {len(parsed)}")
    return parsed


def build_config(args: argparse.Namespace) -> TrainConfig:
    loss = LossConfig(w0=args.w0, sigma=args.sigma, class_balance=args.class_balance,
                      border_weights=not args.no_border_weights, dice=args.dice)
    network = {k.removeprefix("network."): v for k, v in vars(args).items() if k.startswith("network.")}
    return TrainConfig(
        data=args.data, out=args.out, val_dir=args.val_dir, val_fraction=args.val_fraction,
        instances=args.instances, instance_method=args.instance_method,
        class_names=class_names(args.classes, args.class_names),
        network=UNetConfig(**network), tile=args.tile, batch_size=args.batch_size,
        steps=args.steps, epochs=args.epochs, minutes=args.minutes, optimizer=args.optimizer, lr=args.lr,
        schedule=args.schedule, momentum=args.momentum,
        weight_decay=args.weight_decay, val_every=args.val_every,
        augmentation=AugmentConfig().scaled(args.augment), loss=loss, seed=args.seed, device=args.device,
        resume=args.resume, progress=not args.quiet, pixel_size=args.pixel_size, pixel_unit=args.pixel_unit)


def main(argv: Sequence[str] | None = None) -> int:
    result = train(build_config(parse_args(argv)))
    summary = f"wrote {result.checkpoint}: step {result.step} of {result.steps}, {result.seconds:.0f} s"
    if result.scores is not None:
        summary += (f", validation foreground IoU {result.scores['foreground_iou']:.3f}, "
                    f"Dice {result.scores['foreground_dice']:.3f}")
        if "objects" in result.scores:
            summary += f", object F1 {result.scores['objects']['f1']:.3f}"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
