"""SdOvOptPipeline with a step-caching export: the schedule, parity with PyTorch, plain optimum-intel."""

import shutil

import numpy as np
import pytest
import torch

from sd_ovopt import CorruptModelError, DeepCacheConfig, SdOvOptPipeline, apply_deepcache, remove_deepcache
from sd_ovopt.testing import tiny_pipeline

STEPS = 7
CONFIG = DeepCacheConfig(interval=3)  # what the deepcache_export fixture exports
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(pipe, steps=STEPS, seed=0):
    return pipe(
        "a red circle",
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def torch_images():
    pipe = tiny_pipeline()
    plain = _image(pipe)
    apply_deepcache(pipe, CONFIG)
    cached = _image(pipe)
    remove_deepcache(pipe)
    return plain, cached


@pytest.fixture(scope="module")
def ov_pipe(deepcache_export):
    pipe = SdOvOptPipeline.from_pretrained(deepcache_export, precision="f32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_runs_the_full_unet_on_refresh_steps_only(ov_pipe):
    assert ov_pipe.method_config("step_caching") == CONFIG
    _image(ov_pipe)
    assert ov_pipe.last_unet_steps == ("full", "shallow", "shallow", "full", "shallow", "shallow", "full")


def test_matches_the_pytorch_cached_pipeline_and_repeats(ov_pipe, torch_images):
    plain, cached = torch_images
    first, second = _image(ov_pipe), _image(ov_pipe)
    assert _rel(first, cached) < 1e-4
    assert np.array_equal(first, second)  # same seed, same image
    assert _rel(first, plain) > 1e-2  # the cache is really used


def test_disabled_it_computes_the_uncached_pipeline(ov_pipe, torch_images):
    plain, _ = torch_images
    ov_pipe.disable_method("step_caching")
    try:
        assert _rel(_image(ov_pipe), plain) < 1e-4
        assert ov_pipe.last_unet_steps == ()  # the plain loop: one full UNet call per step
    finally:
        ov_pipe.enable_method("step_caching")


def test_plain_optimum_intel_loads_the_folder_and_runs_the_full_unet(deepcache_export, torch_images):
    from optimum.intel import OVStableDiffusionPipeline

    from sd_ovopt.pipelines.ov_pipeline import quiet_safety_checker_warning

    plain, _ = torch_images
    with quiet_safety_checker_warning():
        pipe = OVStableDiffusionPipeline._from_pretrained(
            model_id=str(deepcache_export),
            config=OVStableDiffusionPipeline._load_config(str(deepcache_export)),
            ov_config={"INFERENCE_PRECISION_HINT": "f32"},
        )
    pipe.set_progress_bar_config(disable=True)
    assert _rel(_image(pipe), plain) < 1e-4


def test_a_missing_shallow_ir_is_a_corrupt_export(deepcache_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(deepcache_export, copy)
    (copy / "unet_shallow" / "openvino_model.bin").unlink()
    with pytest.raises(CorruptModelError, match="unet_shallow"):
        SdOvOptPipeline.from_pretrained(copy, precision="f32")
