"""The U-Net of Ronneberger, Fischer and Brox (2015), and its size arithmetic.

With ``padding="valid"`` every 3x3 convolution is unpadded, so the output is smaller than the input by a
fixed margin and an output pixel sees only real (or mirrored) input: the property that makes overlap-tile
prediction exact. ``padding="same"`` keeps input and output the same size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

Padding = Literal["valid", "same"]
Upsampling = Literal["transpose", "upsample_conv"]


@dataclass(frozen=True)
class InputContract:
    """What the network expects: channel count, the dtype and value range it was trained on, and the
    per-channel normalisation ``(x - offset) / scale`` applied before the first convolution."""

    channels: int = 1
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None
    offset: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.offset) == 1 and self.channels > 1:
            object.__setattr__(self, "offset", self.offset * self.channels)
        if len(self.scale) == 1 and self.channels > 1:
            object.__setattr__(self, "scale", self.scale * self.channels)
        if len(self.offset) != self.channels or len(self.scale) != self.channels:
            raise ValueError(
                f"input contract: expected {self.channels} offsets and scales (one per channel), "
                f"found {len(self.offset)} offsets and {len(self.scale)} scales"
            )
        if any(s == 0 or not math.isfinite(s) for s in self.scale):
            raise ValueError(f"input contract: scales must be finite and non-zero, found {self.scale}")


@dataclass(frozen=True)
class UNetConfig:
    """Every setting of a U-Net: enough to rebuild it from a checkpoint."""

    in_channels: int = 1
    num_classes: int = 2
    depth: int = 5
    base_channels: int = 64
    padding: Padding = "valid"
    upsampling: Upsampling = "transpose"
    batch_norm: bool = False
    dropout: float = 0.0
    input: InputContract = field(default_factory=InputContract)

    def __post_init__(self) -> None:
        checks = [
            (self.in_channels >= 1, "in_channels >= 1", self.in_channels),
            (self.num_classes >= 2, "num_classes >= 2", self.num_classes),
            (2 <= self.depth <= 8, "depth between 2 and 8", self.depth),
            (self.base_channels >= 1, "base_channels >= 1", self.base_channels),
            (self.padding in ("valid", "same"), "padding 'valid' or 'same'", repr(self.padding)),
            (self.upsampling in ("transpose", "upsample_conv"), "upsampling 'transpose' or 'upsample_conv'",
             repr(self.upsampling)),
            (0.0 <= self.dropout < 1.0, "dropout in [0, 1)", self.dropout),
        ]
        for ok, expected, found in checks:
            if not ok:
                raise ValueError(f"UNet config: expected {expected}, found {found}")
        if self.input.channels != self.in_channels:
            raise ValueError(
                f"UNet config: the input contract has {self.input.channels} channels, "
                f"the network {self.in_channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Rebuild a config from ``to_dict`` output; an unknown key is an error."""
        _refuse_unknown_keys(cls, data, "UNet config")
        data = dict(data)
        contract = dict(data.pop("input", {}))
        _refuse_unknown_keys(InputContract, contract, "UNet config, input contract")
        for key in ("value_range", "offset", "scale"):
            if contract.get(key) is not None:
                contract[key] = tuple(contract[key])
        return cls(**data, input=InputContract(**contract))


def _refuse_unknown_keys(cls: type, data: dict[str, Any], what: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}; expected some of {sorted(known)}")


class DoubleConv(nn.Sequential):
    """(3x3 conv => [BN] => ReLU) x 2, unpadded in valid mode."""

    def __init__(self, cin: int, cout: int, pad: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, 3, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pool => DoubleConv."""

    def __init__(self, cin: int, cout: int, pad: int, batch_norm: bool):
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout, pad, batch_norm))


class Up(nn.Module):
    """Up-convolution halving the channels => centre-crop of the skip and concatenation => DoubleConv."""

    def __init__(self, cin: int, cout: int, pad: int, upsampling: Upsampling, batch_norm: bool):
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        else:  # nearest x2 then a 2x2 conv: unpadded in valid mode, or exact tiling breaks
            same_pad = nn.ZeroPad2d((0, 1, 0, 1)) if pad else nn.Identity()
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), same_pad,
                                    nn.Conv2d(cin, cout, 2), nn.ReLU(inplace=True))
        self.conv = DoubleConv(2 * cout, cout, pad, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)                                         # (B, C/2, h', w')
        return self.conv(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))  # (B, C, h', w') in


def center_crop(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Crop the last two dims of ``x`` to ``size``, the extra split floor-before / ceil-after."""
    dy, dx = x.shape[-2] - size[0], x.shape[-1] - size[1]
    return x[..., dy // 2: dy // 2 + size[0], dx // 2: dx // 2 + size[1]]  # (B, C, *size)


class UNet(nn.Module):
    """U-Net with configurable depth, width, channels, classes, padding and up-sampling."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 5, base_channels: int = 64,
                 padding: Padding = "valid", upsampling: Upsampling = "transpose", batch_norm: bool = False,
                 dropout: float = 0.0, input: InputContract | None = None):
        super().__init__()
        contract = input or InputContract(channels=in_channels)
        self.config = UNetConfig(in_channels, num_classes, depth, base_channels, padding, upsampling,
                                 batch_norm, dropout, contract)
        pad = 1 if padding == "same" else 0
        widths = [base_channels * 2**i for i in range(depth)]
        self.inc = DoubleConv(in_channels, widths[0], pad, batch_norm)
        self.downs = nn.ModuleList(Down(a, b, pad, batch_norm) for a, b in zip(widths, widths[1:]))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(Up(b, a, pad, upsampling, batch_norm)
                                 for a, b in reversed(list(zip(widths, widths[1:]))))
        self.outc = nn.Conv2d(widths[0], num_classes, 1)
        self.sizes = SizeArithmetic(self.config)
        self.apply(_he_init)

    @classmethod
    def from_config(cls, config: UNetConfig) -> UNet:
        c = config
        return cls(c.in_channels, c.num_classes, c.depth, c.base_channels, c.padding, c.upsampling,
                   c.batch_norm, c.dropout, c.input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, h, w) for a normalised input (B, in_channels, H, W)."""
        skips = [self.inc(x)]                                  # (B, 64, H-4, W-4) in valid mode
        for down in self.downs:
            skips.append(down(skips[-1]))                      # (B, 2C, h/2-4, w/2-4)
        x = self.dropout(skips.pop())                          # bottom of the U, end of the contracting path
        for up in self.ups:
            x = up(x, skips.pop())                             # (B, C/2, 2h-4, 2w-4)
        return self.outc(x)                                    # (B, classes, h, w)

    # -- size arithmetic, delegated so that it can be used without building the network -----------
    @property
    def margin(self) -> int:
        """Output pixels lost on the top/left side (92 for the paper's network)."""
        return self.sizes.margins[0]

    @property
    def margins(self) -> tuple[int, int]:
        """Pixels lost (before, after) along each axis; equal except for valid ``upsample_conv``."""
        return self.sizes.margins

    @property
    def grid(self) -> int:
        """Pooling grid 2**(depth-1): shifts that keep the network translation-equivariant."""
        return self.sizes.grid

    def output_size(self, n: int) -> int:
        return self.sizes.output_size(n)

    def input_size(self, n: int) -> int:
        return self.sizes.input_size(n)

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        return self.sizes.valid_input_sizes(lo, hi)

    def round_input_size(self, n: int, direction: Literal["down", "up"] = "down") -> int:
        return self.sizes.round_input_size(n, direction)


def _he_init(module: nn.Module) -> None:
    """He initialisation, std sqrt(2/N) with N the inputs of one unit, as the paper prescribes."""
    if isinstance(module, nn.ConvTranspose2d):  # a 2x2, stride-2 up-conv: each output sees in_channels inputs
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_channels))
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class SizeArithmetic:
    """Sizes along one axis: which inputs are valid, what they yield, and the margins lost."""

    def __init__(self, config: UNetConfig):
        self.depth = config.depth
        self.valid = config.padding == "valid"
        self.upsample_conv = config.upsampling == "upsample_conv"
        self.grid = 2 ** (config.depth - 1)
        self.min_input = self._smallest_valid_input()
        before = self._left_margin()
        self.margins = (before, self.min_input - self._walk(self.min_input) - before)

    def _walk(self, n: int) -> int | None:
        """Output size for input ``n``, or None when a pooling sees an odd size or a size drops below 1."""
        if not self.valid:
            return n if n >= self.grid and n % self.grid == 0 else None
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
        out = self._walk(n)
        up = out + 4                                           # size of the last up-convolution's output
        return 2 + (n - 4 - up) // 2 + 2                       # conv+conv, skip crop, conv+conv

    def output_size(self, n: int) -> int:
        out = self._walk(n)
        if out is None:
            lo, hi = self._neighbours(n)
            raise ValueError(f"input size {n} is not valid for this U-Net; nearest valid sizes: "
                             f"{'none' if lo is None else lo} and {hi}")
        return out

    def input_size(self, n: int) -> int:
        """The input size that yields exactly ``n`` output pixels."""
        total = self.margins[0] + self.margins[1]
        if n >= 1 and self._walk(n + total) == n:
            return n + total
        below = [m for m in range(n - 1, 0, -1) if self._walk(m + total) == m][:1]
        above = next(m for m in range(max(n + 1, 1), n + 2 * self.grid + 2) if self._walk(m + total) == m)
        raise ValueError(f"output size {n} cannot be produced exactly by this U-Net; nearest producible "
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
            raise ValueError(f"no valid input size <= {n}; the smallest is {self.min_input}")
        return lo

    def _neighbours(self, n: int, inclusive: bool = False) -> tuple[int | None, int]:
        start = n if inclusive else n - 1
        lo = next((m for m in range(start, self.min_input - 1, -1) if self._walk(m) is not None), None)
        start = n if inclusive else n + 1
        hi = next(m for m in range(max(start, self.min_input), start + 2 * self.grid + self.min_input)
                  if self._walk(m) is not None)
        return lo, hi
