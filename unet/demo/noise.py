"""What the synthetic scenes share: the ``Scene`` type, seeds, argument checks and smooth random fields.

Every scene is a pure function of its shape, its parameters and the random generator (or integer seed) it is
given. Objects are painted as small stamps into windows around them; smooth fields (illumination, sea colour,
clouds) come from a random coarse grid interpolated by two small matrix products; nothing loops over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet.errors import UNetError

Seed = np.random.Generator | int


@dataclass(frozen=True)
class Scene:
    """An image with its ground truth: a class mask and instance labels (0 is background in both)."""

    image: np.ndarray                # (H, W) gray or (3, H, W) RGB
    mask: np.ndarray                 # (H, W) uint8 class index, == (instances > 0)
    instances: np.ndarray            # (H, W) uint32, objects numbered 1..N
    class_names: tuple[str, ...]


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(n) != n or n < 1 for n in shape):
        raise UNetError(f"scene shape: expected two positive integers (height, width), found {shape!r}")
    return int(shape[0]), int(shape[1])


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UNetError(f"{name}: expected a number in [{low}, {high}], found {value!r}")


def _interpolation_matrix(n: int, cell: float) -> np.ndarray:
    """(n, nodes) Gaussian weights from pixels to a coarse grid of nodes ``cell`` pixels apart (border incl.)."""
    nodes = int(np.ceil(n / cell)) + 4
    position = np.arange(n, dtype=np.float32) / cell + 2.0             # (n,) in node units
    return np.exp(-0.5 * ((position[:, None] - np.arange(nodes)) / 0.7) ** 2, dtype=np.float32)


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell: float, octaves: int = 1) -> np.ndarray:
    """A smooth random field with zero mean and features about ``cell`` pixels wide.

    With one octave its variance is 1 at every pixel. Each further octave adds features twice as wide and
    twice as strong, which makes the field fractal (cloud-like).
    """
    rows = _interpolation_matrix(shape[0], cell)                      # (H, h)
    cols = _interpolation_matrix(shape[1], cell)                      # (W, w)
    grid = rng.standard_normal((rows.shape[1], cols.shape[1]), dtype=np.float32)
    for octave in range(1, octaves):
        step = 2**octave
        coarse = rng.standard_normal((grid.shape[0] // step + 2, grid.shape[1] // step + 2), dtype=np.float32)
        grid += step * ndimage.zoom(coarse, step, order=1)[:grid.shape[0], :grid.shape[1]]
    field = rows @ grid @ cols.T                                      # (H, W)
    field /= np.sqrt((rows**2).sum(1))[:, None]
    field /= np.sqrt((cols**2).sum(1))[None, :]
    return field


def to_unsigned(image: np.ndarray, dtype: type) -> np.ndarray:
    """Round and clip a float image whose range is that of ``dtype``."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(image, out=image), 0, top, out=image).astype(dtype)


def ground_truth(instances: np.ndarray) -> np.ndarray:
    return (instances > 0).astype(np.uint8)


def affine(field: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """``mean + scale * field``, in place."""
    field *= scale
    field += mean
    return field
