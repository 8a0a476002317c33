"""The actor side of --objects: label a block and store its summary; later, rewrite it with global ids."""

from __future__ import annotations

import json

import numpy as np

from unet.io.output import OutputWriter
from unet.job.objects.label import label_block
from unet.job.plan import Block
from unet.job.spec import INSTANCES, LOCAL, SHAPES, SUMMARIES, ObjectsSpec


def store_block_objects(writer: OutputWriter, block: Block, labels: np.ndarray, probs: np.ndarray | None,
                        spec: ObjectsSpec) -> None:
    """Label a block's objects; store its local ids and its summary (before the block's done-marker, so a
    resumed run finds the summary of every block done earlier without recomputing it)."""
    assert probs is not None, "objects need the probabilities"
    local, summary = label_block(labels, probs.max(axis=0), spec.classes, block.rows, block.cols)
    writer.write_array(f"{INSTANCES}/{LOCAL}", block.rows, block.cols, local)
    writer.put(f"{INSTANCES}/{SUMMARIES}/{block.key}", summary.to_bytes())


def relabel_block(writer: OutputWriter, block: Block, lut: np.ndarray, spec: ObjectsSpec) -> np.ndarray:
    """The block's global ids; for georeferenced inputs, also store its objects' outlines in pixels.
    ``writer`` is the instance image's.

    Outlines come from rasterio.features.shapes (GDAL's polygonize) with 8-connectivity over the local ids,
    whose pieces the driver unions per object: a block yields one polygon per local object.
    """
    local = writer.read_array(LOCAL, block.rows, block.cols)                        # (h, w) int32
    if spec.polygons:  # GDAL loads only for georeferenced inputs
        from affine import Affine
        from rasterio.features import shapes

        pieces = [[int(lut[int(value)]), polygon] for polygon, value in
                  shapes(local, mask=local > 0, connectivity=8, transform=Affine.translation(block.cols[0], block.rows[0]))
                  if lut[int(value)]]
        writer.put(f"{SHAPES}/{block.key}", json.dumps(pieces).encode())
    return lut[local]                                                                # (h, w)
