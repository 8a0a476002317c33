"""Contour-model objects (unet.infer.instances) against a brute-force breadth-first search per seed pixel,
and the locality the job relies on: a window with a halo of ``grow`` pixels is exact in its interior."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.errors import CheckpointError
from unet.infer.instances import (InstanceMethod, default_min_area, grow_seeds, instances_from_classes,
                                  objects_from_classes)

METHOD = InstanceMethod(interior=1, boundary=2, grow=3)
B, I = 2, 1  # boundary, interior


def brute_force(classes: np.ndarray, method: InstanceMethod) -> np.ndarray:
    """Per seed pixel, a breadth-first search over boundary pixels up to ``grow`` steps; each boundary
    pixel takes the seed of the smallest (distance, raster index); seeds numbered by first pixel."""
    h, w = classes.shape
    seeds, _ = ndimage.label(classes == method.interior, structure=np.ones((3, 3)))
    first_pixel_order = {}
    for index, label in enumerate(seeds.ravel()):
        if label and label not in first_pixel_order:
            first_pixel_order[label] = len(first_pixel_order) + 1
    best = {}
    for start in zip(*np.nonzero(seeds)):
        dist, queue = {start: 0}, deque([start])
        while queue:
            y, x = queue.popleft()
            if dist[y, x] == method.grow:
                continue
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < h and 0 <= q[1] < w and q not in dist and classes[q] == method.boundary:
                        dist[q] = dist[y, x] + 1
                        queue.append(q)
        for q, d in dist.items():
            best[q] = min(best.get(q, (d + 1, h * w)), (d, start[0] * w + start[1]))
    out = np.zeros((h, w), dtype=np.int64)
    for q, (_, index) in best.items():
        out[q] = first_pixel_order[seeds.ravel()[index]]
    return out


def class_images(max_side: int = 14):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(0, 2**32 - 1)).map(
        lambda t: np.random.default_rng(t[2]).choice(3, size=t[:2], p=[0.3, 0.2, 0.5]).astype(np.uint8))


@settings(max_examples=60, deadline=None)
@given(class_images(), st.integers(0, 4))
def test_random_class_images_match_brute_force(classes, grow):
    method = InstanceMethod(grow=grow)
    np.testing.assert_array_equal(instances_from_classes(classes, method), brute_force(classes, method))


@settings(max_examples=60, deadline=None)
@given(class_images(24), st.integers(0, 4), st.integers(0, 2**32 - 1))
def test_a_window_with_a_halo_of_grow_pixels_is_exact(classes, grow, seed):
    """What a block of the job computes: global seed ids on block + halo, grown, cropped."""
    h, w = classes.shape
    rng = np.random.default_rng(seed)
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
    whole = instances_from_classes(classes, InstanceMethod(grow=grow))
    seeds = np.where(classes == 1, whole, 0)  # global ids of interior pixels
    wy, wx = slice(max(0, y0 - grow), y1 + grow), slice(max(0, x0 - grow), x1 + grow)
    grown = grow_seeds(seeds[wy, wx], classes[wy, wx] == 2, grow)
    crop = grown[y0 - wy.start:y1 - wy.start, x0 - wx.start:x1 - wx.start]
    np.testing.assert_array_equal(crop, whole[y0:y1, x0:x1])


def test_touching_objects_split_by_their_boundary_and_grown_back():
    classes = np.array([[B, B, B, B, B, B],
                        [B, I, I, B, I, B],
                        [B, I, I, B, I, B],
                        [B, B, B, B, B, B]], dtype=np.uint8)
    # the shared column 3 is one step from both: object 1's pixels come first in raster order on each row
    np.testing.assert_array_equal(instances_from_classes(classes, InstanceMethod(grow=1)),
                                  [[1, 1, 1, 1, 2, 2],
                                   [1, 1, 1, 1, 2, 2],
                                   [1, 1, 1, 1, 2, 2],
                                   [1, 1, 1, 1, 2, 2]])


def test_ties_go_to_the_seed_pixel_first_in_raster_order_not_to_the_smaller_id():
    """The boundary pixel at (2, 2) is one step from object 1's pixel (3, 1) and object 2's pixel (1, 3):
    (1, 3) comes first in raster order, so object 2 takes it."""
    classes = np.array([[I, 0, 0, 0],
                        [I, 0, 0, I],
                        [I, 0, B, 0],
                        [I, I, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(instances_from_classes(classes, METHOD), [[1, 0, 0, 0],
                                                                          [1, 0, 0, 2],
                                                                          [1, 0, 2, 0],
                                                                          [1, 1, 0, 0]])


def test_growth_stops_after_grow_steps_and_never_enters_background():
    classes = np.array([[I, B, B, B, B, B, 0, B]], dtype=np.uint8)
    np.testing.assert_array_equal(instances_from_classes(classes, METHOD), [[1, 1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(instances_from_classes(classes, InstanceMethod(grow=0)), [[1, 0, 0, 0, 0, 0, 0, 0]])


def test_ids_follow_the_first_interior_pixel_and_min_area_renumbers():
    classes = np.array([[0, 0, 0, I, B],
                        [I, 0, 0, 0, 0],
                        [0, 0, I, I, I]], dtype=np.uint8)
    np.testing.assert_array_equal(instances_from_classes(classes, METHOD), [[0, 0, 0, 1, 1], [2, 0, 0, 0, 0],
                                                                          [0, 0, 3, 3, 3]])
    kept = instances_from_classes(classes, METHOD, min_area=2)
    np.testing.assert_array_equal(kept, [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 2, 2, 2]])
    assert kept.dtype == np.uint32


def test_method_round_trips_through_checkpoint_metadata():
    method = InstanceMethod(interior=3, boundary=1, grow=5)
    assert InstanceMethod.from_metadata({"class_names": ["a"], "instance_method": method.to_metadata()}) == method
    assert InstanceMethod.from_metadata({"class_names": ["background", "object"]}) is None


@pytest.mark.parametrize("found", [
    {"method": "watershed", "interior": 1, "boundary": 2, "grow": 3},
    {"method": "contour", "interior": 1, "boundary": 1, "grow": 3},
    {"method": "contour", "interior": 1, "boundary": 2, "grow": -1},
    {"method": "contour", "interior": 1, "boundary": 2, "grow": 2.5},
    {"method": "contour", "interior": 1, "boundary": 2},
    "contour",
])
def test_invalid_method_metadata_is_a_one_line_error(found):
    with pytest.raises(CheckpointError, match="instance_method: expected .*found"):
        InstanceMethod.from_metadata({"instance_method": found})


def flood_fill_components(foreground: np.ndarray, min_area: int) -> np.ndarray:
    """8-connected components by a breadth-first flood fill from each unvisited pixel in raster order,
    those below ``min_area`` pixels dropped, the rest numbered 1.. in raster order of their first pixel."""
    h, w = foreground.shape
    out = np.zeros((h, w), np.int64)
    seen = np.zeros((h, w), bool)
    next_id = 1
    for y0 in range(h):
        for x0 in range(w):
            if not foreground[y0, x0] or seen[y0, x0]:
                continue
            seen[y0, x0] = True
            queue, pixels = deque([(y0, x0)]), []
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v, u = y + dy, x + dx
                        if 0 <= v < h and 0 <= u < w and foreground[v, u] and not seen[v, u]:
                            seen[v, u] = True
                            queue.append((v, u))
            if len(pixels) >= min_area:
                for y, x in pixels:
                    out[y, x] = next_id
                next_id += 1
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 24), w=st.integers(1, 24),
       density=st.floats(0.0, 0.8), min_area=st.sampled_from([0, 1, 2, 4, 9]))
def test_two_class_objects_are_8_connected_components_above_min_area(seed, h, w, density, min_area):
    classes = (np.random.default_rng(seed).random((h, w)) < density).astype(np.int64)   # (h, w) 0/1
    np.testing.assert_array_equal(objects_from_classes(classes, None, min_area),
                                  flood_fill_components(classes > 0, min_area))


def test_contour_objects_are_instances_from_classes():
    classes = np.random.default_rng(0).choice([0, I, B], size=(40, 50), p=[0.5, 0.2, 0.3])
    np.testing.assert_array_equal(objects_from_classes(classes, METHOD, 3), instances_from_classes(classes, METHOD, 3))


def test_default_min_area_is_a_quarter_of_the_small_inner_objects():
    """Areas 40..139 px (one per object, none on an edge) and one big object on the edge: a quarter of the
    inner objects' 5th percentile; with only edge objects their areas count; no object at all: 1."""
    masks = []
    areas = list(range(40, 140))
    for i, area in enumerate(areas):
        mask = np.zeros((30, 30), np.int32)
        inner = np.zeros((28, 28), np.int32)
        inner.ravel()[:area] = i + 1                       # rows of 28 px from the top-left of the inner square
        mask[1:-1, 1:-1] = inner
        masks.append(mask)
    edge = np.zeros((30, 30), np.int32)
    edge[:5, :] = 999                                        # 150 px touching the top edge: not counted
    masks.append(edge)
    assert default_min_area(masks) == int(np.percentile(areas, 5) // 4) == 11
    only_edge = np.zeros((20, 20), np.int32)
    only_edge[:, :2] = 1                                      # 40 px on the left edge
    assert default_min_area([only_edge]) == 10
    assert default_min_area([np.zeros((8, 8), np.int32)]) == 1
