"""The one place a device name becomes a torch device."""

from __future__ import annotations

import torch

from unet.errors import UNetError


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None`` or ``auto`` is CUDA when available, else the CPU; asking for a CUDA device that is not there
    is an error."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unknown = UNetError(f"device: expected cpu, cuda, cuda:N or auto, found {name!r}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise unknown from None
    if device.type not in ("cpu", "cuda"):
        raise unknown
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UNetError(f"device: {name} requested, but torch finds {torch.cuda.device_count()} CUDA device(s); "
                        "use --device cpu or auto")
    return device
