"""The segmentation job end to end, in-process (`unet.segment`, or the command line's `main(argv)`) on the
session's real local Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr
from helpers import ray_worker_pids, reference_labels, run_segment, segment

from unet import predict_image
from unet.job.pyramid import mode2x2

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.mark.parametrize("chunk, block, tile", [(32, 96, 92), (64, 64, 60), (100, 300, 124)])
def test_level0_equals_whole_image_prediction(checkpoint, mosaic, tmp_path, chunk, block, tile):
    model, ckpt = checkpoint
    image, url = mosaic
    out = tmp_path / "out.zarr"
    assert run_segment(url, out, ckpt, chunk=chunk, block=block, tile=tile).complete
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))


def test_pyramid_and_ome_metadata(checkpoint, mosaic, tmp_path):
    model, ckpt = checkpoint
    image, url = mosaic
    out = tmp_path / "out.zarr"
    assert run_segment(url, out, ckpt, chunk=32, block=64, tile=92, report=str(tmp_path / "report.json")).complete
    group = zarr.open_group(str(out), mode="r")
    level = reference_labels(model, image).astype(np.uint8)
    ome = group.attrs["ome"]
    datasets = ome["multiscales"][0]["datasets"]
    for k, dataset in enumerate(datasets):
        array = group[dataset["path"]]
        np.testing.assert_array_equal(array[:], level, err_msg=f"level {k}")
        assert array.metadata.dimension_names == ("y", "x")
        assert dataset["coordinateTransformations"][0]["scale"] == [2.0 ** k, 2.0 ** k]
        level = mode2x2(level)
    assert max(group[datasets[-1]["path"]].shape) <= 32 < max(group[datasets[-2]["path"]].shape)
    assert ome["version"] == "0.5" and [a["name"] for a in ome["multiscales"][0]["axes"]] == ["y", "x"]
    assert [p["class"] for p in ome["image-label"]["properties"]] == ["background", "thing"]
    assert group.attrs["unet"]["status"] == "complete"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["outputs"][0]["status"] == "complete" and report["failed_blocks"] == 0
    assert (tmp_path / "report.png").stat().st_size > 0


def test_probabilities_and_sharding(checkpoint, mosaic, tmp_path):
    model, ckpt = checkpoint
    image, url = mosaic
    out = tmp_path / "out.zarr"
    assert run_segment(url, out, ckpt, chunk=32, shard=64, block=128, probabilities=True).complete
    probs = zarr.open_array(str(out / "probabilities"))
    assert probs.dtype == np.float16 and probs.shape == (2, 301, 517)
    np.testing.assert_allclose(probs[:], predict_image(model, image), atol=1e-3)
    assert zarr.open_array(str(out / "0")).shards == (64, 64)


def test_resume_runs_only_unfinished_blocks(checkpoint, mosaic, tmp_path):
    """Simulate a driver killed mid-run: some blocks' markers missing and their chunks garbage."""
    model, ckpt = checkpoint
    image, url = mosaic
    out, options = tmp_path / "out.zarr", dict(chunk=32, block=96, tile=92)
    assert run_segment(url, out, ckpt, **options).complete
    markers = sorted((out / "_unet" / "done").iterdir())
    for marker in markers[:3]:
        marker.unlink()
    level0 = zarr.open_array(str(out / "0"), mode="r+")
    level0[:96, :96] = 255  # block L0-0-0 is among the three unmarked ones
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["unet"] = {**group.attrs["unet"], "status": "running"}
    report = run_segment(url, out, ckpt, **options)
    assert report.complete
    np.testing.assert_array_equal(level0[:], reference_labels(model, image))
    assert report.stats is not None and report.stats.blocks_run == 3


def test_complete_output_is_not_recomputed(checkpoint, mosaic, tmp_path):
    _, ckpt = checkpoint
    _, url = mosaic
    out = tmp_path / "out.zarr"
    assert run_segment(url, out, ckpt, chunk=64, block=256).complete
    before = (out / "zarr.json").read_bytes()
    assert run_segment(url, out, ckpt, chunk=64, block=256).complete
    assert (out / "zarr.json").read_bytes() == before


def test_other_options_refused_then_overwritten(checkpoint, mosaic, tmp_path, capsys):
    model, ckpt = checkpoint
    image, url = mosaic
    out = tmp_path / "out.zarr"
    assert run_segment(url, out, ckpt, chunk=64, block=128).complete
    capsys.readouterr()
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", 32, "--block", 128) == 2
    err = capsys.readouterr().err
    assert "differs in chunk" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert run_segment(url, out, ckpt, chunk=32, block=128, overwrite=True).complete
    assert zarr.open_array(str(out / "0")).chunks == (32, 32)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))


def test_poison_block_fails_alone_then_reruns(checkpoint, tmp_path, capsys):
    """NaN pixels make one block raise on every try: the rest is written, nothing is marked complete, and
    once the input is mended a re-run finishes only what is missing."""
    model, ckpt = checkpoint
    image = np.random.default_rng(5).random((200, 260), dtype=np.float32)
    url = tmp_path / "in.zarr"
    array = zarr.create_array(str(url), data=image, chunks=(64, 64))
    array[100, 100] = np.nan  # read by block rows 64:128, cols 64:128 only (tile windows, mirrors included)
    out, args = tmp_path / "out.zarr", ("--checkpoint", ckpt, "--chunk", 64, "--block", 64, "--tile", 92,
                                        "--max-retries", 1)
    assert segment(url, out, *args, "--report", tmp_path / "r.json") == 3
    report = json.loads((tmp_path / "r.json").read_text())
    (failure,) = report["outputs"][0]["failed"]
    assert failure["rows"] == [64, 128] and failure["cols"] == [64, 128] and "NaN" in failure["error"]
    assert zarr.open_group(str(out)).attrs["unet"]["status"] == "running"
    assert "ome" not in zarr.open_group(str(out)).attrs
    assert len(list((out / "_unet" / "done").iterdir())) == 4 * 5 - 1
    array[100, 100] = image[100, 100]
    assert run_segment(url, out, ckpt, chunk=64, block=64, tile=92, max_retries=1,
                       report=str(tmp_path / "r2.json")).complete
    assert json.loads((tmp_path / "r2.json").read_text())["blocks_run"] == 1
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))


def test_workers_killed_mid_run(checkpoint, tmp_path):
    """SIGKILL every worker three times while blocks are in flight: the job completes with identical output."""
    model, ckpt = checkpoint
    image = np.random.default_rng(11).random((480, 480), dtype=np.float32)
    url, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    zarr.create_array(str(url), data=image, chunks=(96, 96))
    rounds = []  # the pids killed in each round

    def killer():
        deadline = time.monotonic() + 120
        while len(rounds) < 3 and time.monotonic() < deadline:
            done = out / "_unet" / "done"
            if done.exists() and len(list(done.iterdir())) > 2 + 8 * len(rounds):
                killed = [pid for pid in ray_worker_pids("BlockRunner") if _kill(pid)]
                if killed:
                    rounds.append(killed)
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    report = run_segment(url, out, ckpt, chunk=32, block=32, tile=60, workers=2, cpus_per_worker=1)
    thread.join()
    assert report.complete and len(rounds) == 3
    assert report.stats is not None and report.stats.worker_restarts >= 3
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], reference_labels(model, image))


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # exited meanwhile
        return False
    return True


def test_dry_run_reads_no_pixels_and_writes_nothing(checkpoint, mosaic, tmp_path, capsys):
    _, ckpt = checkpoint
    _, url = mosaic
    out = tmp_path / "out.zarr"
    assert segment(url, out, "--checkpoint", ckpt, "--chunk", 32, "--block", 96, "--tile", 92, "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "blocks: 24 of 96 px (4 x 6)" in printed and "92 px in -> 52 px out" in printed and "GFLOP" in printed
    assert not out.exists()


def test_manifest_runs_many_outputs(checkpoint, mosaic, tmp_path):
    model, ckpt = checkpoint
    image, url = mosaic
    other = np.random.default_rng(9).random((77, 131), dtype=np.float32)
    zarr.create_array(str(tmp_path / "b.zarr"), data=other, chunks=(50, 50))
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"# nightly\n{url} {tmp_path / 'a-out.zarr'}\n{tmp_path / 'b.zarr'} {tmp_path / 'b-out.zarr'}\n")
    assert segment("--manifest", manifest, "--checkpoint", ckpt, "--chunk", 32, "--block", 64) == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a-out.zarr" / "0"))[:],
                                  reference_labels(model, image))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "b-out.zarr" / "0"))[:],
                                  reference_labels(model, other))


def test_input_and_output_in_any_store(checkpoint, mosaic, store, tmp_path, capsys):
    """Local folders and S3 alike; on S3 the credentials given on the command line appear nowhere."""
    model, ckpt = checkpoint
    image, _ = mosaic
    zarr.create_array(store.zarr_store("in.zarr"), data=image, chunks=(100, 100))
    secret = ["--storage-option", "key=testing", "--storage-option", "secret=s3cr3t-value-0"]
    secret = secret if store.kind == "s3" else []
    # moto accepts any secret; the unusual one lets the test grep every output for it
    assert segment(store.url("in.zarr"), store.url("out.zarr"), "--checkpoint", ckpt, "--chunk", 64, "--block", 128,
                   *secret, *store.cli_options, "--report", tmp_path / "r.json") == 0
    group = zarr.open_group(store.zarr_store("out.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][:], reference_labels(model, image))
    printed = capsys.readouterr()
    for text in (printed.out, printed.err, (tmp_path / "r.json").read_text(), json.dumps(dict(group.attrs))):
        assert "s3cr3t-value-0" not in text
