"""Objects merged across block seams (unet.job.objects.label, no cluster) against scipy.ndimage.label of the whole
image: the instance image up to a renumbering (and exactly, once numbered by first pixel), and the table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import assert_same_objects, by_first_pixel, reference_table, whole_image_reference

from unet.job.objects.label import label_block
from unet.job.objects.merge import merge_blocks, object_columns
from unet.job.objects.summary import BlockObjects

def cut_and_merge(classes: np.ndarray, prob: np.ndarray, block: tuple[int, int], object_classes=(1, 2),
                  min_area: int = 0):
    """Label ``classes`` block by block (summaries round-tripped through bytes), merge, and paint the
    global ids back: what the job does, without a cluster."""
    h, w = classes.shape
    pieces = []
    for y in range(0, h, block[0]):
        for x in range(0, w, block[1]):
            rows, cols = (y, min(y + block[0], h)), (x, min(x + block[1], w))
            window = np.s_[rows[0]:rows[1], cols[0]:cols[1]]
            local, summary = label_block(classes[window], prob[window], object_classes, rows, cols)
            pieces.append((window, local, BlockObjects.from_bytes(summary.to_bytes())))
    merged = merge_blocks([p[2] for p in pieces], min_area)
    instances = np.zeros((h, w), dtype=np.int64)
    for (window, local, _), lut in zip(pieces, merged.luts):
        instances[window] = lut[local]
    return instances, merged


def check(classes: np.ndarray, block: tuple[int, int], min_area: int = 0, object_classes=(1, 2)) -> None:
    prob = np.random.default_rng(0).random(classes.shape)
    got, merged = cut_and_merge(classes, prob, block, object_classes, min_area)
    expected = by_first_pixel(whole_image_reference(classes, object_classes, min_area))
    assert_same_objects(got, expected)
    table = object_columns(merged, ["bg", "a", "b"], (1.0, 1.0), (0.0, 0.0))
    np.testing.assert_array_equal(table["id"], np.arange(1, expected.max() + 1))
    for name, column in reference_table(classes, prob, expected).items():
        np.testing.assert_allclose(table[name], column, rtol=1e-12, err_msg=name)


def random_classes(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    return np.where(rng.random(shape) < density, rng.integers(1, 3, shape), 0).astype(np.uint8)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 40), w=st.integers(1, 40), bh=st.integers(1, 17),
       bw=st.integers(1, 17), density=st.floats(0.0, 0.9), min_area=st.sampled_from([0, 1, 2, 5, 30]))
def test_random_images_any_blocks(seed, h, w, bh, bw, density, min_area):
    check(random_classes(np.random.default_rng(seed), (h, w), density), (bh, bw), min_area)


def draw(shape: tuple[int, int], *spans) -> np.ndarray:
    image = np.zeros(shape, dtype=np.uint8)
    for rows, cols, value in spans:
        image[slice(*rows), slice(*cols)] = value
    return image


SHAPES = {
    "two blocks": (draw((20, 20), ((3, 6), (5, 15), 1)), (10, 10)),
    "four blocks": (draw((20, 20), ((7, 13), (6, 14), 1)), (10, 10)),
    "corner diagonal only": (draw((20, 20), ((9, 10), (9, 10), 1), ((10, 11), (10, 11), 1),
                                  ((9, 10), (10, 11), 2), ((10, 11), (9, 10), 2)), (10, 10)),
    "ring through a corner": (draw((20, 20), ((6, 14), (6, 14), 1), ((7, 13), (7, 13), 0)), (10, 10)),
    # a U whose two arms lie in blocks (0, 0) and (0, 1) and whose base joins them in (1, 0) and (1, 1)
    "U joins through a third block": (draw((20, 20), ((2, 14), (6, 8), 1), ((2, 14), (12, 14), 1),
                                           ((12, 14), (6, 14), 1)), (10, 10)),
    # two arms in blocks (0, 0) and (0, 2) of one row, joined only by a bar through block (0, 1)
    "join only through a third block": (draw((10, 30), ((0, 3), (8, 12), 1), ((0, 3), (18, 22), 1),
                                             ((2, 3), (8, 22), 1)), (10, 10)),
    "mosaic border": (draw((21, 19), ((0, 21), (0, 1), 1), ((20, 21), (0, 19), 2), ((0, 1), (18, 19), 1)), (7, 6)),
    "two classes touching": (draw((16, 16), ((2, 14), (2, 8), 1), ((2, 14), (8, 14), 2)), (5, 5)),
    "checkerboard is one object": ((np.indices((23, 23)).sum(0) % 2).astype(np.uint8), (4, 5)),
    "many tiny objects": (np.pad(np.ones((1, 1), np.uint8), ((0, 1), (0, 1)))[None, :, None, :]
                          .repeat(20, 0).repeat(20, 2).reshape(40, 40), (7, 9)),
    "empty": (np.zeros((9, 13), np.uint8), (4, 4)),
    "full": (np.ones((9, 13), np.uint8), (4, 4)),
}


@pytest.mark.parametrize("name", SHAPES)
def test_shapes_across_seams(name):
    image, block = SHAPES[name]
    check(image, block)
    check(image, (1, 1))  # every pixel its own block: every join goes through a seam


def test_join_through_a_third_block_needs_it():
    """Negative control: without the middle block's bar, the two arms are two objects."""
    image, block = SHAPES["join only through a third block"]
    assert cut_and_merge(image, np.ones(image.shape), block)[0].max() == 1
    image = image.copy()
    image[2, 12:18] = 0
    assert cut_and_merge(image, np.ones(image.shape), block)[0].max() == 2


@pytest.mark.parametrize("min_area", [1, 4, 5, 9, 100])
def test_min_area_drops_merged_objects_on_both_sides_of_a_seam(min_area):
    """An object of 6 pixels cut 3 + 3 by a seam survives a min-area of 5, and is dropped from both
    blocks above 6; 1-pixel specks on the seam go at 2 and more."""
    image = draw((10, 12), ((4, 7), (5, 7), 1), ((0, 1), (5, 6), 2), ((9, 10), (6, 7), 1))
    check(image, (10, 6), min_area=min_area)
    got, merged = cut_and_merge(image, np.ones(image.shape), (10, 6), min_area=min_area)
    assert sorted(merged.table["area"]) == sorted(a for a in (6, 1, 1) if a >= min_area)


def test_object_classes_select_what_is_labelled():
    image = random_classes(np.random.default_rng(4), (30, 30), 0.6)
    check(image, (8, 8), object_classes=(2,))
    got, _ = cut_and_merge(image, np.ones(image.shape), (8, 8), object_classes=(2,))
    assert not got[image == 1].any()


def test_physical_columns_follow_the_pixel_size():
    image = draw((10, 10), ((2, 4), (3, 7), 1))
    _, merged = cut_and_merge(image, np.full(image.shape, 0.75), (5, 5))
    table = object_columns(merged, ["bg", "cell"], (0.5, 0.25), (100.0, 200.0))
    assert table["area_px"].tolist() == [8] and table["area"].tolist() == [1.0]
    assert table["centroid_y_physical"].tolist() == [100.0 + 0.5 * 2.5]
    assert table["centroid_x_physical"].tolist() == [200.0 + 0.25 * 4.5]
    assert table["class_name"].tolist() == ["cell"] and table["mean_probability"].tolist() == [0.75]
