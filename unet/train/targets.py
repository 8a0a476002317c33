"""Training targets derived from the masks, and the per-pixel loss weights that go with them.

Instance masks (0 = background, one label per object) are trained with one of two recipes:

- ``contour`` (the default): three classes, 0 background, 1 object interior, 2 object boundary. The
  boundary is the pixels of an instance within ``width`` px (chessboard distance) of a pixel that is not
  that instance: another instance or the background. Touching objects are then separated by their
  boundaries, and objects are grown back from their interiors over the boundary pixels
  (``unet.infer.instances``, by up to 3 px: at least ``width``).
- ``components``: the earlier two-class recipe, foreground with a one-pixel background gap drawn between
  touching instances; objects are the connected components of the foreground.

Both keep the paper's border weights w0 * exp(-(d1 + d2)^2 / 2 sigma^2) on the pixels between objects:
for ``contour`` the distances are to the objects' interiors, so the whole boundary band where two objects
touch is weighted, and the background between close objects, as in the paper's Fig. 3d.

Targets are derived per training tile after augmentation, from the augmented instance labels, so that a
thin boundary stays exactly as wide as it should be whatever the rotation or deformation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from unet.train.losses import separate_instances

Method = Literal["classes", "contour", "components"]
INTERIOR, BOUNDARY = 1, 2
CONTOUR_WIDTH = 1            # boundary width in pixels (the README's benchmark section says why)


@dataclass(frozen=True)
class Targets:
    """How a label image (class indices for ``classes``, instance labels otherwise) becomes class targets."""

    method: Method = "contour"
    width: int = CONTOUR_WIDTH

    @property
    def num_classes(self) -> int | None:
        """Classes the network predicts (None for ``classes``: as many as the masks hold)."""
        return {"classes": None, "contour": 3, "components": 2}[self.method]

    def classes(self, labels: np.ndarray) -> np.ndarray:
        """Class targets (H, W) int64 of a label image (H, W)."""
        if self.method == "contour":
            return contour_classes(labels, self.width)
        if self.method == "components":
            return (separate_instances(labels) > 0).astype(np.int64)
        return labels.astype(np.int64)

    def separated(self, labels: np.ndarray) -> np.ndarray:
        """Instance labels (H, W) whose background is where the border weights go: the interiors for
        ``contour``, the instances with their gaps for ``components``."""
        if self.method == "contour":
            return np.where(contour_classes(labels, self.width) == INTERIOR, labels, 0)
        return separate_instances(labels)


def contour_classes(instances: np.ndarray, width: int = CONTOUR_WIDTH) -> np.ndarray:
    """0 background, 1 interior, 2 boundary (H, W) int64 of instance labels (H, W).

    An instance pixel is boundary when a pixel within ``width`` px (a (2 width + 1)^2 square) is not of its
    instance; the interior is the rest, and only its largest 8-connected piece: one seed per object, so an
    object pinched by an overlap is not grown back as two. Beyond the image the labels are mirrored, as
    prediction mirrors the image, so an object cut by the image border has no boundary along it."""
    size = 2 * width + 1
    lo = ndimage.minimum_filter(instances, size=size, mode="mirror")
    hi = ndimage.maximum_filter(instances, size=size, mode="mirror")
    inside = instances > 0
    core = inside & (lo == instances) & (hi == instances)
    classes = np.where(inside, BOUNDARY, 0)
    classes[largest_pieces(core, instances)] = INTERIOR
    return classes.astype(np.int64)


def largest_pieces(core: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """The pixels (H, W) bool of ``core`` in the largest 8-connected piece of each instance's core (pieces
    of different instances are never 8-adjacent: each core pixel's 3 x 3 neighbours share its label)."""
    pieces, n = ndimage.label(core, structure=np.ones((3, 3), bool))      # (H, W) 0..n
    if n == 0:
        return core
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]               # (n,)
    owner = np.zeros(n, np.int64)
    owner[pieces[core] - 1] = instances[core]                             # the instance of each piece
    order = np.lexsort((-sizes, owner))                                   # by instance, largest first
    first = np.ones(n, bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    keep = np.zeros(n + 1, bool)
    keep[order[first] + 1] = True
    return keep[pieces]


@dataclass(frozen=True)
class TileTargets:
    """Turns an augmented label tile and its (augmented) border weights into the class target and the
    per-pixel weights: w_c of the target class (``class_weights``; None: 1) plus the border term."""

    targets: Targets
    class_weights: np.ndarray | None = None

    def __call__(self, labels: np.ndarray, border: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        target = self.targets.classes(labels)                               # (h, w) int64
        base = self.class_weights[target] if self.class_weights is not None else 1.0
        return target, (base + border).astype(np.float32)                  # (h, w), (h, w)
