"""The actor: holds one U-Net on its device and turns blocks of a mosaic into written output chunks.

``BlockRunner`` is a plain class, testable without a cluster; the job wraps it in a threaded Ray actor
(two calls at a time). On a GPU one call reads or writes while the other keeps the device busy; the
forward passes themselves are serialised by the predictor. On a CPU the network's own threads use every
core the worker has, and a second thread decoding or encoding chunks beside them stalls them at each
barrier (a forward pass took 2.7x as long beside one busy thread on 2 cores), so there the calls take
turns: the second call waits in the actor, ready, instead of competing. Every call ends the same way
(``commit_block``): the block's level, its share of the coarser levels, then its done-marker.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from unet.infer.calibrate import calibrate, fixed
from unet.infer.geometry import Calibration, choose_tile
from unet.infer.predict import MAX_AUTO_TILE, FlipPredictor, TilePredictor, class_index
from unet.infer.tiling import Reader
from unet.infer.tta import flips_for
from unet.io.output import OutputSpec, OutputWriter
from unet.io.source import Source, SourceSpec, open_source
from unet.job.objects.actor import relabel_block, store_block_objects, store_rim
from unet.job.plan import Block, BlockPlan
from unet.job.pyramid import decimate2x2, halve, mode2x2
from unet.job.skip import EmptyBlocks
from unet.job.spec import BlockStats, JobSpec, SkipReason
from unet.nn.checkpoint import load_checkpoint


Method = TypeVar("Method", bound=Callable[..., Any])


def taking_turns(method: Method) -> Method:
    """Run the call inside the runner's turn: one call at a time on a CPU device, any number on a GPU."""
    @functools.wraps(method)
    def call(self: BlockRunner, *args: Any, **kwargs: Any) -> Any:
        with self._turn:
            return method(self, *args, **kwargs)
    return call  # type: ignore[return-value]


class BlockRunner:
    """Loads the checkpoint once and calibrates its device (``unet.infer.calibrate``: cached per device and
    network); each method writes one block and its marker (the ``BlockActor`` contract). Without a ``tile``,
    each job's tile (and batch) is the one its plan's blocks are expected to run fastest with; ``limit`` is
    the largest output side worth a candidate tile (the largest block or image). ``tta`` (4 or 8 flips)
    averages the predictions of flipped images (``unet.infer.tta``)."""

    def __init__(self, checkpoint: bytes, *, tile: int | None = None, batch_size: int | None = None,
                 device: str | None = None, amp: bool | None = None, threads: int | None = None,
                 limit: int | None = None, compile: bool = False, cache_dir: str | None = None, tta: int = 1):
        if threads:
            torch.set_num_threads(threads)
        model, _ = load_checkpoint(checkpoint)
        self.contract = model.config.input
        limit = limit or MAX_AUTO_TILE
        self.predictor = TilePredictor(model, tile=tile, batch_size=batch_size, device=device, amp=amp,
                                       image_shape=(limit, limit), compile=compile)
        self.batch_size = batch_size
        self._calibration = fixed(self.predictor, limit) if tile else calibrate(
            self.predictor, limit, max_tile=MAX_AUTO_TILE, cache_dir=cache_dir)
        self.flips = flips_for(tta)
        self.empty = EmptyBlocks(self.predictor, self.flips)
        self._lock = threading.Lock()
        self._turn: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.predictor.device.type == "cpu" else contextlib.nullcontext())
        self._sources: dict[SourceSpec, Source] = {}
        self._writers: dict[OutputSpec, OutputWriter] = {}
        self._geometry: dict[tuple[tuple[int, int], int], TilePredictor] = {}

    def calibration(self) -> Calibration:
        """What this worker measured on its device (or read from its cache), for the driver's block choice."""
        return self._calibration

    def _predictor_for(self, spec: JobSpec) -> TilePredictor:
        """The predictor with the (tile, batch) expected fastest over the job's plan."""
        shape, block = spec.output.shape, spec.block or max(spec.output.shape)
        with self._lock:
            if (shape, block) not in self._geometry:
                plan = BlockPlan(0, shape, block)
                choice = choose_tile(self._calibration, plan.spans(0), plan.spans(1), batch=self.batch_size)
                self._geometry[shape, block] = self.predictor.with_geometry(choice.cost.tile, choice.cost.batch)
            return self._geometry[shape, block]

    @taking_turns
    def segment(self, spec: JobSpec, block: Block) -> BlockStats:
        """Predict a level-0 block, write its classes (and probabilities), its share of the coarser
        levels, then its done-marker. A block whose input is all fill value is not run through the network
        (``unet.job.skip``)."""
        t0 = time.perf_counter()
        self.predictor.take_time_spent()  # forget what a failed call of this thread may have left
        source, writer = self._open(spec)
        predictor = self._predictor_for(spec)
        need_probs = writer.probabilities is not None or spec.objects is not None  # objects: mean probability
        labels, probs, skipped = self._predict(spec, predictor, source, block, need_probs)
        t1 = time.perf_counter()
        levels = self._write_prediction(spec, writer, block, labels, probs)
        network_s, network_cpu_s = self.predictor.take_time_spent()
        return BlockStats(block.key, block.pixels, levels, compute_s=t1 - t0, write_s=time.perf_counter() - t1,
                          network_s=network_s, network_cpu_s=network_cpu_s, skipped=skipped,
                          tile=None if skipped else predictor.tile)

    def _predict(self, spec: JobSpec, predictor: TilePredictor, source: Source, block: Block,
                 probabilities: bool) -> tuple[np.ndarray, np.ndarray | None, SkipReason | None]:
        """Classes (h, w), probabilities (K, h, w) when they are written, and why the network was not run,
        if it was not. Without probabilities no float copy of the block is made."""
        wrap = functools.partial(_rescaling_reader, input_range=spec.input_range,
                                 trained_range=self.contract.value_range)
        probs = self.empty.prediction(source, block.rows, block.cols, wrap, predictor, spec.input_range)  # (K, h, w)
        if probs is not None:
            return class_index(probs), probs, SkipReason.EMPTY
        args = (wrap(source.read), source.shape, block.rows, block.cols)
        run: TilePredictor | FlipPredictor = FlipPredictor(predictor, self.flips) if len(self.flips) > 1 else predictor
        if not probabilities:
            return run.predict_classes(*args), None, None
        probs = run.predict_region(*args)                                            # (K, h, w)
        return class_index(probs), probs, None

    @taking_turns
    def background(self, spec: JobSpec, block: Block) -> BlockStats:
        """Write a level-0 block outside the region of interest as background (class 0; probability 1
        for class 0 when probabilities are written), without reading its input."""
        t0 = time.perf_counter()
        _, writer = self._open(spec)
        one_hot = np.eye(spec.output.num_classes, 1, dtype=np.float32)[:, :, None]  # (K, 1, 1)
        probs = np.broadcast_to(one_hot, (spec.output.num_classes, *block.shape))  # (K, h, w)
        levels = self._write_prediction(spec, writer, block, np.zeros(block.shape, np.uint8), probs)
        return BlockStats(block.key, block.pixels, levels, write_s=time.perf_counter() - t0, skipped=SkipReason.ROI)

    def _write_prediction(self, spec: JobSpec, writer: OutputWriter, block: Block, labels: np.ndarray,
                          probs: np.ndarray | None) -> tuple[int, ...]:
        """Write a level-0 block's probabilities (when the output has them), its objects' summary (with
        --objects), then commit its classes."""
        if writer.probabilities is not None:
            assert probs is not None, "an output with probabilities gets them"
            writer.write_probabilities(block.rows, block.cols, probs)
        if spec.objects is not None:
            store_block_objects(writer, block, labels, probs, spec.objects)
        return commit_block(writer, block, labels)

    @taking_turns
    def rim(self, spec: JobSpec, block: Block, near: list[tuple[Block, np.ndarray]]) -> BlockStats:
        """Rim pass of a contour model's --objects: regrow the block's rim from its neighbours' bands."""
        t0 = time.perf_counter()
        _, writer = self._open(spec)
        assert spec.objects is not None
        store_rim(writer, block, near, spec.objects)
        return BlockStats(block.key, block.pixels, (), compute_s=time.perf_counter() - t0)

    @taking_turns
    def relabel(self, spec: JobSpec, block: Block, lut: np.ndarray, final: np.ndarray | None = None) -> BlockStats:
        """Last pass of --objects: write a block of the instance image (``spec.output``) with global ids,
        ``lut[local id]`` (a contour model's: through ``final`` too), its share of the coarser levels and its
        own done-marker."""
        t0 = time.perf_counter()
        _, writer = self._open(spec)
        assert spec.objects is not None
        levels = commit_block(writer, block, relabel_block(writer, block, lut, spec.objects, final))
        return BlockStats(block.key, block.pixels, levels, write_s=time.perf_counter() - t0)

    @taking_turns
    def downsample(self, spec: JobSpec, block: Block) -> BlockStats:
        """Build a block of pyramid level ``block.level`` from the level above it."""
        t0 = time.perf_counter()
        _, writer = self._open(spec)
        above = spec.output.level_shapes[block.level - 1]
        rows = (2 * block.rows[0], min(2 * block.rows[1], above[0]))
        cols = (2 * block.cols[0], min(2 * block.cols[1], above[1]))
        labels = halving(writer.spec)(writer.read(block.level - 1, rows, cols))     # (h, w)
        levels = commit_block(writer, block, labels)
        return BlockStats(block.key, block.pixels, levels, write_s=time.perf_counter() - t0)

    def _open(self, spec: JobSpec) -> tuple[Source, OutputWriter]:
        """Open the job's source and output once per worker (two calls may race to do it)."""
        with self._lock:
            if spec.source not in self._sources:
                self._sources[spec.source] = open_source(spec.source)
            if spec.output not in self._writers:
                self._writers[spec.output] = OutputWriter(spec.output)
            return self._sources[spec.source], self._writers[spec.output]


class LevelWriter(Protocol):
    """What ``commit_block`` needs of an output (``OutputWriter``, or a test's recording stand-in)."""

    spec: OutputSpec

    def write(self, level: int, rows: tuple[int, int], cols: tuple[int, int], labels: np.ndarray) -> None: ...
    def mark_done(self, key: str) -> None: ...


def commit_block(writer: LevelWriter, block: Block, labels: np.ndarray) -> tuple[int, ...]:
    """Write a block's labels at its level, halved into the ``block.coarser_levels`` levels its plan owns
    outright, then its done-marker (last: a block counts as done only through it). Returns the levels."""
    rows, cols, written, halve_labels = block.rows, block.cols, [block.level], halving(writer.spec)
    writer.write(block.level, rows, cols, labels)
    for level in range(block.level + 1, block.level + 1 + block.coarser_levels):
        labels, rows, cols = halve_labels(labels), halve(rows), halve(cols)
        writer.write(level, rows, cols, labels)
        written.append(level)
    writer.mark_done(block.key)
    return tuple(written)


def halving(spec: OutputSpec) -> Callable[[np.ndarray], np.ndarray]:
    """Class images halve by a 2x2 mode, instance images (object ids) by decimation."""
    return decimate2x2 if spec.ids else mode2x2


def _rescaling_reader(read: Reader, input_range: tuple[float, float] | None,
                      trained_range: tuple[float, float] | None) -> Reader:
    """Wrap ``read`` to map [lo, hi] of this input linearly onto the model's trained value range."""
    if input_range is None or trained_range is None:
        return read
    lo, hi = input_range
    a = (trained_range[1] - trained_range[0]) / (hi - lo)

    def rescaled(rows: slice, cols: slice) -> np.ndarray:
        return (read(rows, cols).astype(np.float32) - lo) * a + trained_range[0]
    return rescaled
