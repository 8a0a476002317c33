"""Contour objects in blocks (actor side): grown inside each block at once, and exactly at its rim from the
bands of its neighbours.

A contour model's objects are interior components grown over boundary pixels by at most ``grow`` steps
(``unet.infer.instances``), and a pixel's grown id depends only on the classes and seeds within ``grow``
pixels of it. Three steps, none of which reads a block's pixels twice:

1. Segmentation pass (``grow_locally``): the block labels its seeds (the interior class, as a 2-class
   model's objects are labelled, so the driver's seam merge numbers them across the mosaic in raster order
   of their first pixel) and grows them inside the block. That is already exact for every pixel more than
   ``grow`` from the block's edge. It keeps its outer ``2 * grow`` pixels of classes and seeds (its
   ``Band``) and the sums of the boundary pixels it grew away from its rim.
2. Rim pass (``grow_rim``): the ``grow``-wide rim of a block is grown again from its own band and its
   neighbours' (their local seeds made global by the driver's lookup tables): each rim pixel's
   neighbourhood lies inside those bands. Small arrays only.
3. The driver totals the sums per seed id (``unet.job.objects.merge.grown_table``), drops objects below
   ``min_area`` and numbers the rest in seed order; the relabelling pass writes the ids, the rim's over
   the block's.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from unet.infer.instances import InstanceMethod, grow_seeds, grown_pixels
from unet.job.objects.label import int_sums, reduce_at
from unet.job.objects.summary import BlockObjects, GrownSums
from unet.job.plan import Block

Span = tuple[int, int]
Rect = tuple[Span, Span]


def edge_strips(rows: Span, cols: Span, width: int) -> list[Rect]:
    """The pixels within ``width`` of a rectangle's edge as disjoint rectangles: top, bottom, left, right."""
    top = (rows[0], min(rows[1], rows[0] + width))
    bottom = (max(top[1], rows[1] - width), rows[1])
    left = (cols[0], min(cols[1], cols[0] + width))
    right = (max(left[1], cols[1] - width), cols[1])
    middle = (top[1], bottom[0])
    strips = [(top, cols), (bottom, cols), (middle, left), (middle, right)]
    return [s for s in strips if s[0][1] > s[0][0] and s[1][1] > s[1][0]]


def _within(outer: Rect, inner: Rect) -> tuple[slice, slice]:
    """Slices of ``outer`` (array coordinates) that hold the part of ``inner`` inside it."""
    (o_rows, o_cols), (i_rows, i_cols) = outer, inner
    return (slice(max(i_rows[0], o_rows[0]) - o_rows[0], min(i_rows[1], o_rows[1]) - o_rows[0]),
            slice(max(i_cols[0], o_cols[0]) - o_cols[0], min(i_cols[1], o_cols[1]) - o_cols[0]))


def _overlap(a: Rect, b: Rect) -> bool:
    return all(x[0] < y[1] and y[0] < x[1] for x, y in zip(a, b))


def summed(ids: np.ndarray, sums: BlockObjects) -> GrownSums:
    """Entry k of a summary for seed id ``ids[k]``; pieces without pixels are left out."""
    kept = sums.area > 0
    return GrownSums(ids[kept], *(getattr(sums, f.name)[kept] for f in fields(GrownSums)[1:]))


def pixel_sums(ids: np.ndarray, ys: np.ndarray, xs: np.ndarray, n: int, origin: tuple[int, int]) -> GrownSums:
    """The sums of pixels (rows ``ys``, columns ``xs`` from ``origin``) by their ids 1..n."""
    area = np.bincount(ids, minlength=n + 1)[1:]
    sums = {"area": area, "sum_y": int_sums(ids, ys, n) + origin[0] * area,
            "sum_x": int_sums(ids, xs, n) + origin[1] * area,
            "y0": reduce_at(np.minimum, ids, ys, n, 2**62) + origin[0],
            "x0": reduce_at(np.minimum, ids, xs, n, 2**62) + origin[1],
            "y1": reduce_at(np.maximum, ids, ys, n, -1) + 1 + origin[0],
            "x1": reduce_at(np.maximum, ids, xs, n, -1) + 1 + origin[1]}
    kept = area > 0
    return GrownSums(np.flatnonzero(kept) + 1, **{name: column[kept].astype(np.int64) for name, column in sums.items()})


@dataclass(frozen=True)
class Band:
    """What a block's neighbours need of it: its outer ``2 * grow`` pixels, strip by strip."""

    strips: list[Rect]
    classes: list[np.ndarray]   # per strip (sh, sw) uint8
    seeds: list[np.ndarray]     # per strip (sh, sw) int32 local seed ids


def grow_locally(classes: np.ndarray, seeds: np.ndarray, seed_sums: BlockObjects, rows: Span, cols: Span,
                 method: InstanceMethod) -> tuple[np.ndarray, Band, GrownSums]:
    """Grow a block's local seeds (h, w; ``seed_sums`` their summary) inside the block alone: exact beyond
    ``grow`` pixels of its edge. Returns the grown local ids (h, w), the block's band, and the sums of its
    grown objects without the boundary pixels of its rim (by local seed id)."""
    reached, ids = grown_pixels(seeds, classes == method.boundary, method.grow)           # (n,), (n,)
    grown = seeds.copy()                                                                  # (h, w)
    grown.ravel()[reached] = ids
    g, (h, w) = method.grow, seeds.shape
    y, x = np.divmod(reached, w)
    away = (y >= g) & (y < h - g) & (x >= g) & (x < w - g)                                # beyond the rim
    inner = GrownSums.concat([summed(np.arange(1, seed_sums.count + 1), seed_sums),
                              pixel_sums(ids[away], y[away], x[away], seed_sums.count, (rows[0], cols[0]))])
    strips = edge_strips(rows, cols, 2 * g)
    band = Band(strips, [classes[_within((rows, cols), s)] for s in strips],
                [seeds[_within((rows, cols), s)] for s in strips])
    return grown, band, inner


@dataclass(frozen=True)
class Rim:
    """A block's rim grown exactly: global seed ids per rim strip, and the sums of all its grown objects."""

    strips: list[Rect]
    ids: list[np.ndarray]       # per strip (sh, sw) global seed ids
    sums: GrownSums             # the whole block's pieces, by global seed id

    def paint(self, ids: np.ndarray, rows: Span, cols: Span, lut: np.ndarray) -> None:
        """Write the rim, through ``lut``, over a block's ids (h, w)."""
        for strip, strip_ids in zip(self.strips, self.ids):
            ids[_within((rows, cols), strip)] = lut[strip_ids]


def grow_rim(block: Block, shape: tuple[int, int], bands: Sequence[tuple[Band, np.ndarray]],
             inner: GrownSums, method: InstanceMethod) -> Rim:
    """The rim of ``block`` grown from the bands of its neighbourhood (itself included), each with its
    block's lookup table (local -> global seed id); its sums are ``inner``'s and the rim's boundary pixels'
    (global ids)."""
    strips = edge_strips(block.rows, block.cols, method.grow)
    ids, parts = [], [inner]
    for strip in strips:
        window = ((max(0, strip[0][0] - method.grow), min(shape[0], strip[0][1] + method.grow)),
                  (max(0, strip[1][0] - method.grow), min(shape[1], strip[1][1] + method.grow)))
        classes, grown = _grow_window(window, bands, method)                              # (wh, ww)
        grown, boundary = grown[_within(window, strip)], classes[_within(window, strip)] == method.boundary
        ys, xs = np.nonzero(boundary & (grown > 0))
        values, local = np.unique(grown[ys, xs], return_inverse=True)
        sums = pixel_sums(local + 1, ys, xs, len(values), (strip[0][0], strip[1][0]))
        ids.append(grown)
        parts.append(sums.with_ids(np.concatenate([[0], values])))
    return Rim(strips, ids, GrownSums.concat(parts))


def _grow_window(window: Rect, bands: Sequence[tuple[Band, np.ndarray]],
                 method: InstanceMethod) -> tuple[np.ndarray, np.ndarray]:
    """The classes of a window painted from bands (pixels no band holds stay background), and its seeds
    grown (global ids)."""
    shape = (window[0][1] - window[0][0], window[1][1] - window[1][0])
    classes = np.zeros(shape, dtype=np.uint8)                                             # (wh, ww)
    seeds = np.zeros(shape, dtype=bands[0][1].dtype)                                      # (wh, ww) global
    for band, lut in bands:
        for strip, strip_classes, strip_seeds in zip(band.strips, band.classes, band.seeds):
            if _overlap(window, strip):
                classes[_within(window, strip)] = strip_classes[_within(strip, window)]
                seeds[_within(window, strip)] = lut[strip_seeds[_within(strip, window)]]
    return classes, grow_seeds(seeds, classes == method.boundary, method.grow)


# -- bytes: what the passes store next to the blocks' done-markers ---------------------------------------

def _compressed(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **arrays)  # bands and rims are mostly runs
    return buffer.getvalue()


def _strips_arrays(strips: list[Rect], **per_strip: list[np.ndarray]) -> dict[str, np.ndarray]:
    out = {"strips": np.array([[*r, *c] for r, c in strips], dtype=np.int64).reshape(-1, 4)}
    for name, arrays in per_strip.items():
        out.update({f"{name}_{k}": a for k, a in enumerate(arrays)})
    return out


def _strips_from(data: bytes, *names: str) -> tuple[list[Rect], list[list[np.ndarray]]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        strips = [((int(r0), int(r1)), (int(c0), int(c1))) for r0, r1, c0, c1 in npz["strips"]]
        return strips, [[npz[f"{name}_{k}"] for k in range(len(strips))] for name in names]


def band_to_bytes(band: Band) -> bytes:
    return _compressed(_strips_arrays(band.strips, classes=band.classes, seeds=band.seeds))


def band_from_bytes(data: bytes) -> Band:
    strips, (classes, seeds) = _strips_from(data, "classes", "seeds")
    return Band(strips, classes, seeds)


def rim_ids_to_bytes(rim: Rim) -> bytes:
    return _compressed(_strips_arrays(rim.strips, ids=rim.ids))


def rim_ids_from_bytes(data: bytes) -> Rim:
    """The rim's ids only (``sums`` empty): what the relabelling pass paints."""
    strips, (ids,) = _strips_from(data, "ids")
    empty = np.zeros(0, dtype=np.int64)
    return Rim(strips, ids, GrownSums(*(empty,) * len(fields(GrownSums))))
