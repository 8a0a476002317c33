"""Rounds of blocks over the actor pool (driver side): every block of a plan that has no done-marker yet,
drawn lazily, handed to the scheduler as an ``ActorMethod`` call, its result or failure recorded on its job.

``run_pyramids`` adds the downsampling rounds for the pyramid levels that no block of the level above
writes itself. The --objects relabelling pass runs through the same two functions.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from unet.errors import redact, redact_text
from unet.job.plan import Block, BlockPlan
from unet.job.progress import Progress
from unet.job.pyramid import level_plan
from unet.job.scheduler import Scheduler, Task
from unet.job.spec import ActorMethod, BlockFailure, BlockStats, JobSpec, SkipReason

log = logging.getLogger("unet")


class RoundJob(Protocol):
    """What a round of blocks needs of a job (a prepared job, or the relabelling pass of one)."""

    @property
    def spec(self) -> JobSpec: ...
    @property
    def plan(self) -> BlockPlan: ...   # its level-0 (or first) plan: where the pyramid rounds start
    done: set[str]                     # keys of blocks with a done-marker
    failed: list[BlockFailure]         # blocks given up on: nothing more of this job runs
    skipped: Counter[SkipReason]       # blocks not run through the network, by reason


@dataclass(frozen=True)
class Call:
    """The actor method for one block, and its arguments after (job spec, block)."""

    method: ActorMethod
    args: tuple = ()


J = TypeVar("J", bound=RoundJob)


def run_round(scheduler: Scheduler, jobs: Sequence[J], blocks: Callable[[J], Iterable[Block]],
              call: Callable[[J, Block], Call], progress: Progress | None = None) -> None:
    """One round of blocks over every job that has not failed, skipping blocks already done."""
    def tasks() -> Iterator[Task]:
        for index, job in enumerate(jobs):
            if job.failed:
                continue
            for block in blocks(job):
                if block.key not in job.done:
                    c = call(job, block)
                    yield Task(c.method, (job.spec, block, *c.args), (index, block))

    def done(task: Task, stats: BlockStats) -> None:
        index, block = task.tag
        jobs[index].done.add(block.key)
        if stats.skipped is not None:
            jobs[index].skipped[stats.skipped] += 1
        if progress is not None:
            progress.update(block.pixels, stats)

    def failed(task: Task, reason: str) -> None:
        index, block = task.tag
        reason = redact_text(reason)  # a worker's error text: the Report a Python caller gets holds it too
        jobs[index].failed.append(BlockFailure(reason, block))
        log.error("unet: %s of %s failed: %s", block.describe(), redact(jobs[index].spec.output.url), reason)

    scheduler.run(tasks(), done, failed)


def run_pyramids(scheduler: Scheduler, jobs: Sequence[RoundJob]) -> None:
    """Rounds of downsampling blocks for the levels that no block of the level above owns."""
    covered = {id(job): job.plan.level + job.plan.coarser_levels for job in jobs}
    while True:
        pending = [job for job in jobs if not job.failed and covered[id(job)] < len(job.spec.output.level_shapes) - 1]
        if not pending:
            return
        plans = {id(job): level_plan(job.spec.output, covered[id(job)] + 1, job.plan.block) for job in pending}
        run_round(scheduler, pending, lambda job: plans[id(job)], lambda job, block: Call(ActorMethod.DOWNSAMPLE))
        for job in pending:
            covered[id(job)] = plans[id(job)].level + plans[id(job)].coarser_levels
