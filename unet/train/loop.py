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
from unet.infer.predict import predict_image
from unet.io.pixelsize import checkpoint_pixel_size, folder_pixel_size
from unet.nn.checkpoint import load_checkpoint, save_checkpoint
from unet.nn.config import UNetConfig
from unet.nn.device import resolve_device
from unet.nn.model import UNet
from unet.train.augment import AugmentConfig
from unet.train.data import Sample, TileSampler, data_hash, input_contract, load_folder, split_validation
from unet.train.losses import LossConfig, class_frequency_weights, segmentation_loss, weight_map
from unet.train.metrics import Scores, score

DEFAULT_STEPS = 1000
VALIDATIONS_PER_RUN = 20          # default validation frequency
RESUME_MAY_CHANGE = ("dropout", "input")  # network fields a resumed run may set anew; the rest must match


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. ``steps`` or ``epochs`` (an epoch: as many output pixels as the
    training images hold); neither means DEFAULT_STEPS. ``val_every``: steps between validations (None:
    VALIDATIONS_PER_RUN per run). ``val_fraction`` of the images is held out unless ``val_dir`` is given;
    0 disables validation and keeps the last model. ``lr`` None: 1e-3 for Adam, 1e-2 for SGD. ``network``
    sets the U-Net's shape; its ``in_channels``, ``num_classes`` and input contract are taken from the data
    and ``class_names``."""

    out: Path
    data: Path | None = None
    val_dir: Path | None = None
    val_fraction: float = 0.2
    instances: bool = False
    class_names: tuple[str, ...] = ("background", "foreground")
    network: UNetConfig = field(default_factory=UNetConfig)  # its channels, classes and contract come from the data
    tile: int = 572
    batch_size: int = 1
    steps: int | None = None
    epochs: float | None = None
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = None
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
            (self.batch_size >= 1, "batch_size >= 1", self.batch_size),
            (0 <= self.val_fraction < 1, "val_fraction in [0, 1)", self.val_fraction),
            (self.val_every is None or self.val_every >= 1, "val_every >= 1", self.val_every),
            (self.optimizer in ("adam", "sgd"), "optimizer 'adam' or 'sgd'", repr(self.optimizer)),
            (self.lr is None or self.lr > 0, "lr > 0", self.lr),
            (len(self.class_names) >= 2, "at least 2 class names", list(self.class_names)),
            (not self.instances or len(self.class_names) == 2, "2 classes with instance masks",
             len(self.class_names)),
        ]
        for ok, expected, found in checks:
            if not ok:
                raise UNetError(f"training options: expected {expected}, found {found}")
        if self.pixel_size is not None:
            checkpoint_pixel_size({"pixel_size": self.pixel_metadata}, "--pixel-size")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else {"adam": 1e-3, "sgd": 1e-2}[self.optimizer]

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


def train(config: TrainConfig) -> TrainResult:
    """Train on the folders of ``config`` and write the best checkpoint to ``config.out``."""
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
    return fit(config, train_set, val_set, data_hash([*train_set, *val_set]))


def fit(config: TrainConfig, train_set: Sequence[Sample], val_set: Sequence[Sample], data_sha256: str) -> TrainResult:
    """Train on in-memory samples; validate on ``val_set`` (may be empty: the last model is kept)."""
    if not train_set:
        raise UNetError("training images: expected at least one, found none")
    start = time.perf_counter()
    device = resolve_device(config.device)
    check_output(config.out)
    torch.manual_seed(config.seed)
    model = build_model(config, train_set).to(device)
    trainer = Trainer(config, model, make_sampler(config, model, train_set), val_set, device)
    keeper = BestCheckpoint(config.out, run_metadata(config, train_set, val_set, data_sha256))
    if config.resume is not None and val_set:
        keeper.offer(model, 0, trainer.validate(), loss=None)      # the resumed model is the one to beat
    total = total_steps(config, trainer.sampler)
    trainer.run(total, keeper)
    return keeper.result(total, time.perf_counter() - start)


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


def make_sampler(config: TrainConfig, model: UNet, train_set: Sequence[Sample]) -> TileSampler:
    """Tiles of the configured (valid) size, with the per-pixel loss weights of every training image."""
    try:
        model.output_size(config.tile)
    except UNetError as e:
        raise UNetError(f"tile: {e} (depth {config.network.depth}, {config.network.padding} padding)") from None
    masks = [s.mask for s in train_set]
    class_weights = class_frequency_weights(masks, config.num_classes) if config.loss.class_balance else None
    weights = [weight_map(s.mask, class_weights, s.instances, config.loss) for s in train_set]
    return TileSampler(train_set, weights, model.config.input, config.tile, model.margins, config.augmentation)


def total_steps(config: TrainConfig, sampler: TileSampler) -> int:
    if config.steps is not None:
        return config.steps
    if config.epochs is None:
        return DEFAULT_STEPS
    return max(1, math.ceil(config.epochs * sampler.pixels / (sampler.out**2 * config.batch_size)))


def make_optimizer(config: TrainConfig, model: UNet) -> torch.optim.Optimizer:
    """SGD with (the paper's 0.99) momentum, or Adam."""
    params, lr = model.parameters(), config.learning_rate
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)


class Trainer:
    """One run's moving parts: the model on its device, its optimiser, the tile sampler and the validation
    images; ``run`` is the loop."""

    def __init__(self, config: TrainConfig, model: UNet, sampler: TileSampler, val_set: Sequence[Sample],
                 device: torch.device):
        self.config, self.model, self.sampler, self.val_set, self.device = config, model, sampler, val_set, device
        self.optimizer = make_optimizer(config, model)
        self.rng = np.random.default_rng(config.seed)

    def run(self, total: int, keeper: BestCheckpoint) -> None:
        """``total`` steps; validation every ``val_every`` steps and at the end, each offered to ``keeper``."""
        every = self.config.val_every or max(1, total // VALIDATIONS_PER_RUN)
        losses: list[float] = []
        with progress_bar(total, self.config.progress) as bar:
            for step in range(1, total + 1):
                losses.append(self.step())
                recent = float(np.mean(losses[-20:]))
                if step % every == 0 or step == total:
                    keeper.offer(self.model, step, self.validate(), loss=float(np.mean(losses)))
                    losses.clear()
                bar.set_postfix(keeper.postfix(loss=recent), refresh=False)   # shows the latest validation
                bar.update()

    def step(self) -> float:
        """One optimiser step on a batch of random tiles; returns the loss."""
        batch = self.sampler.batch(self.rng, self.config.batch_size)
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
            scores = score(pred, s.mask, self.config.num_classes, s.instances)
            total = scores if total is None else total + scores
        self.model.train()
        return total


def progress_bar(total: int, enabled: bool) -> tqdm:
    """A tqdm bar on stderr; quiet (one line every 30 s) when stderr is not a terminal."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, unit="step", disable=not enabled, mininterval=0.5 if tty else 30.0,
                dynamic_ncols=tty, file=sys.stderr)


def run_metadata(config: TrainConfig, train_set: Sequence[Sample], val_set: Sequence[Sample],
                 data_sha256: str) -> dict[str, Any]:
    """What the checkpoint records about the run besides the best model's scores."""
    return {"class_names": list(config.class_names), "seed": config.seed, "data_sha256": data_sha256,
            "instances": config.instances, "train_images": [s.name for s in train_set],
            "val_images": [s.name for s in val_set],
            "normalisation": "per-channel mean and standard deviation of the training images",
            "train_config": config.to_dict(),
            **({"pixel_size": config.pixel_metadata} if config.pixel_size is not None else {})}


class BestCheckpoint:
    """Writes the model whenever its validation foreground IoU beats the best so far (without validation:
    every time it is offered, so the last model stays), and keeps the history of validations."""

    def __init__(self, path: Path, metadata: dict[str, Any]):
        self.path, self.metadata = path, metadata
        self.best: tuple[int, Scores | None] | None = None  # the kept model's step and scores
        self.history: list[dict[str, float | None]] = []

    def offer(self, model: UNet, step: int, scores: Scores | None, loss: float | None) -> None:
        record = {"step": step, "loss": loss}
        if scores is not None:
            record |= {"foreground_iou": scores.foreground_iou, "foreground_dice": scores.foreground_dice}
        self.history.append(record)
        kept = self.best[1] if self.best is not None else None
        if scores is not None and kept is not None and scores.foreground_iou <= kept.foreground_iou:
            return
        self.best = (step, scores)
        save_checkpoint(model, self.path, **self.metadata, step=step, metrics=self._metrics(scores),
                        history=self.history)

    def postfix(self, loss: float) -> dict[str, str]:
        last = self.history[-1] if self.history else {}
        shown = {"loss": f"{loss:.4f}"}
        if "foreground_iou" in last:
            shown |= {"val_iou": f"{last['foreground_iou']:.3f}", "val_dice": f"{last['foreground_dice']:.3f}"}
        return shown

    def result(self, steps: int, seconds: float) -> TrainResult:
        assert self.best is not None, "no model offered"
        step, scores = self.best
        return TrainResult(self.path, step, steps, self._metrics(scores), tuple(self.history), seconds)

    def _metrics(self, scores: Scores | None) -> dict[str, Any] | None:
        return None if scores is None else scores.to_dict(self.metadata["class_names"])
