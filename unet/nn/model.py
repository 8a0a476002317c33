"""The U-Net of Ronneberger, Fischer and Brox (2015): its blocks and their assembly.

With ``padding="valid"`` every 3x3 convolution is unpadded, so the output is smaller than the input by a
fixed margin and an output pixel sees only real (or mirrored) input: the property that makes overlap-tile
prediction exact. ``padding="same"`` keeps input and output the same size.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from unet.nn.config import InputContract, UNetConfig, Upsampling
from unet.nn.sizes import SizeArithmetic


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
        self.up: nn.Module
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
    """U-Net with configurable depth, width, channels, classes, padding and up-sampling: ``UNet(config)``,
    or ``UNet(depth=3, ...)`` with any of ``UNetConfig``'s fields (over ``config`` when both are given)."""

    def __init__(self, config: UNetConfig | None = None, /, **fields: Any):
        super().__init__()
        if config is None and "input" not in fields:  # the default contract of the network's channels
            fields["input"] = InputContract(channels=fields.get("in_channels", 1))
        c = self.config = replace(config, **fields) if config is not None else UNetConfig(**fields)
        pad = 1 if c.padding == "same" else 0
        widths = [c.base_channels * 2**i for i in range(c.depth)]
        self.inc = DoubleConv(c.in_channels, widths[0], pad, c.batch_norm)
        self.downs = nn.ModuleList(Down(a, b, pad, c.batch_norm) for a, b in zip(widths, widths[1:]))
        self.dropout = nn.Dropout2d(c.dropout) if c.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(Up(b, a, pad, c.upsampling, c.batch_norm)
                                 for a, b in reversed(list(zip(widths, widths[1:]))))
        self.outc = nn.Conv2d(widths[0], c.num_classes, 1)
        self.sizes = SizeArithmetic(c)
        self.apply(_he_init)

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
    def pooling_period(self) -> int:
        """2**(depth-1): the shifts that keep the network translation-equivariant (16 for the paper's)."""
        return self.sizes.period

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


