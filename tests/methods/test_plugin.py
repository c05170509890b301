"""A method registered from the test suite runs through export, the recipe, the pipeline, the CLI and the
benchmark with no edit to any of them: the registry is the only place a method is named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toy import ScaleConfig, ScaleOutputMethod  # tests/methods/toy.py: pytest puts this folder on sys.path

from sd_ovopt import (
    InvalidConfigError,
    SdOvOptPipeline,
    UnsupportedModelError,
    export_pipeline,
    optimize_pipeline,
)
from sd_ovopt.cli import main
from sd_ovopt.evaluation import VariantSpec, register_variant, run_benchmark
from sd_ovopt.evaluation.variants import unregister_variant
from sd_ovopt.methods import (
    get_method,
    method_for_config,
    register_method,
    registered_methods,
    unregister_method,
)

SIZE = 32


@pytest.fixture(scope="module")
def toy():
    method = register_method(ScaleOutputMethod())
    yield method
    unregister_method(method.name)


def _unet_out(pipe: SdOvOptPipeline, torch_pipe) -> tuple[np.ndarray, np.ndarray]:
    """The IR's and PyTorch's UNet outputs on the same inputs at the export shape."""
    torch.manual_seed(0)
    sample = torch.randn(2, 4, SIZE // 2, SIZE // 2)
    text = torch.randn(2, 77, torch_pipe.unet.config.cross_attention_dim)
    timestep = torch.tensor([500])
    with torch.no_grad():
        ref = torch_pipe.unet(sample, timestep, text, return_dict=False)[0].numpy()
    out = pipe.unet(sample=sample, timestep=timestep, encoder_hidden_states=text)[0]
    return np.asarray(out), ref


def test_registered_by_name_and_by_config(toy):
    assert get_method("scale_output") is toy and method_for_config(ScaleConfig()) is toy
    names = list(registered_methods())
    assert names.index("tome") < names.index("scale_output") < names.index("int8")  # rank order
    with pytest.raises(InvalidConfigError, match="already registered"):
        register_method(type("Other", (ScaleOutputMethod,), {})())


def test_export_load_and_run(toy, tiny_pipe, tmp_path):
    out = export_pipeline(tiny_pipe, tmp_path / "ov", methods=[ScaleConfig(2.0)], show_progress=False)
    assert toy.applied_config(tiny_pipe.unet) is None  # applied for the export only
    record = json.loads((out / "sd_ovopt.json").read_text())["methods"]
    assert record == {"scale_output": {"version": 1, "config": {"factor": 2.0, "version": 1}}}
    pipe = SdOvOptPipeline.from_pretrained(out, precision="f32")
    assert pipe.method_config("scale_output") == ScaleConfig(2.0)
    scaled, plain = _unet_out(pipe, tiny_pipe)
    assert np.abs(scaled - 2 * plain).max() < 1e-4 * np.abs(plain).max() + 1e-5  # the hook is in the IR
    calls = toy.calls
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert np.isfinite(image).all() and toy.calls == calls + 1  # its run-time hook wrapped the call
    with pytest.raises(InvalidConfigError, match="baked into"):
        pipe.disable_method("scale_output")


def test_recipe_and_cli(toy, tiny_pipe, tiny_saved, tmp_path):
    from sd_ovopt import QuantizationConfig, read_metadata

    out = optimize_pipeline(
        tiny_pipe, tmp_path / "q", methods=[ScaleConfig(0.5), QuantizationConfig(subset_size=4)],
        calibration_steps=2, height=SIZE, width=SIZE, show_progress=False,
    )  # fmt: skip
    assert list(read_metadata(out).methods) == ["scale_output", "int8"]  # rank 50 before INT8's 90
    assert main(["export", str(tiny_saved), str(tmp_path / "cli"), "--scale-output", "3"]) == 0
    assert read_metadata(tmp_path / "cli").config("scale_output") == ScaleConfig(3.0)


def test_benchmark(toy, tiny_saved, tmp_path):
    spec = register_variant(
        VariantSpec(
            "ov-scaled",
            "OpenVINO, output scaled",
            "sd_ovopt",
            lambda b: b.recipe("ov-scaled", [ScaleConfig(1.0)]),
        )
    )
    try:
        result = run_benchmark(
            tiny_saved, tmp_path / "bench", variants=["pytorch-fp32", "ov-scaled"], prompts=["a red circle"],
            steps=2, rounds=1, measure_memory=False, judge=lambda image, prompt: True,
        )  # fmt: skip
    finally:
        unregister_variant(spec.name)
    row = result.variant("ov-scaled")
    assert row.status == "ok" and row.pipeline_median_s > 0 and row.psnr_db > 20  # factor 1: same images


def test_a_folder_naming_an_unregistered_method_is_refused(toy, tiny_pipe, tmp_path):
    out = export_pipeline(tiny_pipe, tmp_path / "ov", methods=[ScaleConfig(2.0)], show_progress=False)
    unregister_method("scale_output")
    try:
        with pytest.raises(UnsupportedModelError, match="'scale_output' is not registered"):
            SdOvOptPipeline.from_pretrained(out)
    finally:
        register_method(toy)
