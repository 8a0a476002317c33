"""The job's geometry with no tuning flag: the dry run calibrates this machine and shows the choice, the run's
workers read that calibration back from the cache and choose the same block and tile, the output stays
exact, the report carries the choice, the calibration and the start-up time, and a resumed output keeps
its block."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from unet import UNet, predict_image, save_checkpoint
from unet.cli import run
from unet.api import main

pytestmark = pytest.mark.usefixtures("ray_cluster")


def segment(*argv) -> int:
    return run(main, [*map(str, argv), "--no-progress"])


def test_default_geometry_is_calibrated_reported_exact_and_kept_on_resume(tmp_path, capsys):
    torch.manual_seed(5)
    model = UNet(depth=3, base_channels=3).eval()        # a network of its own: its calibration is this test's
    ckpt = tmp_path / "model.safetensors"
    save_checkpoint(model, ckpt, class_names=["background", "thing"])
    image = np.random.default_rng(1).random((230, 347), dtype=np.float32)
    url = tmp_path / "in.zarr"
    zarr.create_array(str(url), data=image, chunks=(64, 64))
    out, report = tmp_path / "out.zarr", tmp_path / "report.json"
    args = (url, out, "--checkpoint", ckpt, "--chunk", 32)

    assert segment(*args, "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "calibration: cpu" in printed and "measured now" in printed and "network-only Mpx/s by tile" in printed

    assert segment(*args, "--report", report) == 0
    r = json.loads(report.read_text())
    g = r["outputs"][0]["geometry"]
    assert r["calibration"]["cached"] and r["calibration"]["fallback"] is None             # the dry run's, reused
    assert f"blocks: {g['blocks']} of {g['block']} px" in printed                         # the dry run chose alike
    assert f"tiles: {g['tiles']} of {g['tile']} px in -> {g['out_tile']} px out" in printed
    assert g["block"] % 32 == 0 and g["block_chosen_by"] == g["tile_chosen_by"] == "calibration"
    assert g["tile"] in {c["tile"] for c in r["calibration"]["costs"]}
    assert r["tiles_used"] == {str(g["tile"]): g["blocks"]}                               # what the workers chose
    assert g["expected_mpx_per_s"] > 0 and g["overhang"] >= 1
    assert 0 < r["startup_s"] < r["seconds"] + 600
    expected = predict_image(model, image).argmax(axis=0)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], expected)

    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["unet"]
    assert attrs["fingerprint"]["block"] == g["block"]
    attrs["status"] = "running"                                   # as if interrupted: the run resumes it
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["unet"] = attrs
    (out / "zarr.json").write_text(json.dumps(meta))
    assert segment(*args, "--report", report) == 0                # no --block: the output's own block is kept
    assert json.loads(report.read_text())["outputs"][0]["geometry"]["block_chosen_by"] == "resumed output"
