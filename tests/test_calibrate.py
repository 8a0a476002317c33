"""Geometry by cost: the plan arithmetic against a block-by-block count, the choice of tile and block, the
calibration on a real (tiny) network with its cache, and the fall-back to the memory rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unet.infer.calibrate import calibrate, candidate_tiles, measure, measured_busier, output_steps
from unet.infer.geometry import Calibration, TileCost, choose_tile, plan_cost
from unet.nn.model import UNet
from unet.job.plan import BlockPlan, choose_block
from unet.infer.predict import TilePredictor
from unet.infer.tiling import tile_origins


def _calibration(costs, grid=16, limit=4096) -> Calibration:
    return Calibration("test device", "k", grid, limit, tuple(costs))


# -- the plan's arithmetic ------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), block=st.integers(16, 1500),
       out=st.integers(16, 700), batch=st.integers(1, 9), grid=st.sampled_from([1, 2, 8, 16]))
def test_plan_cost_counts_what_the_blocks_compute(h, w, block, out, batch, grid):
    """Tiles, passes and overhang from per-axis counts equal a block-by-block count of the predictor's own
    tile layout."""
    plan = BlockPlan(0, (h, w), block)
    cost = TileCost(0, out, batch, seconds=0.5)
    got = plan_cost(cost, plan.spans(0), plan.spans(1), grid)
    tiles = passes = 0
    for b in plan:
        n = len(tile_origins(*b.rows, out, grid)) * len(tile_origins(*b.cols, out, grid))
        tiles, passes = tiles + n, passes + math.ceil(n / batch)
    assert (got.tiles, got.passes) == (tiles, passes)
    assert got.overhang == pytest.approx(tiles * out * out / (h * w))
    assert got.seconds == pytest.approx(passes * 0.5)


def test_a_tile_that_fits_the_block_beats_a_faster_one_that_overhangs():
    """The issue's case: on 4096-px blocks a 1356-px output computes 1.75x the block, a 1028-px one 1.03x;
    even 20 % faster per computed pixel, the large tile loses."""
    large = TileCost(1444, 1356, 1, seconds=1356 ** 2 / 1.2e6 / 1.2)
    fitting = TileCost(1116, 1028, 1, seconds=1028 ** 2 / 1.2e6)
    spans = [(0, 4096), (4096, 8192)]
    over = {c.out_tile: plan_cost(c, spans, spans, 16).overhang for c in (large, fitting)}
    assert over[1356] == pytest.approx((4 * 1356 / 4096) ** 2) and over[1356] > 1.75
    assert over[1028] < 1.02
    assert choose_tile(_calibration([large, fitting]), spans, spans).cost == fitting


def test_unmeasured_candidates_are_ranked_by_overhang():
    spans = [(0, 4096)]
    a, b = TileCost(1444, 1356, 1), TileCost(1116, 1028, 1)
    assert choose_tile(_calibration([a, b]), spans, spans).cost == b


def test_a_given_batch_keeps_the_candidates_measured_at_it():
    spans = [(0, 2048)]
    costs = [TileCost(604, 516, 1, 0.10), TileCost(604, 516, 4, 0.20), TileCost(1116, 1028, 4, 0.9)]
    assert choose_tile(_calibration(costs), spans, spans).cost == costs[1]           # 4 tiles a pass: 0.05 s each
    assert choose_tile(_calibration(costs), spans, spans, batch=1).cost == costs[0]
    scaled = choose_tile(_calibration(costs[:1]), spans, spans, batch=2)                # never measured at 2
    assert (scaled.cost.batch, scaled.cost.seconds) == (2, pytest.approx(0.2))


# -- the block ------------------------------------------------------------------------------------------

def test_block_follows_the_fastest_tile_per_pixel():
    """Tiles stepping 768 px are fastest per computed pixel: the chosen block is a multiple of 768 (3072),
    where they leave no overhang, not the default 4096 (6 steps of 768 = 4608 px for 4096)."""
    per_px = {516: 1.0, 772: 0.8, 1028: 1.0}                                # seconds per Mpx
    costs = [TileCost(o + 88, o, 1, o * o / 1e6 * s) for o, s in per_px.items()]
    choice = choose_block(_calibration(costs), (12288, 12288), 1024, slots=2)
    assert choice.block % 768 == 0 and choice.cost.cost.out_tile == 772
    assert choice.cost.overhang < 1.02


def test_equal_costs_keep_the_default_block_of_four_chunks():
    costs = [TileCost(o + 88, o, 1, o * o / 1e6) for o in (260, 516, 1028)]
    assert choose_block(_calibration(costs), (20000, 20000), 1024, slots=2).block == 4096


def test_a_small_mosaic_gets_enough_blocks_to_keep_the_slots_busy():
    costs = [TileCost(o + 88, o, 1, o * o / 1e6) for o in (260, 516, 1028)]
    choice = choose_block(_calibration(costs), (1500, 1500), 512, slots=4)
    assert choice.blocks >= 4 and choice.block % 512 == 0


# -- candidates and the calibration ---------------------------------------------------------------------

def test_output_steps_stay_on_the_grid_and_cover_the_limit():
    steps = output_steps(16, 4096, 88)
    assert steps[0] == 96 and steps[-1] >= 4096 and all(s % 16 == 0 for s in steps)
    assert steps == sorted(set(steps))


def _tiny(depth=3, base=2) -> UNet:
    torch.manual_seed(0)
    return UNet(depth=depth, base_channels=base).eval()


def test_candidates_are_valid_tiles_covering_each_step():
    predictor = TilePredictor(_tiny(), device="cpu")
    tiles = candidate_tiles(predictor, 300, 2048)
    assert len(tiles) >= 4
    for tile, out in tiles:
        assert predictor.with_geometry(tile).out_tile == out
    assert tiles[-1][1] >= 300


def test_calibration_measures_once_and_is_cached(tmp_path):
    predictor = TilePredictor(_tiny(), device="cpu")
    first = calibrate(predictor, 200, max_tile=2048, cache_dir=tmp_path, rounds=2)
    assert not first.cached and first.seconds > 0 and first.fallback is None
    assert all(c.seconds > 0 and c.batch == 1 for c in first.costs) and len(first.costs) >= 3
    (entry,) = tmp_path.glob("calibration-*.json")
    identity = json.loads(entry.read_text())["identity"]
    assert identity["torch"] == torch.__version__ and identity["network"]["depth"] == 3
    assert "torch threads" in identity["device"]
    again = calibrate(predictor, 200, max_tile=2048, cache_dir=tmp_path)
    assert again.cached and again.seconds == 0 and again.costs == first.costs
    wider = calibrate(predictor, 400, max_tile=2048, cache_dir=tmp_path, rounds=1)   # beyond what was measured
    assert not wider.cached and max(c.out_tile for c in wider.costs) >= 400
    other = calibrate(TilePredictor(_tiny(base=3), device="cpu"), 200, max_tile=2048, cache_dir=tmp_path, rounds=1)
    assert other.key != first.key and len(list(tmp_path.glob("calibration-*.json"))) == 2


def test_a_sweep_cut_short_covers_only_what_it_measured(tmp_path):
    """A busy machine (here: a budget of nothing) times only the smallest tiles; the cache entry then
    covers only their outputs, so that the next run that needs more measures again."""
    predictor = TilePredictor(_tiny(), device="cpu")
    tiles = candidate_tiles(predictor, 300, 2048)
    costs, failure = measure(predictor, tiles, [1], rounds=1, budget_s=0.0)
    assert failure is None and [c.tile for c in costs] == [tiles[0][0]]          # the first is always timed
    short = calibrate(predictor, 300, max_tile=2048, cache_dir=tmp_path, rounds=1, budget_s=0.0)
    assert short.limit == tiles[0][1] < 300
    again = calibrate(predictor, 300, max_tile=2048, cache_dir=tmp_path, rounds=1)
    assert not again.cached and again.limit == 300 and len(again.costs) == len(tiles)


def test_an_unreadable_cache_entry_is_measured_again(tmp_path):
    predictor = TilePredictor(_tiny(), device="cpu")
    first = calibrate(predictor, 100, max_tile=2048, cache_dir=tmp_path, rounds=1)
    (entry,) = tmp_path.glob("calibration-*.json")
    entry.write_text("{not json")
    again = calibrate(predictor, 100, max_tile=2048, cache_dir=tmp_path, rounds=1)
    assert not again.cached and again.key == first.key
    assert json.loads(entry.read_text())["calibration"]["key"] == first.key


def test_a_calibration_measured_on_a_much_busier_machine_is_measured_again(tmp_path):
    """An entry measured at a load far above this machine's now (its ranking was noise) is replaced; one
    measured at an ordinary load is reused."""
    predictor = TilePredictor(_tiny(), device="cpu")
    first = calibrate(predictor, 100, max_tile=2048, cache_dir=tmp_path, rounds=1)
    (entry,) = tmp_path.glob("calibration-*.json")
    stored = json.loads(entry.read_text())
    entry.write_text(json.dumps({**stored, "load_average": [10**6, 10**6, 10**6]}))
    again = calibrate(predictor, 100, max_tile=2048, cache_dir=tmp_path, rounds=1)
    assert not again.cached and again.key == first.key
    assert json.loads(entry.read_text())["load_average"][0] < 10**6               # the new entry's own load
    entry.write_text(json.dumps({**stored, "load_average": [0.0, 0.0, 0.0]}))
    assert calibrate(predictor, 100, max_tile=2048, cache_dir=tmp_path, rounds=1).cached


@pytest.mark.parametrize("then, now, cpus, busier", [(11.6, 1.2, 2, True), (11.6, 9.0, 2, False),
                                                     (2.5, 0.1, 2, False), (40.0, 4.0, 16, True),
                                                     (None, 0.0, 2, False)])
def test_busier_means_over_one_and_a_half_threads_a_core_and_twice_the_load_now(then, now, cpus, busier):
    assert measured_busier(then, now, cpus) is busier


class _SmallDevice(TilePredictor):
    """A device whose memory holds no tile above ``fits`` px: torch's own out-of-memory error, raised
    where an allocation on a small GPU would raise it."""

    fits = 0

    def _forward(self, tiles: np.ndarray, classes: bool) -> np.ndarray:
        if tiles.shape[-1] > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {tiles.nbytes} bytes")
        return super()._forward(tiles, classes)


def test_out_of_memory_drops_the_larger_candidates(tmp_path):
    predictor = _SmallDevice(_tiny(), device="cpu")
    tiles = candidate_tiles(predictor, 300, 2048)
    predictor.fits = tiles[2][0]
    result = calibrate(predictor, 300, max_tile=2048, cache_dir=tmp_path, rounds=1)
    assert result.fallback is None and [c.tile for c in result.costs] == [t for t, _ in tiles[:3]]


def test_a_calibration_that_cannot_run_falls_back_to_the_memory_rule(tmp_path):
    predictor = _SmallDevice(_tiny(), device="cpu")
    result = calibrate(predictor, 300, max_tile=2048, cache_dir=tmp_path, rounds=1)
    assert result.chosen_by == "memory rule" and "out of memory" in result.fallback
    assert "memory rule" in result.fallback and str(predictor.device) in result.fallback
    assert [(c.tile, c.seconds) for c in result.costs] == [(predictor.tile, None)]
    assert not list(tmp_path.glob("calibration-*.json"))                      # a failure is never cached


def test_each_candidate_keeps_its_fastest_round(monkeypatch):
    """A pass is only ever slowed by what else runs: of the interleaved rounds the fastest is the cost,
    and the spread is how much slower the median round was. Passes run for real; the clock is replaced by
    one that slows every other round by a different factor per tile (noise that would reorder medians)."""
    import unet.infer.calibrate as calibrate_module

    predictor = TilePredictor(_tiny(), device="cpu")
    tiles = candidate_tiles(predictor, 200, 2048)[:2]
    base = {tiles[0][0]: 1.0, tiles[1][0]: 1.1}                     # the second tile truly 10 % slower
    noise = {tiles[0][0]: 1.5, tiles[1][0]: 1.0}                    # but the first one hit by noise
    calls: dict[int, int] = {}
    real = calibrate_module._time_pass

    def timed(p, pair):
        real(p, pair)
        calls[pair[0]] = calls.get(pair[0], 0) + 1
        return base[pair[0]] * (noise[pair[0]] if calls[pair[0]] % 2 else 1.0)

    monkeypatch.setattr(calibrate_module, "_time_pass", timed)
    costs, failure = measure(predictor, tiles, [1], rounds=4, budget_s=1e9)
    got = {c.tile: c for c in costs}
    assert failure is None and set(got) == set(base)
    assert got[tiles[0][0]].seconds == 1.0 and got[tiles[1][0]].seconds == 1.1
    assert got[tiles[0][0]].spread == pytest.approx(0.25)        # rounds 1.0, 1.5, 1.0, 1.5: median 1.25
    assert got[tiles[1][0]].spread == 0.0
