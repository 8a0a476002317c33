"""The network's one config: every setting of a U-Net and the input contract it was trained with.

``UNetConfig`` is the only place the network's fields are listed: ``UNet(config)`` builds from it, training
takes one, checkpoints store ``to_dict()`` and rebuild with ``from_dict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from unet.errors import UNetError

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
            raise UNetError(
                f"input contract: expected {self.channels} offsets and scales (one per channel), "
                f"found {len(self.offset)} offsets and {len(self.scale)} scales"
            )
        if any(s == 0 or not math.isfinite(s) for s in self.scale):
            raise UNetError(f"input contract: scales must be finite and non-zero, found {self.scale}")


@dataclass(frozen=True)
class UNetConfig:
    """Every setting of a U-Net: enough to rebuild it from a checkpoint. ``depth`` counts the network's
    resolution levels (5 in the paper)."""

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
                raise UNetError(f"UNet config: expected {expected}, found {found}")
        if self.input.channels != self.in_channels:
            raise UNetError(
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
        raise UNetError(f"{what}: unknown keys {unknown}; expected some of {sorted(known)}")
