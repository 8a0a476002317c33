"""Synthetic scenes with ground truth: fluorescent nuclei and ships at sea, for the demo, tests and benchmarks.

Every scene is a pure function of its shape, its parameters and the random generator (or integer seed) it is
given. Objects are painted as small stamps into windows around them; smooth fields (illumination, sea colour,
clouds) come from a random coarse grid interpolated by two small matrix products; nothing loops over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet.errors import UNetError

Seed = np.random.Generator | int


@dataclass(frozen=True)
class Scene:
    """An image with its ground truth: a class mask and instance labels (0 is background in both)."""

    image: np.ndarray                # (H, W) gray or (3, H, W) RGB
    mask: np.ndarray                 # (H, W) uint8 class index, == (instances > 0)
    instances: np.ndarray            # (H, W) uint32, objects numbered 1..N
    class_names: tuple[str, ...]


# --- shared pieces -----------------------------------------------------------------------------------------

def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(n) != n or n < 1 for n in shape):
        raise UNetError(f"scene shape: expected two positive integers (height, width), found {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UNetError(f"{name}: expected a number in [{low}, {high}], found {value!r}")


def _interpolation_matrix(n: int, cell: float) -> np.ndarray:
    """(n, nodes) Gaussian weights from pixels to a coarse grid of nodes ``cell`` pixels apart (border incl.)."""
    nodes = int(np.ceil(n / cell)) + 4
    position = np.arange(n, dtype=np.float32) / cell + 2.0             # (n,) in node units
    return np.exp(-0.5 * ((position[:, None] - np.arange(nodes)) / 0.7) ** 2, dtype=np.float32)


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell: float, octaves: int = 1) -> np.ndarray:
    """A smooth random field with zero mean and features about ``cell`` pixels wide.

    With one octave its variance is 1 at every pixel. Each further octave adds features twice as wide and
    twice as strong, which makes the field fractal (cloud-like).
    """
    rows = _interpolation_matrix(shape[0], cell)                      # (H, h)
    cols = _interpolation_matrix(shape[1], cell)                      # (W, w)
    grid = rng.standard_normal((rows.shape[1], cols.shape[1]), dtype=np.float32)
    for octave in range(1, octaves):
        step = 2**octave
        coarse = rng.standard_normal((grid.shape[0] // step + 2, grid.shape[1] // step + 2), dtype=np.float32)
        grid += step * ndimage.zoom(coarse, step, order=1)[:grid.shape[0], :grid.shape[1]]
    field = rows @ grid @ cols.T                                      # (H, W)
    field /= np.sqrt((rows**2).sum(1))[:, None]
    field /= np.sqrt((cols**2).sum(1))[None, :]
    return field


def _to_unsigned(image: np.ndarray, dtype: type) -> np.ndarray:
    """Round and clip a float image whose range is that of ``dtype``."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(image, out=image), 0, top, out=image).astype(dtype)


def _ground_truth(instances: np.ndarray) -> np.ndarray:
    return (instances > 0).astype(np.uint8)


# --- nuclei ------------------------------------------------------------------------------------------------

_NUCLEI_PER_BATCH = 2048    # nuclei stamped per vectorised batch: bounds the memory of the stamp stack
_PHOTONS = 200.0            # expected photons of a nucleus of brightness 1 under unit illumination
_READ_NOISE = 3.0           # camera read noise, photons
_OVERLAP = 0.9              # about this fraction of the nuclei's summed area stays visible after overlaps


@dataclass(frozen=True)
class _Nuclei:
    """One entry per nucleus: centre, semi-axes (a >= b), orientation, brightness and chromatin texture."""

    cy: np.ndarray
    cx: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    brightness: np.ndarray
    texture_k: np.ndarray       # (3, 2, N) wave vectors of three cosines, radians per pixel
    texture_phase: np.ndarray   # (3, N)


def nuclei_scene(shape: tuple[int, int], rng: Seed, *, density: float = 0.25,
                 radius: tuple[float, float] = (6, 14), touching: float = 0.4,
                 dtype: type = np.uint8) -> Scene:
    """A fluorescence micrograph of nuclei: ellipses of varied size, orientation, brightness and texture.

    ``density`` is about the fraction of the area covered by nuclei; ``radius`` the range of the semi-major axis
    (the semi-minor one is 0.6-1.0 of it); ``touching`` the fraction of nuclei placed against another one,
    which forms pairs and small clusters that touch or slightly overlap (a later label lies on top).
    The image is blurred by a Gaussian PSF, lit unevenly (a smooth field and vignetting), has background
    autofluorescence, shot noise (a Gaussian of the Poisson variance) and read noise; ``dtype`` is np.uint8
    or np.uint16, the brightest nuclei saturate.
    """
    shape = _check_shape(shape)
    _check_range("density", density, 1e-6, 1.0)
    _check_range("touching", touching, 0.0, 1.0)
    if not 0 < radius[0] <= radius[1]:
        raise UNetError(f"radius: expected (min, max) with 0 < min <= max, found {radius!r}")
    if np.dtype(dtype) not in (np.uint8, np.uint16):
        raise UNetError(f"dtype: expected np.uint8 or np.uint16, found {np.dtype(dtype)}")
    rng = np.random.default_rng(rng)
    nuclei = _place_nuclei(shape, rng, density, radius, touching)
    instances, clean = _paint_nuclei(shape, nuclei)
    image = _fluorescence(clean, rng, dtype)
    return Scene(image, _ground_truth(instances), instances, ("background", "nucleus"))


def _place_nuclei(shape, rng, density, radius, touching) -> _Nuclei:
    """Seeds on a jittered grid, then generations of nuclei placed against those already there."""
    mean_area = np.pi * 0.8 * (radius[0]**2 + radius[0] * radius[1] + radius[1]**2) / 3
    margin = radius[1] / 2                      # centres reach this far out, so nuclei cross the border
    area = (shape[0] + 2 * margin) * (shape[1] + 2 * margin)
    total = max(1, round(density * area / mean_area / _OVERLAP))
    placed = total - min(total - 1, round(touching * total))
    cy, cx = (np.resize(c, total) for c in _jittered_seeds(shape, rng, placed, margin))
    a = rng.uniform(*radius, total).astype(np.float32)
    b = a * rng.uniform(0.6, 1.0, total).astype(np.float32)
    theta = rng.uniform(0, np.pi, total).astype(np.float32)
    while placed < total:
        new = np.arange(placed, min(total, placed + -(-placed // 2)))
        parent = rng.integers(0, placed, new.size)
        direction = rng.uniform(0, 2 * np.pi, new.size).astype(np.float32)
        reach = (_ellipse_reach(a[parent], b[parent], theta[parent], direction)
                 + _ellipse_reach(a[new], b[new], theta[new], direction))
        distance = reach * rng.uniform(0.8, 1.05, new.size).astype(np.float32)   # most overlap a little
        cy[new] = cy[parent] + distance * np.sin(direction)
        cx[new] = cx[parent] + distance * np.cos(direction)
        placed = new[-1] + 1
    brightness = np.clip(rng.lognormal(0.0, 0.35, total), 0.3, 2.0).astype(np.float32)
    texture_k = rng.uniform(-1.3, 1.3, (3, 2, total)).astype(np.float32)   # wavelengths of 5 px and more
    texture_phase = rng.uniform(0, 2 * np.pi, (3, total)).astype(np.float32)
    return _Nuclei(cy, cx, a, b, theta, brightness, texture_k, texture_phase)


def _jittered_seeds(shape, rng, n, margin):
    """``n`` points spread over the shape grown by ``margin``: one per chosen cell of a grid, jittered."""
    height, width = shape[0] + 2 * margin, shape[1] + 2 * margin
    cell = np.sqrt(height * width * 0.75 / n)                 # three cells in four hold a seed
    ny, nx = int(np.ceil(height / cell)), int(np.ceil(width / cell))
    chosen = rng.choice(ny * nx, size=n, replace=False)
    jitter = rng.uniform(0.2, 0.8, (2, n))
    cy = (chosen // nx + jitter[0]) * cell - margin
    cx = (chosen % nx + jitter[1]) * cell - margin
    return cy.astype(np.float32), cx.astype(np.float32)


def _ellipse_reach(a, b, theta, direction):
    """Distance from an ellipse's centre to its outline in ``direction``."""
    phi = direction - theta
    return a * b / np.hypot(b * np.cos(phi), a * np.sin(phi))


def _paint_nuclei(shape, nuclei: _Nuclei):
    """Instance labels and noise-free intensities; where nuclei overlap, the higher label wins."""
    count = nuclei.a.size
    labels = np.zeros(shape[0] * shape[1], np.uint32)
    pieces = [_nucleus_stamps(shape, nuclei, slice(start, start + _NUCLEI_PER_BATCH))
              for start in range(0, count, _NUCLEI_PER_BATCH)]
    flat, label, value = (np.concatenate(column) for column in zip(*pieces))
    np.maximum.at(labels, flat, label)
    winner = labels[flat] == label
    clean = np.zeros(labels.size, np.float32)
    clean[flat[winner]] = value[winner]
    visible = np.zeros(count + 1, bool)
    visible[label[winner]] = True
    numbering = np.zeros(count + 1, np.uint32)                 # visible nuclei renumbered 1..N in order
    numbering[visible] = np.arange(1, visible.sum() + 1, dtype=np.uint32)
    return numbering[labels].reshape(shape), clean.reshape(shape)


def _nucleus_stamps(shape, nuclei: _Nuclei, batch: slice):
    """Flat pixel indices, labels and intensities of the in-bounds pixels inside a batch of nuclei."""
    cy, cx, a, b = nuclei.cy[batch], nuclei.cx[batch], nuclei.a[batch], nuclei.b[batch]
    half = int(np.ceil(nuclei.a.max())) + 1
    offsets = np.arange(-half, half + 1)
    y = np.floor(cy).astype(np.intp)[:, None, None] + offsets[:, None]           # (B, S, 1)
    x = np.floor(cx).astype(np.intp)[:, None, None] + offsets[None, :]           # (B, 1, S)
    dy = (np.floor(cy) - cy)[:, None, None] + offsets[:, None].astype(np.float32)  # (B, S, 1)
    dx = (np.floor(cx) - cx)[:, None, None] + offsets[None, :].astype(np.float32)  # (B, 1, S)
    cos, sin = np.cos(nuclei.theta[batch])[:, None, None], np.sin(nuclei.theta[batch])[:, None, None]
    u = dx * cos + dy * sin                                                       # (B, S, S) along a
    v = dy * cos - dx * sin                                                       # (B, S, S) along b
    rho2 = (u / a[:, None, None]) ** 2 + (v / b[:, None, None]) ** 2
    inside = (rho2 <= 1) & (y >= 0) & (y < shape[0]) & (x >= 0) & (x < shape[1])
    n, i, j = np.nonzero(inside)
    u, v, rho2 = u[n, i, j], v[n, i, j], rho2[n, i, j]
    k, phase = nuclei.texture_k[:, :, batch][:, :, n], nuclei.texture_phase[:, batch][:, n]
    texture = np.cos(k[:, 0] * u + k[:, 1] * v + phase).mean(0)                    # chromatin mottling
    value = nuclei.brightness[batch][n] * (0.75 + 0.25 * (1 - rho2)) * (1 + 0.3 * texture)
    flat = y[n, i, 0] * shape[1] + x[n, 0, j]
    return flat, (batch.start + n + 1).astype(np.uint32), value.astype(np.float32)


def _fluorescence(clean, rng, dtype):
    """Camera image of a noise-free intensity map: PSF, illumination, autofluorescence, shot and read noise."""
    # Whole-image steps work in place on few buffers: allocating large arrays is a large part of the time.
    shape = clean.shape
    photons = ndimage.gaussian_filter(clean, rng.uniform(1.0, 1.6), truncate=3.0)    # (H, W) PSF
    scratch = _affine(_smooth_noise(shape, rng, cell=max(shape) / 8), 0.06, 0.025)    # autofluorescence
    photons += scratch
    illumination = _affine(_smooth_noise(shape, rng, cell=max(shape) / 2), 1.0, 0.2)
    for axis, n in enumerate(shape):                               # vignetting: the corners get 70 %
        falloff = 1 - 0.16 * np.linspace(-1, 1, n, dtype=np.float32) ** 2
        illumination *= falloff[:, None] if axis == 0 else falloff[None, :]
    photons *= np.maximum(illumination, 0.2, out=illumination)
    photons *= _PHOTONS
    np.maximum(photons, 0, out=photons)      # the autofluorescence field dips below 0 in rare spots
    noise = rng.standard_normal(shape, dtype=np.float32, out=scratch)
    deviation = np.sqrt(np.add(photons, _READ_NOISE**2, out=illumination), out=illumination)
    photons += np.multiply(deviation, noise, out=deviation)     # shot noise as a Gaussian of equal variance
    top = np.iinfo(dtype).max
    return _to_unsigned(_affine(photons, 0.02 * top, 0.45 * top / _PHOTONS), dtype)


def _affine(field: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """``mean + scale * field``, in place."""
    field *= scale
    field += mean
    return field


# --- ships at sea ------------------------------------------------------------------------------------------

_KELVIN_TAN = np.float32(np.tan(np.radians(19.47)))   # half-angle of a ship's V-shaped (Kelvin) wake
_FOAM = np.array([225, 230, 235], np.float32)         # RGB of wake foam
_CLOUD = np.array([235, 238, 242], np.float32)        # RGB of cloud tops
_DECKS = np.array([[200, 95, 70], [90, 160, 110], [110, 140, 200]], np.float32)   # rust, green, blue


@dataclass(frozen=True)
class _Ship:
    cy: float
    cx: float
    heading: float          # radians; x to the right, y down
    length: float
    width: float
    bow: float              # length of the pointed front
    colour: np.ndarray      # (3,) RGB of the deck
    deckhouse: float        # brightness factor of the superstructure
    wake: float             # 0 for a ship at anchor, else the opacity of its wake
    wake_decay: float       # pixels behind the stern over which the wake fades by 1/e


def ship_scene(shape: tuple[int, int], rng: Seed, *, n_ships: int | None = None,
               moving: float = 0.8, clouds: float = 0.15) -> Scene:
    """An RGB (3, H, W) uint8 satellite view of the sea with ships, their wakes, haze and thin clouds.

    Ships are bright rotated hulls with a pointed bow, 15-60 px long and 4-12 px wide, that do not
    overlap; ``n_ships`` (default: one per 2**17 px, at least one) is an upper bound when the scene is
    crowded. A fraction ``moving`` of them trail a turbulent centre wake and a fading V-shaped wake behind
    the stern; wakes are sea in the ground truth. ``clouds`` is the fraction of the sky under thin cloud.
    """
    shape = _check_shape(shape)
    _check_range("moving", moving, 0.0, 1.0)
    _check_range("clouds", clouds, 0.0, 1.0)
    if n_ships is None:
        n_ships = max(1, round(shape[0] * shape[1] / 2**17))
    if n_ships < 0:
        raise UNetError(f"n_ships: expected a count >= 0, found {n_ships}")
    rng = np.random.default_rng(rng)
    image, waves = _sea(shape, rng)
    ships = _place_ships(shape, rng, n_ships, moving)
    for ship in ships:
        _paint_wake(image, waves, ship)
    instances = np.zeros(shape, np.uint32)
    for label, ship in enumerate(ships, start=1):
        _paint_ship(image, instances, ship, label)
    _atmosphere(image, rng, clouds)
    _sensor_noise(image, rng, sigma=1.5)
    return Scene(_to_unsigned(image, np.uint8), _ground_truth(instances), instances, ("sea", "ship"))


def _sea(shape, rng):
    """Sea colour with slow variations, wind waves and a swell; also the wave field for wake turbulence."""
    deep = np.array([rng.uniform(8, 25), rng.uniform(30, 55), rng.uniform(45, 80)], np.float32)
    tone = _affine(_smooth_noise(shape, rng, cell=max(shape) / 3), 1.0, 0.12)          # (H, W)
    scratch = rng.standard_normal(shape, dtype=np.float32)
    waves = ndimage.gaussian_filter(scratch, (0.8, 2.0), truncate=3.0)                # wind waves
    waves /= waves[::4, ::4].std() or 1
    direction, wavelength = rng.uniform(0, np.pi), rng.uniform(12, 30)
    y = np.arange(shape[0], dtype=np.float32)[:, None] * np.float32(np.sin(direction))
    x = np.arange(shape[1], dtype=np.float32)[None, :] * np.float32(np.cos(direction))
    ripples = x + y                                                                      # (H, W)
    ripples *= np.float32(2 * np.pi / wavelength)
    np.cos(ripples, out=ripples)                                                         # the swell
    ripples *= _affine(_smooth_noise(shape, rng, cell=max(shape) / 6), 2.0, 1.0)
    ripples += np.multiply(waves, 3.5, out=scratch)
    image = np.empty((3, *shape), np.float32)
    for channel, (depth, tint) in enumerate(zip(deep, (0.7, 1.0, 1.2))):
        np.multiply(tone, depth, out=image[channel])
        image[channel] += np.multiply(ripples, tint, out=scratch)
    return image, waves                                                                  # (3, H, W), (H, W)


def _place_ships(shape, rng, n, moving):
    """Up to ``n`` ships at random positions (some crossing the border) whose hulls do not overlap."""
    ships: list[_Ship] = []
    for _ in range(20 * n):
        if len(ships) == n:
            break
        length = rng.uniform(15, 60)
        cy, cx = rng.uniform(-length / 4, shape[0] + length / 4), rng.uniform(-length / 4, shape[1] + length / 4)
        if any(np.hypot(cy - s.cy, cx - s.cx) < (length + s.length) / 2 + 4 for s in ships):
            continue
        grey = rng.uniform(170, 245)
        colour = grey + rng.uniform(-12, 12, 3) if rng.random() < 0.8 else rng.choice(_DECKS) * grey / 230
        ships.append(_Ship(
            cy=cy, cx=cx, heading=rng.uniform(0, 2 * np.pi), length=length,
            width=float(np.clip(length * rng.uniform(0.15, 0.25), 4, 12)), bow=length * rng.uniform(0.15, 0.3),
            colour=colour.astype(np.float32), deckhouse=rng.choice([0.75, 1.15]),
            wake=rng.uniform(0.35, 0.7) if rng.random() < moving else 0.0,
            wake_decay=min(length * rng.uniform(1.5, 3.5), 120.0)))
    return ships


def _window(shape, ship, back, front, half_width):
    """Row and column slices of the image box around the ship-frame rectangle, or None if outside."""
    cos, sin = np.cos(ship.heading), np.sin(ship.heading)
    u = np.array([-back, -back, front, front])
    v = np.array([-half_width, half_width, -half_width, half_width])
    y, x = ship.cy + u * sin + v * cos, ship.cx + u * cos - v * sin
    top, bottom = max(0, int(np.floor(y.min())) - 3), min(shape[0], int(np.ceil(y.max())) + 4)
    left, right = max(0, int(np.floor(x.min())) - 3), min(shape[1], int(np.ceil(x.max())) + 4)
    if top >= bottom or left >= right:
        return None
    return slice(top, bottom), slice(left, right)


def _ship_frame(ship, rows, cols):
    """Pixel centres of a window in the ship's frame: u along the heading from the centre, v across."""
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - np.float32(ship.cy)
    x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - np.float32(ship.cx)
    cos, sin = np.float32(np.cos(ship.heading)), np.float32(np.sin(ship.heading))
    return x * cos + y * sin, y * cos - x * sin                                        # (h, w), (h, w)


def _paint_wake(image, waves, ship):
    """Blend whitish foam behind a moving ship: a turbulent centre trail and the two arms of a V."""
    if ship.wake == 0:
        return
    half, r = ship.length / 2, ship.width / 2
    extent = 4 * ship.wake_decay
    window = _window(image.shape[1:], ship, half + extent, -half, r + extent * _KELVIN_TAN + 6)
    if window is None:
        return
    u, v = _ship_frame(ship, *window)
    behind = np.maximum(-u - half, 0)                                 # distance behind the stern
    fade = np.exp(-behind / ship.wake_decay) * np.clip(-u - half + 1, 0, 1)
    core = r * (1 + behind / ship.length * 0.4)                      # the turbulent trail widens slowly
    trail = np.exp(-0.5 * (v / core) ** 2) * (0.8 + 0.2 * np.clip(waves[window], -2, 2))
    arm = (np.abs(v) - r - behind * _KELVIN_TAN) / (1 + 0.04 * behind)
    arms = 0.45 * np.exp(-0.5 * arm**2)
    alpha = np.clip(ship.wake * fade * (trail + arms), 0, 0.9)                   # (h, w)
    view = image[:, window[0], window[1]]
    view += alpha * (_FOAM[:, None, None] - view)


def _paint_ship(image, instances, ship, label):
    """Paint an anti-aliased, slightly blurred hull with a deckhouse and record its pixels as ``label``."""
    reach = np.hypot(ship.length / 2, ship.width / 2)
    window = _window(image.shape[1:], ship, reach, reach, reach)
    if window is None:
        return
    u, v = _ship_frame(ship, *window)
    half, r = ship.length / 2, ship.width / 2
    outside = np.maximum(np.maximum(np.abs(v) - r, -half - u),                  # signed distance (convex)
                         (ship.bow * np.abs(v) + r * (u - half)) / np.hypot(ship.bow, r))
    alpha = np.clip(0.5 - outside, 0, 1)                                            # (h, w)
    shade = 1 - 0.2 * np.clip(np.abs(v) / r, 0, 1) ** 2
    deckhouse = (u > -0.75 * half) & (u < -0.3 * half) & (np.abs(v) < 0.6 * r)
    shade = np.where(deckhouse, shade * ship.deckhouse, shade)
    view = image[:, window[0], window[1]]
    hull = np.clip(ship.colour[:, None, None] * shade, 0, 255)                        # (3, h, w)
    change = alpha * (hull - view)
    view += ndimage.gaussian_filter(change, (0, 0.6, 0.6), truncate=3.0)             # sensor blur
    instances[window][outside <= 0] = label


def _atmosphere(image, rng, clouds):
    """A thin uneven haze over the whole scene and, over a fraction ``clouds`` of it, thin clouds."""
    shape = image.shape[1:]
    haze = _affine(_smooth_noise(shape, rng, cell=max(shape) / 2), 0.06, 0.03)         # (H, W) opacity
    if clouds > 0:
        field = _smooth_noise(shape, rng, cell=32, octaves=4)
        sample = field[::8, ::8]
        field -= np.quantile(sample, 1 - clouds)
        haze += np.clip(_affine(field, 0.0, 0.6 / (sample.std() or 1.0)), 0, 0.6, out=field)
    np.clip(haze, 0, 0.7, out=haze)
    scratch = np.empty(shape, np.float32)
    for channel, cloud in enumerate(_CLOUD):
        image[channel] -= np.multiply(image[channel], haze, out=scratch)
        image[channel] += np.multiply(haze, cloud, out=scratch)


def _sensor_noise(image, rng, sigma):
    """Add independent Gaussian noise of ``sigma`` to every pixel of a (C, H, W) float32 image, in place."""
    scratch = np.empty(image.shape[1:], np.float32)
    for channel in image:
        channel += _affine(rng.standard_normal(dtype=np.float32, out=scratch), 0.0, sigma)
