"""Contour objects block by block (unet.job.objects.grow, no cluster) against unet.infer.instances on the
whole image: seeds labelled per block and merged, grown with a halo of the neighbours' seeds, totalled."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import growth_across_seams
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.infer.instances import InstanceMethod, instances_from_classes
from unet.job.objects.grow import (band_from_bytes, band_to_bytes, grow_locally, grow_rim, rim_ids_from_bytes,
                                   rim_ids_to_bytes)
from unet.job.objects.label import label_block
from unet.job.objects.merge import grown_table, merge_blocks
from unet.job.objects.summary import BlockObjects, GrownSums
from unet.job.plan import BlockPlan, neighbourhood

B, I = 2, 1  # boundary, interior


def in_blocks(classes: np.ndarray, block: int, method: InstanceMethod, min_area: int = 0):
    """What the job's three passes do, without a cluster or a store (bands, rims and sums round-tripped
    through bytes): the instance image and the table."""
    plan = BlockPlan(0, classes.shape, block)
    grown, bands, inner, summaries = {}, {}, {}, []
    for b in plan:
        part = classes[slice(*b.rows), slice(*b.cols)]
        seeds, summary = label_block(part, np.ones(b.shape), (method.interior,), b.rows, b.cols)
        grown[b.key], band, inner[b.key] = grow_locally(part, seeds, summary, b.rows, b.cols, method)
        bands[b.key] = band_from_bytes(band_to_bytes(band))
        summaries.append(BlockObjects.from_bytes(summary.to_bytes()))
    seeds = merge_blocks(summaries)
    luts = {b.key: lut for b, lut in zip(plan, seeds.luts)}
    rims, sums = {}, []
    for b in plan:
        near = [(bands[n.key], luts[n.key]) for n in neighbourhood(plan, b, method.grow)]
        rim = grow_rim(b, classes.shape, near, GrownSums.from_bytes(inner[b.key].to_bytes()).with_ids(luts[b.key]),
                       method)
        rims[b.key] = rim_ids_from_bytes(rim_ids_to_bytes(rim))
        sums.append(GrownSums.from_bytes(rim.sums.to_bytes()))
    table, final = grown_table(seeds, sums, min_area)
    instances = np.zeros(classes.shape, dtype=np.int64)
    for b in plan:
        ids = final[luts[b.key]][grown[b.key]]
        rims[b.key].paint(ids, b.rows, b.cols, final)
        instances[slice(*b.rows), slice(*b.cols)] = ids
    return instances, table


def assert_exact(classes: np.ndarray, block: int, method: InstanceMethod, min_area: int = 0) -> np.ndarray:
    expected = instances_from_classes(classes, method, min_area)
    instances, table = in_blocks(classes, block, method, min_area)
    np.testing.assert_array_equal(instances, expected)
    ids = np.arange(1, expected.max() + 1)
    boxes = ndimage.find_objects(expected)
    np.testing.assert_array_equal(table["id"], ids)
    np.testing.assert_array_equal(table["area"], np.bincount(expected.ravel())[1:])
    np.testing.assert_array_equal(table["sum_y"], ndimage.sum_labels(np.indices(classes.shape)[0], expected, ids))
    np.testing.assert_array_equal(table["y0"], [b[0].start for b in boxes])
    np.testing.assert_array_equal(table["x1"], [b[1].stop for b in boxes])
    np.testing.assert_array_equal(table["prob_px"], ndimage.sum_labels(classes == method.interior, expected, ids))
    return expected


# Each scene is drawn on an 8 x 8 grid of 4-pixel blocks (seams after rows and columns 3, 7 ...).
SCENES = {
    # two grown objects touching across a seam (columns 3 | 4), each boundary column nearest its own seed
    "touching pair split by a seam": ["........", ".BBBBBB.", ".BIBBIB.", ".BIBBIB.", ".BBBBBB."],
    # one object over the corner of four blocks, its boundary grown back in all four
    "object over a block corner": ["........", "..BBBB..", "..BIIB..", "..BIIB..", "..BBBB..", "........"],
    # interiors in different blocks that touch only across the block edge, diagonally at a corner
    "touching only across a block edge": ["....", "....", "..I.", "...I.", "....I", "........"],
    # a seed in one block whose growth runs three steps into the next block
    "growth that crosses a seam": ["........", ".IBBBBBB", "..BBBBBB"],
    # a U-shaped interior that joins only through a third block
    "U across three blocks": ["........", ".I....I.", ".I....I.", ".I....I.", ".IIIIII.", "BBBBBBBB"],
}


def scene(rows: list[str], shape=(9, 10)) -> np.ndarray:
    classes = np.zeros(shape, dtype=np.uint8)
    for y, row in enumerate(rows):
        for x, char in enumerate(row):
            classes[y, x] = {".": 0, "I": I, "B": B}[char]
    return classes


@pytest.mark.parametrize("name", SCENES)
@pytest.mark.parametrize("block", [4, 8, 16])
def test_designed_seams(name, block):
    assert_exact(scene(SCENES[name]), block, InstanceMethod(grow=3))


def test_designed_scenes_put_the_seams_to_the_test():
    method = InstanceMethod(grow=3)
    pair = assert_exact(scene(SCENES["touching pair split by a seam"]), 4, method)
    assert pair.max() == 2 and set(pair[1:5, 3]) == {1} and set(pair[1:5, 4]) == {2}  # they meet at the seam
    assert growth_across_seams(scene(SCENES["growth that crosses a seam"]), 4, method) == 2  # column 4, 3 steps
    corner = assert_exact(scene(SCENES["object over a block corner"]), 4, method)
    assert corner.max() == 1 and (corner > 0).sum() == 16


def class_images(max_side: int = 30):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(0, 2**32 - 1),
                     st.sampled_from([(0.5, 0.3, 0.2), (0.3, 0.2, 0.5), (0.2, 0.6, 0.2)])).map(
        lambda t: np.random.default_rng(t[2]).choice(3, size=t[:2], p=t[3]).astype(np.uint8))


@settings(max_examples=40, deadline=None)
@given(class_images(24), st.integers(1, 12), st.integers(0, 5), st.sampled_from([0, 0, 3]))
def test_random_class_images_in_any_blocks_equal_the_whole_image(classes, block, grow, min_area):
    assert_exact(classes, block, InstanceMethod(grow=grow), min_area)


def test_odd_sizes_and_halo_wider_than_a_block():
    classes = np.random.default_rng(3).choice(3, size=(37, 23), p=[0.3, 0.2, 0.5]).astype(np.uint8)
    for block, grow in ((5, 7), (7, 2), (40, 4)):
        method = InstanceMethod(grow=grow)
        assert_exact(classes, block, method)
        assert block == 40 or growth_across_seams(classes, block, method) > 0
