"""benchmarks/gpu.py --smoke: the GPU benchmark runs end to end on whatever device there is (CPU here), so
that it is ready when a GPU is: network rows for both networks, precisions, batches and --compile, the
job's row with its geometry, and the JSON it writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.mark.slow
def test_gpu_benchmark_smoke_run_writes_its_table_and_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "gpu_benchmark", bench)  # its dataclasses look their module up there
        spec.loader.exec_module(bench)
        assert bench.main(["--smoke", "--out", str(tmp_path / "gpu.json")]) == 0
    res = json.loads((tmp_path / "gpu.json").read_text())
    rows = res["network"]
    assert {r["net"] for r in rows} == {"paper", "16-filter"}
    assert {r["bf16"] for r in rows} == {False, True} and any(r["compile"] for r in rows)
    assert {r["batch"] for r in rows} == {1, 2} and all(r["mpx_per_s"] > 0 for r in rows)
    assert [j["net"] for j in res["jobs"]] == ["paper", "16-filter"]
    for job in res["jobs"]:
        assert job["mpx"] > 0 and job["cpu_s_per_mpx"] > 0 and 0 < job["network_busy"] <= 1
        assert job["geometry"]["tile_chosen_by"] == "calibration" and job["startup_s"] > 0
        assert job["ratio_to_network"] > 0
    printed = capsys.readouterr().out
    assert "| net | tile -> out |" in printed and "job end to end, paper" in printed
