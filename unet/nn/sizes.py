"""Size arithmetic of a U-Net along one axis, without building the network: which input sizes are
valid, what they yield, the margins lost, and the pooling period 2**(depth-1) that tile origins sit on."""

from __future__ import annotations

from typing import Literal

from unet.errors import UNetError
from unet.nn.config import UNetConfig


class SizeArithmetic:
    """Sizes along one axis: which inputs are valid, what they yield, and the margins lost."""

    def __init__(self, config: UNetConfig):
        self.depth = config.depth
        self.valid = config.padding == "valid"
        self.upsample_conv = config.upsampling == "upsample_conv"
        self.period = 2 ** (config.depth - 1)                  # pooling period: shifts that keep it equivariant
        self.min_input = self._smallest_valid_input()
        before = self._left_margin()
        self.margins = (before, self.min_input - self.output_size(self.min_input) - before)

    def _walk(self, n: int) -> int | None:
        """Output size for input ``n``, or None when a pooling sees an odd size or a size drops below 1."""
        if not self.valid:
            return n if n >= self.period and n % self.period == 0 else None
        s = n
        for level in range(self.depth):
            s -= 4                                             # two unpadded 3x3 convolutions
            if s < 1:
                return None
            if level < self.depth - 1:
                if s % 2:
                    return None
                s //= 2                                        # 2x2 max-pool
        for _ in range(self.depth - 1):
            s = 2 * s - 1 if self.upsample_conv else 2 * s     # up-convolution
            s -= 4
            if s < 1:
                return None
        return s

    def _smallest_valid_input(self) -> int:
        n = 1
        while self._walk(n) is None:
            n += 1
        return n

    def _left_margin(self) -> int:
        """Input pixels before output pixel 0: the convs on the finest level plus the crop of its skip."""
        if not self.valid:
            return 0
        n = self.min_input
        up = self.output_size(n) + 4                           # size of the last up-convolution's output
        return 2 + (n - 4 - up) // 2 + 2                       # conv+conv, skip crop, conv+conv

    def output_size(self, n: int) -> int:
        out = self._walk(n)
        if out is None:
            lo, hi = self._neighbours(n)
            raise UNetError(f"input size {n} is not valid for this U-Net; nearest valid sizes: "
                             f"{'none' if lo is None else lo} and {hi}")
        return out

    def input_size(self, n: int) -> int:
        """The input size that yields exactly ``n`` output pixels."""
        total = self.margins[0] + self.margins[1]
        if n >= 1 and self._walk(n + total) == n:
            return n + total
        below = [m for m in range(n - 1, 0, -1) if self._walk(m + total) == m][:1]
        above = next(m for m in range(max(n + 1, 1), n + 2 * self.period + 2) if self._walk(m + total) == m)
        raise UNetError(f"output size {n} cannot be produced exactly by this U-Net; nearest producible "
                         f"sizes: {below[0] if below else 'none'} and {above}")

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        """Every valid input size in [lo, hi]."""
        return [n for n in range(max(lo, self.min_input), hi + 1) if self._walk(n) is not None]

    def round_input_size(self, n: int, direction: Literal["down", "up"] = "down") -> int:
        """The nearest valid input size <= n ("down") or >= n ("up")."""
        lo, hi = self._neighbours(n, inclusive=True)
        if direction == "up":
            return hi
        if lo is None:
            raise UNetError(f"no valid input size <= {n}; the smallest is {self.min_input}")
        return lo

    def _neighbours(self, n: int, inclusive: bool = False) -> tuple[int | None, int]:
        start = n if inclusive else n - 1
        lo = next((m for m in range(start, self.min_input - 1, -1) if self._walk(m) is not None), None)
        start = n if inclusive else n + 1
        hi = next(m for m in range(max(start, self.min_input), start + 2 * self.period + self.min_input)
                  if self._walk(m) is not None)
        return lo, hi
