"""The one recipe: ToMe, calibration along the merged UNet's own sampling, INT8, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_ovopt import QuantizationConfig, ToMeConfig, optimize_pipeline, prepare_unet
from sd_ovopt.quantization.ptq import get_quantization_config
from sd_ovopt.tome import get_tome_config

SIZE = 32


def test_recipe_writes_a_tome_int8_folder_and_leaves_the_pipeline_as_it_was(tome_int8_tiny):
    from sd_ovopt import SdOvOptPipeline, read_metadata

    meta = read_metadata(tome_int8_tiny.path)
    assert list(meta.methods) == ["tome", "int8"]  # rank order: the merge before the quantizers
    assert meta.config("tome").ratio == 0.5 and meta.config("int8").mode == "full"
    assert meta.weight_compression == "int8"
    pipe = tome_int8_tiny.pipe
    assert get_tome_config(pipe.unet) is None and get_quantization_config(pipe.unet) is None
    after, before = pipe.unet.state_dict(), tome_int8_tiny.unet_before
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    pipe = SdOvOptPipeline.from_pretrained(tome_int8_tiny.path, precision="f32")
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.asarray(image).std() > 0


def test_recipe_without_quantization_is_a_plain_export(tiny_pipe, tmp_path):
    from sd_ovopt import read_metadata

    out = optimize_pipeline(tiny_pipe, tmp_path / "ov", height=SIZE, width=SIZE, show_progress=False)
    meta = read_metadata(out)
    assert meta.methods == {} and meta.weight_compression is None


def test_calibration_is_recorded_along_the_merged_unets_own_sampling(tiny_pipe, monkeypatch):
    """The UNet that runs during calibration is the merged student, not the pipeline's float UNet."""
    from sd_ovopt.quantization import method as int8_method

    seen = {}

    def fake_quantize(unet, calibration, config):
        seen["unet"], seen["n"] = unet, len(calibration)
        return unet

    monkeypatch.setattr(int8_method, "quantize_unet", fake_quantize)
    record = int8_method.collect_calibration
    during = {}

    def spy(pipe, prompts, **kwargs):
        during["unet"], during["prompts"] = pipe.unet, list(prompts)
        return record(pipe, prompts, **kwargs)

    monkeypatch.setattr(int8_method, "collect_calibration", spy)
    original = tiny_pipe.unet
    student = prepare_unet(
        tiny_pipe,
        [QuantizationConfig(subset_size=5), ToMeConfig(ratio=0.5)],  # applied in rank order, not list order
        calibration_prompts=["a red circle", "a blue square"],
        num_inference_steps=2,
        show_progress=False,
    )
    assert during["unet"] is student and during["unet"] is not original  # sampled with the merged UNet
    assert get_tome_config(student).ratio == 0.5 and get_tome_config(original) is None
    assert seen["unet"] is student and seen["n"] == 5  # prompts cycled until the subset was full
    assert during["prompts"] == ["a red circle", "a blue square"] * 2
    assert tiny_pipe.unet is original


def test_recipe_refuses_an_existing_output_before_the_slow_part(tiny_pipe, tmp_path):
    from sd_ovopt import OutputExistsError

    (tmp_path / "ov").mkdir()
    (tmp_path / "ov" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        optimize_pipeline(tiny_pipe, tmp_path / "ov", methods=[QuantizationConfig(subset_size=2)])
    assert (tmp_path / "ov" / "keep.txt").read_text() == "mine"
