"""Synthetic scenes: deterministic, well-formed ground truth, touching nuclei, and wakes that are not ships."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unet.demo.noise import Scene
from unet.demo.nuclei import nuclei_scene
from unet.demo.ships import ship_scene
from unet.errors import UNetError

GENERATORS = [nuclei_scene, ship_scene]
ODD_SHAPES = [(301, 517), (517, 301), (64, 999), (33, 7), (1, 1)]


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different labels (low, high) that are 8-adjacent somewhere."""
    h, w = instances.shape
    padded = np.pad(instances, 1)
    centre = padded[1:h + 1, 1:w + 1]
    pairs = set()
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        neighbour = padded[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx]
        edge = (centre > 0) & (neighbour > 0) & (centre != neighbour)
        low, high = np.minimum(centre[edge], neighbour[edge]), np.maximum(centre[edge], neighbour[edge])
        pairs.update(zip(low.tolist(), high.tolist()))
    return pairs


def test_touching_pairs_sees_all_eight_directions():
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1), (0, -1), (-1, 0), (-1, -1), (-1, 1)]:
        grid = np.zeros((3, 3), np.uint32)
        grid[1, 1], grid[1 + dy, 1 + dx] = 1, 2
        assert touching_pairs(grid) == {(1, 2)}
    apart = np.zeros((3, 3), np.uint32)
    apart[0, 0], apart[2, 2] = 1, 2
    assert touching_pairs(apart) == set()


@pytest.mark.parametrize("make", GENERATORS)
def test_same_seed_same_scene_and_generator_equals_seed(make):
    first, again = make((120, 170), 7), make((120, 170), np.random.default_rng(7))
    for name in ("image", "mask", "instances"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.image, make((120, 170), 8).image)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("make", GENERATORS)
def test_shapes_dtypes_and_consistent_ground_truth(make, shape):
    scene = make(shape, 0)
    assert isinstance(scene, Scene)
    rgb = make is ship_scene
    assert scene.image.shape == ((3, *shape) if rgb else shape)
    assert scene.image.dtype == np.uint8
    assert scene.mask.shape == scene.instances.shape == shape
    assert scene.mask.dtype == np.uint8 and scene.instances.dtype == np.uint32
    np.testing.assert_array_equal(scene.mask, (scene.instances > 0).astype(np.uint8))
    labels = np.unique(scene.instances)
    np.testing.assert_array_equal(labels, np.arange(labels.size))       # 0 and then 1..N, no gaps
    assert scene.class_names == (("sea", "ship") if rgb else ("background", "nucleus"))


def test_nuclei_cover_about_the_requested_density_and_are_brighter():
    scene = nuclei_scene((301, 517), 1, density=0.3)
    assert 0.24 < scene.mask.mean() < 0.36
    assert scene.instances.max() > 150
    inside, outside = scene.image[scene.mask == 1], scene.image[scene.mask == 0]
    assert inside.mean() > 4 * outside.mean()


def test_many_nuclei_touch_another_and_fewer_without_clusters():
    clustered = nuclei_scene((301, 517), 2, touching=0.4)
    pairs = touching_pairs(clustered.instances)
    touching_labels = {label for pair in pairs for label in pair}
    assert len(touching_labels) > 0.3 * clustered.instances.max()
    apart = nuclei_scene((301, 517), 2, touching=0.0)
    assert len(touching_pairs(apart.instances)) < 0.5 * len(pairs)


@pytest.mark.filterwarnings("error")
def test_dim_spots_of_the_autofluorescence_give_no_invalid_noise():
    """Small dense scenes whose autofluorescence field dips below zero somewhere (seed 1000's first three):
    the shot noise of a negative photon count would be NaN, silently cast to a black pixel."""
    rng = np.random.default_rng(1000)
    for _ in range(3):
        nuclei_scene((192, 192), rng, density=0.35, touching=0.7)


def test_nuclei_in_uint16_use_the_wider_range():
    scene = nuclei_scene((128, 160), 3, dtype=np.uint16)
    assert scene.image.dtype == np.uint16
    assert scene.image.max() > 4 * 255


@pytest.mark.parametrize("make", GENERATORS)
def test_objects_cross_the_scene_border(make):
    kwargs = {"n_ships": 60} if make is ship_scene else {}
    scene = make((256, 384), 4, **kwargs)
    border = np.concatenate([scene.instances[0], scene.instances[-1], scene.instances[:, 0], scene.instances[:, -1]])
    assert np.count_nonzero(np.unique(border)) >= 2


def test_ships_are_elongated_and_brighter_than_the_sea():
    scene = ship_scene((512, 640), 5, n_ships=12, clouds=0)
    brightness = scene.image.astype(float).mean(0)
    assert brightness[scene.mask == 1].mean() > brightness[scene.mask == 0].mean() + 80
    for box, label in zip(ndimage.find_objects(scene.instances), range(1, scene.instances.max() + 1)):
        ys, xs = np.nonzero(scene.instances[box] == label)
        if ys.size < 40:
            continue                                          # mostly outside the scene
        spread = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
        assert spread[1] > 2.5 * spread[0]


def stern_and_bow_brightness(scene: Scene, offset: float = 6.0) -> list[tuple[float, float]]:
    """For each ship with room around it: mean brightness of the sea behind its stern and ahead of its bow.

    The hull's long axis comes from its pixels; the bow is the end whose last quarter holds fewer pixels
    (it is pointed). Ships whose samples would leave the scene or touch a ship are skipped.
    """
    brightness = scene.image.astype(float).mean(0)
    near_ship = ndimage.binary_dilation(scene.mask, iterations=2)
    ends = []
    for label in range(1, scene.instances.max() + 1):
        pixels = np.argwhere(scene.instances == label).astype(float)     # (n, 2) rows, cols
        centre = pixels.mean(0)
        axis = np.linalg.eigh(np.cov(pixels.T))[1][:, 1]                  # along the hull
        along = (pixels - centre) @ axis
        quarter = (along.max() - along.min()) / 4
        if np.sum(along > along.max() - quarter) > np.sum(along < along.min() + quarter):
            axis, along = -axis, -along                                    # make axis point to the bow
        stern = centre + axis * along.min() - axis * offset * np.arange(1, 4)[:, None]   # (3, 2)
        bow = centre + axis * along.max() + axis * offset * np.arange(1, 4)[:, None]
        samples = np.round(np.concatenate([stern, bow])).astype(int)
        if (samples < 0).any() or (samples >= scene.mask.shape).any() or near_ship[tuple(samples.T)].any():
            continue
        values = brightness[tuple(samples.T)]
        ends.append((values[:3].mean(), values[3:].mean()))
    return ends


def test_moving_ships_trail_a_bright_wake_that_is_sea_in_the_mask():
    scene = ship_scene((768, 768), 6, n_ships=10, moving=1.0, clouds=0)
    sea = np.median(scene.image.astype(float).mean(0))
    ends = stern_and_bow_brightness(scene)
    assert len(ends) >= 5
    wakes = sum(stern > sea + 20 and stern > bow + 15 for stern, bow in ends)
    assert wakes >= 0.8 * len(ends)
    bright = scene.image.astype(float).mean(0) > sea + 30
    outside = ~ndimage.binary_dilation(scene.mask, iterations=3)
    assert np.count_nonzero(bright & outside) > 200                      # foam that is not ship


def test_ships_at_anchor_leave_no_wake():
    scene = ship_scene((768, 768), 6, n_ships=10, moving=0.0, clouds=0)
    sea = np.median(scene.image.astype(float).mean(0))
    bright = scene.image.astype(float).mean(0) > sea + 30
    outside = ~ndimage.binary_dilation(scene.mask, iterations=3)
    assert np.count_nonzero(bright & outside) < 20


@pytest.mark.parametrize("call", [
    lambda: nuclei_scene((0, 10), 0),
    lambda: nuclei_scene((10, 10, 3), 0),
    lambda: nuclei_scene((10, 10), 0, radius=(8, 4)),
    lambda: nuclei_scene((10, 10), 0, dtype=np.float32),
    lambda: nuclei_scene((10, 10), 0, density=2.0),
    lambda: ship_scene((10, 10), 0, clouds=1.5),
    lambda: ship_scene((10, 10), 0, n_ships=-1),
])
def test_bad_arguments_raise_a_unet_error(call):
    with pytest.raises(UNetError):
        call()
