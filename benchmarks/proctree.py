"""CPU time and peak memory of this process and everything it started (a local Ray: raylet, GCS, workers),
read from /proc (Linux only), so that a benchmark can say how many cores a run really used."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process plus its reaped children), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()                 # fields 3.. of proc(5), state first
    return int(rest[1]), sum(int(v) for v in rest[11:15]) / _TICK  # utime, stime, cutime, cstime


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            parents[int(entry)] = s[0]
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by ``root`` (default: this process) and its descendants, including
    descendants that have exited and were reaped inside the tree."""
    return sum(s[1] for pid in descendants(root or os.getpid()) if (s := _stat(pid)) is not None)


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


class PeakRss:
    """Samples, in a thread, the peak RSS (VmHWM) of descendant processes whose command line contains
    ``marker`` (Ray titles an actor's process ``ray::ClassName...``); processes exit before the end."""

    def __init__(self, marker: str, every_s: float = 0.5):
        self.marker, self.every_s, self.peak = marker, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            for pid in descendants(os.getpid()):
                if self.marker in _cmdline(pid):
                    self.peak = max(self.peak, _peak_rss_bytes(pid))
