"""Training on a handful of labelled images, the paper's way: random valid-size tiles with strong
augmentation, the weighted cross-entropy on the centre of each tile, and the best model by validation
foreground IoU kept as a checkpoint with its metrics, seed and data hash.

``train(config)`` reads the folders named in the config; ``fit(config, train, val, data_sha256)`` trains
on samples already in memory (see ``unet.train.data.make_sample``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from unet.errors import UNetError
from unet.infer.instances import InstanceMethod, default_min_area, objects_from_classes
from unet.infer.predict import predict_image
from unet.io.pixelsize import checkpoint_pixel_size, folder_pixel_size
from unet.nn.checkpoint import load_checkpoint, save_checkpoint
from unet.nn.config import UNetConfig
from unet.nn.device import resolve_device
from unet.nn.model import UNet
from unet.train.augment import AugmentConfig
from unet.train.data import Sample, TileSampler, data_hash, input_contract, load_folder, split_validation
from unet.train.losses import LossConfig, border_weights, class_frequency_weights, segmentation_loss
from unet.train.metrics import Scores, score
from unet.train.recipe import Recipe, Schedule, choose_batch, choose_tile
from unet.train.targets import Targets, TileTargets

DEFAULT_STEPS = 1000
VALIDATIONS_PER_RUN = 20          # default validation frequency
RESUME_MAY_CHANGE = ("dropout", "input")  # network fields a resumed run may set anew; the rest must match
SELECTION = {"objects": "mean of object F1 (IoU 0.5) and foreground IoU", "pixels": "foreground IoU"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Its length: ``steps`` or ``epochs`` (an epoch: as many output pixels
    as the training images hold), and/or ``minutes`` of wall-clock time, validation counted in (whichever
    ends first); none means DEFAULT_STEPS. ``tile``, ``batch_size`` None: chosen from the images
    (``unet.train.recipe``). ``val_every``: steps between validations (None: VALIDATIONS_PER_RUN per run).
    ``val_fraction`` of the images is held out unless ``val_dir`` is given (of each image's rows when that
    rounds to no whole image); 0 disables validation and keeps the last model. ``lr`` None: 3e-3 for Adam,
    1e-2 for SGD; the peak of a cosine ``schedule``. ``network`` sets the U-Net's shape; its
    ``in_channels``, ``num_classes`` and input contract are taken from the data and the class names.
    ``instances``: the masks are instance labels, trained with ``instance_method``; ``class_names`` then
    names the background and the objects (the boundary class is added for contour)."""

    out: Path
    data: Path | None = None
    val_dir: Path | None = None
    val_fraction: float = 0.2
    instances: bool = False
    instance_method: Literal["contour", "components"] = "contour"
    class_names: tuple[str, ...] | None = None
    network: UNetConfig = field(default_factory=UNetConfig)  # its channels, classes and contract come from the data
    tile: int | None = None
    batch_size: int | None = None
    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = None
    schedule: Schedule = "cosine"
    momentum: float = 0.99
    weight_decay: float = 0.0
    val_every: int | None = None
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    device: str = "auto"
    resume: Path | None = None
    progress: bool = True
    pixel_size: float | tuple[float, float] | None = None  # (y, x) or square, in pixel_unit; None: unknown
    pixel_unit: str = "micrometer"

    def __post_init__(self) -> None:
        checks = [
            (self.steps is None or self.epochs is None, "steps or epochs, not both", "both"),
            (self.steps is None or self.steps >= 1, "steps >= 1", self.steps),
            (self.epochs is None or self.epochs > 0, "epochs > 0", self.epochs),
            (self.minutes is None or self.minutes > 0, "minutes > 0", f"{self.minutes:g}" if self.minutes else 0),
            (self.batch_size is None or self.batch_size >= 1, "batch_size >= 1", self.batch_size),
            (0 <= self.val_fraction < 1, "val_fraction in [0, 1)", self.val_fraction),
            (self.val_every is None or self.val_every >= 1, "val_every >= 1", self.val_every),
            (self.optimizer in ("adam", "sgd"), "optimizer 'adam' or 'sgd'", repr(self.optimizer)),
            (self.schedule in ("cosine", "constant"), "schedule 'cosine' or 'constant'", repr(self.schedule)),
            (self.instance_method in ("contour", "components"), "instance method 'contour' or 'components'",
             repr(self.instance_method)),
            (self.lr is None or self.lr > 0, "lr > 0", self.lr),
            (len(self.names) >= 2, "at least 2 class names", list(self.names)),
            (not self.instances or self.class_names is None or len(self.class_names) == 2,
             "2 classes with instance masks (background, object)", len(self.class_names or ())),
        ]
        for ok, expected, found in checks:
            if not ok:
                raise UNetError(f"training options: expected {expected}, found {found}")
        if self.pixel_size is not None:
            checkpoint_pixel_size({"pixel_size": self.pixel_metadata}, "--pixel-size")

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the network's output classes."""
        default = ("background", "object") if self.instances else ("background", "foreground")
        names = self.class_names or default
        return (*names, "boundary") if self.targets.method == "contour" else names

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def targets(self) -> Targets:
        """How the masks become class targets."""
        return Targets(self.instance_method if self.instances else "classes")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else {"adam": 3e-3, "sgd": 1e-2}[self.optimizer]

    @property
    def pixel_metadata(self) -> dict[str, Any] | None:
        """The pixel size as checkpoints record it (``unet.io.pixelsize.checkpoint_pixel_size`` reads it)."""
        if self.pixel_size is None:
            return None
        return {"value": self.pixel_size if isinstance(self.pixel_size, int | float) else list(self.pixel_size),
                "unit": self.pixel_unit}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TrainResult:
    """The checkpoint written, the step and scores of the model in it, and one record per validation."""

    checkpoint: Path
    step: int
    steps: int
    scores: dict[str, Any] | None
    history: tuple[dict[str, float | None], ...]
    seconds: float
    recipe: Recipe


def train(config: TrainConfig) -> TrainResult:
    """Train on the folders of ``config`` and write the best checkpoint to ``config.out``."""
    start = time.perf_counter()
    if config.data is None:
        raise UNetError("training options: expected a data folder, found none; or call fit() with samples")
    samples = load_folder(config.data, config.num_classes, config.instances)
    if config.pixel_size is None:
        found = folder_pixel_size(sorted(Path(config.data, "images").iterdir()))
        if found is not None:
            config = replace(config, pixel_size=found.in_unit("micrometer"), pixel_unit="micrometer")
    if config.val_dir is not None:
        train_set, val_set = samples, load_folder(config.val_dir, config.num_classes, config.instances)
    else:
        train_set, val_set = split_validation(samples, config.val_fraction, np.random.default_rng(config.seed))
    return fit(config, train_set, val_set, data_hash([*samples, *val_set] if config.val_dir else samples), start)


def fit(config: TrainConfig, train_set: Sequence[Sample], val_set: Sequence[Sample], data_sha256: str,
        start: float | None = None) -> TrainResult:
    """Train on in-memory samples; validate on ``val_set`` (may be empty: the last model is kept). A time
    budget counts from ``start`` (a ``time.perf_counter()`` reading; default: now)."""
    clock = Clock(time.perf_counter() if start is None else start)
    check_samples(config, train_set)
    train_set, val_set = (with_targets(part, config.targets) for part in (train_set, val_set))
    device = resolve_device(config.device)
    check_output(config.out)
    torch.manual_seed(config.seed)
    model = build_model(config, train_set).to(device)
    recipe = choose_recipe(config, model, train_set)
    min_area = default_min_area([s.instances for s in train_set if s.instances is not None]) \
        if config.instances else 0
    if config.progress:
        print(f"training: {recipe.describe()}" + (f"; objects under {min_area} px are dropped (min_area, from "
              "the training objects)" if min_area > 1 else ""), file=sys.stderr, flush=True)
    trainer = Trainer(config, model, make_sampler(config, model, recipe, train_set), val_set, device, recipe,
                      min_area)
    keeper = BestCheckpoint(config.out, run_metadata(config, train_set, val_set, data_sha256, recipe, min_area))
    if config.resume is not None and val_set:
        keeper.offer(model, 0, trainer.validate(), loss=None)      # the resumed model is the one to beat
    steps = trainer.run(Budget.of(recipe, clock), keeper)
    return keeper.result(steps, clock.elapsed(), recipe)


def with_targets(samples: Sequence[Sample], targets: Targets) -> list[Sample]:
    """The samples with the class targets of ``targets`` (instance samples; the others as they are)."""
    return [s if s.instances is None else replace(s, mask=targets.classes(s.instances)) for s in samples]


def check_samples(config: TrainConfig, train_set: Sequence[Sample]) -> None:
    """At least one training image, and with instance masks at least one object to learn from."""
    source = config.data or "training samples"
    if not train_set:
        raise UNetError(f"{source}: expected at least one training image, found none")
    if config.instances and not any(s.instances is not None and s.instances.any() for s in train_set):
        raise UNetError(f"{source}: expected instance masks with at least one object (a label > 0), found "
                        f"only background in all {len(train_set)} training mask(s); check the masks folder, "
                        "or train without --instances")


def check_output(out: Path) -> None:
    if out.is_dir():
        raise UNetError(f"output {out}: expected a checkpoint file name, found a directory")
    out.parent.mkdir(parents=True, exist_ok=True)


def build_model(config: TrainConfig, train_set: Sequence[Sample]) -> UNet:
    """A new U-Net with the training images' input contract, or the ``resume`` checkpoint's network after
    checking that it matches the options and the data."""
    contract = input_contract([s.image for s in train_set])
    try:
        wanted = replace(config.network, in_channels=contract.channels, num_classes=config.num_classes,
                         input=contract)
    except UNetError as e:
        raise UNetError(f"model options: {e}") from None
    if config.resume is None:
        return UNet(wanted)
    old, _ = load_checkpoint(config.resume)
    check_resume(config.resume, old.config, wanted)
    model = UNet(wanted, input=old.config.input)  # keep the normalisation it learnt with
    model.load_state_dict(old.state_dict())
    return model


def check_resume(path: Path, found: UNetConfig, wanted: UNetConfig) -> None:
    """The checkpoint's network must have the shape the options ask for, and suit the data's dtype."""
    diffs = [f"{k} {getattr(found, k)} (options: {getattr(wanted, k)})"
             for k in (f.name for f in fields(UNetConfig) if f.name not in RESUME_MAY_CHANGE)
             if getattr(found, k) != getattr(wanted, k)]
    if diffs:
        raise UNetError(f"checkpoint {path}: its network does not match the options: {', '.join(diffs)}; "
                        "pass the checkpoint's settings or train from scratch")
    if found.input.dtype != wanted.input.dtype:
        raise UNetError(f"checkpoint {path}: trained on {found.input.dtype} images, the data are "
                        f"{wanted.input.dtype}; convert the images or train from scratch")


def choose_recipe(config: TrainConfig, model: UNet, train_set: Sequence[Sample]) -> Recipe:
    """The tile, batch, schedule and length of the run: the options', or chosen from the images."""
    tile = choose_tile(model, [s.mask.shape for s in train_set], config.tile)
    output = model.output_size(tile)
    batch = choose_batch(output, config.batch_size)
    steps = config.steps
    if config.epochs is not None:
        steps = max(1, math.ceil(config.epochs * sum(s.mask.size for s in train_set) / (output**2 * batch)))
    elif steps is None and config.minutes is None:
        steps = DEFAULT_STEPS
    return Recipe(tile, output, batch, config.learning_rate, config.schedule, steps, config.minutes)


def make_sampler(config: TrainConfig, model: UNet, recipe: Recipe, train_set: Sequence[Sample]) -> TileSampler:
    """Tiles of the recipe's size; the class targets and weights come from each tile's augmented labels and
    border weights (``unet.train.targets``)."""
    balance = config.loss.class_balance
    if balance is None:       # inverse frequencies over interior and boundary made 52 % of interiors boundary
        balance = config.targets.method != "contour"
    class_weights = class_frequency_weights([s.mask for s in train_set], config.num_classes) if balance else None
    border = [border_weights(config.targets.separated(s.instances), config.loss.w0, config.loss.sigma)
              if s.instances is not None and config.loss.border_weights and config.loss.w0 > 0
              else np.zeros(s.mask.shape, np.float32) for s in train_set]
    return TileSampler(train_set, border, model.config.input, recipe.tile, model.margins, config.augmentation,
                       TileTargets(config.targets, class_weights))


def make_optimizer(config: TrainConfig, model: UNet) -> torch.optim.Optimizer:
    """SGD with (the paper's 0.99) momentum, or Adam."""
    params, lr = model.parameters(), config.learning_rate
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)


class Clock:
    """Seconds since ``start`` (a ``time.perf_counter()`` reading)."""

    def __init__(self, start: float):
        self.start = start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Budget:
    """The length of a run: ``steps`` optimiser steps and/or ``seconds`` of wall-clock time on ``clock``,
    within which the last validation must also end; whichever ends first. ``fraction`` (0..1) drives the
    schedule and the validations."""

    clock: Clock
    steps: int | None = None
    seconds: float | None = None
    step_seconds: float = 0.0                 # a smoothed estimate of a step's duration
    validation_seconds: float = 0.0           # the longest validation's

    @classmethod
    def of(cls, recipe: Recipe, clock: Clock) -> Budget:
        return cls(clock, steps=recipe.steps, seconds=None if recipe.minutes is None else 60 * recipe.minutes)

    def fraction(self, step: int) -> float:
        by_steps = step / self.steps if self.steps is not None else 0.0
        by_time = self.clock.elapsed() / self.seconds if self.seconds is not None else 0.0
        return min(1.0, max(by_steps, by_time))

    def exhausted(self, step: int) -> bool:
        """True when no further step fits: the step count is reached, or one more step and the final
        validation would run past the time."""
        if self.steps is not None and step >= self.steps:
            return True
        return (self.seconds is not None
                and self.clock.elapsed() + self.step_seconds + self.validation_seconds >= self.seconds)

    def timed(self, what: Literal["step", "validation"], seconds: float) -> None:
        if what == "step":
            self.step_seconds = seconds if not self.step_seconds else 0.8 * self.step_seconds + 0.2 * seconds
        else:
            self.validation_seconds = max(self.validation_seconds, seconds)


class Trainer:
    """One run's moving parts: the model on its device, its optimiser, the tile sampler and the validation
    images; ``run`` is the loop."""

    def __init__(self, config: TrainConfig, model: UNet, sampler: TileSampler, val_set: Sequence[Sample],
                 device: torch.device, recipe: Recipe, min_area: int = 0):
        self.config, self.model, self.sampler, self.val_set, self.device = config, model, sampler, val_set, device
        self.recipe, self.min_area = recipe, min_area
        self.optimizer = make_optimizer(config, model)
        self.rng = np.random.default_rng(config.seed)

    def run(self, budget: Budget, keeper: BestCheckpoint) -> int:
        """Steps until the budget is spent; validation VALIDATIONS_PER_RUN times over the budget (or every
        ``val_every`` steps) and after the last step, each offered to ``keeper``. Returns the steps run."""
        losses: list[float] = []
        step, validated, mark, recent = 0, -1, 1, float("nan")   # mark: next validation at mark / N
        with ProgressBar(budget, self.config.progress) as bar:
            while not budget.exhausted(step):
                losses.append(self.timed_step(budget, step))
                recent = float(np.mean(losses[-20:]))
                step += 1
                every = self.config.val_every
                if (step % every == 0) if every else budget.fraction(step) * VALIDATIONS_PER_RUN >= mark:
                    validated = self.validate_and_offer(budget, keeper, step, losses)
                    mark = math.floor(budget.fraction(step) * VALIDATIONS_PER_RUN) + 1
                bar.show(step, keeper.postfix(loss=recent))
            if validated != step:
                self.validate_and_offer(budget, keeper, step, losses)
                bar.show(step, keeper.postfix(loss=recent))
        return step

    def timed_step(self, budget: Budget, step: int) -> float:
        began = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.lr_at(budget.fraction(step))
        loss = self.step()
        budget.timed("step", time.perf_counter() - began)
        return loss

    def validate_and_offer(self, budget: Budget, keeper: BestCheckpoint, step: int, losses: list[float]) -> int:
        began = time.perf_counter()
        scores = self.validate()
        keeper.offer(self.model, step, scores, loss=float(np.mean(losses)) if losses else None)
        budget.timed("validation", time.perf_counter() - began)
        losses.clear()
        return step

    def step(self) -> float:
        """One optimiser step on a batch of random tiles; returns the loss."""
        batch = self.sampler.batch(self.rng, self.recipe.batch_size)
        images, target, weights = (torch.from_numpy(a).to(self.device) for a in batch)  # (B,C,T,T), (B,h,w) x2
        loss = segmentation_loss(self.model(images), target, weights, self.config.loss.dice)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def validate(self) -> Scores | None:
        """Scores of whole-image, overlap-tile predictions on the validation images, pooled (None without
        validation images); leaves the model in training mode."""
        total = None
        for s in self.val_set:
            pred = predict_image(self.model, s.image, device=self.device, amp=False).argmax(axis=0)  # (H, W)
            scores = score(pred, s.mask, self.config.num_classes, s.instances, self.objects(pred))
            total = scores if total is None else total + scores
        self.model.train()
        return total

    def objects(self, pred: np.ndarray) -> np.ndarray | None:
        """The predicted objects (H, W) of a class image, as ``jobs/segment.py --objects`` finds them with
        the checkpoint being trained (its method and ``min_area``); None without instance data."""
        if not self.config.instances:
            return None
        method = InstanceMethod() if self.config.targets.method == "contour" else None
        return objects_from_classes(pred, method, self.min_area)


class ProgressBar:
    """A tqdm bar on stderr, over steps or over the seconds of a time budget (then showing the time
    left); quiet (one line every 30 s) when stderr is not a terminal."""

    def __init__(self, budget: Budget, enabled: bool):
        self.budget = budget
        tty = sys.stderr.isatty()
        timed = budget.seconds is not None
        self.bar = tqdm(total=round(budget.seconds) if budget.seconds is not None else budget.steps,
                        unit="s" if timed else "step", disable=not enabled, mininterval=0.5 if tty else 30.0,
                        dynamic_ncols=tty, file=sys.stderr,
                        bar_format="{percentage:3.0f}%|{bar}| {desc}" if timed else None)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def show(self, step: int, postfix: dict[str, str]) -> None:
        """The latest step and validation; the bar moves by steps, or by the seconds spent."""
        if self.budget.seconds is None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        elapsed = self.budget.clock.elapsed()
        left = max(0.0, self.budget.seconds - elapsed)
        rate = step / elapsed if elapsed > 0 else 0.0
        shown = ", ".join([f"{_minutes(left)} left of {_minutes(self.budget.seconds)}", f"step {step}",
                           f"{rate:.2f} step/s", *(f"{k}={v}" for k, v in postfix.items())])
        self.bar.set_description_str(shown, refresh=False)
        self.bar.update(min(round(elapsed), self.bar.total) - self.bar.n)


def _minutes(seconds: float) -> str:
    """m:ss"""
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def run_metadata(config: TrainConfig, train_set: Sequence[Sample], val_set: Sequence[Sample],
                 data_sha256: str, recipe: Recipe, min_area: int = 0) -> dict[str, Any]:
    """What the checkpoint records about the run besides the best model's scores."""
    metadata = {"class_names": list(config.names), "seed": config.seed, "data_sha256": data_sha256,
                "instances": config.instances, "train_images": [s.name for s in train_set],
                "val_images": [s.name for s in val_set],
                "normalisation": "per-channel mean and standard deviation of the training images",
                "recipe": recipe.to_dict(), "targets": asdict(config.targets),
                "selection": SELECTION["objects" if config.instances else "pixels"],
                "train_config": config.to_dict(),
                **({"pixel_size": config.pixel_metadata} if config.pixel_size is not None else {})}
    if config.targets.method == "contour":
        metadata["instance_method"] = InstanceMethod().to_metadata()
    if config.instances:
        metadata["min_area"] = min_area      # --objects drops smaller objects unless --min-area says otherwise
    return metadata


def selection_score(scores: Scores) -> float:
    """What the kept checkpoint maximises: with object scores the mean of object F1 and foreground IoU,
    else foreground IoU."""
    if scores.objects is None:
        return scores.foreground_iou
    return 0.5 * (scores.objects.f1 + scores.foreground_iou)


class BestCheckpoint:
    """Writes the model whenever its validation score (``selection_score``) beats the best so far (without
    validation: every time it is offered, so the last model stays), and keeps the history of validations."""

    def __init__(self, path: Path, metadata: dict[str, Any]):
        self.path, self.metadata = path, metadata
        self.best: tuple[int, Scores | None] | None = None  # the kept model's step and scores
        self.history: list[dict[str, float | None]] = []

    def offer(self, model: UNet, step: int, scores: Scores | None, loss: float | None) -> None:
        record: dict[str, float | None] = {"step": step, "loss": loss}
        if scores is not None:
            record |= {"foreground_iou": scores.foreground_iou, "foreground_dice": scores.foreground_dice}
            if scores.objects is not None:
                record |= {"object_f1": scores.objects.f1}
        self.history.append(record)
        kept = self.best[1] if self.best is not None else None
        if scores is not None and kept is not None and selection_score(scores) <= selection_score(kept):
            return
        self.best = (step, scores)
        save_checkpoint(model, self.path, **self.metadata, step=step, metrics=self._metrics(scores),
                        history=self.history)

    def postfix(self, loss: float) -> dict[str, str]:
        last = self.history[-1] if self.history else {}
        shown = {"loss": f"{loss:.4f}"}
        if "foreground_iou" in last:
            shown |= {"val_iou": f"{last['foreground_iou']:.3f}", "val_dice": f"{last['foreground_dice']:.3f}"}
        if "object_f1" in last:
            shown |= {"val_f1": f"{last['object_f1']:.3f}"}
        return shown

    def result(self, steps: int, seconds: float, recipe: Recipe) -> TrainResult:
        assert self.best is not None, "no model offered"
        step, scores = self.best
        return TrainResult(self.path, step, steps, self._metrics(scores), tuple(self.history), seconds, recipe)

    def _metrics(self, scores: Scores | None) -> dict[str, Any] | None:
        return None if scores is None else scores.to_dict(self.metadata["class_names"])
