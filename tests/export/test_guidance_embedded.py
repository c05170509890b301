"""UNets whose guidance is an input (``time_cond_proj_dim``, as LCM-distilled UNets have): exported with the
``timestep_cond`` input at one row per image, run with the LCM scheduler like diffusers runs them."""

import numpy as np
import pytest
import torch

from sd_ovopt import (
    InvalidConfigError,
    SdOvOptPipeline,
    UnsupportedModelError,
    export_pipeline,
    read_metadata,
)

SIZE = 32
PROMPT = "a red circle"
EMBEDDING = 16


@pytest.fixture(scope="module")
def lcm_tiny(tmp_path_factory):
    """The tiny pipeline with a guidance-embedded UNet (random weights) and diffusers' LCMScheduler."""
    from diffusers import LCMScheduler, UNet2DConditionModel

    from sd_ovopt.testing import tiny_pipeline
    from sd_ovopt.testing.models import TINY_UNET_CONFIG

    pipe = tiny_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG, time_cond_proj_dim=EMBEDDING)
    pipe.unet = unet
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    out = export_pipeline(
        pipe, tmp_path_factory.mktemp("lcm") / "tiny-lcm", height=SIZE, width=SIZE, show_progress=False
    )
    return pipe, out


def _image(pipe, guidance_scale=8.0, steps=4):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        PROMPT,
        guidance_scale=guidance_scale,
        num_inference_steps=steps,
        generator=generator,
        output_type="np",
    ).images[0]


def test_the_unet_ir_takes_the_guidance_embedding_at_one_row_per_image(lcm_tiny):
    import openvino as ov

    _, folder = lcm_tiny
    unet = ov.Core().read_model(folder / "unet" / "openvino_model.xml")
    assert str(unet.input("timestep_cond").get_partial_shape()) == f"[?,{EMBEDDING}]"
    compiled = SdOvOptPipeline.from_pretrained(folder, precision="f32").unet.request
    assert list(compiled.input("timestep_cond").get_shape()) == [1, EMBEDDING]
    assert compiled.input("sample").get_shape()[0] == 1
    meta = read_metadata(folder)
    assert meta.classifier_free_guidance is False and meta.unet_batch == 1


@pytest.mark.parametrize("guidance_scale", [8.0, 1.0])
def test_sd_ovopt_matches_diffusers_with_the_lcm_scheduler(lcm_tiny, guidance_scale):
    pipe, folder = lcm_tiny
    ours = SdOvOptPipeline.from_pretrained(folder, precision="f32")
    assert type(ours.scheduler).__name__ == "LCMScheduler"
    image = _image(ours, guidance_scale)
    assert np.abs(image - _image(pipe, guidance_scale)).max() < 1e-4
    assert not np.array_equal(image, _image(ours, 2.0))  # the guidance reaches the UNet as its input


def test_int8_records_the_guidance_input_and_runs(lcm_tiny, tmp_path):
    """The recipe calibrates along the LCM sampling (recording ``timestep_cond``) and exports an INT8 UNet
    that still takes the guidance embedding."""
    from sd_ovopt import QuantizationConfig, collect_calibration, optimize_pipeline

    pipe, folder = lcm_tiny
    items = collect_calibration(
        pipe, [PROMPT], num_inference_steps=2, guidance_scale=8.0, show_progress=False
    )
    assert items[0]["timestep_cond"].shape == (1, EMBEDDING)
    out = optimize_pipeline(
        pipe, tmp_path / "int8", methods=[QuantizationConfig(subset_size=4)], guidance_scale=8.0,
        calibration_steps=2, show_progress=False,
    )  # fmt: skip
    int8 = SdOvOptPipeline.from_pretrained(out, precision="f32")
    assert int8.method_config("int8").mode == "full" and int8.export_metadata.unet_batch == 1
    image, float_image = _image(int8), _image(SdOvOptPipeline.from_pretrained(folder, precision="f32"))
    assert np.isfinite(image).all() and 0 < np.abs(image - float_image).mean() < 0.1
    assert not np.array_equal(image, _image(int8, 2.0))  # the guidance still reaches the INT8 UNet


def test_step_caching_qat_and_guided_rows_are_refused(lcm_tiny, tmp_path):
    from sd_ovopt import DeepCacheConfig

    pipe, _ = lcm_tiny
    with pytest.raises(UnsupportedModelError, match="step caching"):
        export_pipeline(pipe, tmp_path / "dc", methods=[DeepCacheConfig(interval=2)])
    with pytest.raises(InvalidConfigError, match="never runs a second, unconditional row"):
        export_pipeline(pipe, tmp_path / "cfg", classifier_free_guidance=True)
    assert not list(tmp_path.iterdir())


def test_optimum_intel_and_openvino_genai_run_it(lcm_tiny):
    from optimum.intel import OVLatentConsistencyModelPipeline

    pipe, folder = lcm_tiny
    reference = _image(pipe)
    plain = OVLatentConsistencyModelPipeline.from_pretrained(
        folder, ov_config={"INFERENCE_PRECISION_HINT": "f32"}
    )
    generator = torch.Generator().manual_seed(0)
    image = plain(
        PROMPT, guidance_scale=8.0, num_inference_steps=4, generator=generator, output_type="np"
    ).images[0]
    assert np.abs(image - reference).max() < 1e-4
    openvino_genai = pytest.importorskip("openvino_genai")
    genai = openvino_genai.Text2ImagePipeline(str(folder), "CPU", INFERENCE_PRECISION_HINT="f32")
    out = genai.generate(
        PROMPT, guidance_scale=8.0, num_inference_steps=4, width=SIZE, height=SIZE,
        generator=openvino_genai.TorchGenerator(0),
    )  # fmt: skip
    assert np.abs(out.data[0].astype(np.int16) - np.round(reference * 255).astype(np.int16)).max() <= 2
