"""The small typed vocabulary that the driver and the actors speak: the only module both sides import.

The driver sends an ``ActorMethod`` with a ``JobSpec`` and a ``Block`` (coordinates, never pixels); the actor
answers with ``BlockStats``. A block that could not be done becomes a ``BlockFailure`` in the report.
``BlockActor`` is the actor's side of that contract, as the driver calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from unet.infer.instances import InstanceMethod
from unet.io.output import OutputSpec
from unet.io.source import SourceSpec
from unet.infer.geometry import Calibration
from unet.job.plan import Block

# Where --objects keeps its state inside OUTPUT (see unet/job/objects/driver.py for the whole layout)
INSTANCES = "instances"
LOCAL, SUMMARIES, SHAPES = "_unet/local", "_unet/objects", "_unet/shapes"
BANDS, INNER, RIMS, GROWN = "_unet/bands", "_unet/inner", "_unet/rims", "_unet/grown"  # contour models


class ActorMethod(StrEnum):
    """What an actor does with a block: the name of the ``BlockActor`` method the driver calls."""

    SEGMENT = "segment"        # predict a level-0 block and write it
    BACKGROUND = "background"  # write a level-0 block outside the region of interest as class 0, unread
    RIM = "rim"                # --objects, contour model: regrow a block's rim from its neighbours' bands
    RELABEL = "relabel"        # --objects: rewrite a block of the instance image with global ids
    DOWNSAMPLE = "downsample"  # build a block of a pyramid level from the level above
    CALIBRATION = "calibration"  # not a block: what the actor's device measured, for the block choice


class SkipReason(StrEnum):
    """Why a level-0 block was not run through the network."""

    EMPTY = "empty"  # its input is all fill value: the constant image's prediction was written
    ROI = "roi"      # outside the region of interest: written as background


@dataclass(frozen=True)
class ObjectsSpec:
    """What the workers need for --objects; small and picklable."""

    instances: OutputSpec        # OUTPUT/instances; ``ids=True``, so its pyramid decimates
    classes: tuple[int, ...]     # the foreground classes whose connected pixels are objects
    min_area: int = 0            # objects of fewer pixels are dropped (after merging across seams)
    polygons: bool = False       # the input is georeferenced: gather outlines for objects.geojson
    method: InstanceMethod | None = None  # a contour model's: ``classes`` is its interior class, grown

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "min_area": self.min_area,
                "method": self.method.to_metadata() if self.method else None}


@dataclass(frozen=True)
class JobSpec:
    """One input and its output, as every worker sees them. ``input_range`` (lo, hi) rescales the
    input linearly onto the value range the model was trained on."""

    source: SourceSpec
    output: OutputSpec
    input_range: tuple[float, float] | None = None
    objects: ObjectsSpec | None = None  # --objects: label connected objects too
    block: int | None = None            # the plan's block side: each worker fits its tile to the plan's blocks


@dataclass(frozen=True)
class BlockStats:
    """What an actor returns for a finished block: small numbers, never pixels."""

    key: str                           # the block's done-marker
    pixels: int
    levels: tuple[int, ...]            # pyramid levels the call wrote
    compute_s: float = 0.0             # reading and predicting
    write_s: float = 0.0
    network_s: float = 0.0             # wall time inside forward passes
    network_cpu_s: float = 0.0         # CPU time of those forward passes
    skipped: SkipReason | None = None  # why the network was not run, if it was not
    tile: int | None = None            # the tile the worker chose for the block's job, when it ran the network


@dataclass(frozen=True)
class BlockFailure:
    """A block given up on after its retries, or (``block`` None) an output whose completion failed."""

    error: str
    block: Block | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON form."""
        b = self.block
        return {"block": b.key if b else None, "level": b.level if b else None,
                "rows": list(b.rows) if b else None, "cols": list(b.cols) if b else None, "error": self.error}


class BlockActor(Protocol):
    """The methods ``ActorMethod`` names, as the driver calls them on an actor (through Ray)."""

    def segment(self, spec: JobSpec, block: Block) -> BlockStats: ...
    def background(self, spec: JobSpec, block: Block) -> BlockStats: ...
    def rim(self, spec: JobSpec, block: Block, near: list[tuple[Block, np.ndarray]]) -> BlockStats: ...
    def relabel(self, spec: JobSpec, block: Block, lut: np.ndarray, final: np.ndarray | None = None) -> BlockStats: ...
    def downsample(self, spec: JobSpec, block: Block) -> BlockStats: ...
    def calibration(self) -> Calibration: ...
