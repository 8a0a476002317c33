"""Progress of a run as the driver sees it: pixels and blocks done, Mpx/s and ETA."""

from __future__ import annotations

import sys
import time
from collections import Counter

from tqdm import tqdm

from unet.job.spec import BlockStats

LOG_EVERY_S = 30.0


class Progress:
    """A bar on a terminal, a log line every 30 s otherwise; sums the actors' network time too."""

    def __init__(self, total_pixels: int, done_pixels: int, blocks: int, enabled: bool | None):
        self.bar_enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.blocks, self.blocks_done = total_pixels, done_pixels, blocks, 0
        self.start = self.last_log = time.monotonic()
        self.new_pixels = 0
        self.network_s = self.network_cpu_s = 0.0  # time in the workers' forward passes
        self.tiles_used: Counter[int] = Counter()   # blocks run through the network, by the tile chosen for them
        self.bar = tqdm(total=total_pixels / 1e6, initial=done_pixels / 1e6, unit="Mpx", unit_scale=False,
                        disable=not self.bar_enabled, dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} Mpx [{elapsed}<{remaining}, {rate_fmt}]")

    def update(self, pixels: int, stats: BlockStats) -> None:
        self.network_s += stats.network_s
        self.network_cpu_s += stats.network_cpu_s
        if stats.tile is not None:
            self.tiles_used[stats.tile] += 1
        self.done += pixels
        self.new_pixels += pixels
        self.blocks_done += 1
        self.bar.update(pixels / 1e6)
        now = time.monotonic()
        if not self.bar_enabled and now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            print(f"unet: {self.blocks_done}/{self.blocks} blocks, {self.done / 1e6:.1f}/{self.total / 1e6:.1f} Mpx, "
                  f"{self.rate:.2f} Mpx/s, ETA {self.eta:.0f} s", file=sys.stderr, flush=True)

    @property
    def rate(self) -> float:
        return self.new_pixels / 1e6 / max(time.monotonic() - self.start, 1e-9)

    @property
    def eta(self) -> float:
        return (self.total - self.done) / 1e6 / max(self.rate, 1e-9)

    def close(self) -> None:
        self.bar.close()
