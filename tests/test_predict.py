"""Overlap-tile prediction: tiled == one forward pass over the whole mirror-padded image, on odd sizes and
tile sizes, with a negative control proving the comparison can fail; the GPU paths on CPU; bad input."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
import torch

from unet import InputContract, TilePredictor, UNet, UNetError, predict_image
from unet.infer.predict import FlipPredictor, OldestFirst
from unet.infer.tta import flips_for

TOL = 1e-5


def _model(depth: int, upsampling: str = "transpose", channels: int = 1, base: int = 4, seed: int = 0,
           padding: str = "valid", **kwargs) -> UNet:
    torch.manual_seed(seed)  # He-initialised random weights
    return UNet(in_channels=channels, depth=depth, base_channels=base, padding=padding,
                upsampling=upsampling, **kwargs).eval()


def _image(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def whole_image(model: UNet, image: np.ndarray) -> np.ndarray:
    """The independent computation: mirror-pad the whole image once (margin before, enough after to reach a
    valid size), one forward pass, softmax, crop to the image."""
    _, h, w = image.shape
    before, after = model.margins
    size_h = model.round_input_size(before + h + after, "up")
    size_w = model.round_input_size(before + w + after, "up")
    padded = np.pad(image, ((0, 0), (before, size_h - before - h), (before, size_w - before - w)),
                    mode="reflect")                              # (C, size_h, size_w)
    with torch.no_grad():
        logits = model(torch.from_numpy(padded)[None].float())  # (1, K, >= h, >= w)
    return torch.softmax(logits, dim=1)[0, :, :h, :w].numpy()   # (K, h, w)


def _usable_tiles(model: UNet, hi: int = 3000) -> list[int]:
    return [n for n in model.valid_input_sizes(1, hi) if model.output_size(n) >= model.pooling_period]


def _predict_with(predictor: TilePredictor, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[1:]
    return predictor.predict_region(lambda r, c: image[:, r, c], (h, w), (0, h), (0, w))


# -- exactness -------------------------------------------------------------------------------------
# (image shape, depth, base channels, tiles as indices into the usable tile sizes: 0 is the smallest)
# (the smallest tile on the large images would only cost time: thousands of tiles)
EXACT_CASES = [
    ((1, 301, 517), 3, 4, [4, 30, 130]),  # 130: one tile covers the whole image
    ((3, 97, 1000), 4, 4, [5, 26]),
    ((1, 5, 7), 4, 6, [0, 2]),            # smaller than the margin: mirrored many times over
    ((2, 33, 1), 3, 8, [0, 3]),           # one pixel wide
    ((1, 67, 45), 4, 4, [0, 1, 7]),
]


@pytest.mark.parametrize("upsampling", ["transpose", "upsample_conv"])
@pytest.mark.parametrize("shape,depth,base,tile_indices", EXACT_CASES,
                         ids=["x".join(map(str, c[0])) + f"-d{c[1]}" for c in EXACT_CASES])
def test_tiled_prediction_equals_one_whole_image_pass(shape, depth, base, tile_indices, upsampling):
    model = _model(depth, upsampling, channels=shape[0], base=base, seed=sum(shape))
    image = _image(shape, seed=depth)
    original = image.copy()
    expected = whole_image(model, image)
    usable = _usable_tiles(model)
    for tile in [usable[i] for i in tile_indices]:
        got = predict_image(model, image, tile=tile)
        assert got.shape == (2, *shape[1:]) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0, err_msg=f"tile {tile}")
    assert np.array_equal(image, original)


@pytest.mark.parametrize("upsampling", ["transpose", "upsample_conv"])
def test_negative_control_misaligned_tiles_break_exactness(upsampling):
    """The same comparison on tiles whose steps are not multiples of the pooling grid must fail, or the
    exactness test above proves nothing."""
    model = _model(4, upsampling, base=6)
    image = _image((1, 61, 83))
    expected = whole_image(model, image)
    tile = _usable_tiles(model)[1]
    predictor = TilePredictor(model, tile=tile, device="cpu")
    assert predictor.out_tile % model.pooling_period != 0                 # so a grid-1 step leaves the pooling grid
    np.testing.assert_allclose(_predict_with(predictor, image), expected, atol=TOL, rtol=0)
    predictor.pooling_period = 1
    assert np.abs(_predict_with(predictor, image) - expected).max() > 1e-3


@pytest.mark.parametrize("depth,upsampling", [(3, "upsample_conv"), (4, "transpose")])
@pytest.mark.parametrize("seed", range(4))
def test_region_equals_the_same_crop_of_the_whole_image(depth, upsampling, seed):
    model = _model(depth, upsampling, channels=2, base=4)
    image = _image((2, 75, 113), seed=seed)
    expected = whole_image(model, image)
    rng = np.random.default_rng(seed)
    y0, x0 = (int(rng.integers(0, 30)) * 2 + 1 for _ in range(2))   # odd offsets
    y1, x1 = int(rng.integers(y0 + 1, 76)), int(rng.integers(x0 + 1, 114))
    predictor = TilePredictor(model, tile=_usable_tiles(model)[seed], device="cpu")
    reads = []

    def read(rows, cols):
        reads.append((rows, cols))
        return image[:, rows, cols]

    got = predictor.predict_region(read, image.shape[1:], (y0, y1), (x0, x1))
    np.testing.assert_allclose(got, expected[:, y0:y1, x0:x1], atol=TOL, rtol=0)
    assert len(reads) == 1


# -- same padding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("upsampling", ["transpose", "upsample_conv"])
@pytest.mark.parametrize("shape,depth,tile", [((1, 37, 53), 3, 16), ((1, 37, 53), 3, None),
                                              ((3, 101, 67), 4, 64), ((1, 5, 7), 4, 8), ((1, 1, 1), 2, 6)])
def test_same_padded_prediction_on_odd_sizes(shape, depth, tile, upsampling):
    model = _model(depth, upsampling, channels=shape[0], padding="same")
    probs = predict_image(model, _image(shape), tile=tile)
    assert probs.shape == (2, *shape[1:]) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)


def test_same_padded_tile_keeps_its_centre():
    """Not exact across tiles, but each tile keeps its centre: a tile that covers the image is one pass."""
    model = _model(3, padding="same", base=6)
    image = _image((1, 40, 40))
    predictor = TilePredictor(model, tile=80, device="cpu")
    assert (predictor.before, predictor.out_tile) == (20, 40)       # a halo of 20, 40 px kept: one tile
    padded = np.pad(image, ((0, 0), (20, 20), (20, 20)), mode="reflect")  # (1, 80, 80)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(padded)[None]), 1)[0, :, 20:60, 20:60].numpy()
    one_tile = _predict_with(predictor, image)
    np.testing.assert_allclose(one_tile, expected, atol=TOL, rtol=0)


# -- GPU code paths, exercised on CPU --------------------------------------------------------------
@pytest.fixture(scope="module")
def float32_result():
    model = _model(3, base=8, seed=3)
    image = _image((1, 67, 91), seed=3)
    return model, image, predict_image(model, image, tile=92, device="cpu", amp=False)


@pytest.mark.parametrize("amp,channels_last", [(True, False), (False, True), (True, True)])
def test_amp_and_channels_last_agree_with_float32(float32_result, amp, channels_last):
    model, image, expected = float32_result
    predictor = TilePredictor(model, tile=92, device="cpu", amp=amp, channels_last=channels_last)
    assert predictor.amp is amp and predictor.channels_last is channels_last
    got = _predict_with(predictor, image)
    model.to(memory_format=torch.contiguous_format)                # undo for the other parametrisations
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)
    diff = np.abs(got - expected).max()
    agreement = (got.argmax(0) == expected.argmax(0)).mean()
    if amp:   # bf16 flips near-tie pixels: a small fraction, and never by much
        assert 0 < diff < 0.05, diff                             # > 0: autocast really ran in bf16
        assert agreement >= 0.99
    else:     # channels_last alone is still float32
        assert diff < 1e-4 and agreement == 1.0


def test_compiled_network_agrees_with_eager(float32_result):
    """torch.compile (--compile) on CPU, as on a GPU: compiled for real, same probabilities."""
    model, image, expected = float32_result
    predictor = TilePredictor(model, tile=92, device="cpu", compile=True)
    assert predictor.network is not predictor.model and hasattr(predictor.network, "_orig_mod")
    got = _predict_with(predictor, image)
    model.to(memory_format=torch.contiguous_format)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(0) == expected.argmax(0)).all()


def test_cpu_defaults_to_float32_channels_last_and_one_tile_a_pass():
    predictor = TilePredictor(_model(2), tile=20, device="cpu")
    assert predictor.amp is False and predictor.channels_last is True and predictor.batch_size == 1


def test_normalisation_of_the_input_contract_is_applied():
    offset, scale = (100.0, -3.0, 0.5), (20.0, 0.25, 7.0)
    contract = InputContract(channels=3, dtype="uint16", value_range=(0.0, 65535.0), offset=offset, scale=scale)
    normalising = _model(3, channels=3, seed=5, input=contract)
    plain = _model(3, channels=3, seed=6)
    plain.load_state_dict(normalising.state_dict())
    raw = np.random.default_rng(0).integers(0, 400, (3, 45, 59)).astype(np.uint16)
    normalised = (raw - np.array(offset)[:, None, None]) / np.array(scale)[:, None, None]
    got = predict_image(normalising, raw, tile=52)
    np.testing.assert_allclose(got, predict_image(plain, normalised, tile=52), atol=TOL, rtol=0)
    assert np.abs(got - predict_image(plain, raw, tile=52)).max() > 1e-2   # normalisation matters


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "int64", "float16", "float64", ">f4",
                                   "bool"])
def test_any_real_dtype(dtype):
    model = _model(3, seed=2, input=InputContract(offset=(50.0,), scale=(25.0,)))
    image = np.random.default_rng(0).integers(0, 2 if dtype == "bool" else 100, (1, 23, 31)).astype(dtype)
    expected = whole_image(model, (image.astype(np.float32) - 50) / 25)
    got = predict_image(model, image, tile=48, batch_size=7)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    one_a_pass = predict_image(model, image, tile=48, batch_size=1)      # batching changes nothing but
    np.testing.assert_allclose(one_a_pass, got, atol=TOL, rtol=0)       # the kernels' rounding


# -- tile sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth,upsampling,padding", [(3, "transpose", "valid"), (4, "upsample_conv", "valid"),
                                                      (5, "transpose", "valid"), (4, "transpose", "same")])
@pytest.mark.parametrize("shape", [(1, 5, 7), (1, 97, 301), (1, 700, 3)])
def test_automatic_tile_is_valid(depth, upsampling, padding, shape):
    model = _model(depth, upsampling, padding=padding, base=2)
    predictor = TilePredictor(model, device="cpu", image_shape=shape[1:])
    assert predictor.tile in _usable_tiles(model)
    assert TilePredictor(model, tile=predictor.tile, device="cpu").tile == predictor.tile
    if depth <= 4 and padding == "valid":
        image = _image(shape)
        np.testing.assert_allclose(predict_image(model, image), whole_image(model, image), atol=TOL, rtol=0)


def test_automatic_tile_of_the_paper_network_fits_the_budget():
    model = UNet()
    tiles = [TilePredictor(model, device="cpu", memory_budget=budget).tile for budget in (1 << 26, 1 << 28, 1 << 30)]
    assert all(t in model.valid_input_sizes(t, t) for t in tiles)
    assert tiles == sorted(tiles) and tiles[0] < tiles[-1]       # a larger budget never picks a smaller tile


@pytest.mark.parametrize("depth,upsampling", [(3, "transpose"), (4, "upsample_conv"), (5, "transpose")])
@pytest.mark.parametrize("tile", [573, 571, 101, 3, 0, -7])
def test_invalid_tile_names_the_nearest_valid_sizes(depth, upsampling, tile):
    model = _model(depth, upsampling, base=1)
    usable = _usable_tiles(model)
    if tile in usable:
        return
    with pytest.raises(ValueError) as err:
        predict_image(model, _image((1, 9, 11)), tile=tile)
    below, above = re.search(r"nearest valid sizes: (\w+) and (\d+)", str(err.value)).groups()
    above = int(above)
    assert above > tile and above in usable
    if below == "none":
        assert tile < usable[0] and above == usable[0]
    else:
        assert int(below) in usable and int(below) < tile
        assert [n for n in usable if int(below) < n < above] == []
    assert str(tile) in str(err.value)


# -- bad input -------------------------------------------------------------------------------------
def _with(value, at=(0, 3, 4), shape=(1, 9, 11)):
    image = _image(shape)
    image[at] = value
    return image


BAD_INPUT = [
    ("two channels for a one-channel model", 1, _image((2, 9, 11)), {}, ["1 channel", "found 2"]),
    ("a 2-D image for a three-channel model", 3, _image((9, 11)), {}, ["3 channel", "found 1"]),
    ("1-D", 1, _image((17,)), {}, ["2-D", "1-D"]),
    ("4-D", 1, _image((1, 1, 9, 11)), {}, ["3-D", "4-D"]),
    ("empty rows", 1, np.zeros((0, 5), np.float32), {}, ["non-empty", "(1, 0, 5)"]),
    ("empty columns", 1, np.zeros((1, 5, 0), np.float32), {}, ["non-empty", "(1, 5, 0)"]),
    ("NaN", 1, _with(np.nan), {}, ["finite", "NaN"]),
    ("+inf", 1, _with(np.inf, at=(0, 8, 10)), {}, ["finite", "infinit"]),
    ("-inf in float16", 1, _with(-np.inf, at=(0, 0, 0)).astype(np.float16), {}, ["finite", "infinit"]),
    ("complex", 1, _image((1, 9, 11)) + 1j, {}, ["real", "complex"]),
    ("strings", 1, np.full((9, 11), "a"), {}, ["real", "<U1"]),
    ("tile 45", 1, _image((1, 9, 11)), {"tile": 45}, ["45", "48"]),
    ("tile 0", 1, _image((1, 9, 11)), {"tile": 0}, ["0 px", "none and 44"]),
    ("tile 48.5", 1, _image((1, 9, 11)), {"tile": 48.5}, ["48.5", "integer"]),
    ("tile 48.0", 1, _image((1, 9, 11)), {"tile": 48.0}, ["48.0", "integer"]),
    ("tile True", 1, _image((1, 9, 11)), {"tile": True}, ["True", "integer"]),
]


@pytest.mark.parametrize("what,channels,image,kwargs,words", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_naming_expected_and_found(what, channels, image, kwargs, words):
    model = _model(3, channels=channels, base=1)
    with pytest.raises(UNetError) as err:
        predict_image(model, image, **kwargs)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "expected" in message or "valid" in message
    for word in words:
        assert word in message, (word, message)


def test_device_goes_to_the_oldest_waiting_region_first():
    """Two blocks in flight on one worker: the one that came first gets the device first, whatever order
    their threads ask in (a plain lock would let them alternate tile by tile)."""
    lock, order = OldestFirst(), []
    first, older, newer = lock.ticket(), lock.ticket(), lock.ticket()

    def wait(ticket):
        with lock.hold(ticket):
            order.append(ticket)

    with lock.hold(first):
        threads = [threading.Thread(target=wait, args=(t,)) for t in (newer, older)]  # the newer asks first
        for t in threads:
            t.start()
            time.sleep(0.2)                                   # let it queue up behind the holder
        assert order == []                                    # nobody enters while the device is held
    for t in threads:
        t.join(timeout=10)
    assert order == [older, newer]


# -- test-time flips ------------------------------------------------------------------------------
# the independent computation: each flipped image in one whole-image pass, flipped back, summed in order
_FLIPS4 = [lambda a: a, lambda a: a[:, :, ::-1], lambda a: a[:, ::-1, :], lambda a: a[:, ::-1, ::-1]]
_FLIPS8 = _FLIPS4 + [lambda a, f=f: f(a.transpose(0, 2, 1)) for f in _FLIPS4]
_UNFLIPS8 = _FLIPS4 + [lambda a, f=f: f(a).transpose(0, 2, 1) for f in _FLIPS4]


def whole_image_flipped(model: UNet, image: np.ndarray, n: int) -> np.ndarray:
    """Mean over n flips of one whole-image pass of each flipped image, flipped back: (K, h, w)."""
    flips, unflips = _FLIPS8[:n], _UNFLIPS8[:n]
    total = sum(unflip(whole_image(model, np.ascontiguousarray(flip(image)))) for flip, unflip in zip(flips, unflips))
    return total / n


TTA_CASES = [((1, 61, 83), 4, 4, 1), ((2, 37, 70), 3, 8, 3), ((1, 45, 29), 4, 8, 3), ((1, 5, 7), 3, 4, 0)]


@pytest.mark.parametrize("shape,depth,flips,tile_index", TTA_CASES,
                         ids=["x".join(map(str, c[0])) + f"-d{c[1]}-{c[2]}" for c in TTA_CASES])
def test_flipped_prediction_equals_the_mean_of_whole_flipped_images(shape, depth, flips, tile_index):
    """Odd sizes off the pooling grid: each flipped image's tiles must sit on its own grid (anchored at the
    original's far edge), for the whole image and for odd regions of it (blocks)."""
    model = _model(depth, channels=shape[0], seed=depth + flips)
    image = _image(shape, seed=flips)
    expected = whole_image_flipped(model, image, flips)
    tile = _usable_tiles(model)[tile_index]
    got = predict_image(model, image, tile=tile, tta=flips)
    assert got.shape == (2, *shape[1:]) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    predictor = FlipPredictor(TilePredictor(model, tile=tile, device="cpu"), flips_for(flips))
    h, w = shape[1:]
    for (y0, y1), (x0, x1) in [((1, h), (3, w - 1)), ((h // 2, h), (0, w // 3 + 1))]:
        region = predictor.predict_region(lambda r, c: image[:, r, c], (h, w), (y0, y1), (x0, x1))
        np.testing.assert_allclose(region, expected[:, y0:y1, x0:x1], atol=TOL, rtol=0)


def test_negative_control_flipped_tiles_on_the_original_grid_differ():
    """Flipped images whose tiles sat on the grid counted from the original's origin compute another mean:
    the comparison above can fail."""
    model = _model(4, base=6)
    image = _image((1, 61, 83))                                   # off the grid of 8 on both axes
    sy, sx = (-n % model.pooling_period for n in image.shape[1:])            # puts a mirror image on the original's grid
    wrong = 0
    for flip, (py, px) in zip(_FLIPS4, [(0, 0), (0, sx), (sy, 0), (sy, sx)]):
        padded = np.pad(np.ascontiguousarray(flip(image)), ((0, 0), (py, 0), (px, 0)), mode="reflect")
        wrong = wrong + flip(whole_image(model, padded)[:, py:, px:])
    got = predict_image(model, image, tta=True)
    np.testing.assert_allclose(got, whole_image_flipped(model, image, 4), atol=TOL, rtol=0)
    assert np.abs(got - wrong / 4).max() > 1e-3


def test_flips_read_the_region_once_each_and_same_padding_is_warned():
    model = _model(3)
    image = _image((1, 40, 50))
    reads = []

    def read(rows, cols):
        reads.append((rows, cols))
        return image[:, rows, cols]

    predictor = TilePredictor(model, tile=_usable_tiles(model)[4], device="cpu")
    FlipPredictor(predictor, flips_for(8)).predict_region(read, (40, 50), (3, 30), (0, 50))
    assert len(reads) == 8
    with pytest.warns(UserWarning, match="same-padded"):
        probs = predict_image(_model(3, padding="same"), image, tile=32, tta=True)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)
    with pytest.raises(UNetError, match="expected True, False, 4 or 8 flips, found 3"):
        predict_image(model, image, tta=3)
