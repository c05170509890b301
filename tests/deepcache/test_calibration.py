"""Calibration along a cached run, and ToMe + INT8 + step caching through the one recipe."""

import numpy as np
import pytest
import torch

from sd_ovopt import DeepCacheConfig, QuantizationConfig, ToMeConfig, is_deepcache_applied
from sd_ovopt.deepcache import FEATURE_NAME, collect_deepcache_calibration, quantize_deepcache_unet
from sd_ovopt.deepcache.patch import FEATURE_KWARG, state_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a red circle", "a blue square"]


def test_cached_steps_carry_the_feature_they_were_given(tiny_pipe):
    items = collect_deepcache_calibration(
        tiny_pipe, PROMPTS, DeepCacheConfig(interval=3), num_inference_steps=5, show_progress=False
    )
    assert [FEATURE_NAME in item for item in items] == [False, True, True, False, True] * 2
    assert items[1][FEATURE_NAME] is items[2][FEATURE_NAME]  # the same cached feature until a refresh
    assert items[1][FEATURE_NAME].shape == (2, 32, 16, 16)
    assert not is_deepcache_applied(tiny_pipe)  # the pipeline is left as it was
    few = collect_deepcache_calibration(
        tiny_pipe,
        PROMPTS,
        DeepCacheConfig(interval=3),
        num_inference_steps=5,
        max_samples=4,
        show_progress=False,
    )
    assert len(few) == 4 and all(
        torch.equal(a["sample"], b["sample"]) for a, b in zip(few, items, strict=False)
    )


@pytest.mark.slow
def test_quantization_replays_cached_steps_through_the_shallow_branch(tiny_pipe):
    config = DeepCacheConfig(interval=2)
    items = collect_deepcache_calibration(
        tiny_pipe, PROMPTS[:1], config, num_inference_steps=4, show_progress=False
    )
    quantized = quantize_deepcache_unet(tiny_pipe.unet, items, config, QuantizationConfig(subset_size=4))
    state = state_of(quantized)
    assert state is not None and state.config == config and state.replay == {}
    assert not is_deepcache_applied(tiny_pipe)
    cached = items[1]
    inputs = {k: cached[k] for k in ("sample", "timestep", "encoder_hidden_states")}
    with torch.no_grad():
        given = quantized(**inputs, **{FEATURE_KWARG: cached[FEATURE_NAME]}, return_dict=False)[0]
        full = quantized(**inputs, return_dict=False)[0]
    assert not torch.allclose(given, full)  # the given feature replaced the computed one


def test_calibration_must_start_with_a_refresh_step(tiny_pipe):
    from sd_ovopt import InvalidConfigError

    items = collect_deepcache_calibration(
        tiny_pipe, PROMPTS[:1], DeepCacheConfig(interval=2), num_inference_steps=2, show_progress=False
    )
    with pytest.raises(InvalidConfigError, match="refresh step"):
        quantize_deepcache_unet(tiny_pipe.unet, items[1:], DeepCacheConfig(interval=2))


@pytest.mark.slow
def test_tome_int8_and_caching_in_one_recipe(tiny_pipe, tmp_path):
    """Both IRs int8 (FakeQuantize in each), ToMe where its levels run, the schedule followed."""
    import openvino as ov

    from sd_ovopt import SdOvOptPipeline, optimize_pipeline, read_metadata

    out = optimize_pipeline(
        tiny_pipe,
        tmp_path / "dc-int8",
        methods=[ToMeConfig(ratio=0.4), QuantizationConfig(subset_size=12), DeepCacheConfig(interval=3)],
        calibration_prompts=PROMPTS,
        calibration_steps=6,
        height=32,
        width=32,
        show_progress=False,
    )
    meta = read_metadata(out)
    assert list(meta.methods) == ["tome", "step_caching", "int8"]
    assert meta.config("tome").ratio == 0.4 and meta.config("int8").mode == "full"
    assert meta.config("step_caching") == DeepCacheConfig(interval=3)
    for part in ("unet", "unet_shallow"):
        types = [
            op.get_type_name()
            for op in ov.Core().read_model(out / part / "openvino_model.xml").get_ordered_ops()
        ]
        assert types.count("FakeQuantize") > 0 and "TopK" in types, part  # int8, and ToMe's merge
    pipe = SdOvOptPipeline.from_pretrained(out, precision="f32")
    pipe.set_progress_bar_config(disable=True)
    images = [
        pipe(
            "a red circle",
            num_inference_steps=7,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]
        for _ in range(2)
    ]
    assert pipe.last_unet_steps.count("full") == 3
    assert np.array_equal(*images) and np.isfinite(images[0]).all()
