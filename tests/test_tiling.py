"""Tile placement and mirrored reads, checked against brute force and numpy's own "reflect" padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet.infer.tiling import read_mirrored, reflect, tile_origins


# -- tile_origins ----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(grid=st.sampled_from([1, 2, 4, 8, 16, 32]), start=st.integers(0, 5000), length=st.integers(1, 3000),
       out_tile=st.integers(1, 1500))
def test_tile_origins_cover_the_range_on_the_grid(grid, start, length, out_tile):
    out_tile = max(out_tile, grid)
    stop = start + length
    origins = tile_origins(start, stop, out_tile, grid)
    assert all(o % grid == 0 for o in origins)
    steps = np.diff(origins)
    assert (steps > 0).all() and (steps <= out_tile).all()
    assert origins[0] <= start < origins[0] + grid           # starts at the grid point at or before start
    assert origins[-1] + out_tile >= stop                    # reaches the end
    covered = np.zeros(length, bool)
    for o in origins:
        covered[max(o, start) - start: min(o + out_tile, stop) - start] = True
    assert covered.all()
    if len(origins) > 1:                                     # no wasted tile: the last overshoots < grid
        assert origins[-1] + out_tile - stop < grid
        assert origins[-2] + out_tile < stop


@pytest.mark.parametrize("out_tile,grid", [(15, 16), (1, 2), (7, 8)])
def test_tile_origins_refuse_tiles_smaller_than_the_grid(out_tile, grid):
    with pytest.raises(ValueError, match=str(grid)):
        tile_origins(0, 100, out_tile, grid)


def test_tile_origins_of_the_paper_tile_step_by_384():
    assert tile_origins(0, 1000, 388, 16) == [0, 384, 624]   # 388 is not a grid multiple; 384 is
    assert tile_origins(37, 90, 388, 16) == [32]


# -- reflect ---------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 40), before=st.integers(0, 400), after=st.integers(0, 400))
def test_reflect_equals_numpy_reflect_padding(n, before, after):
    values = np.arange(n) * 10 + 3
    expected = np.pad(values, (before, after), mode="reflect")
    assert np.array_equal(values[reflect(np.arange(-before, n + after), n)], expected)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_reflect_images_smaller_than_the_margin(n):
    values = np.arange(n) + 1
    index = reflect(np.arange(-92, n + 100), n)
    assert np.array_equal(values[index], np.pad(values, (92, 100), mode="reflect"))
    assert index.min() >= 0 and index.max() < n


# -- read_mirrored ---------------------------------------------------------------------------------
class RecordingReader:
    """Reads an in-memory (C, h, w) image and records every rectangle asked for."""

    def __init__(self, image: np.ndarray):
        self.image, self.calls = image, []

    def __call__(self, rows: slice, cols: slice) -> np.ndarray:
        self.calls.append((rows, cols))
        return self.image[:, rows, cols]


@st.composite
def windows(draw):
    h, w = draw(st.integers(1, 23)), draw(st.integers(1, 31))
    def span(n):
        a = draw(st.integers(-3 * n - 5, 3 * n + 5))
        return a, a + draw(st.integers(1, 5 * n + 10))
    return (h, w), span(h), span(w)


@settings(max_examples=300, deadline=None)
@given(window=windows(), channels=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_read_mirrored_equals_slicing_numpy_reflect_padding(window, channels, seed):
    (h, w), rows, cols = window
    image = np.random.default_rng(seed).standard_normal((channels, h, w)).astype(np.float32)
    pad = 9 * max(h, w) + 20                                 # beyond the farthest window
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    expected = padded[:, rows[0] + pad: rows[1] + pad, cols[0] + pad: cols[1] + pad]
    reader = RecordingReader(image)
    got = read_mirrored(reader, (h, w), rows, cols)
    assert got.shape == (channels, rows[1] - rows[0], cols[1] - cols[0])
    assert np.array_equal(got, expected)
    (r, c), = reader.calls                                   # one read, inside the image
    assert 0 <= r.start < r.stop <= h and 0 <= c.start < c.stop <= w
    assert r.stop - r.start <= rows[1] - rows[0]             # mirroring is 1-Lipschitz: the read box is
    assert c.stop - c.start <= cols[1] - cols[0]             # never larger than the window


@settings(max_examples=200, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), margin=st.integers(1, 7), data=st.data())
def test_read_mirrored_near_the_border_equals_numpy_reflect_padding(h, w, margin, data):
    """A block's window overhangs the image by its margin, less than the block: the padded path."""
    def span(n):
        start = data.draw(st.integers(-margin, n // 2))
        return start, data.draw(st.integers(max(start + 1, margin + 1), n + margin))
    rows, cols = span(h), span(w)
    image = np.random.default_rng(h * w + margin).integers(0, 256, (2, h, w), dtype=np.uint8)
    padded = np.pad(image, ((0, 0), (margin, margin), (margin, margin)), mode="reflect")
    expected = padded[:, rows[0] + margin: rows[1] + margin, cols[0] + margin: cols[1] + margin]
    assert np.array_equal(read_mirrored(RecordingReader(image), (h, w), rows, cols), expected)


def test_read_mirrored_in_bounds_is_a_plain_slice():
    image = np.arange(3 * 11 * 13, dtype=np.float32).reshape(3, 11, 13)
    reader = RecordingReader(image)
    got = read_mirrored(reader, (11, 13), (2, 9), (0, 13))
    assert np.array_equal(got, image[:, 2:9, :])
    assert reader.calls == [(slice(2, 9), slice(0, 13))]
