"""Few-step, guidance-free generation as users run it on CPUs: an LCM-LoRA-shaped adapter fused, the LCM
(or TCD) scheduler, one UNet row per image, the tiny autoencoder, ToMe and INT8 calibrated along the few-step
sampling itself; served at 1, 2 and 4 steps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import openvino as ov
import pytest
import torch
from diffusers import LCMScheduler, TCDScheduler

from sd_ovopt import (
    DeepCacheConfig,
    LoRAConfig,
    QuantizationConfig,
    SdOvOptPipeline,
    ShapeMismatchError,
    ToMeConfig,
    export_pipeline,
    optimize_pipeline,
    read_metadata,
)
from sd_ovopt.lora import write_example_lora
from sd_ovopt.testing import tiny_pipeline, tiny_taesd

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
PROMPT = "a red circle"
CALIBRATION_PROMPTS = ["a red circle", "a blue square on a green background"]


def _few_step_folder(out, lora, methods, scheduler="lcm", **recipe):
    return optimize_pipeline(
        tiny_pipeline(),
        out,
        methods=[LoRAConfig(lora), *methods],
        scheduler=scheduler,
        vae=tiny_taesd(),
        **recipe,
        guidance_scale=1.0,
        calibration_prompts=CALIBRATION_PROMPTS,
        calibration_steps=4,
        height=SIZE,
        width=SIZE,
        show_progress=False,
    )


@pytest.fixture(scope="module")
def few_step(tmp_path_factory):
    """The same LCM-LoRA-shaped model, tiny decoder and LCM scheduler: float, and ToMe 0.4 + INT8."""
    root = tmp_path_factory.mktemp("few-step")
    lora = write_example_lora(root / "lcm-lora.safetensors", tiny_pipeline().unet, rank=8)
    return SimpleNamespace(
        lora=lora,
        float=_few_step_folder(root / "float", lora, []),
        int8=_few_step_folder(root / "tome-int8", lora, [ToMeConfig(ratio=0.4), QuantizationConfig()]),
    )


def _image(pipe, steps, guidance_scale=1.0):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="np",
    ).images[0]


def test_the_folder_is_guidance_free_with_every_part_recorded(few_step):
    meta = read_metadata(few_step.int8)
    assert meta.classifier_free_guidance is False and meta.unet_batch == 1
    assert list(meta.methods) == ["lora", "tome", "int8"] and meta.vae == "AutoencoderTiny"
    pipe = SdOvOptPipeline.from_pretrained(few_step.int8)
    assert isinstance(pipe.scheduler, LCMScheduler)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_tome_int8_serves_1_2_and_4_steps_close_to_the_float_folder(few_step, steps):
    quantized = _image(SdOvOptPipeline.from_pretrained(few_step.int8, precision="f32"), steps)
    reference = _image(SdOvOptPipeline.from_pretrained(few_step.float, precision="f32"), steps)
    assert quantized.shape == (SIZE, SIZE, 3) and np.isfinite(quantized).all()
    assert np.abs(quantized - reference).mean() < 0.05
    assert np.corrcoef(quantized.ravel(), reference.ravel())[0, 1] > 0.9


def test_a_call_with_guidance_gets_the_error_that_names_the_export(few_step):
    pipe = SdOvOptPipeline.from_pretrained(few_step.int8)
    with pytest.raises(ShapeMismatchError, match="classifier_free_guidance=True"):
        pipe(PROMPT, num_inference_steps=4, guidance_scale=7.5)


@pytest.mark.slow
def test_step_caching_runs_guidance_free_at_four_steps(tmp_path):
    lora = write_example_lora(tmp_path / "lcm-lora.safetensors", tiny_pipeline().unet, rank=8)
    folder = _few_step_folder(tmp_path / "cached", lora, [DeepCacheConfig(interval=2)])
    pipe = SdOvOptPipeline.from_pretrained(folder, precision="f32")
    image = _image(pipe, 4)
    assert pipe.last_unet_steps == ("full", "shallow", "full", "shallow")
    assert np.isfinite(image).all() and image.std() > 0


def test_tcd_scheduler_matches_diffusers_in_f32(tmp_path):
    pipe = tiny_pipeline()
    out = export_pipeline(
        pipe, tmp_path / "tcd", height=SIZE, width=SIZE, scheduler="tcd", classifier_free_guidance=False,
        show_progress=False,
    )  # fmt: skip
    ours = SdOvOptPipeline.from_pretrained(out, precision="f32")
    assert isinstance(ours.scheduler, TCDScheduler)
    pipe.scheduler = TCDScheduler.from_config(pipe.scheduler.config)
    for steps in (1, 4):
        assert np.abs(_image(ours, steps) - _image(pipe, steps)).max() < 1e-4


def _genai_levels(openvino_genai, folder, pipe):
    """Per-pixel differences between GenAI's 4-step image of ``folder`` and ``pipe``'s (that folder, f32)."""
    genai = openvino_genai.Text2ImagePipeline(str(folder), "CPU", INFERENCE_PRECISION_HINT="f32")
    out = genai.generate(
        PROMPT, num_inference_steps=4, guidance_scale=1.0, width=SIZE, height=SIZE,
        generator=openvino_genai.TorchGenerator(0),
    )  # fmt: skip
    ours = _image(pipe, 4)
    return np.abs(out.data[0].astype(np.int16) - np.round(ours * 255).astype(np.int16))


def test_openvino_genai_runs_the_float_few_step_folder_as_sd_ovopt_does(few_step):
    """LoRA fused, LCM scheduler, tiny decoder listed as GenAI reads it: the same image within 2 levels."""
    openvino_genai = pytest.importorskip("openvino_genai")
    pipe = SdOvOptPipeline.from_pretrained(few_step.float, precision="f32")
    levels = _genai_levels(openvino_genai, few_step.float, pipe)
    assert levels.max() <= 2 and levels.mean() < 1


def test_openvino_genai_runs_the_tome_int8_few_step_folder_as_sd_ovopt_does(few_step):
    """GenAI's UNet computes what ours does on the same inputs, and the images agree on average (within 3
    levels).

    The images' largest difference is not bounded: GenAI's sampler and ours differ in the last float bits,
    and an INT8 UNet turns such a difference into another rounding of some activation (moving our own
    image's initial latents by 1e-7 of their size moves it by up to 16 levels here)."""
    openvino_genai = pytest.importorskip("openvino_genai")
    pipe = SdOvOptPipeline.from_pretrained(few_step.int8, precision="f32")
    shapes = {port.get_any_name(): tuple(port.get_shape()) for port in pipe.unet.request.inputs}
    rng = np.random.default_rng(0)
    sample = rng.standard_normal(shapes["sample"]).astype(np.float32)
    hidden = rng.standard_normal(shapes["encoder_hidden_states"]).astype(np.float32)
    timestep = np.array([499], dtype=np.int64)
    unet = openvino_genai.UNet2DConditionModel(str(few_step.int8 / "unet"))
    unet.reshape(1, SIZE, SIZE, 77)
    unet.compile("CPU", INFERENCE_PRECISION_HINT="f32")
    unet.set_hidden_states("encoder_hidden_states", ov.Tensor(hidden))
    theirs = np.array(unet.infer(ov.Tensor(sample), ov.Tensor(timestep)).data)
    ours = np.asarray(pipe.unet(sample=sample, timestep=timestep, encoder_hidden_states=hidden)[0])
    np.testing.assert_allclose(theirs.reshape(ours.shape), ours, rtol=0, atol=1e-5)
    assert _genai_levels(openvino_genai, few_step.int8, pipe).mean() < 3


def test_the_recipe_quantizes_the_tiny_decoder_too_in_one_folder(few_step, tmp_path):
    out = _few_step_folder(tmp_path / "decoder-int8", few_step.lora, [], vae_int8=True)
    meta = read_metadata(out)
    assert meta.vae_decoder_int8 and meta.vae == "AutoencoderTiny" and list(meta.methods) == ["lora"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in few_step.float.iterdir())
    assert not list(tmp_path.glob(".*partial*"))
    decoder = ov.Core().read_model(out / "vae_decoder" / "openvino_model.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in decoder.get_ops())
    # the same UNet, the decoder in INT8: close to the float decoder's image
    unet_files = [(folder / "unet" / "openvino_model.bin").read_bytes() for folder in (out, few_step.float)]
    assert unet_files[0] == unet_files[1]
    images = [_image(SdOvOptPipeline.from_pretrained(f, precision="f32"), 4) for f in (out, few_step.float)]
    assert 0 < np.abs(images[0] - images[1]).mean() < 0.02


def test_vae_int8_without_a_tiny_autoencoder_is_refused_before_calibration(tmp_path):
    from sd_ovopt import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="tiny autoencoder's decoder"):
        optimize_pipeline(tiny_pipeline(), tmp_path / "out", methods=[QuantizationConfig()], vae_int8=True)
    assert not (tmp_path / "out").exists()
