"""Blocks with no data, predicted without running the network over them.

Zarr stores no chunk that is entirely fill value, so when every stored chunk (shard) that a block's read
window touches is missing, the block's whole input is the fill value, and its prediction is that of a
constant image. That prediction is computed once per worker and fill value by the same predictor — never
assumed to be background. It is not uniform: the up-convolutions (stride 2) make it periodic on the
pooling grid, and tiles sit on that grid counted from the mosaic's origin, so it is kept as one grid cell
and laid out by each pixel's phase. It is used only when it is periodic indeed (a valid-padded network; a
same-padded one sees its zero padding and is not). The check asks for the window's middle chunk first (one
request decides for a block with data), then for the others all at once. Only Zarr arrays in a local or fsspec store qualify: a TIFF's tiles (and any
other store) are always read and predicted.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Hashable

import numpy as np
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from unet.infer.predict import TilePredictor, tile_outputs
from unet.infer.tiling import Reader, mirrored_box
from unet.infer.tta import FLIPS, Flip, input_window, mean_over_flips
from unet.io.source import Source

PERIODIC_TOLERANCE = 1e-6  # largest deviation of a constant tile's output from its repeated grid cell


class EmptyBlocks:
    """Per worker: which blocks of a source hold nothing but fill value, and their prediction (the mean
    over ``flips`` with test-time flips: a flipped constant image is the same image, its grid anchored at
    the other edge)."""

    def __init__(self, predictor: TilePredictor, flips: tuple[Flip, ...] = FLIPS[:1]):
        self.predictor, self.flips = predictor, flips
        self._lock = threading.Lock()
        self._fill: dict[tuple, np.ndarray | None] = {}

    def prediction(self, source: Source, rows: tuple[int, int], cols: tuple[int, int],
                   wrap: Callable[[Reader], Reader], predictor: TilePredictor | None = None,
                   wrap_key: Hashable = None) -> np.ndarray | None:
        """Probabilities (K, h, w) of the output rows x cols when its input is all fill value, else None.
        ``wrap`` is what the worker applies to every reader (e.g. rescaling), ``wrap_key`` what tells one
        wrap from another; ``predictor`` (default: the one given at start) decides the read window. The
        prediction of a fill value is computed once per fill value, dtype and wrap, not once per input:
        every valid tile gives the same grid cell."""
        cell = self._fill_prediction(source, wrap, wrap_key)
        if cell is None:
            return None
        window = mirrored_box(source.shape, *input_window(predictor or self.predictor, self.flips, source.shape,
                                                          rows, cols))
        if not window_is_missing(source, *window):
            return None
        return mean_over_flips(self.flips, source.shape, rows, cols, lambda _, __, frows, fcols:
                               periodic(cell, frows, fcols))

    def _fill_prediction(self, source: Source, wrap: Callable[[Reader], Reader],
                         wrap_key: Hashable) -> np.ndarray | None:
        if not qualifies(source):
            return None
        fill = np.asarray(source.array.fill_value).astype(source.dtype)
        key = (fill.tobytes(), source.dtype.str, source.channels, wrap_key)
        with self._lock:
            if key not in self._fill:
                self._fill[key] = constant_prediction(self.predictor, source, wrap)
            return self._fill[key]


def qualifies(source: Source) -> bool:
    """Whether missing chunks of ``source`` mean a finite fill value: a Zarr array in its own store."""
    array = source.array
    if not isinstance(array.store_path.store, (LocalStore, FsspecStore)) or array.fill_value is None:
        return False
    return bool(np.isfinite(np.asarray(array.fill_value, dtype=np.float64)).all())


def constant_prediction(predictor: TilePredictor, source: Source, wrap: Callable[[Reader], Reader]) -> np.ndarray | None:
    """Probabilities (K, g, g) of one pooling-grid cell of a tile of constant fill value, or None when the
    tile's output does not repeat that cell (the network then sees more than its input, e.g. padding)."""
    fill = np.asarray(source.array.fill_value).astype(source.dtype)

    def constant(rows: slice, cols: slice) -> np.ndarray:
        return np.full((source.channels, rows.stop - rows.start, cols.stop - cols.start), fill, source.dtype)

    predictor = smallest_tile(predictor)
    n = predictor.out_tile
    probs = predictor.predict_region(wrap(constant), (n, n), (0, n), (0, n))       # (K, n, n)
    cell = probs[:, :predictor.pooling_period, :predictor.pooling_period].copy()                        # (K, g, g)
    return cell if np.abs(probs - periodic(cell, (0, n), (0, n))).max() <= PERIODIC_TOLERANCE else None


def smallest_tile(predictor: TilePredictor) -> TilePredictor:
    """The predictor on its smallest tile whose output spans 4 grid cells (enough to see whether it repeats
    one): every valid tile gives the same cell, and the worker's own tile may be large (a pass of the memory
    rule's 1444-px tile took 1.3 s on 2 cores, 8 % of a 17 Mpx job). A compiled network keeps its tile:
    a new shape would compile it again."""
    if predictor.network is not predictor.model:
        return predictor
    fits = [tile for tile, out in tile_outputs(predictor.model, predictor.tile) if out >= 4 * predictor.pooling_period]
    return predictor.with_geometry(fits[0], 1) if fits else predictor


def periodic(cell: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """The output rectangle rows x cols (mosaic coordinates) of a prediction that repeats ``cell``
    (K, g, g) from the mosaic's origin."""
    g = cell.shape[-1]
    y, x = rows[0] % g, cols[0] % g
    reps = (1, -(-(rows[1] - rows[0] + y) // g), -(-(cols[1] - cols[0] + x) // g))
    return np.tile(cell, reps)[:, y:y + rows[1] - rows[0], x:x + cols[1] - cols[0]]  # (K, h, w)


def window_is_missing(source: Source, rows: tuple[int, int], cols: tuple[int, int]) -> bool:
    """Whether no chunk (shard) of ``source`` overlapping the in-bounds window rows x cols is stored."""
    array = source.array
    store, prefix = array.store_path.store, array.store_path.path
    keys = [f"{prefix}/{key}" if prefix else key for key in chunk_keys(source, rows, cols)]

    async def any_stored() -> bool:
        # The middle chunk first: a block with data nearly always has it, and one request then decides.
        middle = keys.pop(len(keys) // 2)
        return await store.exists(middle) or any(await asyncio.gather(*(store.exists(key) for key in keys)))
    return not sync(any_stored())


def chunk_keys(source: Source, rows: tuple[int, int], cols: tuple[int, int]) -> list[str]:
    """Storage keys of every chunk (every shard, when sharded) that holds a pixel of rows x cols, over
    all channels; other axes (singleton t, z) at index 0."""
    array = source.array
    unit = array.shards or array.chunks
    spans = []
    for role, size, extent in zip(source.roles, unit, array.shape):
        lo, hi = rows if role == "y" else cols if role == "x" else (0, extent) if role == "c" else (0, 1)
        spans.append(range(lo // size, -(-hi // size)))
    return [array.metadata.encode_chunk_key(coords) for coords in itertools.product(*spans)]
