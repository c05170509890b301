"""sd_ovopt.evaluation.variants: the registry of benchmark variants and what runs when nothing can."""

from __future__ import annotations

import pytest


def test_default_variants_add_qat_only_when_a_qat_model_is_given():
    from sd_ovopt.evaluation.variants import DEFAULT_VARIANTS, resolve_variants

    assert resolve_variants(None, qat_model=None) == DEFAULT_VARIANTS
    assert resolve_variants(None, qat_model="x")[-1] == "ov-int8-qat"
    assert resolve_variants(["ov-f32", "ov-f32"], qat_model=None) == ("ov-f32",)


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_a_variant_is_one_registration(tiny_saved, tmp_path):
    from sd_ovopt.errors import InvalidConfigError
    from sd_ovopt.evaluation import VariantSpec, register_variant, run_benchmark
    from sd_ovopt.evaluation import variants as registry

    spec = VariantSpec("pytorch-copy", "PyTorch again", "torch", lambda b: (b.model, None, False))
    register_variant(spec)
    try:
        with pytest.raises(InvalidConfigError, match="registered already"):
            register_variant(spec)
        result = run_benchmark(
            tiny_saved,
            tmp_path / "out",
            variants=["pytorch-copy"],
            steps=1,
            rounds=1,
            measure_memory=False,
            show_progress=False,
        )
        row = result.variant("pytorch-copy")
        assert row.status == "ok" and row.label == "PyTorch again" and row.pipeline_s
    finally:
        registry._REGISTRY.pop("pytorch-copy")
    with pytest.raises(InvalidConfigError, match="runtime"):
        register_variant(VariantSpec("x", "x", "onnx", lambda b: (b.model, None, False)))
    with pytest.raises(InvalidConfigError, match="unknown settings"):
        run_benchmark(tiny_saved, tmp_path / "out2", stepz=2)


def test_a_run_with_nothing_runnable_still_reports_why(tiny_saved, tmp_path):
    if _cpu_has_bf16():
        pytest.skip("this CPU runs bf16, so ov-bf16 would be built (slow)")
    from sd_ovopt.evaluation import run_benchmark

    result = run_benchmark(tiny_saved, tmp_path / "out", variants=["ov-bf16"], steps=1, show_progress=False)
    row = result.variant("ov-bf16")
    assert row.status == "skipped" and "BF16" in row.reason
    assert set(result.outputs) == {"json", "markdown", "chart"}  # no images, so no grid
    assert "- `ov-bf16` (skipped)" in (tmp_path / "out" / "results.md").read_text()
