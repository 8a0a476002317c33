"""The job on a running cluster, as the README shows it: a head started by `ray start --head` (token
authentication on, as Ray 2.60 heads have it), the job submitted through the Jobs API (`ray job submit`),
and a plain `python jobs/segment.py` on that node that joins the head instead of starting its own Ray.

The head is this test's alone: its own temporary folder (so its current-cluster address file is not the
one in /tmp/ray that other Ray users on this machine read), its own ports, its own token (so no other
session's client can join it by accident) and only its own processes are stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from unet import UNet, predict_image, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _own_pids(folder: str) -> list[int]:
    """Processes whose command line names this head's temporary folder: the head's own."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if folder.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return [pid for pid in pids if pid != os.getpid()]


@pytest.fixture(scope="module")
def head():
    """A head node (`ray start --head --block`) of 2 CPUs with the dashboard (the Jobs API) on its own
    ports; yields (environment for its clients, dashboard URL, GCS address, Ray's temporary folder)."""
    folder = tempfile.mkdtemp(prefix="unet-rayjobs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    temp_dir = os.path.join(folder, "ray")
    token = Path(folder) / "auth_token"
    token.write_text(secrets.token_hex(16))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=folder, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_USAGE_STATS_ENABLED="0")
    gcs, dashboard, client, agent, agent_grpc, metrics, runtime_env, node, objects, lo = _free_ports(10)
    process = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", "2", "--temp-dir", temp_dir,
         "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--include-dashboard", "true",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
         "--node-manager-port", str(node), "--object-manager-port", str(objects),
         "--min-worker-port", str(lo), "--max-worker-port", str(lo + 40), "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        address_file = Path(temp_dir, "ray_current_cluster")  # where `ray start` tells this node's clients
        _wait_for_head(url, env, process, address_file)
        address = address_file.read_text().strip()
        assert address.endswith(f":{gcs}")
        yield env, url, address, temp_dir
    finally:
        process.send_signal(signal.SIGTERM)          # --block: the head stops every process it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        for pid in _own_pids(folder):                # anything that outlived it is ours: end it by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_for_head(url: str, env: dict, process: subprocess.Popen, address_file: Path) -> None:
    """Until the head has written its address file (the last step of `ray start`) and its Jobs API answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start --head exited with {process.returncode}")
        if address_file.exists() and subprocess.run([RAY, "job", "list", "--address", url], env=env,
                                                     capture_output=True).returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"the head at {url} was not up within {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """A tiny mosaic and network: the test is about where the job runs, not what it computes."""
    folder = tmp_path_factory.mktemp("rayjobs")
    torch.manual_seed(11)
    model = UNet(depth=2, base_channels=2).eval()
    save_checkpoint(model, folder / "tiny.safetensors")
    image = np.random.default_rng(4).random((70, 90), dtype=np.float32)
    zarr.create_array(str(folder / "in.zarr"), data=image, chunks=(32, 32))
    return folder, predict_image(model, image).argmax(0)


def _segment_argv(folder: Path, name: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "segment.py"), str(folder / "in.zarr"), str(folder / f"{name}.zarr"),
            "--checkpoint", str(folder / "tiny.safetensors"), "--chunk", "32", "--cpus-per-worker", "1",
            "--no-progress", "--report", str(folder / f"{name}.json")]


@pytest.mark.slow
def test_job_submitted_through_the_jobs_api_and_a_plain_run_join_the_head(head, job_inputs):
    env, url, gcs, _ = head
    folder, expected = job_inputs
    shared = Path("/tmp/ray/ray_current_cluster")                # the file other Ray users here read
    assert not shared.exists() or shared.read_text().strip() != gcs

    submitted = subprocess.run([RAY, "job", "submit", "--address", url, "--", *_segment_argv(folder, "submitted")],
                               env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]

    plain = subprocess.run(_segment_argv(folder, "plain"), env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]

    for name in ("submitted", "plain"):
        report = json.loads((folder / f"{name}.json").read_text())
        assert report["ray_address"] == gcs, f"{name} ran on {report['ray_address']}, not on the head {gcs}"
        np.testing.assert_array_equal(zarr.open_array(str(folder / f"{name}.zarr" / "0"))[:], expected)


def test_without_the_token_a_client_cannot_join(head, job_inputs):
    """A client that has not got this head's token (as another session's would not) is refused."""
    env, url, _, _ = head
    stranger = {**{k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    refused = subprocess.run([RAY, "job", "list", "--address", url], env=stranger, capture_output=True, text=True)
    assert refused.returncode != 0
