"""The bench harness's step-caching variants: registered opt-in, built by the recipe, run end to end."""

import pytest

from sd_ovopt.evaluation.variants import DEFAULT_VARIANTS, VARIANTS, resolve_variants

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registered_with_labels_and_opt_in():
    assert "DeepCache" in VARIANTS["ov-deepcache"] and "ToMe + INT8" in VARIANTS["ov-tome-int8-deepcache"]
    assert "ov-deepcache" not in DEFAULT_VARIANTS and "ov-tome-int8-deepcache" not in DEFAULT_VARIANTS
    assert resolve_variants(["ov-deepcache"], qat_model=None) == ("ov-deepcache",)


def test_ov_deepcache_runs_against_pytorch(tiny_saved, tmp_path):
    from sd_ovopt.evaluation import run_benchmark
    from sd_ovopt.export.metadata import read_metadata

    result = run_benchmark(
        tiny_saved,
        tmp_path / "bench",
        variants=["pytorch-fp32", "ov-deepcache"],
        steps=4,
        rounds=1,
        measure_memory=False,
        show_progress=False,
    )
    row = result.variant("ov-deepcache")
    assert row.status == "ok" and row.pipeline_s and row.unet_bytes > 0
    assert 10 < row.psnr_db < 60  # close to PyTorch FP32, not equal: cached steps reuse features
    meta = read_metadata(tmp_path / "bench" / "models" / "ov-deepcache")
    assert meta.config("step_caching").interval == 3
