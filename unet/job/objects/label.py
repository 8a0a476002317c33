"""Per-block labelling (actor side): a block's objects as local ids and their ``BlockObjects`` summary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unet.job.objects.summary import FACES, BlockObjects

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_block(classes: np.ndarray, probability: np.ndarray, object_classes: Sequence[int],
                rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, BlockObjects]:
    """Label the objects of one block of the class image; return the (h, w) int32 local ids and the summary.

    ``probability`` is the (h, w) probability of each pixel's own class (the softmax maximum).
    """
    local = np.zeros(classes.shape, dtype=np.int32)                            # (h, w)
    class_of: list[int] = []
    for c in object_classes:
        labelled, n = ndimage.label(classes == c, structure=EIGHT_CONNECTED)
        local[labelled > 0] = labelled[labelled > 0] + len(class_of)
        class_of += [c] * n
    return local, summarize(local, np.array(class_of, dtype=np.uint8), probability, rows, cols)


def summarize(local: np.ndarray, classes: np.ndarray, probability: np.ndarray | None,
              rows: tuple[int, int], cols: tuple[int, int]) -> BlockObjects:
    """Per-object sums of a block's local ids 1..n (n = len(classes)) and its faces (no probability sums
    without a ``probability``)."""
    n = len(classes)
    flat = local.ravel()
    fg = np.flatnonzero(flat)                                                   # foreground, raster order
    ids = flat[fg]
    fy, fx = np.divmod(fg, local.shape[1])                                      # block coordinates
    area = np.bincount(ids, minlength=n + 1)[1:]
    first, last = reduce_at(np.minimum, ids, fg, n, flat.size), reduce_at(np.maximum, ids, fg, n, -1)
    y0, x0 = rows[0], cols[0]
    return BlockObjects(
        rows=rows, cols=cols, classes=classes, area=area.astype(np.int64),
        sum_y=int_sums(ids, fy, n) + y0 * area, sum_x=int_sums(ids, fx, n) + x0 * area,
        first_x=first % local.shape[1] + x0,
        y0=first // local.shape[1] + y0, y1=last // local.shape[1] + 1 + y0,    # raster order: rows are sorted
        x0=reduce_at(np.minimum, ids, fx, n, local.shape[1]) + x0,
        x1=reduce_at(np.maximum, ids, fx, n, -1) + 1 + x0,
        sum_prob=np.zeros(n) if probability is None else
        np.bincount(ids, weights=probability.ravel()[fg], minlength=n + 1)[1:],
        faces={name: _sparse(face) for name, face in
               zip(FACES, (local[0], local[-1], local[:, 0], local[:, -1]))})


def reduce_at(ufunc: np.ufunc, ids: np.ndarray, values: np.ndarray, n: int, start: int) -> np.ndarray:
    """Per-id minimum or maximum of ``values`` for ids 1..n (numpy's unbuffered ufunc.at: one pass, no
    sort, no slice object per id as ``ndimage.find_objects`` makes)."""
    out = np.full(n + 1, start, dtype=np.int64)
    ufunc.at(out, ids, values.astype(np.int64, copy=False))  # values of another dtype: 25x slower
    return out[1:]


def int_sums(ids: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Exact per-id sums of block coordinates (bincount adds in float64: exact below 2^53, far above a
    block's sums, which are taken relative to the block's origin for that reason)."""
    return np.rint(np.bincount(ids, weights=values, minlength=n + 1)[1:]).astype(np.int64)


def _sparse(face: np.ndarray) -> np.ndarray:
    """Only the foreground of a face: (2, m) offsets and local ids. Most of a face is background."""
    offsets = np.flatnonzero(face)
    return np.stack([offsets, face[offsets]]).astype(np.int64)
