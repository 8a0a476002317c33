"""The seam merge (driver side): block summaries joined into the mosaic's objects, numbered 1..N, and
the table users query. See ``unet.job.objects.summary`` for why the result does not depend on the blocks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from unet.job.objects.summary import STATS, BlockObjects, GrownSums


@dataclass(frozen=True)
class MergedObjects:
    """The whole mosaic's objects: one table row per global id 1..N, and per block the local -> global map."""

    table: dict[str, np.ndarray]   # columns "id", "class", "area", ..., each (N,), sorted by id
    luts: list[np.ndarray]         # per input block: (n_b + 1,) global id of local id k (0 -> 0, dropped -> 0)

    @property
    def count(self) -> int:
        return len(self.table["id"])


def id_dtype(count: int) -> np.dtype:
    """uint32 ids while they fit, else uint64."""
    return np.dtype(np.uint32 if count < 2**32 else np.uint64)


def merge_blocks(blocks: Sequence[BlockObjects], min_area: int = 0) -> MergedObjects:
    """Join the pieces of objects cut by block edges, drop objects below ``min_area`` pixels, number the
    rest by their first pixel, and total their statistics."""
    offsets = np.cumsum([0] + [b.count for b in blocks])
    stats = {name: np.concatenate([getattr(b, name) for b in blocks]) if blocks else np.zeros(0)
             for name in STATS}
    pairs = _touching_pairs(blocks, offsets, stats["classes"])
    n, component = connected_components(
        coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(offsets[-1],) * 2), directed=False)
    table, order = _totals(component, stats, min_area)
    global_of_component = np.zeros(n, dtype=np.int64)                        # dropped components stay 0
    global_of_component[order] = np.arange(1, len(order) + 1)
    dtype = id_dtype(len(table["id"]))
    node_ids = global_of_component[component].astype(dtype)
    luts = [np.concatenate([[0], node_ids[offsets[i]:offsets[i + 1]]]).astype(dtype) for i in range(len(blocks))]
    return MergedObjects(table, luts)


def _totals(component: np.ndarray, stats: dict, min_area: int) -> tuple[dict, np.ndarray]:
    """Per-component totals of the components of at least ``min_area`` pixels, in raster order of their
    first pixel; ``order`` lists those components in that (id) order."""
    nodes = np.lexsort((stats["first_x"], stats["y0"], component))           # by component, then first pixel
    starts = np.flatnonzero(np.r_[True, np.diff(component[nodes]) != 0]) if len(nodes) else np.zeros(0, int)

    def total(name: str, ufunc: np.ufunc = np.add) -> np.ndarray:
        return ufunc.reduceat(stats[name][nodes], starts) if len(nodes) else stats[name][:0]

    area = total("area")
    kept = np.flatnonzero(area >= min_area)
    first_y, first_x = stats["y0"][nodes[starts]], stats["first_x"][nodes[starts]]
    order = kept[np.lexsort((first_x[kept], first_y[kept]))]
    table = {"id": np.arange(1, len(order) + 1, dtype=np.int64),
             "class": stats["classes"][nodes[starts]][order].astype(np.uint8), "area": area[order],
             "sum_y": total("sum_y")[order], "sum_x": total("sum_x")[order],
             "y0": total("y0", np.minimum)[order], "x0": total("x0", np.minimum)[order],
             "y1": total("y1", np.maximum)[order], "x1": total("x1", np.maximum)[order],
             "sum_prob": total("sum_prob")[order], "prob_px": area[order]}
    return table, order


def _touching_pairs(blocks: Sequence[BlockObjects], offsets: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(m, 2) node pairs of same-class pieces that touch across a face or a corner of two blocks."""
    at = {(b.rows[0], b.cols[0]): i for i, b in enumerate(blocks)}
    ending_at = {(b.rows[0], b.cols[1]): i for i, b in enumerate(blocks)}
    found = [np.zeros((0, 2), dtype=np.int64)]
    for i, b in enumerate(blocks):
        below, right = at.get((b.rows[1], b.cols[0])), at.get((b.rows[0], b.cols[1]))
        below_right, below_left = at.get((b.rows[1], b.cols[1])), ending_at.get((b.rows[1], b.cols[0]))
        bottom = b.dense_face("bottom")
        if below is not None:
            found.append(_face_pairs(bottom, blocks[below].dense_face("top"), offsets[i], offsets[below]))
        if right is not None:
            found.append(_face_pairs(b.dense_face("right"), blocks[right].dense_face("left"),
                                     offsets[i], offsets[right]))
        if below_right is not None:  # corner to corner, diagonally
            found.append(_face_pairs(bottom[-1:], blocks[below_right].dense_face("top")[:1],
                                     offsets[i], offsets[below_right], shifts=(0,)))
        if below_left is not None:
            found.append(_face_pairs(bottom[:1], blocks[below_left].dense_face("top")[-1:],
                                     offsets[i], offsets[below_left], shifts=(0,)))
    pairs = np.concatenate(found)
    return pairs[classes[pairs[:, 0]] == classes[pairs[:, 1]]] if len(pairs) else pairs


def _face_pairs(a: np.ndarray, b: np.ndarray, offset_a: int, offset_b: int,
                shifts: tuple[int, ...] = (-1, 0, 1)) -> np.ndarray:
    """Node pairs of foreground pixels facing each other across a seam: pixel k of face ``a`` touches
    pixels k - 1, k and k + 1 of face ``b`` (8-connectivity)."""
    found = []
    for d in shifts:
        lo, hi = max(0, -d), len(a) - max(0, d)
        ia, ib = a[lo:hi], b[lo + d:hi + d]                                    # pixel k of a, k + d of b
        both = (ia > 0) & (ib > 0)
        found.append(np.stack([ia[both] - 1 + offset_a, ib[both] - 1 + offset_b], axis=1))
    return np.concatenate(found)


def object_columns(merged: MergedObjects, class_names: Sequence[str], scale: tuple[float, float],
                   translation: tuple[float, float]) -> dict[str, np.ndarray]:
    """The table users query, one row per object: pixel statistics and their physical counterparts
    (OME-NGFF convention: pixel (i, j) is centred at translation + scale * (i, j))."""
    t = merged.table
    area = t["area"]
    centroid_y, centroid_x = t["sum_y"] / np.maximum(area, 1), t["sum_x"] / np.maximum(area, 1)
    return {"id": t["id"].astype(id_dtype(merged.count)), "class": t["class"],
            "class_name": np.array([class_names[c] for c in t["class"]], dtype=object),
            "area_px": area, "area": area * scale[0] * scale[1],
            "centroid_y": centroid_y, "centroid_x": centroid_x,
            "centroid_y_physical": translation[0] + scale[0] * centroid_y,
            "centroid_x_physical": translation[1] + scale[1] * centroid_x,
            "bbox_y0": t["y0"], "bbox_x0": t["x0"], "bbox_y1": t["y1"], "bbox_x1": t["x1"],
            "mean_probability": t["sum_prob"] / np.maximum(t["prob_px"], 1)}


def grown_table(seeds: MergedObjects, sums: Sequence[GrownSums],
                min_area: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A contour model's objects: the table of its grown objects (columns as ``MergedObjects.table``) from
    the pieces' sums by global seed id, objects below ``min_area`` pixels dropped and the rest renumbered in
    seed order, and the (N + 1,) new id of each seed id (0: dropped). The mean probability stays the
    seed's: over the interior pixels, where the model said "interior"."""
    count, pieces = seeds.count, GrownSums.concat(sums)
    ids = pieces.ids.astype(np.int64)
    low, high = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    total = {name: _per_id(ufunc, start, count, ids, getattr(pieces, name)) for name, ufunc, start in
             (("area", np.add, 0), ("sum_y", np.add, 0), ("sum_x", np.add, 0), ("y0", np.minimum, high),
              ("x0", np.minimum, high), ("y1", np.maximum, low), ("x1", np.maximum, low))}
    kept = np.flatnonzero(total["area"] >= max(min_area, 1))                               # seed ids - 1
    lut = np.zeros(count + 1, dtype=id_dtype(count))
    lut[kept + 1] = np.arange(1, len(kept) + 1)
    table = {"id": np.arange(1, len(kept) + 1, dtype=np.int64), "class": seeds.table["class"][kept],
             **{name: column[kept] for name, column in total.items()},
             "sum_prob": seeds.table["sum_prob"][kept], "prob_px": seeds.table["area"][kept]}
    return table, lut


def _per_id(ufunc: np.ufunc, start: int, count: int, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(count,) reduction of ``values`` per id 1..count from ``start``, in int64 (exact)."""
    out = np.full(count + 1, start, dtype=np.int64)
    ufunc.at(out, ids, values.astype(np.int64))
    return out[1:]
