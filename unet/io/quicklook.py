"""A small PNG of a label image, for checking a night's run at a glance."""

from __future__ import annotations

import numpy as np
from PIL import Image

from unet.io.ome import _PALETTE

MAX_SIDE = 1024


def save_quicklook(labels: np.ndarray, path: str) -> None:
    """Write ``labels`` (h, w) as a colour PNG, at most ``MAX_SIDE`` pixels a side (nearest sampling)."""
    step = max(1, -(-max(labels.shape) // MAX_SIDE))
    small = labels[::step, ::step]
    palette = np.array([rgba[:3] for rgba in _PALETTE], np.uint8)
    palette[0] = (20, 20, 20)
    Image.fromarray(palette[small % len(palette)]).save(path)
