"""sd_ovopt.evaluation.benchmark: `sd-ovopt bench` typed errors, and end to end on the shipped reference model
(scored by its judge)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from sd_ovopt.cli import main
from sd_ovopt.reference import held_out_prompts, reference_model_dir

# -- bad input: typed errors, exit code 2, before anything slow -----------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--variants", "ov-int9"], "unknown variant"),
        (["--variants", "ov-int8-qat"], "needs an exported QAT pipeline"),
        (["--qat-model", "{tmp}/no-such-qat"], "does not exist"),
        (["--steps", "0"], "steps=0"),
        (["--tome-ratio", "0.9"], "ToMeConfig.ratio"),
        (["--judge", "no_colon"], "MODULE:FUNCTION"),
        (["--prompts", "{tmp}/missing.txt"], "prompt file"),
        (["--height", "30"], "multiple of"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tiny_saved, tmp_path, capsys, extra, message):
    args = ["bench", "--model", str(tiny_saved), "--output", str(tmp_path / "out")]
    args += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sd-ovopt bench: error" in err and message in err
    assert not (tmp_path / "out" / "models").exists()


def test_missing_model_folder(tmp_path, capsys):
    assert main(["bench", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- `sd-ovopt bench` end to end on the shipped reference model, scored by its judge ---------------------

# ov-tome-int8 is the int8 path with apply_tome around it (ToMe + INT8 export is tested in test_quantization);
# it runs in the slow test below, with the peak-memory probes, to keep this file CI-sized.
VARIANTS = ["pytorch-fp32", "ov-f32", "ov-bf16", "ov-int8-ptq", "optimum-int8-hybrid", "optimum-int8-full"]
PROMPTS = [spec.prompt for spec in held_out_prompts()[:2]]


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One `sd-ovopt bench` run (memory probes off: tested above) and what it wrote, read at once."""
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp / "out"
    args = ["bench", "--model", str(reference_model_dir()), "--output", str(out), "--variants", *VARIANTS]
    args += ["--prompts", str(tmp / "prompts.txt"), "--steps", "6", "--rounds", "2", "--num-samples", "4"]
    args += ["--guidance-scale", "4", "--judge", "sd_ovopt.reference:score_image", "--no-memory"]
    args += ["--unet-error-samples", "4"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(args)
    assert code == 0
    return {
        "out": out,
        "stdout": stdout.getvalue(),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "json": json.loads((out / "results.json").read_text()),
        "markdown": (out / "results.md").read_text(),
        "chart": Image.open(out / "chart.png").size,
        "grid": Image.open(out / "grid.png").size,
    }


def test_bench_shows_no_trace_time_notices(bench):
    """Building both optimum-intel peers traces the models, as our export does: no TracerWarnings."""
    assert not [w for w in bench["warnings"] if w.startswith("TracerWarning")]


def _rows(bench):
    return {row["name"]: row for row in bench["json"]["variants"]}


def _psnr(row) -> float:
    return float(row["psnr_db"])  # "inf" for identical images


def test_bench_writes_all_four_outputs(bench):
    assert set(bench["json"]["outputs"]) == {"json", "markdown", "chart", "grid"}
    for name in ("results.json", "results.md", "chart.png", "grid.png"):
        assert (bench["out"] / name).is_file()
    assert "# sd-ovopt bench: shapes-sd" in bench["stdout"]  # the table is printed


def test_json_has_every_requested_variant_with_latency_and_size(bench):
    rows = _rows(bench)
    assert list(rows) == VARIANTS
    expected_bf16 = "ok" if _cpu_has_bf16() else "skipped"
    assert rows["ov-bf16"]["status"] == expected_bf16
    for name, row in rows.items():
        if row["status"] != "ok":
            assert row["reason"]
            continue
        assert row["status"] == "ok", (name, row["reason"])
        assert len(row["pipeline_s"]) == 2 * len(PROMPTS) and row["pipeline_median_s"] > 0
        assert len(row["unet_step_s"]) == 2 and row["unet_step_median_s"] > 0
        assert row["unet_bytes"] > 0 and row["total_bytes"] >= row["unet_bytes"]
    assert rows["pytorch-fp32"]["pipeline_speedup_vs_pytorch-fp32"] == pytest.approx(1.0)
    assert rows["optimum-int8-hybrid"]["unet_step_speedup_vs_peer"] == pytest.approx(1.0)
    assert rows["ov-int8-ptq"]["unet_bytes"] < 0.5 * rows["ov-f32"]["unet_bytes"]
    settings, machine = bench["json"]["settings"], bench["json"]["machine"]
    assert settings["height"] == settings["width"] == 32 and settings["prompts"] == PROMPTS
    assert machine["versions"]["openvino"] and machine["usable_cpus"] >= 1


def test_fidelity_ov_f32_matches_pytorch_and_int8_is_lower(bench):
    rows = _rows(bench)
    assert bench["json"]["reference"] == "pytorch-fp32"
    assert _psnr(rows["ov-f32"]) > 35 and rows["ov-f32"]["ssim"] > 0.99
    for name in ("ov-int8-ptq", "optimum-int8-hybrid"):
        assert 10 < _psnr(rows[name]) < _psnr(rows["ov-f32"]), name
        assert 0 < rows[name]["ssim"] <= rows["ov-f32"]["ssim"], name
    assert rows["pytorch-fp32"]["psnr_db"] is None  # the reference is not scored against itself


def test_prompt_accuracy_comes_from_the_judge(bench):
    """Each variant's accuracy is the reference judge's verdict on the images it saved."""
    from sd_ovopt.reference import score_image

    for name, row in _rows(bench).items():
        if row["status"] != "ok":
            continue
        images = sorted((bench["out"] / "images" / name).iterdir())
        verdicts = [
            score_image(Image.open(path), prompt) for path, prompt in zip(images, PROMPTS, strict=True)
        ]
        assert row["prompt_accuracy"] == pytest.approx(sum(verdicts) / len(verdicts)), name
    assert bench["json"]["settings"]["judge"] == "score_image"


def test_markdown_has_a_row_per_variant(bench):
    lines = bench["markdown"].splitlines()
    for name in VARIANTS:
        rows = [line for line in lines if line.startswith(f"| {name} |")]
        if _rows(bench)[name]["status"] == "ok":
            assert len(rows) == 2, name  # speed table and footprint table
        else:
            assert any(line.startswith(f"- `{name}`") for line in lines), name
    assert "vs PyTorch FP32" in bench["markdown"] and "vs peer" in bench["markdown"]


def test_pngs_have_the_expected_sizes(bench):
    from sd_ovopt.evaluation.report import GRID_CAPTION, GRID_CELL_MIN, GRID_HEADER

    ok = [row for row in _rows(bench).values() if row["status"] == "ok"]
    cell = GRID_CELL_MIN  # 32-pixel images enlarged 4x
    assert bench["grid"] == (cell * len(ok), GRID_HEADER + len(PROMPTS) * (GRID_CAPTION + cell))
    width, height = bench["chart"]
    assert width == 4 * 400 and height == round(100 * (1.5 + 0.4 * len(ok)))  # 4 panels, a bar per variant
    per_variant = sorted(p.name for p in (bench["out"] / "images" / "ov-f32").iterdir())
    assert per_variant == ["00-seed0.png", "01-seed0.png"]


def test_rerun_reuses_built_models_and_runs_a_qat_folder(bench):
    out = bench["out"]
    args = ["bench", "--model", bench["json"]["model"], "--output", str(out), "--no-memory"]
    args += ["--variants", "pytorch-fp32", "ov-int8-ptq", "ov-int8-qat", "--steps", "6", "--rounds", "1"]
    args += [
        "--num-samples",
        "4",
        "--guidance-scale",
        "4",
        "--qat-model",
        str(out / "models" / "ov-int8-ptq"),
    ]
    args += ["--prompts", str(out.parent / "prompts.txt")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["variants"]}
    assert rows["ov-int8-ptq"]["reused"] is True
    assert rows["ov-int8-qat"]["status"] == "ok" and rows["ov-int8-qat"]["unet_step_median_s"] > 0
    # the QAT row here is the PTQ folder itself, so its images are the same
    assert rows["ov-int8-qat"]["psnr_db"] == rows["ov-int8-ptq"]["psnr_db"]


def test_accuracy_per_seed_and_unet_error_against_pytorch(bench):
    rows = _rows(bench)
    for name in ("pytorch-fp32", "ov-f32", "ov-int8-ptq", "optimum-int8-full"):
        by_seed = rows[name]["prompt_accuracy_by_seed"]
        assert set(by_seed) == {"0"}, name
        assert rows[name]["prompt_accuracy"] == pytest.approx(by_seed["0"]), name
    assert rows["pytorch-fp32"]["unet_rel_error"] == 0.0
    assert rows["ov-f32"]["unet_rel_error"] < 1e-3
    assert rows["ov-f32"]["unet_rel_error"] < rows["ov-int8-ptq"]["unet_rel_error"] < 0.5
    assert 0 < rows["optimum-int8-full"]["unet_rel_error"] < 0.5
    assert "UNet rel. error" in bench["markdown"]


@pytest.mark.slow
def test_bench_runs_every_default_variant_with_memory(tiny_saved, tmp_path):
    from sd_ovopt.evaluation import DEFAULT_VARIANTS

    out = tmp_path / "out"
    args = ["bench", "--model", str(tiny_saved), "--output", str(out), "--steps", "2", "--rounds", "1"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--num-samples", "4"]) == 0
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["variants"]}
    assert tuple(rows) == DEFAULT_VARIANTS
    for name, row in rows.items():
        if row["status"] != "ok":
            assert name == "ov-bf16" and not _cpu_has_bf16()
            continue
        assert row["peak_rss_bytes"] >= row["baseline_rss_bytes"] > 0, name
        assert row["pipeline_median_s"] > 0 and row["unet_bytes"] > 0, name
    assert 10 < float(rows["ov-tome-int8"]["psnr_db"]) < float(rows["ov-f32"]["psnr_db"])
    assert (out / "grid.png").is_file() and (out / "chart.png").is_file()


def test_accuracy_is_reported_per_seed():
    """The seed-to-seed spread of prompt accuracy: each seed's images are judged on their own."""
    from sd_ovopt.evaluation.benchmark import _score
    from sd_ovopt.evaluation.results import VariantResult
    from sd_ovopt.evaluation.timing import Sample

    dark, light = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    pairs = [Sample("p0", 0, 0), Sample("p0", 1, 0), Sample("p1", 0, 1), Sample("p1", 1, 1)]
    rows = {"v": VariantResult(name="v", label="v")}
    _score(
        rows,
        {"v": [light, dark, light, light]},
        None,
        pairs,
        lambda image, prompt: image.getpixel((0, 0))[0] > 0,
    )
    assert rows["v"].prompt_accuracy_by_seed == {"0": 1.0, "1": 0.5}
    assert rows["v"].prompt_accuracy == 0.75
