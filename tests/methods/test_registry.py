"""The registry refuses what would make a method ambiguous; records read back typed, layout 1 included."""

from __future__ import annotations

import json

import pytest

from sd_ovopt import (
    CorruptModelError,
    DeepCacheConfig,
    ExportMetadata,
    InvalidConfigError,
    QuantizationConfig,
    ToMeConfig,
    UnsupportedModelError,
)
from sd_ovopt.methods import (
    Method,
    MethodRecord,
    get_method,
    method_for_config,
    methods_in_order,
    register_method,
    registered_methods,
)

SHAPE = {
    "height": 32, "width": 32, "batch_size": 1, "num_images_per_prompt": 1, "classifier_free_guidance": True,
    "unet_batch": 2, "latent_height": 16, "latent_width": 16,
}  # fmt: skip


def test_the_built_in_methods_in_rank_order():
    methods = registered_methods()
    assert [name for name in methods if name in ("tome", "step_caching", "int8")] == [
        "tome",
        "step_caching",
        "int8",
    ]
    assert [m.rank for m in methods.values()] == sorted(m.rank for m in methods.values())
    assert method_for_config(DeepCacheConfig()) is get_method("step_caching")


def test_configs_are_put_in_rank_order_and_checked():
    pairs = methods_in_order([QuantizationConfig(), ToMeConfig(ratio=0.4)])
    assert [m.name for m, _ in pairs] == ["tome", "int8"]
    with pytest.raises(InvalidConfigError, match="two ToMeConfigs"):
        methods_in_order([ToMeConfig(ratio=0.4), ToMeConfig(ratio=0.5)])
    with pytest.raises(InvalidConfigError, match="not the config of any registered method"):
        methods_in_order([{"ratio": 0.4}])
    with pytest.raises(InvalidConfigError, match="pass a list"):
        methods_in_order(ToMeConfig(ratio=0.4))


def test_registration_refuses_ambiguity():
    from sd_ovopt.quantization.method import Int8Method
    from sd_ovopt.tome.method import ToMeMethod

    class NoName(ToMeMethod):
        name = ""

    class SameConfig(ToMeMethod):
        name = "other_tome"

    class Clash(Int8Method):
        name = "tome"

    class Incomplete(Method):  # applied_config, apply and remove are required
        name, config_class = "incomplete", QuantizationConfig

    with pytest.raises(InvalidConfigError, match="lowercase identifier"):
        register_method(NoName())
    with pytest.raises(InvalidConfigError, match="already belongs to the method 'tome'"):
        register_method(SameConfig())
    with pytest.raises(InvalidConfigError, match="already registered"):
        register_method(Clash())
    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    with pytest.raises(InvalidConfigError, match="Method instance"):
        register_method(ToMeConfig())
    with pytest.raises(UnsupportedModelError, match="'sharpen' is not registered"):
        get_method("sharpen")


def test_records_round_trip_typed_and_check_their_fields():
    meta = ExportMetadata(**SHAPE, methods={"tome": MethodRecord(config=ToMeConfig(ratio=0.5))})
    back = ExportMetadata.from_dict(json.loads(meta.to_json()))
    assert back == meta and back.config("tome") == ToMeConfig(ratio=0.5) and back.config("int8") is None
    bad = json.loads(meta.to_json())
    bad["methods"]["tome"]["version"] = 7
    with pytest.raises(CorruptModelError, match="version is 7"):
        ExportMetadata.from_dict(bad)
    bad["methods"]["tome"] = {"version": 1, "config": {"ratio": 0.5}, "extra": 1}
    with pytest.raises(CorruptModelError, match="holds"):
        ExportMetadata.from_dict(bad)


def test_a_layout_1_record_is_read_as_methods():
    """Folders written before methods were typed records keep loading."""
    old = {
        **SHAPE, "format_version": 1, "weights_dtype": "f32", "versions": {},
        "tome": ToMeConfig(ratio=0.4).to_dict(),
        "quantization": {"unet": QuantizationConfig().to_dict(), "weight_compression": "int8"},
        "deepcache": {"config": DeepCacheConfig().to_dict(), "full": "unet/openvino_model.xml",
                      "shallow": "unet_shallow/openvino_model.xml", "feature": "deepcache_feature",
                      "feature_shape": [2, 32, 16, 16]},
    }  # fmt: skip
    meta = ExportMetadata.from_dict(old)
    assert list(meta.methods) == ["tome", "step_caching", "int8"] and meta.weight_compression == "int8"
    assert meta.config("int8") == QuantizationConfig() and meta.record("step_caching").feature_shape == (
        2,
        32,
        16,
        16,
    )
    with pytest.raises(CorruptModelError, match="feature_shape"):
        ExportMetadata.from_dict({**old, "deepcache": {**old["deepcache"], "feature_shape": [0]}})
