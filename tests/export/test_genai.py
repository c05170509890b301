"""Exported folders deploy in OpenVINO GenAI's Text2ImagePipeline (torch-free), FP32 and ToMe + INT8 alike."""

import numpy as np
import pytest
import torch

from sd_ovopt import SdOvOptPipeline, read_metadata

openvino_genai = pytest.importorskip("openvino_genai")

PROMPT = "a red circle on a blue background"
SIZE = {"width": 32, "height": 32}


def _torch_generator(seed: int):
    """A GenAI generator drawing the same normal noise as ``torch.Generator().manual_seed(seed)``."""
    import openvino as ov

    class TorchGenerator(openvino_genai.Generator):
        def __init__(self) -> None:
            openvino_genai.Generator.__init__(self)
            self.generator = torch.Generator().manual_seed(seed)

        def next(self) -> float:
            return torch.randn(1, generator=self.generator).item()

        def randn_tensor(self, shape):
            return ov.Tensor(torch.randn(list(shape), generator=self.generator).numpy())

    return TorchGenerator()


def _genai_image(pipe, prompt: str = PROMPT, seed: int = 0, steps: int = 4) -> np.ndarray:
    out = pipe.generate(prompt, num_inference_steps=steps, generator=_torch_generator(seed), **SIZE)
    return out.data[0].copy()  # GenAI reuses the output buffer on the next call


def test_export_writes_the_openvino_tokenizer_and_an_i64_timestep(exported_tiny, tiny_pipe):
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops)

    folder = exported_tiny / "tokenizer"
    assert (folder / "openvino_tokenizer.xml").is_file() and (folder / "openvino_detokenizer.xml").is_file()
    tokenize = ov.Core().compile_model(folder / "openvino_tokenizer.xml", "CPU")
    for prompt in (PROMPT, "A Yellow  star, top-left!"):
        ids = tokenize([prompt])["input_ids"][0].tolist()
        assert ids == tiny_pipe.tokenizer(prompt).input_ids, prompt
    unet = ov.Core().read_model(exported_tiny / "unet" / "openvino_model.xml")
    timestep = next(i for i in unet.inputs if i.get_any_name() == "timestep")
    assert timestep.get_element_type() == ov.Type.i64 and list(timestep.get_partial_shape().to_shape()) == [1]
    assert read_metadata(exported_tiny).versions["openvino-tokenizers"] != "not installed"


def test_genai_generates_what_sd_ovopt_generates(exported_tiny):
    genai = openvino_genai.Text2ImagePipeline(str(exported_tiny), "CPU", INFERENCE_PRECISION_HINT="f32")
    image = _genai_image(genai)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert not np.array_equal(image, _genai_image(genai, "a green square"))  # the prompt reaches the UNet
    ours = SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32")
    ref = ours(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    ref = (ref.images[0] * 255).round()
    assert np.abs(image - ref).mean() < 1  # same noise, scheduler and IRs: equal up to 8-bit rounding
    assert np.abs(image - ref).max() <= 2


def test_genai_generates_from_a_tome_int8_export(tome_int8_tiny):
    meta = read_metadata(tome_int8_tiny.path)
    assert meta.config("tome") is not None and meta.config("int8") is not None
    genai = openvino_genai.Text2ImagePipeline(str(tome_int8_tiny.path), "CPU")
    image = _genai_image(genai, steps=2)
    assert image.shape == (32, 32, 3) and image.std() > 0
