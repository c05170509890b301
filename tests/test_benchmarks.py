"""benchmarks/sd15_quantization.py runs every stage on the tiny pipeline (`--tiny`), the e2e table included,
with its step-caching rows, in both of e2e's loading modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sd15_script_runs_every_stage_on_the_tiny_pipeline(tmp_path):
    pytest.importorskip("openvino_genai")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "sd15_quantization.py"), "--work", str(tmp_path)]
    command += ["--tiny", "--steps", "2", "--repeats", "1", "--steps-e2e", "2", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    assert e2e["steps"] == 2 and e2e["machine"]["cpu"] and "isa" in e2e["machine"]
    rows = e2e["rows"]
    assert list(rows) == [
        "pytorch-fp32",
        "ov-fp32",
        "ov-tome-int8",
        "optimum-int8-hybrid",
        "optimum-int8-full",
        "genai-tome-int8",
        "ov-deepcache",
        "tome-int8-deepcache",
    ]
    assert e2e["load_mode"] == "all" and e2e["peak_gib"] > 0  # auto: the tiny rows fit
    for name, row in rows.items():
        assert row["pipeline_median_s"] > 0 and row["unet_step_median_s"] > 0, name
        assert row["extrapolated_s"] > 0 and row["vs_optimum-int8-full"] > 0, name
    assert rows["pytorch-fp32"]["vs_pytorch_fp32"] == 1.0
    assert rows["genai-tome-int8"]["psnr_vs_pytorch_db"] > 10  # GenAI generated an image, not noise
    table = (tmp_path / "e2e.md").read_text()
    assert table.startswith("CPU: ") and "| ours in OpenVINO GenAI" in table
    assert "| ours: ToMe + INT8" in done.stdout  # the summary prints the table
    assert (tmp_path / "peer-full" / "unet" / "openvino_model.xml").is_file()
    for folder in ("fp32-dc", "tome-int8-dc"):  # both step-caching IRs, recorded in sd_ovopt.json
        assert (tmp_path / folder / "unet_shallow" / "openvino_model.xml").is_file(), folder
        assert json.loads((tmp_path / folder / "sd_ovopt.json").read_text())["deepcache"], folder
    assert (
        json.loads((tmp_path / "tome-int8-dc.json").read_text())["calibration_samples"] == 4
    )  # 2 prompts x 2
    _check_cached_rows(rows, steps=2)
    assert "x vs optimum-intel hybrid 8-bit |" in table and "x vs optimum-intel full INT8 |" in table

    # The same stage loading one row at a time (what a machine without room for all rows runs).
    done = subprocess.run(
        [*command, "--stage", "e2e", "--e2e-load", "one", "--e2e-variants", *rows],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    assert e2e["load_mode"] == "one" and list(e2e["rows"]) == list(rows)
    _check_cached_rows(e2e["rows"], steps=2)
    assert "Loaded one row at a time" in (tmp_path / "e2e.md").read_text()


def _check_cached_rows(rows: dict, steps: int) -> None:
    """The step-caching rows: both IRs timed, the schedule's counts ran, ratios vs twin and both peers."""
    for name, twin in (("ov-deepcache", "ov-fp32"), ("tome-int8-deepcache", "ov-tome-int8")):
        row = rows[name]
        assert row["uncached_twin"] == twin and row["vs_uncached"] > 0, name
        assert row["full_ir_s"] > 0 and row["shallow_ir_s"] > 0, name
        assert row["unet_calls"] == row["unet_calls_observed"] == {"full": 1, "shallow": steps - 1}, name
        assert row["unet_calls_50_steps"] == {"full": 17, "shallow": 33}, name  # interval 3, DDIM: 50 calls
        assert row["extrapolated_s"] > 0 and row["pipeline_50_steps_extrapolated_s"] > 0, name
        assert row["vs_optimum-int8-hybrid"] > 0 and row["vs_optimum-int8-full"] > 0, name
