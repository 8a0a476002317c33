"""CPU time and peak memory of this process and everything it started (a local Ray: raylet, GCS, workers),
sampled from /proc (Linux only), so that a benchmark can say how many cores a run really used."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process itself), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()                 # fields 3.. of proc(5), state first
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK  # utime + stime


def _tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and of every process below it, by pid."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            stats[int(entry)] = s
    tree, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, (parent, _) in stats.items() if parent in frontier} - tree
        tree |= frontier
    return {pid: stats[pid][1] for pid in tree if pid in stats}


def _peak_rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class ProcessTreeMeter:
    """Samples this process tree in a thread while in the ``with`` block: ``cpu_seconds`` used by it
    (processes that exit lose at most one interval, as their parent may not account for them; checked
    against an actor that burns a known CPU time), and
    ``peak_rss`` (VmHWM) of the processes whose command line contains ``marker`` (Ray titles an actor's
    process ``ray::ClassName``)."""

    def __init__(self, marker: str, every_s: float = 0.25):
        self.marker, self.every_s = marker, every_s
        self.peak_rss, self._start, self._last, self._marked = 0, {}, {}, set()
        self._own_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of the tree, less the sampling's own (it scans every process of the machine)."""
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items()) - self._own_cpu

    def __enter__(self) -> ProcessTreeMeter:
        self._start = _tree(os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def wait_for_exit(self, timeout_s: float = 60.0) -> None:
        """Wait until the marked processes seen so far are gone: a killed Ray actor spends CPU on its
        teardown after the job returns, which belongs to this measurement, not to the next one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in self._marked):
            self._sample()
            time.sleep(self.every_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        started = time.thread_time()
        for pid, cpu in _tree(os.getpid()).items():
            self._last[pid] = cpu
            if pid in self._marked or self.marker in _cmdline(pid):
                self._marked.add(pid)
                self.peak_rss = max(self.peak_rss, _peak_rss_bytes(pid))
        self._own_cpu += time.thread_time() - started
