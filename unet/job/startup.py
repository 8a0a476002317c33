"""Start-up: joining or starting Ray, begun in the background as a command line starts, so that a local
cluster comes up while the driver imports torch and validates its inputs (Ray's own start is the longest
part of a small job's start-up); and the timeline of the start (``mark``, ``breakdown``) that the report
shows as ``startup_s``: command to first block.

The thread that starts Ray stays alive, parked, for the rest of the process: the processes Ray starts
(GCS, raylet) are bound to the *thread* that started them (Linux's parent-death signal), and would be
killed the moment it returned.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

_done = threading.Event()
_park = threading.Event()                  # never set: the starting thread must outlive the cluster
_begun = False
_error: BaseException | None = None
_marks: dict[str, float] = {}              # phase -> time.time() when it ended
_IMPORTED_AT = time.time()
_command_line = False                      # begun by a command line: start-up counts from the process's start
_origin = _IMPORTED_AT


def connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS, else the one ``ray start`` runs on this node (the address file in
    Ray's temporary folder, /tmp/ray unless RAY_TMPDIR says otherwise), else start a local one. Not
    ``address="auto"``: that joins any Ray it finds in the process table, e.g. another user's."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)


def begin(argv: list[str]) -> None:
    """Start ``connect_ray`` in a background thread, unless the command will not need Ray (a dry run,
    --help) or Ray is already up in this process."""
    global _begun, _command_line
    _command_line = True
    if _begun or any(a in ("-h", "--help", "--dry-run") for a in argv):
        return
    _begun = True
    threading.Thread(target=_connect_and_park, name=_THREAD, daemon=True).start()


class _HeldNotices(logging.Filter):
    """Holds Ray's start-up notices (e.g. that token authentication is on) logged by the background start
    until the driver needs Ray (``ready``), so that a command refused for bad input prints its one line
    alone; drops the notice that a thread other than the main one cannot install Ray's SIGTERM handler
    (expected here; SIGTERM's default action still ends the process)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.current_thread().name != _THREAD:
            return True
        if "SIGTERM handler is not set" not in record.getMessage():
            self.held.append(record)
        return False

    def release(self) -> None:
        for record in self.held:
            logging.getLogger(record.name).handle(record)
        self.held.clear()


_THREAD = "unet-ray-start"
_RAY_NOTICES = ("ray._private.worker", "ray._private.authentication.authentication_token_setup")
_notices = _HeldNotices()


def _connect_and_park() -> None:
    global _error
    for name in _RAY_NOTICES:
        logging.getLogger(name).addFilter(_notices)
    try:
        connect_ray()
    except BaseException as e:  # noqa: BLE001 - handed to the driver, which raises it as its own
        _error = e
    finally:
        _done.set()
    _park.wait()


def ready() -> None:
    """Ray connected: the background start's outcome if one was begun (its error re-raised), else now."""
    if not _begun:
        connect_ray()
        return
    _done.wait()
    _notices.release()
    if _error is not None:
        raise _error


def restart() -> None:
    """A run begins: its start-up counts from the process's start under a command line, else from now
    (a run called in-process, e.g. the second of a benchmark)."""
    global _origin
    _marks.clear()
    _origin = process_started_at() if _command_line else time.time()
    if _command_line:
        mark("imports")


def mark(phase: str) -> None:
    """Note that start-up ``phase`` ended now (the first time only)."""
    _marks.setdefault(phase, time.time())


def breakdown(first_block_at: float | None) -> tuple[float | None, dict[str, float]]:
    """``startup_s`` (process start to the first block handed to a worker) and the seconds of each phase
    marked on the way, in order."""
    if first_block_at is None:
        return None, {}
    phases: dict[str, float] = {}
    last = _origin
    for phase, at in sorted(_marks.items(), key=lambda item: item[1]):
        if at <= first_block_at:
            phases[phase] = round(at - last, 2)
            last = at
    phases["first block"] = round(first_block_at - last, 2)
    return round(first_block_at - _origin, 2), phases


def process_started_at() -> float:
    """When this process started (time.time()), from /proc on Linux; else when this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT
