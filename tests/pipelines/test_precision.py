"""precision="auto" (bf16 where OpenVINO reports native BF16, f32 elsewhere) and optimum-intel's ov_config hint."""

import openvino as ov
import pytest

from sd_ovopt import InvalidConfigError, SdOvOptPipeline, _precision
from sd_ovopt._precision import PRECISIONS, precision_config, resolve_precision
from sd_ovopt.cli import build_parser

WITH_BF16 = ["WINOGRAD", "FP32", "FP16", "BF16", "INT8", "BIN", "EXPORT_IMPORT"]
WITHOUT_BF16 = ["WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT"]
MACHINE_HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(params=[WITH_BF16, WITHOUT_BF16], ids=["bf16-cpu", "avx2-cpu"])
def capabilities(request, monkeypatch):
    """Pretend OpenVINO's CPU plugin reports these optimization capabilities."""
    queried = []

    def fake(device):
        queried.append(device)
        return list(request.param)

    monkeypatch.setattr(_precision, "_optimization_capabilities", fake)
    return request.param, queried


def test_the_real_capability_query_reads_openvino():
    capabilities = _precision._optimization_capabilities("CPU")
    assert "FP32" in capabilities
    assert resolve_precision("auto") == ("bf16" if "BF16" in capabilities else "f32")


def test_auto_resolves_from_the_capability_query(capabilities):
    caps, queried = capabilities
    expected = "bf16" if "BF16" in caps else "f32"
    assert resolve_precision("auto", "CPU") == expected and queried == ["CPU"]
    assert precision_config(None, None) == ({"INFERENCE_PRECISION_HINT": expected}, expected)
    assert resolve_precision("auto", "GPU") == "default"  # no CPU query there: the device's own choice
    for value in ("f32", "bf16", "f16", "default"):
        assert resolve_precision(value) == value


def test_from_pretrained_defaults_to_auto(exported_tiny, capabilities):
    caps, queried = capabilities
    pipe = SdOvOptPipeline.from_pretrained(exported_tiny)
    assert queried == ["CPU"]
    requested = "bf16" if "BF16" in caps else "f32"
    assert pipe.ov_config["INFERENCE_PRECISION_HINT"] == requested
    # Read back from the compiled UNet: a bf16 request runs f32 on a CPU without native BF16.
    assert pipe.inference_precision == ("bf16" if requested == "bf16" and MACHINE_HAS_BF16 else "f32")
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_ov_config_hint_is_honoured_when_precision_is_not_given(exported_tiny, capabilities):
    pipe = SdOvOptPipeline.from_pretrained(exported_tiny, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    assert capabilities[1] == []  # the hint decides; the capabilities are not asked
    assert pipe.ov_config["INFERENCE_PRECISION_HINT"] == "f32"
    assert pipe.inference_precision == "f32"


def test_ov_config_hint_and_precision_must_agree():
    with pytest.raises(InvalidConfigError, match=r"precision='bf16'.*INFERENCE_PRECISION_HINT.*'f32'"):
        precision_config("bf16", {"INFERENCE_PRECISION_HINT": "f32"})
    with pytest.raises(InvalidConfigError, match="disagree"):
        precision_config("auto", {"INFERENCE_PRECISION_HINT": ov.Type.bf16})
    config = {"INFERENCE_PRECISION_HINT": ov.Type.f32, "PERFORMANCE_HINT": "LATENCY"}
    assert precision_config("f32", config) == (config, "f32")
    assert precision_config(None, {"PERFORMANCE_HINT": "LATENCY"}, "GPU") == (
        {"PERFORMANCE_HINT": "LATENCY"},
        "default",
    )
    with pytest.raises(InvalidConfigError, match="fp32"):
        precision_config("fp32", None)


def test_conflicting_precision_is_a_typed_error(exported_tiny):
    with pytest.raises(InvalidConfigError, match="INFERENCE_PRECISION_HINT"):
        SdOvOptPipeline.from_pretrained(
            exported_tiny, precision="f16", ov_config={"INFERENCE_PRECISION_HINT": "f32"}
        )


def test_cli_generate_follows_the_library_default():
    args = build_parser().parse_args(["generate", "folder", "a red circle"])
    assert args.precision == "auto" and set(PRECISIONS) >= {"auto", "f32", "bf16", "f16", "default"}


def test_the_harness_measures_the_library_default(capabilities):
    """``precision="auto"`` in the benchmark resolves once, so our variants and the peers get one hint."""
    from sd_ovopt.evaluation.benchmark import BenchmarkSettings

    reported, _ = capabilities
    assert BenchmarkSettings(precision="auto").precision == ("bf16" if "BF16" in reported else "f32")
    assert BenchmarkSettings(precision="f32").precision == "f32"
