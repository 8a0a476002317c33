"""Load: a job of 10^4 blocks (plus 3,364 pyramid blocks) with a trivial network, on the session's Ray
cluster, in-process so that this process is the driver whose memory must stay flat."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch
import zarr

from unet import UNet, predict_image, save_checkpoint
from helpers import segment

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]
MAX_GROWTH_MB = 16  # measured: about 3 MB over the last 10^4 blocks of this job (its done-key set, mostly)


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MarkerWatch(threading.Thread):
    """Records this process's RSS once ``count`` level-0 done-markers exist in ``done``."""

    def __init__(self, done, count: int):
        super().__init__(daemon=True)
        self.done, self.count, self.rss, self.stop = done, count, None, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.done.exists() and sum(n.startswith("L0-") for n in os.listdir(self.done)) >= self.count:
                self.rss = rss_mb()
                return
            time.sleep(0.2)


def pyramid_sides(side: int, chunk: int) -> list[int]:
    """Sides of a square pyramid halved (rounding up) until one chunk holds a level."""
    sides = [side]
    while sides[-1] > chunk:
        sides.append(-(-sides[-1] // 2))
    return sides


def test_ten_thousand_blocks_complete_with_flat_driver_memory(tmp_path):
    torch.manual_seed(0)
    model = UNet(depth=2, base_channels=1).eval()
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(model, ckpt)
    image = np.random.default_rng(21).random((800, 800), dtype=np.float32)
    url, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    zarr.create_array(str(url), data=image, chunks=(128, 128))
    watch = MarkerWatch(out / "_unet" / "done", 2500)  # a quarter of the level-0 blocks
    watch.start()
    try:
        code = segment(url, out, "--checkpoint", ckpt, "--chunk", 8, "--block", 8, "--workers", 2,
                       "--cpus-per-worker", 1, "--report", tmp_path / "r.json")
    finally:
        watch.stop.set()
        watch.join()
    final = rss_mb()
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and report["outputs"][0]["blocks"] == 10_000 and report["blocks_run"] == 10_000
    assert len(os.listdir(out / "_unet" / "done")) == sum((-(-side // 8)) ** 2 for side in pyramid_sides(800, 8))
    assert watch.rss is not None and final - watch.rss < MAX_GROWTH_MB, (watch.rss, final)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], predict_image(model, image).argmax(0))
