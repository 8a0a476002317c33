"""Objects from a contour model's class image: interiors are seeds, grown back over boundary pixels.

A model trained with ``--instances`` predicts background, object interior and object boundary (the approach
of the strongest U-Net entries of the 2018 Data Science Bowl): touching objects are kept apart by the
boundary pixels between them. Each 8-connected component of interior pixels is one object's seed; objects
grow from their seeds over boundary pixels only, in 8-neighbour steps, by at most ``grow`` steps. A
boundary pixel joins the object of its nearest seed pixel (geodesic distance through boundary pixels);
among equally near seed pixels the one first in raster order wins. Ids are 1..N in raster order of each
object's first interior pixel.

Every rule is local to ``grow`` pixels and uses only positions (never an id that depends on the order of
work), so a block with a halo of ``grow`` pixels and globally consistent seed ids computes exactly the
whole image's objects (``grow_seeds``): that is how the segmentation job applies it block by block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from unet.errors import CheckpointError

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
METHOD = "contour"


@dataclass(frozen=True)
class InstanceMethod:
    """Which classes are object interiors and boundaries, and how far (pixels) objects grow over boundaries."""

    interior: int = 1
    boundary: int = 2
    grow: int = 3

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> InstanceMethod | None:
        """The method a checkpoint's metadata records under "instance_method"; None when it records none
        (a 2-class checkpoint: objects are connected components)."""
        if "instance_method" not in metadata:
            return None
        found = metadata["instance_method"]
        if not isinstance(found, Mapping) or found.get("method") != METHOD or set(found) != {
                "method", "interior", "boundary", "grow"}:
            raise CheckpointError(f"checkpoint metadata instance_method: expected {{'method': '{METHOD}', "
                                  f"'interior': int, 'boundary': int, 'grow': int}}, found {found!r}")
        values = [found[k] for k in ("interior", "boundary", "grow")]
        if not all(type(v) is int and v >= 0 for v in values) or values[0] == values[1]:
            raise CheckpointError(f"checkpoint metadata instance_method: expected distinct interior and "
                                  f"boundary classes and grow >= 0 (ints), found {found!r}")
        return cls(*values)

    def to_metadata(self) -> dict[str, Any]:
        """The value to store under "instance_method" in a checkpoint's metadata."""
        return {"method": METHOD, "interior": self.interior, "boundary": self.boundary, "grow": self.grow}


def instances_from_classes(classes: np.ndarray, method: InstanceMethod, min_area: int = 0) -> np.ndarray:
    """The (h, w) object ids of a whole class image (uint32; uint64 past 2^32 - 1 objects), 0 background.
    Objects whose grown area is below ``min_area`` pixels are dropped and the rest renumbered."""
    seeds, count = ndimage.label(classes == method.interior, structure=EIGHT_CONNECTED)   # (h, w)
    ids = _by_first_pixel(seeds, count)[seeds]                                            # (h, w)
    grown = grow_seeds(ids, classes == method.boundary, method.grow)                      # (h, w)
    grown, count = drop_small(grown, count, min_area)
    return grown.astype(np.uint32 if count < 2**32 else np.uint64)


def drop_small(labels: np.ndarray, count: int, min_area: int) -> tuple[np.ndarray, int]:
    """Labels 1..count (h, w) without those of fewer than ``min_area`` pixels, the rest renumbered in
    order; and how many are left."""
    if not min_area:
        return labels, count
    area = np.bincount(labels.ravel(), minlength=count + 1)
    kept = np.flatnonzero(area[1:] >= min_area) + 1
    lut = np.zeros(count + 1, dtype=np.int64)
    lut[kept] = np.arange(1, len(kept) + 1)
    return lut[labels], len(kept)


def objects_from_classes(classes: np.ndarray, method: InstanceMethod | None, min_area: int = 0) -> np.ndarray:
    """The (h, w) objects ``jobs/segment.py --objects`` finds in a class image, in memory: grown from the
    interiors for a contour ``method``, else the 8-connected components of the foreground (classes > 0, one
    class for a two-class model); objects below ``min_area`` pixels dropped, ids in raster order."""
    if method is not None:
        return instances_from_classes(classes, method, min_area)
    labels, count = ndimage.label(classes > 0, structure=EIGHT_CONNECTED)                  # (h, w)
    return drop_small(labels, count, min_area)[0]


def default_min_area(instances: Sequence[np.ndarray]) -> int:
    """The smallest objects worth keeping, from the training masks: a quarter of the 5th percentile of the
    areas of the objects that do not touch a mask's edge (all objects when every one does), at least 1 px.
    A network on few crops predicts the odd few-pixel speck or split-off seed; objects a quarter the size of
    nearly every real one are those. Recorded in the checkpoint as ``min_area``; ``--min-area`` overrides."""
    inner: list[np.ndarray] = []
    every: list[np.ndarray] = []
    for labels in instances:
        area = np.bincount(labels.ravel())[1:]
        present = area > 0
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        touches = np.zeros(area.size + 1, bool)
        touches[edge] = True
        every.append(area[present])
        inner.append(area[present & ~touches[1:]])
    areas = np.concatenate(inner) if sum(a.size for a in inner) else np.concatenate(every or [np.zeros(0, int)])
    if areas.size == 0:
        return 1
    return max(1, int(np.percentile(areas, 5) // 4))


def grow_seeds(seeds: np.ndarray, boundary: np.ndarray, steps: int) -> np.ndarray:
    """Grow seed ids (h, w, 0 = none) over the ``boundary`` mask (h, w) by at most ``steps`` 8-neighbour
    steps; each boundary pixel takes the id of its nearest seed pixel, ties to the first in raster order."""
    reached, ids = grown_pixels(seeds, boundary, steps)
    grown = seeds.copy()                                                                  # (h, w)
    grown.ravel()[reached] = ids
    return grown


def grown_pixels(seeds: np.ndarray, boundary: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The boundary pixels that ``grow_seeds`` gives an id: their raster indices in (h, w) and their ids.

    Breadth-first waves: an unreached boundary pixel next to a reached one is at distance d, and every
    reached neighbour of it is at d - 1 (a nearer one would have reached it earlier). Its seed pixels at
    distance d are the union of those neighbours', so the smallest raster index among them is the
    neighbours' minimum. A pixel's result depends only on the (2 * steps + 1)^2 square around it, and raster
    order inside a window agrees with the mosaic's: a window with a halo of ``steps`` is exact inside."""
    h, w = seeds.shape
    none = seeds.size                                                                     # beyond any index
    index = np.int32 if (h + 2) * (w + 2) < 2**31 else np.int64
    seed = seeds > 0
    source = np.full((h + 2, w + 2), none, dtype=index)   # (h + 2, w + 2): nearest seed pixel, framed by none
    source[1:-1, 1:-1][seed] = np.flatnonzero(seed)
    flat = source.ravel()
    todo = np.flatnonzero(np.pad(boundary & ~seed, 1)).astype(index)                  # framed indices
    neighbours = [dy * (w + 2) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    reached, nearest = [todo[:0]], [todo[:0]]
    for _ in range(steps):
        near = flat[todo + neighbours[0]]                                                 # (n,)
        for offset in neighbours[1:]:
            np.minimum(near, flat[todo + offset], out=near)
        hit = near < none
        if not hit.any():
            break
        flat[todo[hit]] = near[hit]
        reached.append(todo[hit])
        nearest.append(near[hit])
        todo = todo[~hit]
    row, col = np.divmod(np.concatenate(reached), w + 2)
    return (row - 1) * w + col - 1, seeds.ravel()[np.concatenate(nearest)]


def _by_first_pixel(labels: np.ndarray, count: int) -> np.ndarray:
    """(count + 1,) new id of each label so that ids follow the raster order of the labels' first pixels."""
    first = np.full(count + 1, labels.size, dtype=np.int64)
    flat = labels.ravel()
    np.minimum.at(first, flat, np.arange(flat.size))
    order = np.argsort(first[1:], kind="stable") + 1
    lut = np.zeros(count + 1, dtype=np.int64)
    lut[order] = np.arange(1, count + 1)
    return lut
