"""The block plan: which rectangles of the output each worker call owns.

Blocks are rectangles of whole output chunks (whole shards when sharded), laid out with Dask's chunk
arithmetic, so no two workers ever write the same chunk. They are generated lazily: a plan for 10^6 blocks
holds two short tuples of sizes, never a list of blocks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from dask.array.core import normalize_chunks

from unet.errors import UNetError
from unet.infer.geometry import Calibration, PlanCost, choose_tile


@dataclass(frozen=True)
class Block:
    """One unit of work: output rows x cols of pyramid ``level`` (0 = full resolution), also written,
    halved each time, into the next ``coarser_levels`` levels."""

    level: int
    index: tuple[int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]
    coarser_levels: int = 0

    @property
    def key(self) -> str:
        """Name of the block's done-marker: stable for a given plan."""
        return f"L{self.level}-{self.index[0]}-{self.index[1]}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    def describe(self) -> str:
        return (f"block {self.key} (level {self.level}, rows {self.rows[0]}:{self.rows[1]}, "
                f"cols {self.cols[0]}:{self.cols[1]})")


@dataclass(frozen=True)
class BlockPlan:
    """A grid of blocks over an array of ``shape``, each ``block`` pixels (edges clipped); each block also
    writes the next ``coarser_levels`` pyramid levels (see ``unet.job.pyramid.level_plan``)."""

    level: int
    shape: tuple[int, int]
    block: int
    coarser_levels: int = 0
    _sizes: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sizes", normalize_chunks((self.block, self.block), self.shape))

    @property
    def counts(self) -> tuple[int, int]:
        """Blocks along each axis."""
        return len(self._sizes[0]), len(self._sizes[1])

    def __len__(self) -> int:
        return self.counts[0] * self.counts[1]

    def spans(self, axis: int) -> list[tuple[int, int]]:
        """(start, stop) of every block along ``axis``."""
        edges = np.concatenate([[0], np.cumsum(self._sizes[axis])]).tolist()
        return list(zip(edges[:-1], edges[1:]))

    def __iter__(self) -> Iterator[Block]:
        rows, cols = self.spans(0), self.spans(1)
        for iy, ix in itertools.product(range(len(rows)), range(len(cols))):
            yield Block(self.level, (iy, ix), rows[iy], cols[ix], self.coarser_levels)



def neighbourhood(plan: BlockPlan, block: Block, distance: int) -> list[Block]:
    """The blocks of ``plan`` within ``distance`` pixels of ``block`` (itself included)."""
    spans = (block.rows, block.cols)
    near = [[(i, s) for i, s in enumerate(plan.spans(axis))
             if s[0] < spans[axis][1] + distance and s[1] > spans[axis][0] - distance] for axis in (0, 1)]
    return [Block(plan.level, (iy, ix), r, c, plan.coarser_levels) for iy, r in near[0] for ix, c in near[1]]

def check_block_size(block: int, chunk: int, shard: int | None) -> None:
    """A block must be whole writing units: chunks, or shards when sharded."""
    if chunk < 1:
        raise UNetError(f"--chunk: expected a positive size, found {chunk}")
    if shard is not None and (shard < chunk or shard % chunk):
        raise UNetError(f"--shard: expected a multiple of --chunk {chunk}, found {shard}")
    unit, name = (shard, "--shard") if shard else (chunk, "--chunk")
    if block < unit or block % unit:
        raise UNetError(f"--block: expected a multiple of {name} {unit} (e.g. {unit * max(1, round(block / unit))}), "
                        f"found {block}")


def network_flops(model, tile: int) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass over a ``tile`` x ``tile``
    input, counted on the meta device: no memory, no compute."""
    import torch
    from torch import nn

    flops = 0

    def count(module: nn.Conv2d | nn.ConvTranspose2d, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal flops
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel feeds k output pixels per channel
            flops += 2 * inputs[0].numel() * module.out_channels * k
        else:
            flops += 2 * output.numel() * module.in_channels * k

    meta = type(model)(model.config).to("meta")
    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        meta(torch.empty(1, model.config.in_channels, tile, tile, device="meta"))
    for h in hooks:
        h.remove()
    return flops


MAX_BLOCK_UNITS = 8     # candidate blocks: 1 to 8 writing units a side ...
MAX_BLOCK = 8192        # ... of at most this many px (a block's window, classes and probabilities stay small)
BLOCK_TIE = 0.02        # blocks expected within 2 % of the fastest count as equal: the nearest the default wins


@dataclass(frozen=True)
class Geometry:
    """One output's blocks and the (tile, batch) its workers are expected to choose, with what the
    calibration expects them to cost; what chose each ("calibration", "--tile", "--block", "memory rule",
    "resumed output")."""

    block: int
    blocks: int
    block_chosen_by: str
    tile: int
    out_tile: int
    batch: int
    tile_chosen_by: str
    tiles: int                          # tiles computed over the plan
    passes: int                         # forward passes
    overhang: float                     # output pixels computed per pixel kept
    expected_network_s: float | None    # None without a calibration
    expected_mpx_per_s: float | None


@dataclass(frozen=True)
class BlockChoice:
    """The block side chosen for a plan, with the (tile, batch) expected fastest over it."""

    block: int
    blocks: int
    cost: PlanCost
    chosen_by: str      # "calibration", "--tile", "memory rule": what ranked the blocks


def choose_block(calibration: Calibration, shape: tuple[int, int], unit: int, slots: int, *,
                 batch: int | None = None) -> BlockChoice:
    """The block side, a multiple of ``unit`` (chunk or shard), whose plan the calibration expects to
    run fastest: the least network time over the mosaic (measured seconds per pass times the passes its
    tiles need on the plan's blocks), among plans of at least ``slots`` blocks (blocks in flight at once)
    when the mosaic has room for that. Near-ties go to the default of 4 units: larger blocks re-read
    fewer halos, smaller ones spread better over workers."""
    options = []
    for units in range(1, MAX_BLOCK_UNITS + 1):
        block = units * unit
        if units > 1 and block > MAX_BLOCK:
            break
        plan = BlockPlan(0, shape, block)
        cost = choose_tile(calibration, plan.spans(0), plan.spans(1), batch=batch)
        options.append(BlockChoice(block, len(plan), cost, calibration.chosen_by))
        if block >= max(shape):
            break
    enough = [o for o in options if o.blocks >= slots] or [max(options, key=lambda o: o.blocks)]
    best = min(_expected(o) for o in enough)
    near = [o for o in enough if _expected(o) <= best * (1 + BLOCK_TIE)]
    return min(near, key=lambda o: (abs(o.block - 4 * unit), -o.block))


def _expected(option: BlockChoice) -> float:
    return option.cost.seconds if option.cost.seconds is not None else option.cost.overhang
