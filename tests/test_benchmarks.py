"""benchmarks/sd15_quantization.py runs every stage on the tiny pipeline (`--tiny`), the e2e table included."""

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
    ]
    for name, row in rows.items():
        assert row["pipeline_median_s"] > 0 and row["unet_step_median_s"] > 0, name
        assert row["extrapolated_s"] > 0 and row["vs_optimum-int8-full"] > 0, name
    assert rows["pytorch-fp32"]["vs_pytorch_fp32"] == 1.0
    assert rows["genai-tome-int8"]["psnr_vs_pytorch_db"] > 10  # GenAI generated an image, not noise
    table = (tmp_path / "e2e.md").read_text()
    assert table.startswith("CPU: ") and "| ours in OpenVINO GenAI" in table
    assert "| ours: ToMe + INT8" in done.stdout  # the summary prints the table
    assert (tmp_path / "peer-full" / "unet" / "openvino_model.xml").is_file()
