"""The summary of one block's objects (what both sides of the job share), and how objects are found per
block and merged across blocks.

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
from dataclasses import dataclass, fields

import numpy as np

FACES = ("top", "bottom", "left", "right")
STATS = ("classes", "area", "sum_y", "sum_x", "first_x", "y0", "x0", "y1", "x1", "sum_prob")


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
                 **{name: getattr(self, name) for name in STATS},
                 **{f"face_{name}": self.faces[name] for name in FACES})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockObjects:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            y0, y1, x0, x1 = npz["span"].tolist()
            return cls(rows=(y0, y1), cols=(x0, x1), **{name: npz[name] for name in STATS},
                       faces={name: npz[f"face_{name}"] for name in FACES})

    def dense_face(self, name: str) -> np.ndarray:
        """The local ids along a face, 0 for background."""
        length = self.cols[1] - self.cols[0] if name in ("top", "bottom") else self.rows[1] - self.rows[0]
        face = np.zeros(length, dtype=np.int64)
        offsets, ids = self.faces[name]
        face[offsets] = ids
        return face


@dataclass(frozen=True)
class GrownSums:
    """Pixel sums of pieces of a contour model's grown objects, one entry per piece, keyed by seed id (local
    in the block that found them, global once the driver's lookup table is applied)."""

    ids: np.ndarray      # (n,) seed id of each piece
    area: np.ndarray     # (n,) int64, and the rest as in BlockObjects
    sum_y: np.ndarray
    sum_x: np.ndarray
    y0: np.ndarray
    x0: np.ndarray
    y1: np.ndarray
    x1: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[GrownSums]) -> GrownSums:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def with_ids(self, lut: np.ndarray) -> GrownSums:
        """The same pieces with ids ``lut[id]``."""
        return GrownSums(lut[self.ids], *(getattr(self, f.name) for f in fields(self)[1:]))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **{f.name: getattr(self, f.name) for f in fields(self)})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> GrownSums:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls(*(npz[f.name] for f in fields(cls)))
