"""Which pyramid level of an input to segment: the one whose pixel size is nearest the model's.

A model sees structures at the scale it was trained at; a slide scanned at 0.25 µm and a model trained at
0.5 µm meet at the slide's level 1. ``--level`` overrides the choice; without a pixel size on either side
the job segments level 0, as it always did.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

from unet.errors import UNetError, redact
from unet.io.pixelsize import Level, PixelSize, describe_levels, input_levels
from unet.io.source import Source, SourceSpec, open_source

TOLERANCE = 0.25  # the chosen level's pixel size is at most 25 % larger or smaller than the model's


@dataclass(frozen=True)
class LevelChoice:
    """The level to segment, its pixel size (None: unknown) and a line to tell the user, if any."""

    level: int
    pixel_size: PixelSize | None
    note: str | None = None


def choose_level(levels: Sequence[Level], trained: PixelSize | None, requested: int | None, name: str) -> LevelChoice:
    """``requested`` if given, else the level nearest ``trained`` (UNetError when none is within 25 %),
    else level 0."""
    if requested is not None:
        known = levels[requested].pixel_size if requested < len(levels) else None
        return LevelChoice(requested, known)
    if trained is None:
        return LevelChoice(0, levels[0].pixel_size)
    sized = [(level.index, level.pixel_size) for level in levels if level.pixel_size is not None]
    if not sized:
        return LevelChoice(0, None, f"unet: input {name}: no pixel size found; assuming the checkpoint's "
                                    f"{trained.describe()} for level 0")
    index, size = min(sized, key=lambda entry: _log_distance(entry[1], trained))
    if size.mismatch(trained) > TOLERANCE:
        raise UNetError(f"input {name}: expected a pyramid level within {TOLERANCE:.0%} of the checkpoint's "
                        f"pixel size {trained.describe()}, found levels {describe_levels(levels)}; "
                        f"pass --level N to segment one anyway")
    return LevelChoice(index, size)


def _log_distance(size: PixelSize, other: PixelSize) -> float:
    return max(abs(math.log(size.y / other.y)), abs(math.log(size.x / other.x)))


def open_level(spec: SourceSpec, trained: PixelSize | None) -> tuple[Source, LevelChoice]:
    """Open the input at ``spec.level``, or at the level ``choose_level`` picks when it is None; the
    note of an assumed pixel size goes to stderr, once per input."""
    source = open_source(spec)
    choice = choose_level(input_levels(source), trained, spec.level, redact(spec.url))
    if choice.note:
        print(choice.note, file=sys.stderr)
    if choice.level != (spec.level or 0):
        source = open_source(replace(spec, level=choice.level))
    return source, choice


def output_scale(source: Source, choice: LevelChoice) -> tuple[tuple[float, float], tuple[str | None, str | None]]:
    """The OME scale and units of the output: the input's own where it has physical units (OME-Zarr), else
    the chosen level's pixel size, else the input's pixel scale without a unit."""
    if all(source.units) or choice.pixel_size is None:
        return source.scale, source.units
    unit = choice.pixel_size.to_dict()["unit"]
    return choice.pixel_size.in_unit(unit), (unit, unit)
