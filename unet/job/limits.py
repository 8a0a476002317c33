"""Sane limits on what a job is asked to do, checked on the driver from metadata alone, before any worker
starts or anything is written: the range of every numeric option, and the size of the plan an input implies.

A Zarr array's metadata is a few bytes that anyone can write: 10^15 pixels in 1-px chunks is a valid
array, but every block would read millions of chunks and the plan would hold more blocks than the driver
can track. Such an input gets one line saying what would be needed, not a run that cannot finish.
"""

from __future__ import annotations

import math
import re
from typing import Any

from unet.errors import UNetError

MAX_BLOCK = 16384             # px per block side: a block and its probabilities are held in a worker's memory
MAX_TILE = 8192               # px per tile side: beyond any device's memory for one U-Net tile
MAX_BLOCKS = 10**6            # blocks per plan: the driver holds one done-key per block (~100 MB at 10^6)
MAX_CHUNKS_PER_BLOCK = 2**16  # input chunks one block reads: each is a separate request and decode
OPTION_RANGES: dict[str, tuple[float, float, bool]] = {  # option: (lowest, highest, lowest itself excluded)
    "level": (0, 64, False), "chunk": (1, MAX_BLOCK, False), "shard": (1, MAX_BLOCK, False),
    "block": (1, MAX_BLOCK, False), "tile": (1, MAX_TILE, False), "batch_size": (1, 1024, False),
    "workers": (1, 10_000, False), "max_retries": (0, 100, False), "gpus_per_worker": (0.0, 64.0, False),
    "cpus_per_worker": (0.0, 1024.0, True), "block_timeout": (0.0, 1e6, True),
}  # integer ranges for integer options: a float bound marks a number


def check_options(options: Any) -> None:
    """Every numeric option of ``options`` (a SegmentOptions) in its range, a device torch can name, and a
    block a worker can hold; None means the default."""
    for field, (lo, hi, excluded) in OPTION_RANGES.items():
        value = getattr(options, field)
        if value is not None and not _within(value, lo, hi, excluded):
            kind = f"a number {'>' if excluded else '>='} {lo:g} and <= {hi:g}" if isinstance(lo, float) \
                else f"an integer from {lo} to {hi}"
            raise UNetError(f"--{field.replace('_', '-')}: expected {kind}, found {value!r}")
    if options.device is not None and not re.fullmatch(r"cpu|cuda(:\d{1,3})?", options.device):
        raise UNetError(f"--device: expected cpu, cuda or cuda:N, found {options.device[:40]!r}")
    if options.block_size > MAX_BLOCK:
        unit = "--shard" if options.shard else "--chunk"
        raise UNetError(f"--block: expected at most {MAX_BLOCK} px (a block is held in a worker's memory), found "
                        f"{options.block_size} (4 x the {unit}); pass a smaller --block")


def _within(value: Any, lo: float, hi: float, excluded: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(lo, int) and not isinstance(value, int):
        return False
    return math.isfinite(value) and lo <= value <= hi and not (excluded and value == lo)


def check_plan(name: str, shape: tuple[int, int], chunks: tuple[int, int], block: int) -> None:
    """Refuse an input of ``shape`` stored in ``chunks`` (y, x) whose plan of ``block``-px blocks cannot run."""
    if min(shape) < 1:
        raise UNetError(f"input {name}: expected an image of at least 1 x 1 px, found {shape[0]} x {shape[1]}")
    if min(chunks) < 1:
        raise UNetError(f"input {name}: expected chunks of at least 1 px, found {chunks[0]} x {chunks[1]}")
    per_block = math.prod(-(-min(block, n) // c) for n, c in zip(shape, chunks))
    if per_block > MAX_CHUNKS_PER_BLOCK:
        raise UNetError(f"input {name}: expected at most {MAX_CHUNKS_PER_BLOCK} input chunks per {block}-px "
                        f"block, found chunks of {chunks[0]} x {chunks[1]} px ({per_block} per block); "
                        "rechunk the input (e.g. 512-px chunks) or pass a smaller --block")
    blocks = math.prod(-(-n // block) for n in shape)
    if blocks > MAX_BLOCKS:
        raise UNetError(f"input {name}: expected a plan of at most {MAX_BLOCKS} blocks, found {blocks} blocks "
                        f"of {block} px for {shape[0]} x {shape[1]} px; pass a larger --block (at most "
                        f"{MAX_BLOCK}) or segment a coarser --level")
