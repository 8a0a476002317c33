"""The actor side of --objects: label a block and store its summary (a contour model's: grow it, and store
its band); later regrow a contour model's rims; last, rewrite the block with global ids."""

from __future__ import annotations

import json
import posixpath

import numpy as np

from unet.io.output import OutputWriter
from unet.job.objects.grow import (band_from_bytes, band_to_bytes, grow_locally, grow_rim, rim_ids_from_bytes,
                                   rim_ids_to_bytes)
from unet.job.objects.label import label_block
from unet.job.objects.summary import GrownSums
from unet.job.plan import Block
from unet.job.spec import BANDS, GROWN, INNER, INSTANCES, LOCAL, RIMS, SHAPES, SUMMARIES, ObjectsSpec


def store_block_objects(writer: OutputWriter, block: Block, labels: np.ndarray, probs: np.ndarray | None,
                        spec: ObjectsSpec) -> None:
    """Label a block's objects; store its local ids and its summary (before the block's done-marker, so a
    resumed run finds the summary of every block done earlier without recomputing it)."""
    assert probs is not None, "objects need the probabilities"
    local, summary = label_block(labels, probs.max(axis=0), spec.classes, block.rows, block.cols)
    if spec.method is not None:  # contour model: grown inside the block now, its rim in the rim pass
        local, band, inner = grow_locally(labels, local, summary, block.rows, block.cols, spec.method)
        writer.put(f"{INSTANCES}/{BANDS}/{block.key}", band_to_bytes(band))
        writer.put(f"{INSTANCES}/{INNER}/{block.key}", inner.to_bytes())
    writer.write_array(f"{INSTANCES}/{LOCAL}", block.rows, block.cols, local)
    writer.put(f"{INSTANCES}/{SUMMARIES}/{block.key}", summary.to_bytes())


def store_rim(writer: OutputWriter, block: Block, near: list[tuple[Block, np.ndarray]], spec: ObjectsSpec) -> None:
    """The rim pass of a contour model: regrow the block's rim from its own band and its neighbours'
    (``near``: the blocks within ``grow`` pixels, each with its local -> global seed ids); store the rim's
    ids, then the block's sums of grown objects (the pass's done-marker). ``writer`` is the instance image's."""
    assert spec.method is not None, "a rim pass without a contour model"
    paths = [posixpath.join(writer.path, BANDS, b.key) for b, _ in near]
    found = writer.fs.cat([*paths, posixpath.join(writer.path, INNER, block.key)])
    inner = GrownSums.from_bytes(found[posixpath.join(writer.path, INNER, block.key)])
    lut = next(lut for b, lut in near if b.key == block.key)
    bands = [(band_from_bytes(found[path]), near_lut) for path, (_, near_lut) in zip(paths, near)]
    rim = grow_rim(block, spec.instances.shape, bands, inner.with_ids(lut), spec.method)
    writer.put(f"{RIMS}/{block.key}", rim_ids_to_bytes(rim))
    writer.put(f"{GROWN}/{block.key}", rim.sums.to_bytes())


def relabel_block(writer: OutputWriter, block: Block, lut: np.ndarray, spec: ObjectsSpec,
                  final: np.ndarray | None = None) -> np.ndarray:
    """The block's global ids, ``lut[local id]`` (a contour model's: ``final[lut[local seed id]]``, its rim's
    ``final[seed id]`` painted over); for georeferenced inputs, also store its objects' outlines in pixels.
    ``writer`` is the instance image's.

    Outlines come from rasterio.features.shapes (GDAL's polygonize) with 8-connectivity over the local ids,
    whose pieces the driver unions per object: a block yields one polygon per local object.
    """
    local = writer.read_array(LOCAL, block.rows, block.cols)                        # (h, w) int32
    if final is None:
        ids = lut[local]                                                             # (h, w)
    else:
        ids = final[lut][local]                                                      # (h, w)
        rim_ids_from_bytes(writer.fs.cat_file(posixpath.join(writer.path, RIMS, block.key))).paint(
            ids, block.rows, block.cols, final)
    if spec.polygons:  # GDAL loads only for georeferenced inputs
        from affine import Affine
        from rasterio.features import shapes

        if final is not None:  # the rim's ids are no local ids
            lut, local = _compact(ids)

        pieces = [[int(lut[int(value)]), polygon] for polygon, value in
                  shapes(local, mask=local > 0, connectivity=8, transform=Affine.translation(block.cols[0], block.rows[0]))
                  if lut[int(value)]]
        writer.put(f"{SHAPES}/{block.key}", json.dumps(pieces).encode())
    return ids


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block-local ids 0..n (int32, as GDAL's polygonize takes them) of an id image, and their global ids."""
    values, local = np.unique(ids, return_inverse=True)
    return values, local.reshape(ids.shape).astype(np.int32)
