"""Augmentation as pure functions of ``(image, mask, weights, rng)``: the paper's recipe for learning from a
handful of images.

Every function takes an image (C, H, W) float32, a mask (H, W) of labels, an optional weight map (H, W) and a
``numpy.random.Generator``, and returns new arrays of the same shapes; the inputs are never modified. The
same geometry goes to all three: the image is resampled bicubically (spline order 3), the mask and the
weights by nearest neighbour, so labels stay labels. Outside the array the content is mirrored (numpy's
"reflect", scipy's "mirror": the edge pixel is not repeated), as in overlap-tile prediction.

Gray-value changes act on the image only and expect it normalised (about zero mean and unit spread per
channel): their amounts are in those units. Every amount 0 is the exact identity and draws nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy import ndimage

from unet.errors import UNetError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class AugmentConfig:
    """Amounts of each augmentation; ``AugmentConfig().scaled(0)`` is the identity.

    flip: probability of each of the two mirror flips. shift: maximal shift in pixels. rotate: maximal
    rotation in degrees (180 = any angle). elastic_std: standard deviation in pixels of the displacements
    on a coarse ``elastic_grid`` x ``elastic_grid`` grid (the paper: 3x3, 10 px). brightness: maximal
    offset; contrast and gamma: maximal log-factor; noise: maximal standard deviation of Gaussian noise.
    """

    flip: float = 0.5
    shift: float = 8.0
    rotate: float = 180.0
    elastic_std: float = 10.0
    elastic_grid: int = 3
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    noise: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise UNetError(f"augmentation: expected {f.name} >= 0, found {getattr(self, f.name)}")
        if self.flip > 1:
            raise UNetError(f"augmentation: expected a flip probability <= 1, found {self.flip}")
        if self.elastic_grid < 2:
            raise UNetError(f"augmentation: expected elastic_grid >= 2, found {self.elastic_grid}")

    def scaled(self, strength: float) -> AugmentConfig:
        """Every amount multiplied by ``strength`` (the flip probability capped at 1); 0 is the identity."""
        amounts = {f.name: getattr(self, f.name) * strength for f in fields(self) if f.name != "elastic_grid"}
        return replace(self, **{**amounts, "flip": min(1.0, self.flip * strength)})

    @property
    def context(self) -> int:
        """Pixels the geometry can pull in from beyond a tile's border, besides the rotation's corners:
        the shift plus three standard deviations of the elastic displacement."""
        return int(np.ceil(self.shift + 3 * self.elastic_std))


@dataclass(frozen=True)
class Geometry:
    """A map from output pixel positions p to source positions: ``matrix @ (p + elastic(p) - c) + c + shift``
    with c the array's centre and elastic(p) interpolated bicubically from displacements on a coarse grid."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(2))   # (2, 2)
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))  # (2,) rows, cols
    displacements: np.ndarray | None = None                     # (2, g, g) rows, cols

    @property
    def is_identity(self) -> bool:
        return (np.array_equal(self.matrix, np.eye(2)) and not self.shift.any()
                and (self.displacements is None or not self.displacements.any()))

    def source_points(self, shape: tuple[int, int], crop: int = 0) -> np.ndarray:
        """Source positions (2, H - 2 crop, W - 2 crop) of the output pixels of an array of ``shape`` without
        a border of ``crop`` pixels; centre and elastic grid are those of the region kept."""
        h, w = shape[0] - 2 * crop, shape[1] - 2 * crop
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        ys = np.arange(h, dtype=np.float64)[:, None] - centre[0]  # (h, 1)
        xs = np.arange(w, dtype=np.float64)[None, :] - centre[1]  # (1, w)
        if self.displacements is not None:
            dy, dx = _interpolate_grid(self.displacements, (h, w))  # (h, w) each
            ys, xs = ys + dy, xs + dx
        (a, b), (c, d) = self.matrix
        origin = centre + crop + self.shift
        return np.stack(np.broadcast_arrays(a * ys + b * xs + origin[0], c * ys + d * xs + origin[1]))


def random_flip(rng: np.random.Generator, p: float = 0.5) -> Geometry:
    """Mirror rows and columns, each with probability ``p``."""
    if p == 0:
        return Geometry()
    signs = np.where(rng.random(2) < p, -1.0, 1.0)
    return Geometry(matrix=np.diag(signs))


def random_shift(rng: np.random.Generator, max_shift: float) -> Geometry:
    """Shift by up to ``max_shift`` pixels along each axis, sub-pixel included."""
    if max_shift == 0:
        return Geometry()
    return Geometry(shift=rng.uniform(-max_shift, max_shift, 2))


def random_rotation(rng: np.random.Generator, max_degrees: float) -> Geometry:
    """Rotate about the centre by an angle drawn uniformly from [-max_degrees, max_degrees]."""
    if max_degrees == 0:
        return Geometry()
    a = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    return Geometry(matrix=np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]))


def random_elastic(rng: np.random.Generator, std: float = 10.0, grid: int = 3) -> Geometry:
    """The paper's elastic deformation: Gaussian displacements (std in pixels) on a coarse grid x grid
    lattice spanning the array, interpolated bicubically to every pixel."""
    if std == 0:
        return Geometry()
    return Geometry(displacements=rng.normal(0.0, std, (2, grid, grid)))


def random_geometry(rng: np.random.Generator, config: AugmentConfig) -> Geometry:
    """Flips, rotation, shift and elastic deformation composed into one map, so each pixel is resampled once."""
    flip = random_flip(rng, config.flip)
    rotation = random_rotation(rng, config.rotate)
    shift = random_shift(rng, config.shift)
    elastic = random_elastic(rng, config.elastic_std, config.elastic_grid)
    return Geometry(matrix=rotation.matrix @ flip.matrix, shift=shift.shift, displacements=elastic.displacements)


def warp(image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, geometry: Geometry,
         crop: int = 0) -> Arrays:
    """Resample image (bicubic), mask and weights (nearest) at the geometry's source points, mirrored.

    ``crop`` > 0 computes only the output without a border of that width (the arrays then act as context
    around the region kept, so rotated corners show real content instead of mirrored content)."""
    if geometry.is_identity:
        kept = (slice(crop, mask.shape[0] - crop), slice(crop, mask.shape[1] - crop))
        return image[:, kept[0], kept[1]].copy(), mask[kept].copy(), None if weights is None else weights[kept].copy()
    points = geometry.source_points(mask.shape, crop)           # (2, h, w)
    out = np.stack([ndimage.map_coordinates(channel, points, order=3, mode="mirror", output=np.float32)
                    for channel in image])                      # (C, h, w)
    new_mask = ndimage.map_coordinates(mask, points, order=0, mode="mirror")
    new_weights = None if weights is None else ndimage.map_coordinates(weights, points, order=0, mode="mirror")
    return out, new_mask, new_weights


def flip(image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator,
         p: float = 0.5) -> Arrays:
    """Mirror rows and columns, each with probability ``p``."""
    return warp(image, mask, weights, random_flip(rng, p))


def shift(image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator,
          max_shift: float = 8.0) -> Arrays:
    """Shift by up to ``max_shift`` pixels per axis, mirrored at the borders."""
    return warp(image, mask, weights, random_shift(rng, max_shift))


def rotate(image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator,
           max_degrees: float = 180.0) -> Arrays:
    """Rotate by any angle up to ``max_degrees`` about the centre, mirrored at the borders."""
    return warp(image, mask, weights, random_rotation(rng, max_degrees))


def elastic(image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator,
            std: float = 10.0, grid: int = 3) -> Arrays:
    """Elastic deformation on a coarse grid (the paper: 3x3, std 10 px), bicubic for the image."""
    return warp(image, mask, weights, random_elastic(rng, std, grid))


def gray_values(image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator,
                brightness: float = 0.1, contrast: float = 0.2, gamma: float = 0.2, noise: float = 0.05) -> Arrays:
    """Per channel: gamma on the channel's own range, contrast about its mean, a brightness offset, and
    Gaussian noise. Mask and weights pass through unchanged."""
    out = image.astype(np.float32, copy=True)                   # (C, H, W)
    for channel in out:
        if gamma:
            _gamma(channel, np.exp(rng.uniform(-gamma, gamma)))
        if contrast:
            mean = channel.mean()
            channel -= mean
            channel *= np.exp(rng.uniform(-contrast, contrast))
            channel += mean
        if brightness:
            channel += rng.uniform(-brightness, brightness)
    if noise:
        out += rng.normal(0.0, rng.uniform(0.0, noise), out.shape).astype(np.float32)
    return out, mask.copy(), None if weights is None else weights.copy()


def augment(image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig(), crop: int = 0) -> Arrays:
    """All of the above: one resampling for the composed geometry, then the gray-value changes; ``crop``
    as in ``warp``."""
    image, mask, weights = warp(image, mask, weights, random_geometry(rng, config), crop)
    return gray_values(image, mask, weights, rng, config.brightness, config.contrast, config.gamma, config.noise)


def _gamma(channel: np.ndarray, g: float) -> None:
    """In place: ``lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` with lo, hi the channel's extremes."""
    lo, hi = channel.min(), channel.max()
    if hi > lo:
        channel[...] = lo + (hi - lo) * ((channel - lo) / (hi - lo)) ** g


def _interpolate_grid(displacements: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic spline interpolation of (2, g, g) grid displacements, nodes at the corners and evenly
    between, to every pixel of ``shape``: (2, H, W). The spline is a tensor product, so it is computed as
    rows @ grid @ cols.T with 1-D interpolation matrices."""
    g = displacements.shape[-1]
    rows, cols = (_spline_matrix(g, n) for n in shape)            # (H, g), (W, g)
    return np.stack([rows @ d @ cols.T for d in displacements])  # (2, H, W)


def _spline_matrix(g: int, n: int) -> np.ndarray:
    """(n, g): row i holds the weights of the g nodes in the cubic spline's value at pixel i of n."""
    at = np.linspace(0, g - 1, n)[None, :]                      # (1, n) in grid units
    return np.stack([ndimage.map_coordinates(unit, at, order=3, mode="mirror") for unit in np.eye(g)], axis=1)
