"""The worker: holds one U-Net on its device and turns blocks of a mosaic into written output chunks.

``BlockRunner`` is a plain class, testable without a cluster; the job wraps it in a threaded Ray actor
(two calls at a time), so one call reads or writes while the other keeps the device busy. The forward
passes themselves are serialised by the predictor.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from unet.checkpoint import load_checkpoint
from unet.io.output import OutputSpec, OutputWriter
from unet.io.source import Source, SourceSpec, open_source
from unet.plan import Block
from unet.predict import TilePredictor
from unet.pyramid import halve, mode2x2


@dataclass(frozen=True)
class JobSpec:
    """One input and its output, as every worker sees them. ``input_range`` (lo, hi) rescales the
    input linearly onto the value range the model was trained on."""

    source: SourceSpec
    output: OutputSpec
    input_range: tuple[float, float] | None = None


class BlockRunner:
    """Loads the checkpoint once; ``segment`` and ``downsample`` each write one block and its marker.
    Without a ``tile``, the predictor picks the largest one within memory that a ``block`` can use."""

    def __init__(self, checkpoint: bytes, *, tile: int | None = None, batch_size: int | None = None,
                 device: str | None = None, amp: bool | None = None, threads: int | None = None,
                 block: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        model, _ = load_checkpoint(checkpoint)
        self.contract = model.config.input
        self.predictor = TilePredictor(model, tile=tile, batch_size=batch_size, device=device, amp=amp,
                                       image_shape=(block, block) if block else None)
        self._lock = threading.Lock()
        self._sources: dict[SourceSpec, Source] = {}
        self._writers: dict[OutputSpec, OutputWriter] = {}

    def segment(self, job: JobSpec, block: Block) -> dict:
        """Predict a level-0 block, write its classes (and probabilities), its share of the coarser
        levels, then its done-marker. Returns small stats, never pixels."""
        t0 = time.perf_counter()
        source, writer = self._open(job)
        read = _rescaling_reader(source.read, job.input_range, self.contract.value_range)
        probs = self.predictor.predict_region(read, source.shape, block.rows, block.cols)  # (K, h, w)
        t1 = time.perf_counter()
        labels = probs.argmax(axis=0).astype(np.uint8)                              # (h, w)
        writer.write(0, block.rows, block.cols, labels)
        if writer.probabilities is not None:
            writer.write_probabilities(block.rows, block.cols, probs)
        levels = self._write_coarser(writer, block, labels)
        writer.mark_done(block.key)
        t2 = time.perf_counter()
        return {"key": block.key, "pixels": block.pixels, "compute_s": t1 - t0, "write_s": t2 - t1,
                "levels": levels}

    def downsample(self, job: JobSpec, block: Block) -> dict:
        """Build a block of pyramid level ``block.level`` from the level above it."""
        t0 = time.perf_counter()
        _, writer = self._open(job)
        above = job.output.level_shapes[block.level - 1]
        rows = (2 * block.rows[0], min(2 * block.rows[1], above[0]))
        cols = (2 * block.cols[0], min(2 * block.cols[1], above[1]))
        labels = mode2x2(writer.read(block.level - 1, rows, cols))                  # (h, w)
        writer.write(block.level, block.rows, block.cols, labels)
        levels = self._write_coarser(writer, block, labels)
        writer.mark_done(block.key)
        return {"key": block.key, "pixels": block.pixels, "compute_s": 0.0,
                "write_s": time.perf_counter() - t0, "levels": levels}

    def _write_coarser(self, writer: OutputWriter, block: Block, labels: np.ndarray) -> list[int]:
        """Write the halved block into the ``block.depth`` coarser levels its plan owns outright."""
        rows, cols, written = block.rows, block.cols, [block.level]
        for level in range(block.level + 1, block.level + 1 + block.depth):
            labels, rows, cols = mode2x2(labels), halve(rows), halve(cols)
            writer.write(level, rows, cols, labels)
            written.append(level)
        return written

    def _open(self, job: JobSpec) -> tuple[Source, OutputWriter]:
        """Open the job's source and output once per worker (two calls may race to do it)."""
        with self._lock:
            if job.source not in self._sources:
                self._sources[job.source] = open_source(job.source)
            if job.output not in self._writers:
                self._writers[job.output] = OutputWriter(job.output)
            return self._sources[job.source], self._writers[job.output]


def _rescaling_reader(read, input_range: tuple[float, float] | None,
                      trained_range: tuple[float, float] | None):
    """Wrap ``read`` to map [lo, hi] of this input linearly onto the model's trained value range."""
    if input_range is None or trained_range is None:
        return read
    lo, hi = input_range
    a = (trained_range[1] - trained_range[0]) / (hi - lo)

    def rescaled(rows: slice, cols: slice) -> np.ndarray:
        return (read(rows, cols).astype(np.float32) - lo) * a + trained_range[0]
    return rescaled
