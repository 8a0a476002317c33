"""Test-time augmentation, its geometry: the mean, in probability space, of the predictions of flipped
images, each flipped back (``unet.predict.FlipPredictor`` runs it).

Exact like the plain prediction: a flipped image is predicted as an image of its own, its tiles on the
pooling grid counted from *its* origin — which is the original's far edge — so the result equals the mean
of whole-image predictions of each flipped image, flipped back, for any region (block) of the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from unet.errors import UNetError
from unet.infer.tiling import Reader

Span = tuple[int, int]


class Windowed(Protocol):
    """What ``input_window`` needs of a predictor (``TilePredictor`` has it)."""

    def input_window(self, rows: Span, cols: Span) -> tuple[Span, Span]: ...


@dataclass(frozen=True)
class Flip:
    """One symmetry of the square, as an image transform: transpose (swap y and x) first, then mirror the
    rows and/or the columns of the result."""

    transpose: bool = False
    rows: bool = False
    cols: bool = False

    def shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The flipped image's (h, w)."""
        return (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])

    def region(self, shape: tuple[int, int], rows: Span, cols: Span) -> tuple[Span, Span]:
        """Where the rectangle rows x cols of an image of ``shape`` lies in the flipped image."""
        if self.transpose:
            rows, cols = cols, rows
        h, w = self.shape(shape)
        return (_mirror(rows, h) if self.rows else rows), (_mirror(cols, w) if self.cols else cols)

    def reader(self, read: Reader, shape: tuple[int, int]) -> Reader:
        """``read`` of an image of ``shape``, turned into a reader of the flipped image."""
        h, w = self.shape(shape)

        def flipped(rs: slice, cs: slice) -> np.ndarray:
            rs = slice(*_mirror((rs.start, rs.stop), h)) if self.rows else rs
            cs = slice(*_mirror((cs.start, cs.stop), w)) if self.cols else cs
            box = read(cs, rs).transpose(0, 2, 1) if self.transpose else read(rs, cs)  # (C, rs, cs)
            return self._mirror_axes(box)
        return flipped

    def back(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities (K, h, w) of a rectangle of the flipped image, as (K, ., .) of the original."""
        probs = self._mirror_axes(probs)
        return probs.transpose(0, 2, 1) if self.transpose else probs

    def _mirror_axes(self, a: np.ndarray) -> np.ndarray:
        return a[:, ::-1 if self.rows else 1, ::-1 if self.cols else 1]


FLIPS = (Flip(), Flip(cols=True), Flip(rows=True), Flip(rows=True, cols=True))
"""The four flips of the horizontal and vertical mirror (the identity first)."""
SQUARE = FLIPS + tuple(Flip(True, f.rows, f.cols) for f in FLIPS)
"""The eight symmetries of the square: the four flips, and each after a transpose."""


def flips_for(tta: bool | int) -> tuple[Flip, ...]:
    """The flips of ``tta``: False or 1 none but the identity, True or 4 the mirrors, 8 the square's."""
    if tta is True or tta == 4:
        return FLIPS
    if tta is False or tta == 1:
        return FLIPS[:1]
    if tta == 8:
        return SQUARE
    raise UNetError(f"tta: expected True, False, 4 or 8 flips, found {tta!r}")


def mean_over_flips(flips: Sequence[Flip], shape: tuple[int, int], rows: Span, cols: Span,
                    predict: Callable[[Flip, tuple[int, int], Span, Span], np.ndarray]) -> np.ndarray:
    """The mean (K, h, w) float32 of ``predict(flip, flipped shape, flipped rows, flipped cols)``, each
    flipped back, summed in the order of ``flips``."""
    def flipped_back(flip: Flip) -> np.ndarray:
        return flip.back(predict(flip, flip.shape(shape), *flip.region(shape, rows, cols)))

    total = np.array(flipped_back(flips[0]), np.float32)          # (K, h, w)
    for flip in flips[1:]:
        total += flipped_back(flip)
    total /= len(flips)
    return total


def input_window(predictor: Windowed, flips: Sequence[Flip], shape: tuple[int, int], rows: Span,
                 cols: Span) -> tuple[Span, Span]:
    """A window (image coordinates, may leave the image) whose mirrored box holds every pixel that the
    prediction of rows x cols reads under any of ``flips``: the union of each flip's tile inputs, mapped
    back (mirroring at the borders commutes with flipping)."""
    windows = []
    for flip in flips:
        h, w = flip.shape(shape)
        frows, fcols = predictor.input_window(*flip.region(shape, rows, cols))
        frows, fcols = (_mirror(frows, h) if flip.rows else frows), (_mirror(fcols, w) if flip.cols else fcols)
        windows.append((fcols, frows) if flip.transpose else (frows, fcols))
    return ((min(r[0] for r, _ in windows), max(r[1] for r, _ in windows)),
            (min(c[0] for _, c in windows), max(c[1] for _, c in windows)))


def _mirror(span: Span, n: int) -> Span:
    """The span [a, b) of an axis of length n, seen from the axis' other end."""
    return n - span[1], n - span[0]
