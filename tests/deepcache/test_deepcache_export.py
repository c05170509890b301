"""The two DeepCache IRs: PyTorch parity at f32, the shallow graph really is shallow, the folder's record."""

import json

import numpy as np
import pytest
import torch

from sd_ovopt import DeepCacheConfig, read_metadata
from sd_ovopt._convert import unet_example_inputs
from sd_ovopt.deepcache import FEATURE_NAME, convert_deepcache_unets, is_deepcache_applied
from sd_ovopt.deepcache.patch import FEATURE_KWARG, attach, remove_deepcache

SHAPE = {"batch": 2, "latent_height": 16, "latent_width": 16, "text_length": 77}
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def irs():
    from sd_ovopt.testing import tiny_pipeline

    unet = tiny_pipeline().unet
    full, shallow, shape = convert_deepcache_unets(unet, DeepCacheConfig(interval=3), **SHAPE)
    return unet, full, shallow, shape


def test_the_conversion_leaves_the_unet_unpatched(irs):
    unet, *_ = irs
    assert not is_deepcache_applied(unet)
    assert not any("forward" in m.__dict__ for m in unet.modules())


def test_signatures_keep_optimum_intels_names(irs):
    _, full, shallow, shape = irs
    assert [o.get_any_name() for o in full.outputs] == ["out_sample", FEATURE_NAME]
    assert [i.get_any_name() for i in shallow.inputs] == [
        "sample",
        "timestep",
        "encoder_hidden_states",
        FEATURE_NAME,
    ]
    assert [o.get_any_name() for o in shallow.outputs] == ["out_sample"]
    assert list(shallow.inputs[3].get_shape()) == list(shape) == [2, 32, 16, 16]
    assert all(i.get_partial_shape().is_static for i in (*full.inputs, *shallow.inputs))


def test_the_shallow_ir_leaves_the_deep_path_out(irs):
    _, full, shallow, _ = irs
    assert len(shallow.get_ordered_ops()) < len(full.get_ordered_ops()) / 2
    convolutions = [op for op in shallow.get_ordered_ops() if op.get_type_name() == "Convolution"]
    full_convolutions = [op for op in full.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert 0 < len(convolutions) < len(full_convolutions) / 2


def test_both_irs_match_pytorch_at_f32(irs):
    import openvino as ov

    unet, full, shallow, _ = irs
    refresh = unet_example_inputs(unet, **SHAPE)
    cached = {**refresh, "sample": torch.randn(refresh["sample"].shape), "timestep": torch.tensor([300])}
    attach(unet, DeepCacheConfig(interval=3))
    try:
        with torch.no_grad():
            ref_full = unet(**refresh, return_dict=False)[0].numpy()
            feature = unet._sd_ovopt_deepcache.feature.clone()
            ref_shallow = unet(**cached, **{FEATURE_KWARG: feature}, return_dict=False)[0].numpy()
    finally:
        remove_deepcache(unet)
    core = ov.Core()
    out = core.compile_model(full, "CPU", F32)(refresh)
    assert _rel(out[0], ref_full) < 1e-4 and _rel(out[1], feature) < 1e-4
    shallow_out = core.compile_model(shallow, "CPU", F32)({**cached, FEATURE_NAME: out[1]})[0]
    assert _rel(shallow_out, ref_shallow) < 1e-4
    # the feature really is an input of the computation
    other = core.compile_model(shallow, "CPU", F32)({**cached, FEATURE_NAME: np.zeros_like(out[1])})[0]
    assert _rel(other, ref_shallow) > 1e-2


def test_the_folder_records_both_irs(deepcache_export):
    meta = read_metadata(deepcache_export)
    assert meta.record("step_caching").to_dict() == {
        "version": 1,
        "config": DeepCacheConfig(interval=3).to_dict(),
        "full": "unet/openvino_model.xml",
        "shallow": "unet_shallow/openvino_model.xml",
        "feature": FEATURE_NAME,
        "feature_shape": [2, 32, 16, 16],
    }
    for part in ("unet", "unet_shallow"):
        assert (deepcache_export / part / "openvino_model.bin").stat().st_size > 0
    raw = json.loads((deepcache_export / "sd_ovopt.json").read_text())
    assert raw["format_version"] == 2 and raw["methods"]["step_caching"]["feature_shape"] == [2, 32, 16, 16]


def test_export_refuses_a_config_other_than_the_unets(tmp_path):
    from sd_ovopt import AlreadyAppliedError, export_pipeline
    from sd_ovopt.testing import tiny_pipeline

    pipe = tiny_pipeline()
    attach(pipe.unet, DeepCacheConfig(interval=2))
    with pytest.raises(AlreadyAppliedError, match="carries step caching"):
        export_pipeline(pipe, tmp_path / "out", methods=[DeepCacheConfig(interval=3)], show_progress=False)
    assert not (tmp_path / "out").exists()
