"""Faults a nightly run meets, each on the session's real local Ray cluster: a flaky object store, a read
that hangs, an output that refuses writes or runs out of space. The job either completes with exactly the
pixels of an undisturbed run, or ends with a clear message and an output that is not marked complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from faultproxy import Deny, FaultProxy
from helpers import ray_worker_pids, reference_labels, segment

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture
def s3_mosaic(mosaic, s3_server, s3_bucket):
    """The odd-sized test mosaic in the bucket, written directly (no faults), with 100-px chunks."""
    image, _ = mosaic
    url = f"{s3_bucket}/in.zarr"
    zarr.create_array(zarr.storage.FsspecStore.from_url(url, storage_options=s3_server.storage_options),
                      data=image, chunks=(100, 100))
    return image, url


def through(proxy: FaultProxy) -> list[str]:
    return ["--storage-option", "key=testing", "--storage-option", "secret=testing",
            "--storage-option", f"client_kwargs.endpoint_url={proxy.url}"]


def s3_group(s3_server, url: str) -> zarr.Group:
    """The output as the S3 server holds it (read directly, not through the proxy)."""
    return zarr.open_group(zarr.storage.FsspecStore.from_url(url, storage_options=s3_server.storage_options),
                           mode="r")


def test_flaky_object_store_completes_with_identical_output(checkpoint, s3_mosaic, s3_server, s3_bucket, tmp_path):
    """A tenth of all requests, reads and writes alike, get 503 SlowDown or a dropped connection."""
    model, ckpt = checkpoint
    image, url = s3_mosaic
    out = f"{s3_bucket}/out.zarr"
    with FaultProxy(s3_server.endpoint_url, fault_rate=0.1, seed=4) as proxy:
        code = segment(url, out, "--checkpoint", ckpt, "--chunk", 64, "--block", 128, "--tile", 92,
                       *through(proxy), "--report", tmp_path / "r.json")
    assert code == 0
    assert proxy.faults["503"] >= 3 and proxy.faults["drop"] >= 3 and proxy.requests["PUT"] >= 20
    group = s3_group(s3_server, out)
    assert group.attrs["unet"]["status"] == "complete"
    np.testing.assert_array_equal(group["0"][:], reference_labels(model, image))


def test_hung_read_is_retried_on_a_fresh_worker(checkpoint, s3_mosaic, s3_server, s3_bucket, tmp_path):
    """One input chunk's first read never answers: the block times out, its worker is replaced, and the
    block runs again elsewhere while the other worker carries on."""
    model, ckpt = checkpoint
    image, url = s3_mosaic
    out = f"{s3_bucket}/out.zarr"
    with FaultProxy(s3_server.endpoint_url, stall=("/in.zarr/c/1/2", 1)) as proxy:
        code = segment(url, out, "--checkpoint", ckpt, "--chunk", 64, "--block", 128, "--tile", 92,
                       "--workers", 2, "--cpus-per-worker", 1, "--block-timeout", 8,
                       *through(proxy), "--report", tmp_path / "r.json")
    assert code == 0 and proxy.stalled == 1
    assert json.loads((tmp_path / "r.json").read_text())["worker_restarts"] >= 1
    np.testing.assert_array_equal(s3_group(s3_server, out)["0"][:], reference_labels(model, image))


def test_output_refusing_writes_from_the_start_is_one_line_exit_2(checkpoint, s3_mosaic, s3_server, s3_bucket,
                                                                    capsys):
    _, ckpt = checkpoint
    _, url = s3_mosaic
    out = f"{s3_bucket}/out.zarr"
    with FaultProxy(s3_server.endpoint_url, deny=Deny("PUT", "/out.zarr/")) as proxy:
        code = segment(url, out, "--checkpoint", ckpt, "--chunk", 64, "--block", 128, *through(proxy))
    assert code == 2 and proxy.denied >= 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"output {out}: expected a writable location" in err, err
    assert "PermissionError" in err and "Traceback" not in err
    assert not s3_group_exists(s3_server, out)


def s3_group_exists(s3_server, url: str) -> bool:
    import s3fs

    return s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True).exists(f"{url}/zarr.json")


@pytest.mark.parametrize("status, code, message", [(403, "AccessDenied", "Access Denied"),
                                                   (400, "EntityTooLarge", "Your proposed upload exceeds")])
def test_output_refusing_writes_mid_run_is_reported_then_resumed(checkpoint, s3_mosaic, s3_server, s3_bucket,
                                                                  tmp_path, capsys, status, code, message):
    """Chunk writes start failing after a few went through (a policy change, a quota): the blocks that could
    not be written are listed with the reason, exit 3, nothing marked complete; the same command later
    finishes the rest."""
    model, ckpt = checkpoint
    image, url = s3_mosaic
    out = f"{s3_bucket}/out.zarr"
    args = (url, out, "--checkpoint", ckpt, "--chunk", 64, "--block", 128, "--tile", 92, "--max-retries", 1)
    with FaultProxy(s3_server.endpoint_url, deny=Deny("PUT", "/out.zarr/0/c/", status, code, message,
                                                      after=4)) as proxy:
        assert segment(*args, *through(proxy), "--report", tmp_path / "r.json") == 3
    report = json.loads((tmp_path / "r.json").read_text())
    failed = report["outputs"][0]["failed"]
    assert report["outputs"][0]["status"] == "incomplete" and failed and len(failed) == report["failed_blocks"]
    assert all(message in f["error"] and f["rows"][1] > f["rows"][0] for f in failed), failed
    group = s3_group(s3_server, out)
    assert group.attrs["unet"]["status"] == "running" and "ome" not in group.attrs
    assert "block(s) failed" in capsys.readouterr().err
    with FaultProxy(s3_server.endpoint_url) as proxy:
        assert segment(*args, *through(proxy), "--report", tmp_path / "r2.json") == 0
    assert json.loads((tmp_path / "r2.json").read_text())["blocks_run"] == len(failed)
    np.testing.assert_array_equal(s3_group(s3_server, out)["0"][:], reference_labels(model, image))


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (``resize(path, size)`` grows it): a real local disk that runs out of space."""
    path = tmp_path / "disk"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def resize(disk, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def test_disk_full_mid_run_is_reported_then_resumed(checkpoint, mosaic, small_disk, tmp_path, capsys):
    model, ckpt = checkpoint
    image, url = mosaic
    out = small_disk / "out.zarr"
    args = (url, out, "--checkpoint", ckpt, "--chunk", 64, "--block", 128, "--tile", 92, "--probabilities",
            "--max-retries", 0)
    assert segment(*args, "--report", tmp_path / "r.json") == 3
    report = json.loads((tmp_path / "r.json").read_text())
    failed = report["outputs"][0]["failed"]
    assert failed and all("No space left on device" in f["error"] for f in failed), failed
    assert report["outputs"][0]["status"] == "incomplete"
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["unet"]["status"] == "running" and "ome" not in group.attrs
    assert "block(s) failed" in capsys.readouterr().err
    resize(small_disk, "8m")
    assert segment(*args, "--report", tmp_path / "r2.json") == 0
    assert json.loads((tmp_path / "r2.json").read_text())["blocks_run"] == len(failed)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))


def test_disk_full_before_the_first_block_is_one_line(checkpoint, mosaic, small_disk, capsys):
    """No room even for the output's metadata: one line naming the output and the cause, nothing complete."""
    _, ckpt = checkpoint
    _, url = mosaic
    resize(small_disk, "4k")
    out = small_disk / "out.zarr"
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", 64, "--block", 128) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"output {out}: expected a writable location" in err, err
    assert "No space left on device" in err
    attrs = json.loads((out / "zarr.json").read_text()).get("attributes", {}) if (out / "zarr.json").exists() else {}
    assert attrs.get("unet", {}).get("status") != "complete" and "ome" not in attrs


def run_job_process(argv: list, ray_address: str) -> subprocess.Popen:
    """``python jobs/segment.py ARGV`` as its own driver process, joined to the cluster at ``ray_address``."""
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "segment.py"), *map(str, argv), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_markers(out: Path, count: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    done = out / "_unet" / "done"
    while not (done.exists() and len(list(done.iterdir())) >= count):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the job wrote too few done-markers in time"
        time.sleep(0.05)


def wait_until_no_workers(seconds: float = 60) -> None:
    """The killed driver's actors die with it (Ray reaps an owner's actors); wait until they are gone."""
    deadline = time.monotonic() + seconds
    while ray_worker_pids("BlockRunner"):
        assert time.monotonic() < deadline, "the dead driver's workers are still running"
        time.sleep(0.1)


def test_driver_killed_mid_run_then_the_same_command_resumes(ray_cluster, checkpoint, tmp_path):
    """SIGKILL the driver process once some blocks are done; the same command then runs only the blocks
    without a marker, leaves the others untouched, and the output equals the whole-image prediction."""
    model, ckpt = checkpoint
    image = np.random.default_rng(13).random((256, 288), dtype=np.float32)
    url, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    zarr.create_array(str(url), data=image, chunks=(64, 64))
    argv = [url, out, "--checkpoint", ckpt, "--chunk", 32, "--block", 32, "--tile", 60, "--workers", 2,
            "--cpus-per-worker", 1]
    address = ray_cluster.get_runtime_context().gcs_address
    first = run_job_process(argv, address)
    wait_for_markers(out, 10, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_until_no_workers()
    markers = {p.name: p.stat().st_mtime_ns for p in (out / "_unet" / "done").iterdir()}
    assert zarr.open_group(str(out), mode="r").attrs["unet"]["status"] == "running"
    assert 10 <= len(markers) < 8 * 9, "the driver was killed too late to test a resume"
    second = run_job_process([*argv, "--report", tmp_path / "r.json"], address)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["blocks_run"] == 8 * 9 - len(markers)
    assert all((out / "_unet" / "done" / name).stat().st_mtime_ns == t for name, t in markers.items())
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))


@pytest.fixture
def two_node_cluster():
    """A head with no CPUs and two 1-CPU worker nodes, run by tests/multinode.py in its own process; yields
    (GCS address, the helper's pid, a function that removes the first worker node)."""
    helper = subprocess.Popen([sys.executable, str(ROOT / "tests" / "multinode.py"), "2"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def remove_node() -> None:
        helper.stdin.write("remove\n")
        helper.stdin.flush()
        assert helper.stdout.readline().strip() == "removed"

    try:
        yield json.loads(helper.stdout.readline())["address"], helper.pid, remove_node
    finally:
        helper.stdin.close()  # the helper stops its cluster at the end of its input
        try:
            helper.wait(timeout=120)
        except subprocess.TimeoutExpired:
            helper.kill()


def wait_for_workers(title: str, ancestor: int, count: int, seconds: float = 60) -> None:
    """Until ``count`` processes below ``ancestor`` bear the title ``ray::TITLE`` (Ray's title of an actor
    process, ``ray::Class.method`` while it runs a call)."""
    deadline = time.monotonic() + seconds
    while len(ray_worker_pids(title, ancestor)) != count:
        assert time.monotonic() < deadline, "the cluster's workers did not reach the expected count"
        time.sleep(0.05)


def test_lost_worker_node_its_blocks_run_elsewhere(two_node_cluster, checkpoint, tmp_path):
    """One of two worker nodes dies mid-run with its raylet, object store and worker: the cluster has no
    room for a replacement, so the surviving worker finishes every block; the output is exact."""
    model, ckpt = checkpoint
    address, cluster_pid, remove_node = two_node_cluster
    image = np.random.default_rng(17).random((640, 640), dtype=np.float32)  # 400 blocks: the run outlasts
    url, out = tmp_path / "in.zarr", tmp_path / "out.zarr"                   # the node's removal
    zarr.create_array(str(url), data=image, chunks=(64, 64))
    job = run_job_process([url, out, "--checkpoint", ckpt, "--chunk", 32, "--block", 32, "--tile", 60,
                           "--workers", 2, "--cpus-per-worker", 1, "--report", tmp_path / "r.json"], address)
    wait_for_markers(out, 5, job)
    wait_for_workers("BlockRunner.segment", cluster_pid, 2)  # both nodes' workers are in a block
    remove_node()
    wait_for_workers("BlockRunner", cluster_pid, 1)  # the lost node's worker is gone
    assert job.poll() is None, "the job ended before it lost the node: make it longer"
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["worker_restarts"] >= 1 and report["failed_blocks"] == 0, (report, err)
    assert zarr.open_group(str(out), mode="r").attrs["unet"]["status"] == "complete"
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))


SECRET = "s3cr3t-7d1f0b"          # in --storage-option
ENV_SECRET = "env-s3cr3t-41c9e2"   # in AWS_SECRET_ACCESS_KEY
URL_SECRET = "url-s3cr3t-a80f3d"   # in a URL's user info, which is refused


def ray_log_text(ray_cluster) -> str:
    """Everything the session's Ray processes have logged so far (workers' stdout and stderr included)."""
    logs = Path(ray_cluster._private.worker._global_node.get_logs_dir_path())
    return "".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())


def poison(s3_server, url: str, key: str) -> None:
    """Replace one stored chunk of ``url`` with bytes no codec decodes: its block fails on every attempt."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    fs.pipe_file(f"{url.removeprefix('s3://')}/{key}", b"not zstd " + SECRET.encode())


def test_secrets_never_appear_whatever_fails(ray_cluster, checkpoint, s3_mosaic, s3_server, s3_bucket, tmp_path,
                                             capsys, caplog, monkeypatch):
    """Credentials in --storage-option, in the environment and in a refused URL, through every kind of
    failure: a flaky store, writes refused mid-run, a poison block whose stored bytes hold the secret, an
    unreachable endpoint, an output refusing writes from the start. No secret is in stdout, stderr, the
    logs (the driver's and Ray's), the report or the output's attributes."""
    _, ckpt = checkpoint
    _, url = s3_mosaic
    poison(s3_server, url, "c/1/1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)  # moto accepts any secret
    out = f"{s3_bucket}/out.zarr"
    with FaultProxy(s3_server.endpoint_url, fault_rate=0.1, seed=2,
                    deny=Deny("PUT", "/out.zarr/0/c/", after=4)) as proxy:
        options = [o.replace("secret=testing", f"secret={SECRET}") for o in through(proxy)]
        code = segment(url, out, "--checkpoint", ckpt, "--chunk", 64, "--block", 128, "--tile", 92,
                       "--max-retries", 0, *options, "--report", tmp_path / "r.json")
    assert code == 3 and proxy.denied and sum(proxy.faults.values())
    report = (tmp_path / "r.json").read_text()
    assert "c/1/1" in report or "decod" in report.lower() or "zstd" in report.lower(), report  # the poison fired
    unreachable = ["--storage-option", "client_kwargs.endpoint_url=http://127.0.0.1:9"]
    assert segment(url, tmp_path / "o1.zarr", "--checkpoint", ckpt, *unreachable) == 2  # secret from the env
    refused = url.replace("s3://", f"s3://AKIAEXAMPLE:{URL_SECRET}@")
    assert segment(refused, tmp_path / "o2.zarr", "--checkpoint", ckpt, *options) == 2
    with FaultProxy(s3_server.endpoint_url, deny=Deny("PUT", "/refused.zarr/")) as proxy:
        assert segment(url, f"{s3_bucket}/refused.zarr", "--checkpoint", ckpt, *through(proxy)) == 2
    printed = capsys.readouterr()
    texts = {"stdout": printed.out, "stderr": printed.err, "log": caplog.text, "report": report,
             "attributes": json.dumps(dict(s3_group(s3_server, out).attrs)), "ray logs": ray_log_text(ray_cluster)}
    assert "failed" in texts["log"] and len(printed.err.strip().splitlines()) >= 4
    assert not [(name, secret) for name, text in texts.items() for secret in (SECRET, ENV_SECRET, URL_SECRET)
                if secret in text]


def test_signed_checkpoint_url_is_redacted_in_errors(s3_server, s3_mosaic, tmp_path, capsys):
    _, url = s3_mosaic
    signed = f"{s3_server.endpoint_url}/no-such-bucket/model.safetensors?X-Amz-Signature={SECRET}&X-Amz-Credential=k"
    assert segment(url, tmp_path / "out.zarr", "--checkpoint", signed) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: file not found" in err and SECRET not in err and "X-Amz" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_workers_that_cannot_start_end_the_run_with_one_line(checkpoint, mosaic, tmp_path, capsys):
    """A worker constructor that always fails (a CUDA device on a CPU-only node): a bounded number of fresh
    workers, then one line naming the cause, exit 2, and nothing marked complete."""
    _, ckpt = checkpoint
    _, url = mosaic
    out = tmp_path / "out.zarr"
    assert segment(url, out, "--checkpoint", ckpt, "--device", "cuda", "--workers", 1, "--cpus-per-worker", 1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: workers: expected them to start"), err
    assert "CUDA" in err[0] and "--device" in err[0]
    # workers start before any output is created (the first one calibrates): nothing may claim completeness
    assert not (out / "zarr.json").exists() or zarr.open_group(str(out), mode="r").attrs["unet"]["status"] != "complete"
