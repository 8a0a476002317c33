"""Geometry of overlap-tile prediction: where tiles go, and reading windows mirrored at the image border.

Coordinates are in the whole image's (the mosaic's) pixel frame. A tile is named by the origin of its
*output*; its input starts ``margin`` pixels before. Tile origins sit on the pooling grid, counted from the
image origin, so every tile computes the same translation-equivariant function and seams vanish.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from unet.errors import UNetError

Reader = Callable[[slice, slice], np.ndarray]
"""Reads the in-bounds rectangle (rows, cols) of an image as a (C, h, w) array."""


def tile_origins(start: int, stop: int, out_tile: int, period: int) -> list[int]:
    """Output origins of tiles of ``out_tile`` pixels covering [start, stop), each a multiple of the
    pooling ``period``.

    Tiles step by the largest multiple of ``period`` that their output covers; the last one is pulled back
    (staying on the pooling grid) so that it overshoots ``stop`` as little as possible.
    """
    if out_tile < period:
        raise UNetError(f"tile output of {out_tile} px is smaller than the pooling period of {period} px")
    step = out_tile // period * period
    first = start // period * period
    origins = list(range(first, stop - out_tile + step, step)) or [first]
    origins[-1] = max(first, min(origins[-1], -(-(stop - out_tile) // period) * period))
    return origins


def reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer positions into [0, n) by mirroring without repeating the edge (numpy "reflect")."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index < n, index, period - index)


def mirrored_box(shape: tuple[int, int], rows: tuple[int, int],
                 cols: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The in-bounds rectangle that ``read_mirrored`` reads for the window [rows) x [cols): all of the
    window's pixels, mirrored into the image, lie inside it."""
    ri, ci = reflect(np.arange(*rows), shape[0]), reflect(np.arange(*cols), shape[1])
    return (int(ri.min()), int(ri.max()) + 1), (int(ci.min()), int(ci.max()) + 1)


def read_mirrored(read: Reader, shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """The window [rows) x [cols) of an image of ``shape`` (h, w), mirrored where it leaves the image.

    Only the in-bounds bounding box of the window is read; mirroring happens at the image's own borders.
    A window that leaves the image by less than its in-bounds part is padded by slices (``np.pad``: 2 ms
    for a 4096-px block, where gathering every pixel by its index took 58 ms); a farther one, which mirrors
    more than once, is gathered one axis at a time.
    """
    (r0, r1), (c0, c1) = mirrored_box(shape, rows, cols)
    box = read(slice(r0, r1), slice(c0, c1))                     # (C, r1-r0, c1-c0)
    pads = (0, 0), _overhang(rows, shape[0]), _overhang(cols, shape[1])
    if pads[1] == pads[2] == (0, 0):
        return box
    if max(pads[1]) < _inside(rows, shape[0]) and max(pads[2]) < _inside(cols, shape[1]):
        # Each overhang mirrors once, inside the window's in-bounds part, which is then the box.
        return np.pad(box, pads, mode="reflect")                 # (C, len(rows), len(cols))
    ri, ci = reflect(np.arange(*rows), shape[0]) - r0, reflect(np.arange(*cols), shape[1]) - c0
    return np.take(np.take(box, ri, axis=1), ci, axis=2)         # (C, len(rows), len(cols))


def _overhang(span: tuple[int, int], n: int) -> tuple[int, int]:
    """How far [start, stop) reaches before 0 and past n."""
    return max(0, -span[0]), max(0, span[1] - n)


def _inside(span: tuple[int, int], n: int) -> int:
    """How many of [start, stop) lie in [0, n)."""
    return min(span[1], n) - max(span[0], 0)
