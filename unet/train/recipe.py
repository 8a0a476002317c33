"""What a training run does when the user passes no tuning flag: the tile, the batch, the learning-rate
schedule and the length of the run (a number of steps or a time budget), chosen from the images and the
budget, printed at the start and stored in the checkpoint.

- Tile: the smallest valid input whose output covers the smallest training image (a 256-px crop is
  trained on whole, mirrored where the output overhangs it), at most the paper's 572 px for larger images.
  A larger tile wastes its mirrored border; a smaller one pays the network's margin on fewer pixels.
- Batch: as many tiles as hold about ``BATCH_PIXELS`` output pixels (one tile of a 256-px crop; the paper
  trains on one large tile per batch), at most ``MAX_BATCH``.
- Schedule: Adam's rate rises linearly over the first ``WARMUP`` of the budget, then falls along a cosine
  to 0 at its end; the budget is the steps, or the wall-clock time, of the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from unet.errors import UNetError
from unet.nn.model import UNet

MAX_TILE = 572               # the paper's tile: larger images are trained on tiles of this size
BATCH_PIXELS = 256 * 256     # output pixels a batch holds, about
MAX_BATCH = 16
WARMUP = 0.05                # share of the budget over which the learning rate rises
Schedule = Literal["cosine", "constant"]


@dataclass(frozen=True)
class Recipe:
    """The tile, batch and schedule of one run, and its length: ``steps`` and/or ``minutes``."""

    tile: int
    output: int
    batch_size: int
    lr: float
    schedule: Schedule
    steps: int | None
    minutes: float | None

    def lr_at(self, fraction: float) -> float:
        """The learning rate ``fraction`` (0..1) of the way through the budget."""
        if self.schedule == "constant":
            return self.lr
        if fraction < WARMUP:
            return self.lr * (fraction + 1 / 1000) / (WARMUP + 1 / 1000)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (fraction - WARMUP) / (1 - WARMUP))))

    def describe(self) -> str:
        lengths = [f"{self.minutes:g} min" if self.minutes is not None else "",
                   f"{self.steps} steps" if self.steps is not None else ""]
        length = " or ".join(filter(None, lengths)) + (", whichever ends first" if all(lengths) else "")
        decay = f"{WARMUP:.0%} warm-up then cosine decay over {length}" if self.schedule == "cosine" else "constant"
        return (f"tile {self.tile} px (output {self.output} px), batch {self.batch_size}, "
                f"learning rate {self.lr:g} ({decay})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_tile(model: UNet, image_shapes: Sequence[tuple[int, int]], tile: int | None) -> int:
    """``tile`` when given (checked), else the smallest valid input whose output covers the smallest
    image side, capped at the largest valid input <= MAX_TILE."""
    if tile is not None:
        try:
            model.output_size(tile)
        except UNetError as e:
            raise UNetError(f"tile: {e} (depth {model.config.depth}, {model.config.padding} padding)") from None
        return tile
    side = min(min(shape) for shape in image_shapes)
    covering = model.round_input_size(side + sum(model.margins), "up")
    return min(covering, model.round_input_size(max(MAX_TILE, model.sizes.min_input), "down"))


def choose_batch(output: int, batch_size: int | None) -> int:
    """``batch_size`` when given, else as many tiles as hold about BATCH_PIXELS output pixels."""
    if batch_size is not None:
        return batch_size
    return max(1, min(MAX_BATCH, round(BATCH_PIXELS / output**2)))
