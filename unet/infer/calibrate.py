"""Calibration: what each candidate tile (and batch) costs on this device, measured briefly and cached.

A short calibration times candidate tiles — valid sizes whose outputs step along the pooling grid — on the
device itself, interleaved over a few rounds, and keeps each candidate's fastest round: on a shared machine
a pass is only ever slowed by what else runs (the same tile's pass took 72 and 95 ms a minute apart), so
the fastest round is the candidate's own cost, and a median of three let the noise pick the tile (two
tiles within 1 % of each other were ranked 13 % apart). The result is cached in a small JSON file per
device and network (``$UNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/unet``, else ``~/.cache/unet``), so every
block and every later run on the machine reuses it.

How a plan's tile and block are then chosen from it: ``unet.infer.geometry``.

A calibration that cannot run (the device out of memory even for the smallest candidate) leaves the choice
to the memory rule of ``TilePredictor`` and says why (``Calibration.fallback``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unet.infer.geometry import Calibration, TileCost
from unet.infer.predict import TilePredictor, tile_outputs

log = logging.getLogger("unet")

CACHE_VERSION = 2          # 2: the fastest round is kept (1 kept the median)
ROUNDS = 5                 # timings per candidate, interleaved: the fastest is kept
BUDGET_S = 30.0            # seconds a calibration may take: larger candidates are dropped to fit it
MAX_BATCH = 64
MIN_STEP = 32              # smallest output step considered (px); never less than the margins lost
BUSY_PER_CPU = 1.5         # a cache entry measured above this load per core is re-measured on a quieter machine


# -- candidates and measurement ------------------------------------------------------------------------

def output_steps(period: int, limit: int, smallest: int = MIN_STEP) -> list[int]:
    """Output steps worth a candidate: 2^k and 3 * 2^(k-1) px (they divide blocks of whole chunks) of at
    least ``smallest``, on the pooling grid, up to the first that covers ``limit``."""
    steps: list[int] = []
    k = 1
    while not steps or steps[-1] < limit:
        for step in (2 ** k, 3 * 2 ** (k - 1)):
            if step >= max(period, smallest) and step % period == 0 and (not steps or steps[-1] < limit):
                steps.append(step)
        k += 1
    return sorted(set(steps))


def candidate_tiles(predictor: TilePredictor, limit: int, max_tile: int) -> list[tuple[int, int]]:
    """(tile, out_tile) for every step of ``output_steps``: the smallest valid tile whose output covers
    the step, no larger than ``max_tile``. Steps start at the pixels a tile loses to its margins (smaller
    outputs cost more than twice their pixels)."""
    usable = tile_outputs(predictor.model, max_tile)
    if not usable:
        return []
    lost = usable[0][0] - usable[0][1]
    steps = output_steps(predictor.pooling_period, limit, max(MIN_STEP, min(lost, limit)))
    chosen = {next((t for t in usable if t[1] >= step), usable[-1]) for step in steps}
    return sorted(chosen)


def batch_sizes(predictor: TilePredictor) -> list[int]:
    """Batches to try: one tile a pass on a CPU (larger batches were measured slower there: their
    activations fall out of cache); powers of two up to ``MAX_BATCH`` on a GPU."""
    if predictor.device.type != "cuda":
        return [1]
    return [2 ** k for k in range(int(math.log2(MAX_BATCH)) + 1)]


def measure(predictor: TilePredictor, tiles: Sequence[tuple[int, int]], batches: Sequence[int], *,
            rounds: int = ROUNDS, budget_s: float = BUDGET_S) -> tuple[list[TileCost], str | None]:
    """Time every (tile, batch) pair: a warm-up pass each, smallest first, then ``rounds`` interleaved
    timings (alternating the order, so that a drift of the machine's load weighs on all alike), the
    fastest kept. Larger pairs are tried while the warm-ups so far, times ``rounds + 1``, fit
    ``budget_s``; a pair that runs out of memory ends the sweep at its size. Returns the costs and, if
    not even the smallest pair ran, why not."""
    pairs, failure = _warm_up(predictor, tiles, batches, budget_s / (rounds + 1))
    timings: dict[tuple[int, int, int], list[float]] = {p: [] for p in pairs}
    for r in range(rounds):
        for pair in (pairs if r % 2 == 0 else pairs[::-1]):
            timings[pair].append(_time_pass(predictor, pair))
    costs = []
    for (tile, out, batch), seconds in timings.items():
        fastest = min(seconds)
        costs.append(TileCost(tile, out, batch, fastest, (statistics.median(seconds) - fastest) / fastest))
    return costs, (failure if not costs else None)


def _warm_up(predictor: TilePredictor, tiles: Sequence[tuple[int, int]], batches: Sequence[int],
             round_s: float) -> tuple[list[tuple[int, int, int]], str | None]:
    """The pairs that ran once, smallest first, while their passes add up to at most ``round_s``; and
    the first out-of-memory error met."""
    kept: list[tuple[int, int, int]] = []
    failure: str | None = None
    spent = 0.0
    largest = dict.fromkeys(batches, math.inf)                # per batch: the largest tile still worth a try
    for tile, out in tiles:
        for batch in batches:
            if tile > largest[batch] or predictor.activation_bytes(tile) * batch > predictor.memory_budget:
                break                                         # larger batches are only larger
            try:
                if not kept and failure is None:
                    _time_pass(predictor, (tile, out, batch))  # the very first pass pays one-time set-up
                seconds = _time_pass(predictor, (tile, out, batch))
            except Exception as e:  # noqa: BLE001 - out-of-memory is expected (and ends the sweep), the rest re-raised
                if not is_out_of_memory(e):
                    raise
                failure = failure or f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
                _free(predictor)
                seconds = math.inf
            else:
                kept.append((tile, out, batch))
                spent += seconds
            if spent > round_s or seconds == math.inf:        # nothing larger at this batch or above
                for b in batches[batches.index(batch):]:
                    largest[b] = min(largest[b], tile - 1)
                break
    return kept, failure


def _time_pass(predictor: TilePredictor, pair: tuple[int, int, int]) -> float:
    tile, _, batch = pair
    p = predictor.with_geometry(tile, batch)
    tiles = np.repeat(_random_tile(p.config.input, tile)[None], batch, axis=0)  # (B, C, tile, tile)
    started = time.perf_counter()
    p.forward(tiles, classes=True)                            # the job's own path; ends on the host: synchronous
    return time.perf_counter() - started


@functools.lru_cache(maxsize=4)
def _random_tile(contract, tile: int) -> np.ndarray:
    """One input tile (C, tile, tile) of the contract's dtype and range; a batch repeats it (the network's
    speed does not depend on the values)."""
    rng = np.random.default_rng(tile)
    shape = (contract.channels, tile, tile)
    if np.issubdtype(np.dtype(contract.dtype), np.integer):
        info = np.iinfo(contract.dtype)
        lo, hi = contract.value_range or (max(info.min, 0), min(info.max, 255))
        return rng.integers(int(lo), int(hi) + 1, shape).astype(contract.dtype)
    lo, hi = contract.value_range or (0.0, 1.0)
    return rng.uniform(lo, hi, shape).astype(np.float32)


def is_out_of_memory(error: BaseException) -> bool:
    """A device (or host) allocation failure, as torch raises it on CUDA and on CPU."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


def _free(predictor: TilePredictor) -> None:
    if predictor.device.type == "cuda":
        torch.cuda.empty_cache()


# -- the calibration, cached ---------------------------------------------------------------------------

def calibrate(predictor: TilePredictor, limit: int, *, max_tile: int, cache_dir: str | os.PathLike | None = None,
              rounds: int = ROUNDS, budget_s: float = BUDGET_S) -> Calibration:
    """The costs of the candidate tiles that cover outputs up to ``limit`` px (tiles up to ``max_tile``)
    on the predictor's device, from the cache when an entry covers ``limit``, else measured and cached."""
    identity = calibration_identity(predictor)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_file(key, cache_dir)
    cached, load_then = _read_cache(path)
    if (cached is not None and cached.limit >= limit and cached.costs
            and not measured_busier(load_then, os.getloadavg()[0], os.cpu_count() or 1)):
        return replace(cached, seconds=0.0, cached=True)
    started = time.perf_counter()
    candidates = candidate_tiles(predictor, limit, max_tile)
    costs, failure = measure(predictor, candidates, batch_sizes(predictor), rounds=rounds, budget_s=budget_s)
    seconds = time.perf_counter() - started
    if failure is not None:
        rule = memory_rule(predictor)
        return Calibration(identity["device"], key, predictor.pooling_period, limit, (rule,), seconds, fallback=(
            f"calibration could not run on {identity['device']} ({failure}); tiles chosen by the memory rule"))
    # A sweep cut short (a busy machine, a device out of memory) covers only the outputs it measured: a
    # later run that needs more measures again rather than keep a choice made without the larger tiles.
    measured = {c.tile for c in costs}
    fitting = [t for t, _ in candidates if predictor.activation_bytes(t) <= predictor.memory_budget]
    covered = limit if measured.issuperset(fitting) else max(c.out_tile for c in costs)
    result = Calibration(identity["device"], key, predictor.pooling_period, covered, tuple(costs), seconds)
    _write_cache(path, identity, result)
    return result


def memory_rule(predictor: TilePredictor) -> TileCost:
    """The predictor's own tile (chosen by its memory rule, or given), unmeasured."""
    return TileCost(predictor.tile, predictor.out_tile, predictor.batch_size)


def fixed(predictor: TilePredictor, limit: int) -> Calibration:
    """No calibration: an explicit tile (and the predictor's batch) is the only candidate."""
    identity = calibration_identity(predictor)
    return Calibration(identity["device"], "", predictor.pooling_period, limit, (memory_rule(predictor),))


def calibration_identity(predictor: TilePredictor) -> dict:
    """What the speed depends on: the device (and its thread count), the network, torch, precision."""
    c = predictor.config
    network = {k: getattr(c, k) for k in ("in_channels", "num_classes", "depth", "base_channels", "padding",
                                          "upsampling", "batch_norm")}
    return {"version": CACHE_VERSION, "device": device_name(predictor.device), "torch": torch.__version__,
            "network": network, "amp": predictor.amp, "channels_last": predictor.channels_last,
            "compile": predictor.network is not predictor.model}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"{device.type} {cpu_model()}, {torch.get_num_threads()} torch threads"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir_default() -> Path:
    if os.environ.get("UNET_CACHE_DIR"):
        return Path(os.environ["UNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unet"


def cache_file(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or cache_dir_default()) / f"calibration-{key}.json"


def measured_busier(load_then: float | None, load_now: float, cpus: int) -> bool:
    """Whether a cached calibration was measured on a machine much busier than it is now (one-minute load
    averages): its ranking of the tiles was then mostly noise, so it is measured again. Busier: more than
    1.5 runnable threads per core then, and more than twice the load of now."""
    return load_then is not None and load_then / cpus > BUSY_PER_CPU and load_then > 2 * load_now


def _read_cache(path: Path) -> tuple[Calibration | None, float | None]:
    """The cached calibration and the one-minute load average it was measured at (None when absent)."""
    try:
        entry = json.loads(path.read_text())
        calibration = Calibration.from_dict(entry["calibration"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None  # absent or unreadable: measure again
    load = entry.get("load_average")
    return calibration, float(load[0]) if isinstance(load, list) and load and isinstance(load[0], (int, float)) else None


def _write_cache(path: Path, identity: dict, calibration: Calibration) -> None:
    """Write atomically (two workers may calibrate at once); a cache that cannot be written is skipped."""
    entry = {"identity": identity, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "load_average": [round(v, 2) for v in os.getloadavg()], "calibration": calibration.to_dict()}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{id(calibration)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entry, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("unet: calibration cache %s not written (%s)", path.parent, e)


