"""Benchmark presets (`sd-ovopt bench --preset`): the machinery on the tiny pipeline, in both load modes, and
the scripts in benchmarks/ that call it."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sd_ovopt.cli import main

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["pytorch-fp32", "ov-fp32-auto", "ov-deepcache-auto"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench(out: Path, *flags: str) -> tuple[dict, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["bench", "--preset", "tiny-32", "--output", str(out), *flags]) == 0
    return json.loads((out / "results.json").read_text()), stdout.getvalue()


def _rows(result: dict) -> dict[str, dict]:
    return {row["name"]: row for row in result["variants"]}


def test_a_preset_builds_its_model_and_checks_the_call_against_its_parts(tmp_path):
    out = tmp_path / "bench"
    result, printed = _bench(out, "--variants", *ROWS, "--rounds", "1", "--load", "one")
    assert (out / "tiny-random-weights" / "model_index.json").is_file()  # built offline, then reused
    settings = result["settings"]
    assert settings["steps"] == 2 and settings["height"] == 32 and settings["load_mode"] == "one"
    assert settings["check_extrapolation"] and settings["precision"] in ("bf16", "f32")  # "auto", resolved
    rows = _rows(result)
    assert list(rows) == ROWS and all(row["status"] == "ok" for row in rows.values())
    assert rows["ov-fp32-auto"]["runtime_precision"] == settings["precision"]
    for name, row in rows.items():
        assert row["pipeline_median_s"] > 0 and row["other_s"] and row["extrapolated_s"] > 0, name
        assert 0.3 < row["measured_over_extrapolated"] < 5, name
    cached = rows["ov-deepcache-auto"]
    assert cached["baseline"] == "ov-fp32-auto" and cached["pipeline_speedup_vs_baseline"] > 0
    assert cached["unet_calls"] == {"unet": 1, "shallow": 1} and cached["unet_ir_s"]["shallow"]
    assert cached["unet_calls_50"] == {"unet": 17, "shallow": 33}  # interval 3 over 50 calls
    assert rows["ov-fp32-auto"]["unet_calls"] == {"unet": 2}
    assert float(rows["ov-fp32-auto"]["psnr_db"]) > 30  # the same noise as PyTorch FP32
    table = (out / "results.md").read_text()
    assert printed.startswith(table) and "Timed one variant at a time in each round" in table
    assert "| ov-deepcache-auto | 1 unet + 1 shallow |" in table
    assert "x vs ov-fp32-auto |" in table
    for name in ROWS:  # a speed row, a parts row, a footprint row
        assert sum(line.startswith(f"| {name} |") for line in table.splitlines()) == 3, name

    # the same rows again, all loaded at once: the models are reused, not rebuilt
    result, _ = _bench(out, "--variants", *ROWS, "--rounds", "2", "--load", "all")
    rows = _rows(result)
    assert result["settings"]["load_mode"] == "all" and all(rows[n]["reused"] for n in ROWS[1:])
    assert len(rows["ov-deepcache-auto"]["pipeline_s"]) == 2
    assert "Timed with every variant loaded at once" in (out / "results.md").read_text()


def test_an_unknown_preset_is_refused(tmp_path, capsys):
    assert main(["bench", "--preset", "sd99", "--output", str(tmp_path / "out")]) == 2
    assert "unknown preset 'sd99'" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["sd15_quantization.py", "sd15_deepcache.py"])
def test_the_sd15_scripts_are_the_presets(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--preset" in done.stdout


@pytest.mark.slow
def test_the_tiny_preset_runs_every_row(tmp_path):
    """Every row of the SD-1.5 preset, on the tiny pipeline: both peers, GenAI and step caching."""
    from sd_ovopt.evaluation.presets import PRESET_ROWS

    pytest.importorskip("openvino_genai")
    result, _ = _bench(tmp_path / "bench")
    rows = _rows(result)
    assert tuple(rows) == PRESET_ROWS
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["reason"])
        assert row["pipeline_speedup_vs_optimum-int8-full"] > 0 and row["extrapolated_s"] > 0, name
    assert rows["ov-tome-int8-deepcache"]["baseline"] == "ov-tome-int8"
    assert float(rows["genai-tome-int8"]["psnr_db"]) > 10  # GenAI generated an image, not noise
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "vs full INT8 peer" in table and "| genai-tome-int8 |" in table


def test_the_few_step_preset_times_the_tiny_decoder_and_the_many_step_baseline(tmp_path):
    """LCM-LoRA fused, LCM scheduler, no guidance: the tiny-decoder row exports the preset's TAESD, and the
    many-step PyTorch row is timed with guidance (UNet batch 2) and PNDM, its 50-step call extrapolated."""
    out = tmp_path / "bench"
    rows_asked = ["pytorch-fp32", "pytorch-fp32-cfg", "ov-fp32-auto-taesd"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        args = ["bench", "--preset", "tiny-32-lcm4", "--output", str(out), "--rounds", "1"]
        assert main([*args, "--variants", *rows_asked]) == 0
    result = json.loads((out / "results.json").read_text())
    rows = _rows(result)
    assert result["settings"]["steps"] == 4 and result["settings"]["guidance_scale"] == 1.0
    assert all(row["status"] == "ok" for row in rows.values())
    from sd_ovopt import read_metadata

    tiny = read_metadata(out / "models" / "ov-f32-taesd")  # the ov-f32 folder with TAESD swapped in
    assert tiny.vae == "AutoencoderTiny" and tiny.classifier_free_guidance is False
    assert rows["pytorch-fp32"]["unet_calls"] == {"unet": 4}  # LCM: one UNet call per step
    assert rows["pytorch-fp32-cfg"]["unet_calls"] == {"unet": 5}  # PNDM: steps + 1
    assert rows["pytorch-fp32-cfg"]["unet_calls_50"] == {"unet": 51}
    assert rows["pytorch-fp32-cfg"]["pipeline_50_steps_s"] > rows["pytorch-fp32-cfg"]["extrapolated_s"]
    assert float(rows["ov-fp32-auto-taesd"]["psnr_db"]) < 30  # another decoder: not PyTorch's image


@pytest.mark.slow
def test_the_tiny_few_step_preset_runs_every_row(tmp_path):
    from sd_ovopt.evaluation.presets import FEW_STEP_ROWS

    out = tmp_path / "bench"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["bench", "--preset", "tiny-32-lcm4", "--output", str(out), "--rounds", "1"]) == 0
    rows = _rows(json.loads((out / "results.json").read_text()))
    assert tuple(rows) == FEW_STEP_ROWS
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["reason"])


def test_the_few_step_unet_script_times_each_token_method_and_reuses_its_folders(tmp_path):
    """benchmarks/few_step_unet.py on the tiny pipeline with the LCM scheduler: guidance-free INT8 folders,
    one UNet call timed per folder, the per-op counters summed; a second run builds nothing."""
    from diffusers import LCMScheduler

    from sd_ovopt import read_metadata
    from sd_ovopt.testing import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "model")
    work = tmp_path / "work"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "few_step_unet.py"),
        "--model",
        str(tmp_path / "model"),
    ]
    command += ["--work", str(work), "--size", "32", "--repeats", "2", "--counters"]
    command += ["--variants", "int8", "tome-0.5-two-levels-mlp"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("built ") == 2
    meta = read_metadata(work / "tome-0.5-two-levels-mlp")
    assert meta.classifier_free_guidance is False and list(meta.methods) == ["tome", "int8"]
    rows = json.loads((work / "results.json").read_text())["rows"]
    assert list(rows) == ["int8", "tome-0.5-two-levels-mlp"]
    for name, row in rows.items():
        assert len(row["times_s"]) == 2 and 0 < row["min_s"] <= row["median_s"], name
        assert any(op.startswith("Convolution") for op in row["op_ms"]), name
    assert "| tome-0.5-two-levels-mlp |" in first.stdout and "Per-op counters" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and "built " not in again.stdout
