"""The demo end to end in its --quick form, on the session's Ray cluster; and its command-line checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import zarr
from PIL import Image

from unet.demo.run import EVAL_SEED, OUTLINE, PREVIEW, RECIPES, DemoConfig, _busiest_window, main, parse_config, training_samples
from unet.errors import UNetError

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    """Every output is there, and the printed scores are those of the labels the job wrote against the
    truth mosaic (recomputed here by hand)."""
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].endswith("draw s  train s  segment s  score s")
    for name, channels in (("nuclei", 1), ("ships", 3)):
        image = zarr.open_array(tmp_path / name / "image.zarr", mode="r")
        truth = zarr.open_array(tmp_path / name / "truth.zarr", mode="r")[:] > 0
        labels = zarr.open_group(tmp_path / name / "labels.zarr", mode="r")["0"][:]
        assert labels.shape == image.shape[-2:] == truth.shape == (512, 512)
        assert (image.ndim == 3) == (channels == 3)
        assert set(np.unique(labels)) <= ({0, 1, 2} if name == "nuclei" else {0, 1})   # contour: + boundary
        preview = np.asarray(Image.open(tmp_path / f"{name}-preview.png"))
        assert preview.shape == (PREVIEW, PREVIEW, 3)
        assert (preview == OUTLINE).all(axis=-1).any() == labels.any()
        row = next(line for line in table.splitlines() if line.startswith(name)).split()
        iou, dice, precision, recall, f1 = map(float, row[4:9])
        found = labels > 0
        assert iou == pytest.approx((found & truth).sum() / max(1, (found | truth).sum()), abs=5e-4), row
        assert all(0.0 <= v <= 1.0 for v in (dice, precision, recall, f1)) and len(row) == 13, row
        assert all(float(t) >= 0 for t in row[9:]), row
        if name == "nuclei":
            assert iou > 0.5, row          # even the quick recipe learns bright nuclei; a broken pipeline does not


def test_training_crops_are_distinct_and_of_the_recipe_size():
    recipe = DemoConfig(quick=True).recipe("nuclei")
    train, val = training_samples(recipe)
    assert len(train) == recipe.crops and len(val) == 1
    crops = [s.image for s in (*train, *val)]
    assert all(c.shape == (1, recipe.crop, recipe.crop) for c in crops)
    assert len({c.tobytes() for c in crops}) == len(crops)


def test_training_scenes_have_their_own_seeds_never_the_evaluation_one():
    seeds = []

    def draw(shape, seed, training):
        seeds.append((seed, training))
        return RECIPES["nuclei"].draw(shape, seed, training)

    recipe = replace(DemoConfig(quick=True).recipe("nuclei"), draw=draw, scenes=3)
    training_samples(recipe)
    assert len({s for s, _ in seeds}) == 3 and all(training for _, training in seeds)
    assert EVAL_SEED not in {s for s, _ in seeds}


def test_preview_window_is_where_the_objects_are():
    mask = np.zeros((1000, 1000), np.uint8)
    mask[700:760, 300:350] = 1
    y, x = _busiest_window(mask, 512)
    assert y <= 700 and y + 512 >= 760 and x <= 300 and x + 512 >= 350


def test_steps_option_overrides_every_recipe():
    config = parse_config(["--steps", "7", "--scene", "ships"])
    assert config.scenes == ("ships",) and config.recipe("ships").steps == 7
    assert DemoConfig().recipe("nuclei").steps == RECIPES["nuclei"].steps


@pytest.mark.parametrize("argv", [["--size", "10"], ["--steps", "0"]])
def test_bad_options_are_one_line_errors(argv):
    with pytest.raises(UNetError):
        parse_config(argv)
