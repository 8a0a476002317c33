"""The driver loop: keeps a bounded number of tasks in flight on a pool of actors, and survives failures.

It tracks in-flight work itself with ``ray.wait`` (``ray.util.ActorPool`` wedges on a dead actor). A task
whose actor died, or that ran past its timeout, runs again on a fresh actor; a task that raised is retried
a bounded number of times, then reported as failed. Tasks are drawn lazily from an iterator, so the driver's
memory does not grow with the number of blocks.

Tasks go only to actors that have started: a fresh actor may wait for a node (one was lost and the cluster
has no spare room until the autoscaler adds one) while the others carry the work, and a task's timeout
never counts an actor's start-up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from unet.errors import UNetError

POLL_SECONDS = 1.0


@dataclass
class Task:
    """A call to make on some actor: ``method(*args)`` (a method name, e.g. an ``ActorMethod``); ``tag``
    identifies it to the callbacks."""

    method: str
    args: tuple
    tag: Any
    attempts: int = 0
    deaths: int = 0


@dataclass
class _Running:
    task: Task
    actor: Any
    started: float


class WorkerStartError(UNetError):
    """Actors keep dying before they start: their constructor raises (e.g. a device the node does not
    have) or their nodes keep failing. The command line shows it as one line (the job adds which of its
    options to check)."""


class Scheduler:
    """Runs tasks on ``workers`` actors made by ``make_actor``, ``per_worker`` at a time on each."""

    def __init__(self, make_actor: Callable[[], Any], workers: int, *, per_worker: int = 2,
                 max_attempts: int = 3, max_deaths: int = 5, timeout: float | None = None):
        self.make_actor = make_actor
        self.per_worker = per_worker
        self.max_attempts, self.max_deaths, self.timeout = max_attempts, max_deaths, timeout
        self.replaced = self.failed_starts = 0
        self.completed = 0  # tasks finished, over every run
        self.first_task_at: float | None = None  # time.time() when the first task went to a started actor
        self._starting: dict[ray.ObjectRef, Any] = {}  # readiness probe -> actor not started yet
        self._ready: set[int] = set()                  # id() of started actors
        self.actors = [self._start() for _ in range(workers)]

    def run(self, tasks: Iterator[Task], on_done: Callable[[Task, Any], None],
            on_failed: Callable[[Task, str], None]) -> None:
        """Run every task; call ``on_done(task, result)`` or, after the last retry, ``on_failed``."""
        running: dict[ray.ObjectRef, _Running] = {}
        retry: deque[Task] = deque()
        tasks = iter(tasks)
        while True:
            self._fill(running, retry, tasks)
            if not running and not retry:
                task = next(tasks, None)
                if task is None:
                    return
                retry.append(task)  # no actor has started yet: hold the task until one has
            ready, _ = ray.wait([*running, *self._starting], num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                if ref in self._starting:
                    self._started(ref, running, retry)
                elif ref in running:
                    self._collect(ref, running, retry, on_done, on_failed)
            self._expire(running, retry, on_failed)

    def ask_first(self, method: str) -> Any:
        """``method()`` on the first actor to start (actors that die starting are replaced, as in ``run``):
        e.g. its device's calibration, before any task is planned."""
        while True:
            ready = next((a for a in self.actors if id(a) in self._ready), None)
            if ready is None:
                probes, _ = ray.wait(list(self._starting), num_returns=1, timeout=POLL_SECONDS)
                for probe in probes:
                    self._started(probe, {}, deque())
                continue
            try:
                return ray.get(getattr(ready, method).remote())
            except RayActorError:
                self._replace(ready, {}, deque())

    def shutdown(self) -> None:
        """Kill the pool's actors, releasing their CPUs and GPUs for whatever runs next."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self._starting, self._ready = [], {}, set()

    def _start(self) -> Any:
        """A new actor, with a probe that answers once Ray has placed it and its constructor has run."""
        actor = self.make_actor()
        self._starting[actor.__ray_ready__.remote()] = actor
        return actor

    def _started(self, probe: ray.ObjectRef, running: dict, retry: deque) -> None:
        actor = self._starting.pop(probe)
        try:
            ray.get(probe)
        except RayActorError as e:
            self.failed_starts += 1
            if self.failed_starts > self.max_deaths * len(self.actors):
                raise WorkerStartError(f"workers: expected them to start, found {self.failed_starts} deaths "
                                       f"before starting; last: {str(e).strip().splitlines()[-1]}") from None
            self._replace(actor, running, retry)
            return
        self.failed_starts = 0
        self._ready.add(id(actor))

    def _fill(self, running: dict, retry: deque, tasks: Iterator[Task]) -> None:
        load = {id(a): 0 for a in self.actors}
        for r in running.values():
            load[id(r.actor)] += 1
        for actor in self.actors:
            while id(actor) in self._ready and load[id(actor)] < self.per_worker:
                task = retry.popleft() if retry else next(tasks, None)
                if task is None:
                    return
                ref = getattr(actor, task.method).remote(*task.args)
                running[ref] = _Running(task, actor, time.monotonic())
                self.first_task_at = self.first_task_at or time.time()
                load[id(actor)] += 1

    def _collect(self, ref, running, retry, on_done, on_failed) -> None:
        entry = running.pop(ref)
        try:
            result = ray.get(ref)
        except RayActorError as e:
            entry.task.deaths += 1
            self._requeue(entry.task, retry, on_failed, entry.task.deaths > self.max_deaths,
                          f"its worker died {entry.task.deaths} times ({type(e).__name__})")
            self._replace(entry.actor, running, retry)
        except RayTaskError as e:
            entry.task.attempts += 1
            cause = e.cause if e.cause is not None else e
            self._requeue(entry.task, retry, on_failed, entry.task.attempts >= self.max_attempts,
                          f"{type(cause).__name__}: {cause}".splitlines()[0])
        else:
            self.completed += 1
            on_done(entry.task, result)

    def _expire(self, running, retry, on_failed) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for ref, entry in list(running.items()):
            if ref in running and now - entry.started > self.timeout:
                running.pop(ref)
                entry.task.attempts += 1
                self._requeue(entry.task, retry, on_failed, entry.task.attempts >= self.max_attempts,
                              f"timed out after {self.timeout:.0f} s")
                self._replace(entry.actor, running, retry)

    def _requeue(self, task: Task, retry: deque, on_failed, give_up: bool, reason: str) -> None:
        if give_up:
            on_failed(task, reason)
        else:
            retry.append(task)

    def _replace(self, actor, running: dict, retry: deque) -> None:
        """Kill an actor (dead or hung), start a fresh one, and requeue its other in-flight tasks."""
        slot = next((i for i, a in enumerate(self.actors) if a is actor), None)
        if slot is None:  # already replaced
            return
        ray.kill(actor, no_restart=True)
        self._ready.discard(id(actor))
        self._starting = {probe: a for probe, a in self._starting.items() if a is not actor}
        self.actors[slot] = self._start()
        self.replaced += 1
        for ref, entry in list(running.items()):
            if entry.actor is actor:
                running.pop(ref)
                retry.append(entry.task)

