"""Synthetic ships at sea (RGB) with ground truth, for the demo, tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet.demo.noise import (Scene, Seed, affine, check_range, check_shape, ground_truth, smooth_noise,
                             to_unsigned)
from unet.errors import UNetError


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
    shape = check_shape(shape)
    check_range("moving", moving, 0.0, 1.0)
    check_range("clouds", clouds, 0.0, 1.0)
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
    return Scene(to_unsigned(image, np.uint8), ground_truth(instances), instances, ("sea", "ship"))


def _sea(shape, rng):
    """Sea colour with slow variations, wind waves and a swell; also the wave field for wake turbulence."""
    deep = np.array([rng.uniform(8, 25), rng.uniform(30, 55), rng.uniform(45, 80)], np.float32)
    tone = affine(smooth_noise(shape, rng, cell=max(shape) / 3), 1.0, 0.12)          # (H, W)
    scratch = rng.standard_normal(shape, dtype=np.float32)
    waves = ndimage.gaussian_filter(scratch, (0.8, 2.0), truncate=3.0)                # wind waves
    waves /= waves[::4, ::4].std() or 1
    direction, wavelength = rng.uniform(0, np.pi), rng.uniform(12, 30)
    y = np.arange(shape[0], dtype=np.float32)[:, None] * np.float32(np.sin(direction))
    x = np.arange(shape[1], dtype=np.float32)[None, :] * np.float32(np.cos(direction))
    ripples = x + y                                                                      # (H, W)
    ripples *= np.float32(2 * np.pi / wavelength)
    np.cos(ripples, out=ripples)                                                         # the swell
    ripples *= affine(smooth_noise(shape, rng, cell=max(shape) / 6), 2.0, 1.0)
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
    haze = affine(smooth_noise(shape, rng, cell=max(shape) / 2), 0.06, 0.03)         # (H, W) opacity
    if clouds > 0:
        field = smooth_noise(shape, rng, cell=32, octaves=4)
        sample = field[::8, ::8]
        field -= np.quantile(sample, 1 - clouds)
        haze += np.clip(affine(field, 0.0, 0.6 / (sample.std() or 1.0)), 0, 0.6, out=field)
    np.clip(haze, 0, 0.7, out=haze)
    scratch = np.empty(shape, np.float32)
    for channel, cloud in enumerate(_CLOUD):
        image[channel] -= np.multiply(image[channel], haze, out=scratch)
        image[channel] += np.multiply(haze, cloud, out=scratch)


def _sensor_noise(image, rng, sigma):
    """Add independent Gaussian noise of ``sigma`` to every pixel of a (C, H, W) float32 image, in place."""
    scratch = np.empty(image.shape[1:], np.float32)
    for channel in image:
        channel += affine(rng.standard_normal(dtype=np.float32, out=scratch), 0.0, sigma)
