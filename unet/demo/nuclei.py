"""Synthetic fluorescent nuclei with ground truth, for the demo, tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet.demo.noise import (Scene, Seed, affine, check_range, check_shape, ground_truth, smooth_noise,
                             to_unsigned)
from unet.errors import UNetError


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
                 radius: tuple[float, float] = (6, 14), touching: float = 0.4, brightness: float = 1.0,
                 blur: tuple[float, float] = (1.0, 1.6), dtype: type = np.uint8) -> Scene:
    """A fluorescence micrograph of nuclei: ellipses of varied size, orientation, brightness and texture.

    ``density`` is about the fraction of the area covered by nuclei; ``radius`` the range of the semi-major axis
    (the semi-minor one is 0.6-1.0 of it); ``touching`` the fraction of nuclei placed against another one,
    which forms pairs and small clusters that touch or slightly overlap (a later label lies on top).
    The image is blurred by a Gaussian PSF (its sigma drawn from ``blur``, pixels), lit unevenly (a smooth
    field and vignetting), has background autofluorescence, shot noise (a Gaussian of the Poisson variance)
    and read noise; ``brightness`` scales the photons of the nuclei (0.5: half the signal, a noisier
    image); ``dtype`` is np.uint8 or np.uint16, the brightest nuclei saturate.
    """
    shape = check_shape(shape)
    check_range("density", density, 1e-6, 1.0)
    check_range("touching", touching, 0.0, 1.0)
    check_range("brightness", brightness, 0.01, 100.0)
    for name, (lo, hi) in (("radius", radius), ("blur", blur)):
        if not 0 < lo <= hi:
            raise UNetError(f"{name}: expected (min, max) with 0 < min <= max, found {(lo, hi)!r}")
    if np.dtype(dtype) not in (np.uint8, np.uint16):
        raise UNetError(f"dtype: expected np.uint8 or np.uint16, found {np.dtype(dtype)}")
    rng = np.random.default_rng(rng)
    nuclei = _place_nuclei(shape, rng, density, radius, touching)
    instances, clean = _paint_nuclei(shape, nuclei)
    image = _fluorescence(clean * np.float32(brightness), rng, dtype, blur)
    return Scene(image, ground_truth(instances), instances, ("background", "nucleus"))


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


def _fluorescence(clean, rng, dtype, blur):
    """Camera image of a noise-free intensity map: PSF, illumination, autofluorescence, shot and read noise."""
    # Whole-image steps work in place on few buffers: allocating large arrays is a large part of the time.
    shape = clean.shape
    photons = ndimage.gaussian_filter(clean, rng.uniform(*blur), truncate=3.0)        # (H, W) PSF
    scratch = affine(smooth_noise(shape, rng, cell=max(shape) / 8), 0.06, 0.025)    # autofluorescence
    photons += scratch
    illumination = affine(smooth_noise(shape, rng, cell=max(shape) / 2), 1.0, 0.2)
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
    return to_unsigned(affine(photons, 0.02 * top, 0.45 * top / _PHOTONS), dtype)
