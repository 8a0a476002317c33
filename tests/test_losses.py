"""The paper's weight map and loss: gaps between touching instances, border weights peaking in the gap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.errors import UNetError
from unet.train.losses import (NEGLIGIBLE, LossConfig, border_weights, class_frequency_weights, segmentation_loss,
                               separate_instances, soft_dice_loss, weighted_cross_entropy)


def touching_pair() -> np.ndarray:
    """Two rectangles side by side, sharing a 12-px long edge, on a 24 x 36 background."""
    instances = np.zeros((24, 36), np.int64)
    instances[6:18, 4:18] = 1
    instances[6:18, 18:32] = 2
    return instances


def brute_force_border_weights(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula evaluated literally: a full distance transform per instance, then d1 and d2 sorted."""
    labels = [v for v in np.unique(instances) if v]
    distances = np.stack([ndimage.distance_transform_edt(instances != v) for v in labels]
                         + [np.full(instances.shape, np.inf)] * 2)  # (n + 2, H, W)
    d = np.sort(distances, axis=0)
    w = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    w[(instances > 0) | (w < NEGLIGIBLE * w0)] = 0
    return w


def test_touching_instances_get_a_one_pixel_gap():
    separated = separate_instances(touching_pair())
    assert (separated[6:18, 18] == 0).all()                     # the larger label gave up its edge column
    assert (separated[6:18, 4:18] == 1).all() and (separated[6:18, 19:32] == 2).all()
    _, n = ndimage.label(separated > 0, structure=np.ones((3, 3)))
    assert n == 2                                               # no longer 8-connected


def test_border_weight_peaks_in_the_gap():
    instances = separate_instances(touching_pair())
    w = border_weights(instances, w0=10, sigma=5)
    gap = np.zeros_like(instances, bool)
    gap[6:18, 18] = True
    assert gap[np.unravel_index(w.argmax(), w.shape)]
    np.testing.assert_allclose(w[gap], 10 * math.exp(-4 / 50), rtol=1e-5)  # d1 = d2 = 1 px
    assert w[gap].min() > w[~gap].max()
    assert w[3, 10] < 1 and w[12, 1] < 0.01                     # beside one object only: small
    assert (w[instances > 0] == 0).all()                        # objects themselves carry no border term
    assert w[0, 0] < 0.1 and w[23, 35] < 0.1                    # far from the pair: negligible


def test_a_single_object_gets_little_border_weight():
    """d2 is the distance to a second object: with one object it is infinite and the term vanishes."""
    instances = np.zeros((30, 30), np.int64)
    instances[10:20, 10:20] = 1
    assert (border_weights(instances) == 0).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.floats(1.0, 6.0))
def test_windowed_border_weights_equal_the_formula(seed, n, sigma):
    """The per-instance windows must give the same map as full-image distance transforms."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(10, 60, 2)
    instances = np.zeros((h, w), np.int64)
    for label in range(1, n + 1):
        y, x = rng.integers(0, h), rng.integers(0, w)
        instances[y: y + rng.integers(1, 12), x: x + rng.integers(1, 12)] = label
    instances[0, 0] = 0 if n < 3 else instances[0, 0]
    expected = brute_force_border_weights(instances, 10.0, sigma)
    np.testing.assert_allclose(border_weights(instances, 10.0, sigma), expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_separation_leaves_no_two_instances_touching(seed):
    rng = np.random.default_rng(seed)
    instances = ndimage.zoom(rng.integers(0, 6, (6, 7)), 5, order=0)  # blocks of labels, many touching
    separated = separate_instances(instances)
    grown_max = ndimage.maximum_filter(separated, size=3)
    grown_min = ndimage.minimum_filter(np.where(separated > 0, separated, 99), size=3)
    fg = separated > 0
    assert (grown_max[fg] == separated[fg]).all() and (grown_min[fg] == separated[fg]).all()
    assert set(np.unique(separated)) <= set(np.unique(instances))
    assert ((separated == instances) | (separated == 0)).all()  # only ever turns pixels into background


def test_class_frequency_weights_balance_the_classes():
    masks = [np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 0, 2, 2]])]
    w = class_frequency_weights(masks, 4)
    counts = np.array([7, 1, 2, 0])
    np.testing.assert_allclose(w[:3] * counts[:3], [10 / 3] * 3)  # each present class carries the same mass
    assert w[3] == 1.0                                            # absent class
    pixels = np.concatenate([m.ravel() for m in masks])
    assert w[pixels].mean() == pytest.approx(1.0)


def test_uniform_weights_give_the_plain_cross_entropy_and_scale_does_not_matter():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=g)
    target = torch.randint(0, 3, (2, 5, 7), generator=g)
    ones = torch.ones(2, 5, 7)
    assert weighted_cross_entropy(logits, target, ones).item() == pytest.approx(F.cross_entropy(logits, target).item())
    weights = torch.rand(2, 5, 7, generator=g)
    assert weighted_cross_entropy(logits, target, 7 * weights).item() == pytest.approx(
        weighted_cross_entropy(logits, target, weights).item())


def test_zero_weight_pixels_do_not_count():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 20.0                                   # a confident error at the second pixel
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    weights = torch.tensor([[[1.0, 0.0]]])
    assert weighted_cross_entropy(logits, target, weights).item() == pytest.approx(math.log(2))


def test_dice_term():
    target = torch.tensor([[[0, 1], [1, 0]]])
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 30  # (1, 2, 2, 2)
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(-perfect, target).item() > 0.6
    weights = torch.ones(1, 2, 2)
    logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, target, weights, dice=0.5)
    assert loss.item() == pytest.approx((weighted_cross_entropy(logits, target, weights)
                                         + 0.5 * soft_dice_loss(logits, target)).item())
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kwargs", [{"w0": -1.0}, {"sigma": 0.0}, {"dice": -0.5}])
def test_bad_loss_options_are_refused(kwargs):
    with pytest.raises(UNetError, match="loss: expected"):
        LossConfig(**kwargs)
