"""Training targets from instance masks: interior and boundary classes that the objects procedure turns back
into the instances, the two-class recipe's gaps, and the per-tile weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.infer.instances import InstanceMethod, instances_from_classes
from unet.train.losses import border_weights, separate_instances
from unet.train.metrics import match_instances
from unet.train.targets import BOUNDARY, INTERIOR, Targets, TileTargets, contour_classes


def touching_pair() -> np.ndarray:
    """Two rectangles side by side, sharing a 12-px long edge, on a 24 x 36 background."""
    instances = np.zeros((24, 36), np.int64)
    instances[6:18, 4:18] = 1
    instances[6:18, 18:32] = 2
    return instances


def touching_disks(rng: np.random.Generator, shape=(64, 80), n=6) -> np.ndarray:
    """Disks of radius 4-9 px, each a later one on top where they overlap, many touching."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    instances = np.zeros(shape, np.int64)
    for label in range(1, n + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(4, 9)
        instances[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = label
    return instances


def test_boundary_is_the_rim_of_each_object_where_it_meets_another_or_the_background():
    classes = contour_classes(touching_pair(), width=1)
    rim = np.zeros((24, 36), bool)
    for box in (np.s_[6:18, 4:18], np.s_[6:18, 18:32]):
        rim[box] = True
        rim[box][1:-1, 1:-1] = False
    np.testing.assert_array_equal(classes == BOUNDARY, rim)
    np.testing.assert_array_equal(classes == INTERIOR, (touching_pair() > 0) & ~rim)
    _, pieces = ndimage.label(classes == INTERIOR, structure=np.ones((3, 3)))
    assert pieces == 2                                           # the interiors are apart


def test_wider_boundaries_and_objects_cut_by_the_image_border():
    instances = np.zeros((20, 20), np.int64)
    instances[:, :8] = 3                                         # runs out of the image on three sides
    classes = contour_classes(instances, width=2)
    assert (classes[:, 6:8] == BOUNDARY).all() and (classes[:, :6] == INTERIOR).all()   # mirrored beyond


def test_an_object_pinched_in_two_keeps_one_interior_piece():
    instances = np.zeros((20, 40), np.int64)
    instances[4:16, 2:16] = 1
    instances[9:11, 16:24] = 1                                   # a 2-px neck: no interior
    instances[6:14, 24:32] = 1
    classes = contour_classes(instances, width=1)
    pieces, n = ndimage.label(classes == INTERIOR, structure=np.ones((3, 3)))
    assert n == 1 and (classes[5:15, 3:15] == INTERIOR).all()   # the larger lobe
    assert (classes[6:14, 24:32] == BOUNDARY).all()              # the other lobe: boundary, not a 2nd seed


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 3))
def test_the_objects_procedure_finds_one_object_per_instance_from_their_targets(seed, width):
    """Seeds grown back over the boundary (by 3 px >= width) give exactly one object for every instance
    whose interior survived its boundary and the overlaps, each mostly inside its instance: nothing
    merged, nothing split."""
    instances = touching_disks(np.random.default_rng(seed))
    classes = contour_classes(instances, width)
    found = instances_from_classes(classes, InstanceMethod(grow=3))
    with_interior = np.unique(instances[classes == INTERIOR])
    assert found.max() == len(with_interior)
    for label in range(1, int(found.max()) + 1):
        owners, counts = np.unique(instances[found == label], return_counts=True)
        assert counts.max() > 0.5 * counts.sum() and owners[counts.argmax()] in with_interior


def test_touching_convex_objects_come_back_exactly():
    yy, xx = np.mgrid[:40, :60]
    instances = np.zeros((40, 60), np.int64)
    for label, (cy, cx) in enumerate([(20, 12), (20, 29), (12, 45), (29, 45)], start=1):
        instances[((yy - cy) ** 2 + (xx - cx) ** 2 < 81) & (instances == 0)] = label    # touching, r = 9
    found = instances_from_classes(contour_classes(instances, 1), InstanceMethod())
    pairs = np.unique(np.stack([found.ravel(), instances.ravel()]), axis=1)   # (2, n) distinct (id, label)
    assert pairs.shape[1] == 5 and len(set(pairs[0])) == len(set(pairs[1])) == 5   # a bijection, 0 <-> 0


def test_components_targets_are_the_foreground_with_gaps():
    instances = touching_pair()
    targets = Targets("components")
    np.testing.assert_array_equal(targets.classes(instances), separate_instances(instances) > 0)
    np.testing.assert_array_equal(targets.separated(instances), separate_instances(instances))
    assert Targets("components").num_classes == 2 and Targets().num_classes == 3


def test_contour_border_weights_cover_the_band_between_touching_interiors():
    instances = touching_pair()
    w = border_weights(Targets("contour", 1).separated(instances))
    band = np.zeros_like(instances, bool)
    band[7:17, 17:19] = True                                     # the two rims where the objects touch
    assert w[band].min() > 5 and w[band].min() > 2 * w[3, 10]    # heavier than beside one object
    assert (w[contour_classes(instances, 1) == INTERIOR] == 0).all()


def test_tile_targets_add_class_and_border_weights():
    labels = touching_pair()
    border = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    class_weights = np.array([0.5, 1.0, 4.0])
    target, weights = TileTargets(Targets("contour", 1), class_weights)(labels, border)
    np.testing.assert_array_equal(target, contour_classes(labels, 1))
    np.testing.assert_allclose(weights, class_weights[target] + border, rtol=1e-6)
    assert weights.dtype == np.float32
    plain, ones = TileTargets(Targets("classes"))(labels % 2, np.zeros(labels.shape, np.float32))
    assert (plain == labels % 2).all() and (ones == 1).all()


@pytest.mark.parametrize("method", ["contour", "components"])
def test_targets_of_a_mask_without_objects_are_background(method):
    classes = Targets(method).classes(np.zeros((9, 7), np.int64))
    assert classes.shape == (9, 7) and not classes.any()
