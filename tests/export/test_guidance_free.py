"""Guidance-free exports (UNet batch 1, what few-step models run): they load and run in sd_ovopt, plain
optimum-intel and OpenVINO GenAI, and a call with guidance gets the typed error that names the export."""

import numpy as np
import pytest
import torch

from sd_ovopt import SdOvOptPipeline, ShapeMismatchError, export_pipeline, read_metadata

SIZE = 32
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def guidance_free(tmp_path_factory):
    from sd_ovopt.testing import tiny_pipeline

    pipe = tiny_pipeline()
    out = tmp_path_factory.mktemp("guidance-free") / "tiny-ov-no-cfg"
    export_pipeline(pipe, out, height=SIZE, width=SIZE, classifier_free_guidance=False, show_progress=False)
    return pipe, out


def _image(pipe, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        PROMPT, guidance_scale=1.0, num_inference_steps=2, generator=generator, output_type="np", **kwargs
    )


def test_every_unet_input_keeps_exactly_its_name_at_batch_1(guidance_free):
    import openvino as ov

    _, folder = guidance_free
    unet = ov.Core().read_model(folder / "unet" / "openvino_model.xml")
    assert [sorted(port.get_names()) for port in unet.inputs] == [
        ["sample"],
        ["timestep"],
        ["encoder_hidden_states"],
    ]
    # compiled at batch 1, the timestep input is also the folded broadcast's tensor: it keeps its name
    compiled = SdOvOptPipeline.from_pretrained(folder, precision="f32").unet.request
    names = ("sample", "timestep", "encoder_hidden_states")
    assert all(name in port.get_names() for name, port in zip(names, compiled.inputs, strict=True))
    assert [port.get_shape()[0] for port in (compiled.inputs[0], compiled.inputs[2])] == [1, 1]
    meta = read_metadata(folder)
    assert meta.classifier_free_guidance is False and meta.unet_batch == 1


def test_sd_ovopt_runs_it_and_matches_pytorch(guidance_free):
    pipe, folder = guidance_free
    ours = SdOvOptPipeline.from_pretrained(folder, precision="f32")
    image = _image(ours).images[0]
    reference = _image(pipe).images[0]
    assert image.shape == (SIZE, SIZE, 3) and np.abs(image - reference).max() < 1e-4
    with pytest.raises(ShapeMismatchError, match="classifier_free_guidance=True"):
        ours(PROMPT, guidance_scale=7.5, num_inference_steps=1)


def test_plain_optimum_intel_runs_it(guidance_free):
    from optimum.intel import OVStableDiffusionPipeline

    pipe, folder = guidance_free
    plain = OVStableDiffusionPipeline.from_pretrained(folder, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    image = _image(plain, height=SIZE, width=SIZE).images[0]
    assert np.abs(image - _image(pipe).images[0]).max() < 1e-4


def test_openvino_genai_runs_it_and_reshapes_it(guidance_free):
    openvino_genai = pytest.importorskip("openvino_genai")
    _, folder = guidance_free
    genai = openvino_genai.Text2ImagePipeline(str(folder), "CPU", INFERENCE_PRECISION_HINT="f32")
    image = genai.generate(PROMPT, guidance_scale=1.0, num_inference_steps=2, width=SIZE, height=SIZE)
    assert image.data.shape == (1, SIZE, SIZE, 3)
    reshaped = openvino_genai.Text2ImagePipeline(str(folder))
    reshaped.reshape(1, SIZE, SIZE, 1.0)
    reshaped.compile("CPU")
    assert reshaped.generate(PROMPT, num_inference_steps=2).data.shape == (1, SIZE, SIZE, 3)
