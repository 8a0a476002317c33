"""On a CPU the actor's two calls in flight take turns (the network's threads use every core, and a
decoding or encoding thread beside them stalls them); on a GPU they overlap."""

from __future__ import annotations

import contextlib
import threading
import time

import torch

from unet import UNet
from unet.job.actor import BlockRunner, taking_turns
from unet.nn.checkpoint import checkpoint_bytes


class Recorder:
    """Records when each call of ``work`` runs, under the turn it is given."""

    def __init__(self, turn):
        self._turn = turn
        self.spans: list[tuple[float, float]] = []

    @taking_turns
    def work(self, seconds: float) -> str:
        began = time.perf_counter()
        time.sleep(seconds)
        self.spans.append((began, time.perf_counter()))
        return "done"


def overlapping(recorder: Recorder) -> bool:
    threads = [threading.Thread(target=recorder.work, args=(0.2,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = sorted(recorder.spans)
    return b0 < a1


def test_calls_take_turns_under_a_lock_and_overlap_without_one():
    assert not overlapping(Recorder(threading.Lock()))
    assert overlapping(Recorder(contextlib.nullcontext()))
    assert Recorder(threading.Lock()).work(0.0) == "done"


def test_a_cpu_runner_takes_turns():
    torch.manual_seed(0)
    runner = BlockRunner(checkpoint_bytes(UNet(depth=2, base_channels=2).eval()), tile=92, device="cpu")
    assert runner.predictor.device.type == "cpu"
    assert not isinstance(runner._turn, contextlib.nullcontext)
    with runner._turn:                      # a lock: held here, so another call could not enter
        assert not runner._turn.acquire(blocking=False)
