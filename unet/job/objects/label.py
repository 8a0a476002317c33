"""Objects from a class image cut into blocks: per-block labelling, small summaries, and their exact merge.

An object is a maximal set of pixels of one foreground class connected through their 8 neighbours
(diagonals included), as ``scipy.ndimage.label`` with a 3x3 structure finds it in the whole image. Here the
image is never whole: each block is labelled on its own (``label_block``) and reduced to a
``BlockObjects`` summary - per-object sums, never pixels, and the local ids along its four faces. The
driver joins the pieces that touch across a face or diagonally across a block corner
(``merge_blocks``, a union-find by ``scipy.sparse.csgraph.connected_components``, so joins are transitive:
a U-shaped object joins through a third block), drops merged objects smaller than ``min_area`` (on every
side of every seam at once, since the whole object's area decides), and numbers the rest 1..N in raster
order of each object's first pixel. That numbering does not depend on the block size: the same image gives
the same ids and the same table for any ``--block`` and ``--chunk``.

Sums are kept in int64 relative to the block's origin, so every statistic except the summed probability is
exact; the probability sum is float64 and differs from a whole-image sum only by rounding.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
FACES = ("top", "bottom", "left", "right")
_STATS = ("classes", "area", "sum_y", "sum_x", "first_x", "y0", "x0", "y1", "x1", "sum_prob")


@dataclass(frozen=True)
class BlockObjects:
    """The objects of one block (local ids 1..n, entry i of each array for local id i + 1), in mosaic
    coordinates, and the foreground of its faces: what an actor returns and stores instead of pixels."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    classes: np.ndarray    # (n,) uint8: the object's class
    area: np.ndarray       # (n,) int64: pixels
    sum_y: np.ndarray      # (n,) int64: sum of the pixels' row indices
    sum_x: np.ndarray      # (n,) int64: sum of the pixels' column indices
    first_x: np.ndarray    # (n,) int64: column of the object's first pixel in raster order (its row is y0)
    y0: np.ndarray         # (n,) int64: bounding box, rows y0:y1 ...
    x0: np.ndarray         # (n,) int64
    y1: np.ndarray         # (n,) int64
    x1: np.ndarray         # (n,) int64: ... and columns x0:x1 (stops exclusive)
    sum_prob: np.ndarray   # (n,) float64: sum of the class probability over the object's pixels
    faces: dict            # FACES -> (2, m) int64: offset along the face and local id of foreground pixels

    @property
    def count(self) -> int:
        return len(self.area)

    def to_bytes(self) -> bytes:
        """An .npz of plain arrays (loaded back without pickle), stored next to the block's done-marker."""
        buffer = io.BytesIO()
        np.savez(buffer, span=np.array([*self.rows, *self.cols], dtype=np.int64),
                 **{name: getattr(self, name) for name in _STATS},
                 **{f"face_{name}": self.faces[name] for name in FACES})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockObjects:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            y0, y1, x0, x1 = npz["span"].tolist()
            return cls(rows=(y0, y1), cols=(x0, x1), **{name: npz[name] for name in _STATS},
                       faces={name: npz[f"face_{name}"] for name in FACES})

    def dense_face(self, name: str) -> np.ndarray:
        """The local ids along a face, 0 for background."""
        length = self.cols[1] - self.cols[0] if name in ("top", "bottom") else self.rows[1] - self.rows[0]
        face = np.zeros(length, dtype=np.int64)
        offsets, ids = self.faces[name]
        face[offsets] = ids
        return face


def label_block(classes: np.ndarray, probability: np.ndarray, object_classes: Sequence[int],
                rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, BlockObjects]:
    """Label the objects of one block of the class image; return the (h, w) int32 local ids and the summary.

    ``probability`` is the (h, w) probability of each pixel's own class (the softmax maximum).
    """
    local = np.zeros(classes.shape, dtype=np.int32)                            # (h, w)
    class_of = []
    for c in object_classes:
        labelled, n = ndimage.label(classes == c, structure=EIGHT_CONNECTED)
        local[labelled > 0] = labelled[labelled > 0] + len(class_of)
        class_of += [c] * n
    return local, summarize(local, np.array(class_of, dtype=np.uint8), probability, rows, cols)


def summarize(local: np.ndarray, classes: np.ndarray, probability: np.ndarray,
              rows: tuple[int, int], cols: tuple[int, int]) -> BlockObjects:
    """Per-object sums of a block's local ids 1..n (n = len(classes)) and its faces."""
    n = len(classes)
    flat = local.ravel()
    fg = np.flatnonzero(flat)                                                   # foreground, raster order
    ids = flat[fg]
    fy, fx = np.divmod(fg, local.shape[1])                                      # block coordinates
    area = np.bincount(ids, minlength=n + 1)[1:]
    first, last = _reduce_at(np.minimum, ids, fg, n, flat.size), _reduce_at(np.maximum, ids, fg, n, -1)
    y0, x0 = rows[0], cols[0]
    return BlockObjects(
        rows=rows, cols=cols, classes=classes, area=area.astype(np.int64),
        sum_y=_int_sums(ids, fy, n) + y0 * area, sum_x=_int_sums(ids, fx, n) + x0 * area,
        first_x=first % local.shape[1] + x0,
        y0=first // local.shape[1] + y0, y1=last // local.shape[1] + 1 + y0,    # raster order: rows are sorted
        x0=_reduce_at(np.minimum, ids, fx, n, local.shape[1]) + x0,
        x1=_reduce_at(np.maximum, ids, fx, n, -1) + 1 + x0,
        sum_prob=np.bincount(ids, weights=probability.ravel()[fg], minlength=n + 1)[1:],
        faces={name: _sparse(face) for name, face in
               zip(FACES, (local[0], local[-1], local[:, 0], local[:, -1]))})


def _reduce_at(ufunc: np.ufunc, ids: np.ndarray, values: np.ndarray, n: int, start: int) -> np.ndarray:
    """Per-id minimum or maximum of ``values`` for ids 1..n (numpy's unbuffered ufunc.at: one pass, no
    sort, no slice object per id as ``ndimage.find_objects`` makes)."""
    out = np.full(n + 1, start, dtype=np.int64)
    ufunc.at(out, ids, values)
    return out[1:]


def _int_sums(ids: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Exact per-id sums of block coordinates (bincount adds in float64: exact below 2^53, far above a
    block's sums, which are taken relative to the block's origin for that reason)."""
    return np.rint(np.bincount(ids, weights=values, minlength=n + 1)[1:]).astype(np.int64)


def _sparse(face: np.ndarray) -> np.ndarray:
    """Only the foreground of a face: (2, m) offsets and local ids. Most of a face is background."""
    offsets = np.flatnonzero(face)
    return np.stack([offsets, face[offsets]]).astype(np.int64)


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
             for name in _STATS}
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
             "sum_prob": total("sum_prob")[order]}
    return table, order


def _touching_pairs(blocks: Sequence[BlockObjects], offsets: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(m, 2) node pairs of same-class pieces that touch across a face or a corner of two blocks."""
    at = {(b.rows[0], b.cols[0]): i for i, b in enumerate(blocks)}
    ending_at = {(b.rows[0], b.cols[1]): i for i, b in enumerate(blocks)}
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for i, b in enumerate(blocks):
        below, right = at.get((b.rows[1], b.cols[0])), at.get((b.rows[0], b.cols[1]))
        below_right, below_left = at.get((b.rows[1], b.cols[1])), ending_at.get((b.rows[1], b.cols[0]))
        bottom = b.dense_face("bottom")
        if below is not None:
            pairs.append(_face_pairs(bottom, blocks[below].dense_face("top"), offsets[i], offsets[below]))
        if right is not None:
            pairs.append(_face_pairs(b.dense_face("right"), blocks[right].dense_face("left"),
                                     offsets[i], offsets[right]))
        if below_right is not None:  # corner to corner, diagonally
            pairs.append(_face_pairs(bottom[-1:], blocks[below_right].dense_face("top")[:1],
                                     offsets[i], offsets[below_right], shifts=(0,)))
        if below_left is not None:
            pairs.append(_face_pairs(bottom[:1], blocks[below_left].dense_face("top")[-1:],
                                     offsets[i], offsets[below_left], shifts=(0,)))
    pairs = np.concatenate(pairs)
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
            "mean_probability": t["sum_prob"] / np.maximum(area, 1)}
