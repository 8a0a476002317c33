"""Tile geometry chosen by cost: the (tile, batch) expected fastest per *kept* output pixel over a plan.

Each block is covered by whole tiles on the pooling grid, so the tiles, forward passes and pixels computed
past a block's edge follow from a tile's output size alone; the measured seconds of one pass
(``unet.infer.calibrate``) times the passes over the plan is the network's expected time, and the candidate
for which it is least wins. A tile fast per computed pixel can lose to one that fits the blocks: a 1356-px
output on a 4096-px block computes 1.75x the block. Pure arithmetic: no torch, no device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from unet.infer.tiling import tile_origins

Span = tuple[int, int]


@dataclass(frozen=True)
class TileCost:
    """One measured candidate: ``seconds`` is the fastest of the rounds of one forward pass of ``batch``
    tiles of ``tile`` px in, ``out_tile`` px out; ``spread`` the rounds' (median - fastest) / fastest.
    ``seconds`` is None for a candidate that was not measured (an explicit ``--tile``, the memory rule)."""

    tile: int
    out_tile: int
    batch: int
    seconds: float | None = None
    spread: float = 0.0

    @property
    def mpx_per_s(self) -> float | None:
        """Output megapixels per second of the network alone on this tile (no overhang counted)."""
        return None if self.seconds is None else self.batch * self.out_tile ** 2 / self.seconds / 1e6


@dataclass(frozen=True)
class Calibration:
    """What a device measured (or why it could not): the candidates a plan's tile is chosen from."""

    device: str                      # e.g. "cpu AMD EPYC, 2 torch threads", "cuda NVIDIA H200"
    key: str                         # the cache entry's name: device, network, torch version, precision
    pooling_period: int              # the network's pooling period (tile origins are multiples of it)
    limit: int                       # largest output side the candidates were meant to cover
    costs: tuple[TileCost, ...]
    seconds: float = 0.0             # spent measuring in this process (0 when read from the cache)
    cached: bool = False             # read from the cache
    fallback: str | None = None      # why the memory rule chooses instead (costs then hold its one tile)

    @property
    def chosen_by(self) -> str:
        if self.fallback:
            return "memory rule"
        return "calibration" if all(c.seconds is not None for c in self.costs) else "--tile"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(**{**data, "costs": tuple(TileCost(**c) for c in data["costs"])})


@dataclass(frozen=True)
class PlanCost:
    """A (tile, batch) over a plan of blocks: what it computes and, when measured, how long it takes."""

    cost: TileCost
    tiles: int                       # tiles computed over the plan
    passes: int                      # forward passes (a block's last batch may be short)
    overhang: float                  # output pixels computed per pixel kept
    seconds: float | None            # the network's expected time over the plan

    def mpx_per_s(self, pixels: int) -> float | None:
        """Expected kept output Mpx per second of the network over the plan (``pixels`` kept)."""
        return None if self.seconds is None else pixels / self.seconds / 1e6


def tile_counts(spans: Sequence[Span], out_tile: int, period: int) -> Counter[int]:
    """How many spans need how many tiles of ``out_tile`` px on the pooling grid (one axis)."""
    return Counter(len(tile_origins(start, stop, out_tile, period)) for start, stop in spans)


def plan_cost(cost: TileCost, rows: Sequence[Span], cols: Sequence[Span], period: int) -> PlanCost:
    """Tiles, forward passes, overhang and expected network seconds of ``cost`` over the blocks
    rows x cols (every block is one row span by one column span)."""
    ny, nx = tile_counts(rows, cost.out_tile, period), tile_counts(cols, cost.out_tile, period)
    tiles = sum(a * na * b * nb for a, na in ny.items() for b, nb in nx.items())
    passes = sum(-(-a * b // cost.batch) * na * nb for a, na in ny.items() for b, nb in nx.items())
    kept = (rows[-1][1] - rows[0][0]) * (cols[-1][1] - cols[0][0])
    seconds = None if cost.seconds is None else passes * cost.seconds
    return PlanCost(cost, tiles, passes, tiles * cost.out_tile ** 2 / kept, seconds)


def choose_tile(calibration: Calibration, rows: Sequence[Span], cols: Sequence[Span], *,
                batch: int | None = None) -> PlanCost:
    """The candidate with the least expected network time over the plan (the least overhang when the
    candidates are unmeasured). A given ``batch`` keeps the candidates measured at it, if any; otherwise
    tiles are ranked as measured and then run ``batch`` tiles a pass (seconds scaled per tile)."""
    costs = [c for c in calibration.costs if batch is None or c.batch == batch]
    if not costs and batch is not None:
        costs = [replace(c, batch=batch, seconds=None if c.seconds is None else c.seconds / c.batch * batch)
                 for c in calibration.costs]
    return min((plan_cost(c, rows, cols, calibration.pooling_period) for c in costs), key=_rank)


def _rank(option: PlanCost) -> tuple[float, float]:
    return (option.seconds if option.seconds is not None else option.overhang, option.overhang)
