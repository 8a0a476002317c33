"""Augmentation: same geometry for image, mask and weights; labels stay labels; strength 0 is the identity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.errors import UNetError
from unet.train.augment import (AugmentConfig, Geometry, _interpolate_grid, augment, elastic, flip, gray_values,
                          random_elastic, rotate, shift, warp)

FUNCTIONS = [flip, shift, rotate, elastic, gray_values]
fast = settings(max_examples=30, deadline=None)


@st.composite
def triples(draw):
    """An image (C, H, W) float32, a mask of a few labels and a weight map, of odd and tiny sizes too."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    c = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = draw(st.lists(st.integers(0, 300), min_size=1, max_size=4, unique=True))
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(c, h, w)).astype(np.float32)
    mask = rng.choice(np.array(labels, np.int64), size=(h, w))
    weights = rng.uniform(0.5, 10, (h, w)).astype(np.float32)
    return image, mask, weights


strengths = st.floats(0.0, 3.0)


def disk_scene(h: int = 48, w: int = 56) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 20) ** 2 + (xx - 30) ** 2 < 12**2).astype(np.int64)
    mask[30:40, 5:15] = 2
    return mask[None].astype(np.float32), mask, (1 + mask).astype(np.float32)


@fast
@given(triples(), strengths, st.integers(0, 1000))
def test_shapes_dtypes_and_labels_are_kept(arrays, strength, seed):
    image, mask, weights = arrays
    out_image, out_mask, out_weights = augment(image, mask, weights, np.random.default_rng(seed),
                                               AugmentConfig().scaled(strength))
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert out_mask.shape == mask.shape and out_mask.dtype == mask.dtype
    assert out_weights.shape == weights.shape and out_weights.dtype == weights.dtype
    assert set(np.unique(out_mask)) <= set(np.unique(mask))
    assert set(np.unique(out_weights)) <= set(np.unique(weights))  # nearest neighbour: no new values
    assert np.isfinite(out_image).all()


@fast
@given(triples(), st.integers(0, 1000))
def test_zero_strength_is_the_identity(arrays, seed):
    image, mask, weights = arrays
    outputs = [augment(image, mask, weights, np.random.default_rng(seed), AugmentConfig().scaled(0))]
    zero = {flip: {"p": 0}, shift: {"max_shift": 0}, rotate: {"max_degrees": 0}, elastic: {"std": 0},
            gray_values: {"brightness": 0, "contrast": 0, "gamma": 0, "noise": 0}}
    outputs += [f(image, mask, weights, np.random.default_rng(seed), **zero[f]) for f in FUNCTIONS]
    for out_image, out_mask, out_weights in outputs:
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_mask, mask)
        np.testing.assert_array_equal(out_weights, weights)


@fast
@given(triples(), st.integers(0, 1000))
def test_deterministic_for_a_seed_and_inputs_untouched(arrays, seed):
    image, mask, weights = arrays
    copies = [a.copy() for a in arrays]
    first = augment(image, mask, weights, np.random.default_rng(seed))
    second = augment(image, mask, weights, np.random.default_rng(seed))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(arrays, copies):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    image, mask, weights = disk_scene()
    a = augment(image, mask, weights, np.random.default_rng(1))
    b = augment(image, mask, weights, np.random.default_rng(2))
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])


@pytest.mark.parametrize("transform", [flip, shift, rotate, elastic])
def test_image_mask_and_weights_share_the_geometry(transform):
    """The image is the mask as floats: after any warp, thresholding it must give back the warped mask
    (bicubic and nearest differ only at a few edge pixels), and the weights are 1 + mask everywhere."""
    image, mask, weights = disk_scene()
    kwargs = {flip: {"p": 1.0}}.get(transform, {})
    for seed in range(5):
        out_image, out_mask, out_weights = transform(image, mask, weights, np.random.default_rng(seed), **kwargs)
        assert np.mean(np.rint(np.clip(out_image[0], 0, 2)) == out_mask) > 0.97
        np.testing.assert_array_equal(out_weights, 1 + out_mask)


def test_flip_with_probability_one_mirrors_both_axes():
    image, mask, weights = disk_scene()
    out_image, out_mask, _ = flip(image, mask, weights, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(out_mask, mask[::-1, ::-1])
    np.testing.assert_allclose(out_image, image[:, ::-1, ::-1], atol=1e-5)


def test_quarter_turn_matches_rot90():
    _, mask, _ = disk_scene(33, 33)
    quarter = Geometry(matrix=np.array([[0.0, -1.0], [1.0, 0.0]]))
    _, out, _ = warp(mask[None].astype(np.float32), mask, None, quarter)
    np.testing.assert_array_equal(out, np.rot90(mask, -1))


@pytest.mark.parametrize("dy,dx", [(3, 0), (0, -5), (7, 2)])
def test_shift_mirrors_the_border_without_repeating_the_edge(dy, dx):
    """Content shifted out is replaced by the mirror image (numpy "reflect"), as in prediction."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (17, 23))
    _, out, _ = warp(mask[None].astype(np.float32), mask, None, Geometry(shift=np.array([dy, dx], float)))
    padded = np.pad(mask, ((abs(dy),) * 2, (abs(dx),) * 2), mode="reflect")
    expected = padded[abs(dy) + dy: abs(dy) + dy + 17, abs(dx) + dx: abs(dx) + dx + 23]
    np.testing.assert_array_equal(out, expected)


def test_rotation_by_any_angle_keeps_a_centred_disk():
    mask = np.zeros((41, 41), np.int64)
    mask[np.add.outer((np.arange(41) - 20) ** 2, (np.arange(41) - 20) ** 2) < 100] = 1
    for seed in range(5):
        _, out, _ = rotate(mask[None].astype(np.float32), mask, None, np.random.default_rng(seed))
        assert abs(out.sum() - mask.sum()) < 0.05 * mask.sum()
        np.testing.assert_allclose(np.argwhere(out).mean(axis=0), [20, 20], atol=0.5)


def test_crop_keeps_the_geometry_of_the_region_kept():
    """Warping with a context border and cropping it equals warping the whole array and cropping after,
    for rotations and shifts (both act about the common centre)."""
    rng = np.random.default_rng(0)
    image, mask = rng.normal(size=(1, 41, 45)).astype(np.float32), rng.integers(0, 4, (41, 45))
    geometry = Geometry(matrix=np.array([[0.6, -0.8], [0.8, 0.6]]), shift=np.array([1.5, -2.0]))
    full = warp(image, mask, None, geometry)
    cropped = warp(image, mask, None, geometry, crop=6)
    np.testing.assert_allclose(cropped[0], full[0][:, 6:35, 6:39], atol=1e-5)
    np.testing.assert_array_equal(cropped[1], full[1][6:35, 6:39])
    identity = warp(image, mask, None, Geometry(), crop=6)
    np.testing.assert_array_equal(identity[1], mask[6:35, 6:39])


def test_rotation_fills_the_corners_by_mirroring():
    """A constant image stays constant: the corners come from mirrored content, not from a fill value."""
    image, mask = np.full((2, 30, 37), 5.0, np.float32), np.ones((30, 37), np.int64)
    out_image, out_mask, _ = warp(image, mask, None, Geometry(matrix=np.array([[0.6, -0.8], [0.8, 0.6]])))
    np.testing.assert_allclose(out_image, 5.0, rtol=1e-5)
    assert (out_mask == 1).all()


@settings(max_examples=20, deadline=None)
@given(st.integers(5, 60), st.integers(5, 60), st.integers(0, 1000))
def test_elastic_field_passes_through_the_coarse_grid(h, w, seed):
    """Bicubic interpolation of the 3x3 displacements: exact at the corners and, for odd sizes, the centre."""
    d = random_elastic(np.random.default_rng(seed), std=10.0, grid=3).displacements  # (2, 3, 3)
    field = _interpolate_grid(d, (h, w))                        # (2, h, w)
    for (gy, gx), (y, x) in [((0, 0), (0, 0)), ((2, 2), (h - 1, w - 1)), ((0, 2), (0, w - 1))]:
        np.testing.assert_allclose(field[:, y, x], d[:, gy, gx], atol=1e-6)
    if h % 2 and w % 2:
        np.testing.assert_allclose(field[:, h // 2, w // 2], d[:, 1, 1], atol=1e-6)


def test_elastic_field_is_the_2d_bicubic_spline_of_the_grid():
    """The separable (matrix product) evaluation equals scipy's 2-D cubic spline through the nodes."""
    d = random_elastic(np.random.default_rng(0)).displacements
    at = np.stack(np.meshgrid(np.linspace(0, 2, 37), np.linspace(0, 2, 52), indexing="ij"))
    expected = np.stack([ndimage.map_coordinates(c, at, order=3, mode="mirror") for c in d])
    np.testing.assert_allclose(_interpolate_grid(d, (37, 52)), expected, atol=1e-9)


def test_elastic_displacements_have_the_paper_spread():
    draws = np.concatenate([random_elastic(np.random.default_rng(s)).displacements.ravel() for s in range(200)])
    assert 9.0 < draws.std() < 11.0


def test_gamma_keeps_each_channels_range_and_gray_values_leave_labels():
    image, mask, weights = disk_scene()
    image = image + np.random.default_rng(0).normal(0, 0.1, image.shape).astype(np.float32)
    out, out_mask, out_weights = gray_values(image, mask, weights, np.random.default_rng(1), brightness=0,
                                             contrast=0, gamma=0.5, noise=0)
    np.testing.assert_allclose([out.min(), out.max()], [image.min(), image.max()], rtol=1e-5)
    assert not np.allclose(out, image)
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_weights, weights)


@pytest.mark.parametrize("kwargs", [{"rotate": -1.0}, {"flip": 1.5}, {"elastic_grid": 1}])
def test_bad_amounts_are_refused(kwargs):
    with pytest.raises(UNetError, match="augmentation: expected"):
        AugmentConfig(**kwargs)
