"""The bench row of our best folder under OpenVINO GenAI (`genai-tome-int8`), on the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sd_ovopt.errors import InvalidConfigError

pytest.importorskip("openvino_genai")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red circle on a blue background"


def test_genai_pipeline_is_called_like_diffusers(exported_tiny):
    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.evaluation.genai import GenAIPipeline

    pipe = GenAIPipeline(exported_tiny, precision="f32", properties={"INFERENCE_NUM_THREADS": 1})
    call = {"num_inference_steps": 3, "guidance_scale": 7.5, "height": 32, "width": 32}
    image = pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **call).images[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
    seeded = pipe(PROMPT, generator=0, output_type="uint8", **call).images[0]  # GenAI's own TorchGenerator
    assert np.array_equal(seeded, (image * 255).round().astype(np.uint8))
    assert isinstance(pipe(PROMPT, generator=0, **call).images[0], Image.Image)
    ours = SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32")
    ref = ours(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **call).images[0]
    assert np.abs(image - ref).max() <= 2 / 255 + 1e-6  # same noise, scheduler and IRs
    pipe.unet.compile()
    assert pipe.unet.request.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert pipe.vae_scale_factor == ours.vae_scale_factor
    with pytest.raises(InvalidConfigError, match="one prompt"):
        pipe([PROMPT, PROMPT], **call)
    with pytest.raises(InvalidConfigError, match="output_type"):
        pipe(PROMPT, output_type="latent", **call)


def test_bench_times_the_tome_int8_folder_under_genai(tiny_saved, tmp_path):
    from sd_ovopt.evaluation import run_benchmark

    result = run_benchmark(
        tiny_saved,
        tmp_path / "out",
        variants=["ov-tome-int8", "genai-tome-int8"],
        prompts=[PROMPT],
        steps=2,
        rounds=1,
        num_samples=4,
        measure_memory=False,
        show_progress=False,
    )
    ours, genai = result.variant("ov-tome-int8"), result.variant("genai-tome-int8")
    assert genai.status == "ok", genai.reason
    assert genai.reused and genai.path == ours.path  # the same folder, built once
    assert genai.runtime == "genai" and genai.runtime_precision == "f32"
    assert genai.pipeline_median_s > 0 and genai.unet_step_median_s > 0
    assert genai.total_bytes == ours.total_bytes
    images = {
        name: np.asarray(Image.open(tmp_path / "out" / "images" / name / "00-seed0.png"), dtype=np.int16)
        for name in ("ov-tome-int8", "genai-tome-int8")
    }
    diff = np.abs(images["genai-tome-int8"] - images["ov-tome-int8"])
    assert diff.mean() < 1 and diff.max() <= 2  # the same image, generated without torch
    assert "genai-tome-int8" in (tmp_path / "out" / "results.md").read_text()
