"""SdOvOptPipeline compiles through OpenVINO's compiled-model cache: one entry per shape, reused by the next
load, trimmed to the cap, off on request."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from sd_ovopt import InvalidConfigError, SdOvOptPipeline


def _blobs(folder):
    return sorted(p.name for p in folder.glob("*.blob"))


def _image(pipe):
    out = pipe(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    return out.images[0]


def test_a_second_load_at_the_same_shape_reuses_the_cache(exported_tiny, tmp_path):
    cache = tmp_path / "cache"
    first = SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32", cache_dir=cache)
    written = _blobs(cache)
    assert len(written) >= 3  # UNet, text encoder, VAE decoder (and encoder)
    second = SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32", cache_dir=cache)
    assert _blobs(cache) == written  # nothing compiled afresh
    fresh, cached = _image(first), _image(second)
    assert np.isfinite(cached).all()
    np.testing.assert_array_equal(fresh, cached)
    second.reshape(batch_size=1, height=48, width=32)
    second.compile()
    assert len(_blobs(cache)) > len(written)  # a new shape is a new entry


def test_the_cache_is_off_on_request_and_the_cap_evicts(exported_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_OVOPT_CACHE_DIR", str(tmp_path / "default"))
    SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32", cache_dir=False)
    assert not (tmp_path / "default").exists()
    cache = tmp_path / "capped"
    SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32", cache_dir=cache)
    assert _blobs(cache)
    for blob in cache.glob("*.blob"):  # written an hour ago (entries of the last seconds are spared)
        os.utime(blob, (time.time() - 3600, time.time() - 3600))
    monkeypatch.setenv("SD_OVOPT_CACHE_MAX_GB", "0")
    SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32", cache_dir=cache)
    assert _blobs(cache) == []  # a cap of 0 keeps no idle entry
    monkeypatch.setenv("SD_OVOPT_CACHE_MAX_GB", "-1")
    with pytest.raises(InvalidConfigError, match="SD_OVOPT_CACHE_MAX_GB"):
        SdOvOptPipeline.from_pretrained(exported_tiny, cache_dir=cache)


@pytest.mark.parametrize("model", ["float", "8-bit"])
@pytest.mark.parametrize("precision", ["bf16", "default"])
def test_below_f32_a_pipeline_compiles_uncached_and_stays_finite(
    model, precision, exported_tiny, tome_int8_tiny, tmp_path
):
    # OpenVINO 2026.4.1's CPU plugin gives NaN images from some models cached below f32: an 8-bit UNet at
    # bf16 on AVX512-BF16, a float pipeline at bf16 on other CPUs
    folder = exported_tiny if model == "float" else tome_int8_tiny.path
    cache = tmp_path / "cache"
    pipes = [SdOvOptPipeline.from_pretrained(folder, precision=precision, cache_dir=cache) for _ in range(2)]
    images = [_image(pipe) for pipe in pipes]
    assert all(np.isfinite(image).all() for image in images)
    np.testing.assert_array_equal(images[0], images[1])
    assert _blobs(cache) == [] and "CACHE_DIR" not in pipes[0].ov_config
    SdOvOptPipeline.from_pretrained(folder, precision="f32", cache_dir=cache)
    assert _blobs(cache)  # at f32 it is cached
