"""Training: data loading and its errors, tile sampling, checkpoints with their metadata, and that it learns."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from cases import BAD_DATA, BAD_OPTIONS
from helpers import disks, make_folder, write
from PIL import Image

from unet import UNet, UNetConfig, load_checkpoint, predict_image, save_checkpoint
from unet.cli import run
from unet.errors import UNetError
from unet.infer.instances import default_min_area
from unet.train.augment import AugmentConfig
from unet.train.data import TileSampler, data_hash, input_contract, load_folder, make_sample, split_validation
from unet.train.loop import SELECTION, BestCheckpoint, Budget, TrainConfig, fit, train
from unet.train.metrics import ObjectScores, Scores, score
from unet.train.recipe import MAX_TILE, WARMUP, Recipe, choose_batch, choose_tile
from unet.train.targets import Targets, TileTargets

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("train_job", ROOT / "jobs" / "train.py")
train_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_job)

TINY = ["--depth", "2", "--base-channels", "4", "--tile", "44", "--batch-size", "1", "--steps", "2", "--quiet"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks on a shared 2-core machine run fastest, and steadiest, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def job(*argv: str) -> int:
    return run(train_job.main, list(argv))


# --- learning ---------------------------------------------------------------------------------------------

def test_training_learns_bright_disks(tmp_path):
    """A few dozen Adam steps separate bright disks from dark noise on an image never seen in training."""
    data = make_folder(tmp_path / "data", n=3, size=(96, 96), seed=1)
    out = tmp_path / "model.safetensors"
    config = TrainConfig(data=data, out=out, network=UNetConfig(depth=3, base_channels=8), tile=92, batch_size=2, steps=40,
                         lr=3e-3, val_fraction=0.34, val_every=20, progress=False)
    result = train(config)
    model, meta = load_checkpoint(out)
    image, labels = disks(np.random.default_rng(99), 120, 100)
    pred = predict_image(model, image).argmax(axis=0)
    assert score(pred, (labels > 0).astype(int), 2).foreground_iou > 0.8
    assert result.scores["foreground_iou"] > 0.8 and meta["step"] == result.step


# --- checkpoints ------------------------------------------------------------------------------------------

def test_checkpoint_records_contract_metrics_seed_hash_and_class_names(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=3)
    out = tmp_path / "sub" / "m.safetensors"
    assert job("--data", str(data), "--out", str(out), *TINY, "--seed", "7",
               "--class-names", "background,nucleus") == 0
    assert "validation foreground IoU" in capsys.readouterr().out
    model, meta = load_checkpoint(out)
    samples = load_folder(data, 2)
    train_names = set(meta["train_images"])
    contract = model.config.input
    expected = input_contract([s.image for s in samples if s.name in train_names])
    assert (contract.dtype, contract.value_range) == ("uint8", (0.0, 255.0))
    assert contract.offset == pytest.approx(expected.offset) and contract.scale == pytest.approx(expected.scale)
    assert meta["seed"] == 7 and meta["class_names"] == ["background", "nucleus"]
    assert meta["data_sha256"] == data_hash(samples) and len(meta["data_sha256"]) == 64
    assert set(meta["metrics"]["iou"]) == {"background", "nucleus"}
    assert meta["train_config"]["network"]["depth"] == 2 and len(meta["val_images"]) == 1


def test_progress_bar_shows_loss_speed_and_the_latest_validation(tmp_path, capsys):
    config = TrainConfig(data=make_folder(tmp_path / "data", n=3), out=tmp_path / "m.safetensors",
                         network=UNetConfig(depth=2, base_channels=4), tile=44, batch_size=2, steps=4, lr=1e-2,
                         val_every=1)
    history = train(config).history
    last = capsys.readouterr().err.strip().split("\r")[-1]       # the bar's final state
    shown = [f"val_iou={h['foreground_iou']:.3f}, val_dice={h['foreground_dice']:.3f}" for h in history[-2:]]
    assert shown[0] != shown[1]                                   # else the test could not tell them apart
    assert "4/4" in last and ("step/s" in last or "s/step" in last) and "loss=" in last, last
    assert shown[1] in last, last


def test_data_hash_changes_with_any_pixel(tmp_path):
    data = make_folder(tmp_path / "data", n=2)
    before = data_hash(load_folder(data, 2))
    mask = np.asarray(Image.open(data / "masks" / "img1.png")).copy()
    mask[0, 0] ^= 1
    write(data / "masks" / "img1.png", mask)
    assert data_hash(load_folder(data, 2)) != before


def test_same_seed_same_model_and_best_checkpoint_kept(tmp_path):
    data = make_folder(tmp_path / "data", n=3)
    samples = load_folder(data, 2)
    config = TrainConfig(data=data, out=tmp_path / "a.safetensors", network=UNetConfig(depth=2, base_channels=4),
                         tile=44, batch_size=1, steps=4, val_every=1, progress=False)
    a = fit(config, samples[:2], samples[2:], "x")
    b = fit(replace(config, out=tmp_path / "b.safetensors"), samples[:2], samples[2:], "x")
    wa, wb = (load_checkpoint(p)[0].state_dict() for p in (a.checkpoint, b.checkpoint))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ious = [h["foreground_iou"] for h in a.history]
    assert len(a.history) == 4 and a.scores["foreground_iou"] == max(ious)
    assert a.step == 1 + ious.index(max(ious))


def test_without_validation_the_last_model_is_kept(tmp_path):
    data = make_folder(tmp_path / "data", n=1)
    out = tmp_path / "m.safetensors"
    assert job("--data", str(data), "--out", str(out), *TINY, "--val-fraction", "0") == 0
    _, meta = load_checkpoint(out)
    assert meta["step"] == 2 and meta["metrics"] is None


def test_resume_continues_from_the_weights(tmp_path):
    data = make_folder(tmp_path / "data", n=3)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert job("--data", str(data), "--out", str(first), *TINY) == 0
    assert job("--data", str(data), "--out", str(second), *TINY, "--resume", str(first),
               "--optimizer", "sgd", "--lr", "1e-4") == 0
    model_a, _ = load_checkpoint(first)
    model_b, meta = load_checkpoint(second)
    assert model_b.config.input == model_a.config.input          # the normalisation it learnt with
    assert meta["history"][0]["step"] == 0                        # the resumed model itself was scored


def test_instances_give_object_scores_and_val_folder(tmp_path):
    data = make_folder(tmp_path / "data", n=2, instances=True, suffix=".tif")
    val = make_folder(tmp_path / "val", n=1, instances=True, seed=5, suffix=".npy")
    out = tmp_path / "m.safetensors"
    assert job("--data", str(data), "--val-dir", str(val), "--out", str(out), *TINY, "--instances",
               "--dice", "0.5") == 0
    _, meta = load_checkpoint(out)
    assert set(meta["metrics"]["objects"]) == {"tp", "fp", "fn", "precision", "recall", "f1"}
    assert meta["val_images"] == ["img0"] and len(meta["train_images"]) == 2 and meta["instances"]
    masks = [np.asarray(tifffile.imread(f)) for f in sorted((data / "masks").iterdir())]
    assert meta["min_area"] == default_min_area(masks) > 1      # what --objects drops by default


def test_epochs_set_the_number_of_steps(tmp_path):
    data = make_folder(tmp_path / "data", n=2, size=(40, 40))
    config = TrainConfig(data=data, out=tmp_path / "m.safetensors", network=UNetConfig(depth=2, base_channels=4),
                         tile=44, batch_size=1, epochs=1.5, val_fraction=0, progress=False)
    result = train(config)
    assert result.steps == int(np.ceil(1.5 * 2 * 40 * 40 / 28**2))  # depth 2 valid: 44 in, 28 out


# --- the time budget, the chosen recipe, the kept checkpoint ---------------------------------------------

class FakeClock:
    """A clock whose time the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def elapsed(self) -> float:
        return self.now


def test_a_time_budget_leaves_room_for_the_next_step_and_the_last_validation():
    clock = FakeClock()
    budget = Budget(clock, seconds=60.0)
    budget.timed("step", 2.0)
    budget.timed("validation", 5.0)
    budget.timed("validation", 3.0)                               # the longest one is reserved
    clock.now = 52.9
    assert not budget.exhausted(step=10) and budget.fraction(10) == pytest.approx(52.9 / 60)
    clock.now = 53.0
    assert budget.exhausted(step=10)                              # 53 + 2 + 5 >= 60
    steps = Budget(clock, steps=8)
    assert not steps.exhausted(7) and steps.exhausted(8) and steps.fraction(2) == 0.25
    both = Budget(clock, steps=100, seconds=100.0)                # whichever ends first
    assert both.fraction(10) == pytest.approx(0.53) and both.fraction(90) == 0.9 and both.exhausted(100)


def test_minutes_train_until_the_time_is_up_and_the_bar_shows_the_time_left(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=3, instances=True)
    out = tmp_path / "m.safetensors"
    assert job("--data", str(data), "--out", str(out), "--depth", "2", "--base-channels", "4", "--instances",
               "--minutes", "0.05") == 0
    err = capsys.readouterr().err
    assert "left of 0:03" in err and "training: tile" in err
    _, meta = load_checkpoint(out)
    assert meta["recipe"]["minutes"] == 0.05 and meta["recipe"]["steps"] is None
    assert meta["history"][-1]["step"] >= meta["step"] >= 0       # the last step was validated
    assert meta["train_config"]["minutes"] == 0.05


def test_the_default_tile_covers_the_smallest_image_and_the_batch_fills_a_step():
    model = UNet(depth=4, base_channels=4)
    tile = choose_tile(model, [(256, 256), (300, 280)], None)
    assert model.output_size(tile) >= 256 > model.output_size(model.round_input_size(tile - 1))
    assert choose_tile(model, [(2000, 3000)], None) == model.round_input_size(MAX_TILE)
    assert choose_tile(UNet(depth=5, base_channels=4), [(5000, 5000)], None) == 572
    assert choose_tile(model, [(256, 256)], 188) == 188          # the user's choice stays
    assert choose_batch(260, None) == 1 and choose_batch(64, None) == 16 and choose_batch(100, None) == 7
    assert choose_batch(64, 3) == 3


def test_the_learning_rate_warms_up_then_decays_to_zero_over_the_budget():
    recipe = Recipe(tile=44, output=28, batch_size=1, lr=1e-3, schedule="cosine", steps=100, minutes=None)
    rates = [recipe.lr_at(f) for f in np.linspace(0, 1, 101)]
    peak = int(np.argmax(rates))
    assert rates[peak] == pytest.approx(1e-3) and peak == round(100 * WARMUP)
    assert all(np.diff(rates[:peak + 1]) > 0) and all(np.diff(rates[peak:]) <= 0) and rates[-1] == 0
    assert Recipe(44, 28, 1, 1e-3, "constant", 100, None).lr_at(0.7) == 1e-3


def test_the_recipe_is_printed_and_stored(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=3, size=(64, 72))
    out = tmp_path / "m.safetensors"
    assert job("--data", str(data), "--out", str(out), "--depth", "2", "--base-channels", "4", "--steps", "2") == 0
    line = next(l for l in capsys.readouterr().err.splitlines() if l.startswith("training: "))
    _, meta = load_checkpoint(out)
    recipe = meta["recipe"]
    assert (recipe["tile"], recipe["output"]) == (80, 64)         # depth 2: output 64, the shorter side
    assert recipe["batch_size"] == choose_batch(64, None) and recipe["schedule"] == "cosine"
    assert f"tile {recipe['tile']} px" in line and f"batch {recipe['batch_size']}" in line
    assert meta["selection"] == SELECTION["pixels"]


def test_instance_checkpoints_are_kept_by_object_score_not_pixels_alone(tmp_path):
    keeper = BestCheckpoint(tmp_path / "m.safetensors", {"class_names": ["background", "object", "boundary"]})
    model = UNet(depth=2, base_channels=4, num_classes=3)
    confusion = lambda fg_hit: np.array([[100, 0, 0], [100 - fg_hit, fg_hit, 0], [0, 0, 0]])   # noqa: E731
    keeper.offer(model, 1, Scores(confusion(95), ObjectScores(tp=5, fp=5, fn=5)), loss=1.0)    # IoU .95, F1 .5
    keeper.offer(model, 2, Scores(confusion(85), ObjectScores(tp=9, fp=1, fn=1)), loss=1.0)    # IoU .85, F1 .9
    keeper.offer(model, 3, Scores(confusion(99), ObjectScores(tp=6, fp=4, fn=4)), loss=1.0)    # IoU .99, F1 .6
    _, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta["step"] == 2 and [h["object_f1"] for h in meta["history"]] == [0.5, 0.9]


def test_one_or_two_images_are_split_by_rows_not_held_out_whole():
    rng = np.random.default_rng(0)
    samples = [make_sample(f"img{i}", *disks(rng, 50, 40, touching=True), 2, instances=True) for i in range(2)]
    train_set, val_set = split_validation(samples, 0.2, rng)
    assert [s.name for s in val_set] == ["img0[40:50, :]", "img1[40:50, :]"]
    for whole, a, b in zip(samples, train_set, val_set):
        np.testing.assert_array_equal(np.concatenate([a.image, b.image], axis=1), whole.image)
        np.testing.assert_array_equal(np.concatenate([a.instances, b.instances]), whole.instances)
    wide = [make_sample("w", np.zeros((10, 30), np.uint8), np.zeros((10, 30), np.uint8), 2)]
    assert split_validation(wide, 0.2, rng)[1][0].mask.shape == (10, 6)       # columns of a wide image
    three = [make_sample(f"{i}", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), 2) for i in range(3)]
    assert [len(part) for part in split_validation(three, 0.2, rng)] == [2, 1]  # whole images again


# --- data and tiles ---------------------------------------------------------------------------------------

LAYOUTS = [(np.zeros((30, 40, 3), np.uint8), 3),               # PNG-like, channels last
           (np.zeros((2, 30, 40), np.float32), 2),              # channels first
           (np.zeros((30, 40), np.uint16), 1)]


@pytest.mark.parametrize("array,channels,suffix", [(a, c, s) for a, c in LAYOUTS for s in (".npy", ".tif", ".png")
                                                   if s != ".png" or a.dtype != np.float32])
def test_images_in_every_format_and_layout(tmp_path, array, channels, suffix):
    write(tmp_path / "images" / f"a{suffix}", array)
    write(tmp_path / "masks" / f"a{suffix}", np.ones((30, 40), np.uint8))
    (sample,) = load_folder(tmp_path, 2)
    assert sample.image.shape == (channels, 30, 40) and sample.image.dtype == array.dtype
    assert sample.mask.dtype == np.int64 and (sample.mask == 1).all()


def test_instance_masks_become_interiors_and_boundaries_or_foreground_with_gaps(tmp_path):
    instances = np.zeros((10, 12), np.int32)
    instances[2:8, 1:6], instances[2:8, 6:11] = 700, 3          # touching, arbitrary labels
    sample = make_sample("x", np.zeros((10, 12), np.uint8), instances, 2, instances=True)
    assert set(np.unique(sample.instances)) == {0, 1, 2}         # renumbered, no gap: the truth as given
    assert (sample.mask[2:8, 5:7] == 2).all() and (sample.mask[3:7, 2:5] == 1).all()   # contour (default)
    gaps = make_sample("x", np.zeros((10, 12), np.uint8), instances, 2, instances=True,
                       targets=Targets("components"))
    assert (gaps.mask[2:8, 5] == 0).all() and gaps.mask.sum() == 2 * 30 - 6  # 700 > 3 gave way


def identity_sampler(image: np.ndarray, mask: np.ndarray, tile: int, margins: tuple[int, int]) -> TileSampler:
    sample = make_sample("a", image, mask, int(mask.max()) + 1)
    contract = input_contract([sample.image])
    return TileSampler([sample], [np.zeros(mask.shape, np.float32)], replace(contract, offset=(0.0,), scale=(1.0,)),
                       tile, margins, AugmentConfig().scaled(0), TileTargets(Targets("classes")))


@pytest.mark.parametrize("shape", [(50, 61), (7, 5), (1, 1)])
def test_tiles_target_the_centre_of_the_input_and_mirror_small_images(shape):
    """Without augmentation the target must be the mask under the centre of the input tile, the tile
    cropped by the margins, also for images smaller than the tile (mirrored)."""
    model = UNet(depth=2, base_channels=4)                        # 44 in, 28 out, margins (8, 8)
    assert model.margins == (8, 8) and model.output_size(44) == 28
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, shape)
    image = (mask * 1000 + rng.integers(0, 500, shape)).astype(np.float32)  # the mask is image // 1000
    sampler = identity_sampler(image, mask, 44, model.margins)
    for _ in range(10):
        tiles, targets, weights = sampler.batch(rng, 2)
        assert tiles.shape == (2, 1, 44, 44) and targets.shape == weights.shape == (2, 28, 28)
        np.testing.assert_array_equal(tiles[:, 0, 8:36, 8:36] // 1000, targets)
        assert tiles.dtype == np.float32 and targets.dtype == np.int64


def test_tiles_are_normalised_with_the_contract():
    image = np.random.default_rng(0).integers(0, 255, (60, 60)).astype(np.uint8)
    sample = make_sample("a", image, np.zeros((60, 60), np.uint8), 2)
    contract = input_contract([sample.image])
    sampler = TileSampler([sample], [np.zeros((60, 60), np.float32)], contract, 44, (8, 8),
                          AugmentConfig().scaled(0), TileTargets(Targets("classes")))
    tile, _, _ = sampler.sample(np.random.default_rng(1))
    assert abs(tile.mean()) < 0.2 and 0.8 < tile.std() < 1.2
    assert contract.offset[0] == pytest.approx(image.mean()) and contract.scale[0] == pytest.approx(image.std())


# --- bad input: one line, exit code 2 ---------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_and_exit_2(tmp_path, capsys, case):
    prepare, message, *options = BAD_DATA[case]
    root = tmp_path / "data"
    prepare(root)
    previous = tmp_path / "m.safetensors"
    previous.write_bytes(b"an earlier checkpoint")
    assert job("--data", str(root), "--out", str(previous), *TINY, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert previous.read_bytes() == b"an earlier checkpoint"              # left intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("m.")] == ["m.safetensors"]


@pytest.fixture
def data_and_checkpoint(tmp_path):
    """A data folder and a depth-2, 4-channel checkpoint trained on it (weights untrained: only shapes matter)."""
    data = make_folder(tmp_path / "data")
    contract = input_contract([s.image for s in load_folder(data, 2)])
    path = tmp_path / "old.safetensors"
    save_checkpoint(UNet(depth=2, base_channels=4, input=contract), path)
    return data, path


@pytest.mark.parametrize("options,message", [
    (["--depth", "3", "--tile", "92"], "depth 2 (options: 3)"),
    (["--base-channels", "8"], "base_channels 4 (options: 8)"),
    (["--classes", "3"], "num_classes 2 (options: 3)"),
    (["--batch-norm"], "batch_norm False (options: True)"),
])
def test_resume_with_another_shape_is_refused(tmp_path, capsys, data_and_checkpoint, options, message):
    data, checkpoint = data_and_checkpoint
    argv = ["--data", str(data), "--out", str(tmp_path / "new.safetensors"), *TINY, "--resume", str(checkpoint)]
    assert job(*argv, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {checkpoint}: its network does not match the options")
    assert message in err and err.count("\n") == 1


def test_resume_on_data_of_another_dtype_is_refused(tmp_path, capsys, data_and_checkpoint):
    _, checkpoint = data_and_checkpoint
    data = tmp_path / "wide"
    write(data / "images" / "a.tif", np.zeros((40, 40), np.uint16))
    write(data / "images" / "b.tif", np.zeros((40, 40), np.uint16))
    for name in ("a", "b"):
        write(data / "masks" / f"{name}.png", np.zeros((40, 40), np.uint8))
    assert job("--data", str(data), "--out", str(tmp_path / "n.safetensors"), *TINY, "--resume", str(checkpoint)) == 2
    assert "trained on uint8 images, the data are uint16" in capsys.readouterr().err


@pytest.mark.parametrize("options,message", BAD_OPTIONS)
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, options, message):
    data = make_folder(tmp_path / "data", n=2)
    assert job("--data", str(data), "--out", str(tmp_path / "m.safetensors"), *TINY, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_small_images_are_mirrored_not_refused(tmp_path):
    data = tmp_path / "data"
    for name, shape in [("a", (12, 9)), ("b", (1, 3))]:
        write(data / "images" / f"{name}.png", np.full(shape, 200, np.uint8))
        write(data / "masks" / f"{name}.png", np.ones(shape, np.uint8))
    assert job("--data", str(data), "--out", str(tmp_path / "m.safetensors"), *TINY) == 0


def test_library_errors_are_unet_errors(tmp_path):
    with pytest.raises(UNetError, match="steps or epochs, not both"):
        TrainConfig(data=tmp_path, out=tmp_path / "m", steps=3, epochs=1.0)
    with pytest.raises(UNetError, match="expected a checkpoint file name, found a directory"):
        train(TrainConfig(data=make_folder(tmp_path / "d", n=2), out=tmp_path, network=UNetConfig(depth=2, base_channels=4), tile=44))


def test_training_records_the_pixel_size_given_or_read_from_the_images(tmp_path):
    """--pixel-size goes into the checkpoint; without it, the TIFF images' resolution tags do."""
    given = make_folder(tmp_path / "given", n=2)
    assert job("--data", str(given), "--out", str(tmp_path / "a.safetensors"), *TINY, "--pixel-size", "0.3") == 0
    assert load_checkpoint(tmp_path / "a.safetensors")[1]["pixel_size"] == {"value": 0.3, "unit": "micrometer"}
    tagged = make_folder(tmp_path / "tagged", n=2, suffix=".tif")
    for image in (tagged / "images").iterdir():
        tifffile.imwrite(image, tifffile.imread(image), resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    assert job("--data", str(tagged), "--out", str(tmp_path / "b.safetensors"), *TINY) == 0
    recorded = load_checkpoint(tmp_path / "b.safetensors")[1]["pixel_size"]
    assert recorded["unit"] == "micrometer" and np.allclose(recorded["value"], [1.0, 1.0])
