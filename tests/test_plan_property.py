"""The block plan under random shapes, chunk, shard and block sizes, without a cluster.

The driver's own rounds (level 0, then the downsampling rounds) run on an inline scheduler that records
every write a worker would make — its block, plus the coarser levels the block owns — so the properties
hold for the code that runs, not for a model of it:

- every pixel of every pyramid level is written exactly once;
- no two blocks write the same writing unit (chunk, or shard when sharded) of any level;
- a downsampling block reads only pixels of the level above that earlier rounds wrote;
- every block has its own done-marker key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from unet.io.output import OutputSpec
from unet.io.source import SourceSpec
from unet.job.actor import commit_block
from unet.job.plan import BlockPlan
from unet.job.pyramid import level_plan
from unet.job.rounds import Call, run_pyramids, run_round
from unet.job.spec import ActorMethod, BlockFailure, BlockStats, JobSpec, SkipReason


@dataclass
class Write:
    round: int
    task: int
    level: int
    rows: tuple[int, int]
    cols: tuple[int, int]


class RecordingWriter:
    """Stands in for the output: records writes, checking each array fits the rectangle it goes to."""

    def __init__(self, spec: OutputSpec):
        self.spec, self.writes, self.marked, self.round, self.task = spec, [], [], 0, 0

    def write(self, level: int, rows: tuple[int, int], cols: tuple[int, int], labels: np.ndarray) -> None:
        assert labels.shape == (rows[1] - rows[0], cols[1] - cols[0])
        self.writes.append(Write(self.round, self.task, level, rows, cols))

    def mark_done(self, key: str) -> None:
        self.marked.append(key)


class InlineScheduler:
    """Runs each round's tasks one after the other, making the writes the actor makes for them
    (``commit_block``)."""

    def __init__(self, writer: RecordingWriter):
        self.writer, self.blocks = writer, []  # blocks: (round, method, block) of every task run

    def run(self, tasks, on_done, on_failed) -> None:
        self.writer.round += 1
        for task in tasks:
            _, block = task.args
            self.writer.task += 1
            self.blocks.append((self.writer.round, task.method, block))
            labels = np.zeros((block.rows[1] - block.rows[0], block.cols[1] - block.cols[0]), np.uint8)
            levels = commit_block(self.writer, block, labels)
            on_done(task, BlockStats(block.key, block.pixels, levels))


@dataclass
class Job:
    """The fields of a prepared job that the driver's rounds use (a ``RoundJob``)."""

    spec: JobSpec
    plan: BlockPlan
    done: set[str] = field(default_factory=set)
    failed: list[BlockFailure] = field(default_factory=list)
    skipped: Counter[SkipReason] = field(default_factory=Counter)


@st.composite
def layouts(draw):
    """(shape, chunk, shard, block) as the job accepts them: blocks of whole chunks, or of whole shards."""
    chunk = draw(st.integers(1, 12))
    shard = draw(st.one_of(st.none(), st.integers(1, 3).map(lambda k: k * chunk)))
    block = (shard or chunk) * draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 6 * block)) for _ in range(2))
    return shape, chunk, shard, block


def run_plan(shape, chunk, shard, block) -> tuple[OutputSpec, InlineScheduler, list[Job]]:
    out = OutputSpec("unused.zarr", shape, chunk, shard)
    job = Job(JobSpec(SourceSpec("unused.zarr"), out), level_plan(out, 0, block))  # as prepare_job plans it
    scheduler = InlineScheduler(RecordingWriter(out))
    run_round(scheduler, [job], lambda j: j.plan, lambda j, block: Call(ActorMethod.SEGMENT))  # no ROI
    run_pyramids(scheduler, [job])
    return out, scheduler, [job]


def units(span: tuple[int, int], unit: int) -> range:
    return range(span[0] // unit, -(-span[1] // unit))


@settings(max_examples=150, deadline=None)
@given(layouts())
@example(((1, 9), 1, None, 2))  # an edge block once owned more levels than the rest
def test_every_pixel_of_every_level_is_written_once(layout):
    out, scheduler, _ = run_plan(*layout)
    coverage = [np.zeros(s, np.int32) for s in out.level_shapes]
    for w in scheduler.writer.writes:
        assert 0 <= w.rows[0] < w.rows[1] <= out.level_shapes[w.level][0], w
        assert 0 <= w.cols[0] < w.cols[1] <= out.level_shapes[w.level][1], w
        coverage[w.level][slice(*w.rows), slice(*w.cols)] += 1
    for level, count in enumerate(coverage):
        assert count.min() == count.max() == 1, f"level {level}: written {count.min()}..{count.max()} times"


@settings(max_examples=150, deadline=None)
@given(layouts())
@example(((1, 9), 1, None, 2))  # an edge block once owned more levels than the rest
def test_no_two_blocks_write_the_same_chunk_or_shard(layout):
    out, scheduler, _ = run_plan(*layout)
    owner: dict[tuple[int, int, int], int] = {}
    for w in scheduler.writer.writes:
        for unit in ((w.level, i, j) for i in units(w.rows, out.unit) for j in units(w.cols, out.unit)):
            assert owner.setdefault(unit, w.task) == w.task, f"unit {unit} written by tasks {owner[unit]}, {w.task}"


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_downsampling_reads_only_what_earlier_rounds_wrote(layout):
    out, scheduler, _ = run_plan(*layout)
    for round_, _, block in (b for b in scheduler.blocks if b[1] == "downsample"):
        above = out.level_shapes[block.level - 1]
        written = np.zeros(above, bool)
        for w in scheduler.writer.writes:
            if w.level == block.level - 1 and w.round < round_:
                written[slice(*w.rows), slice(*w.cols)] = True
        rows = slice(2 * block.rows[0], min(2 * block.rows[1], above[0]))
        cols = slice(2 * block.cols[0], min(2 * block.cols[1], above[1]))
        assert written[rows, cols].all(), f"{block.describe()} reads level {block.level - 1} before it is written"


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_every_block_has_its_own_marker(layout):
    _, scheduler, (job,) = run_plan(*layout)
    keys = [block.key for _, _, block in scheduler.blocks]
    assert len(set(keys)) == len(keys) and job.done == set(keys) == set(scheduler.writer.marked)
    assert sum(method == "segment" for _, method, _ in scheduler.blocks) == len(job.plan)
