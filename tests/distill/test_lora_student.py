"""The LoRA student: adapters start as a no-op, only adapters and quantizer ranges train, an INT8
student's weight quantizers round the fused weight, and fusing keeps the output exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sd_ovopt import (
    AlreadyAppliedError,
    DistillConfig,
    InvalidConfigError,
    QuantizationConfig,
    UnsupportedModelError,
    collect_calibration,
    quantize_unet,
)
from sd_ovopt.distill import LORA_STUDENT_TARGETS, add_lora_student, fuse_lora_student, has_lora_student
from sd_ovopt.distill.lora_student import LoRAWeight
from sd_ovopt.quantization.qat import WeightEMA
from sd_ovopt.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def qunet(pipe):
    calibration = collect_calibration(pipe, ["a red square"], num_inference_steps=2, show_progress=False)
    return quantize_unet(pipe, calibration, QuantizationConfig(subset_size=4))


def _inputs():
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, 4, 16, 16, generator=generator),
        torch.tensor([500]),
        torch.randn(1, 77, 32, generator=generator),
    )


def _out(unet):
    with torch.no_grad():
        return unet(*_inputs(), return_dict=False)[0]


def _randomize_adapters(unet, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for module in unet.modules():
        if isinstance(module, LoRAWeight):
            module.lora_B.data = torch.randn(module.lora_B.shape, generator=generator) * 0.05


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int8"])
def test_a_new_student_computes_what_its_unet_did_and_trains_only_adapters_and_quantizers(
    pipe, qunet, quantized
):
    unet = copy.deepcopy(qunet if quantized else pipe.unet)
    before = _out(unet)
    add_lora_student(unet, rank=4)
    assert has_lora_student(unet) and torch.equal(_out(unet), before)  # B = 0: a no-op
    trained = [name for name, p in unet.named_parameters() if p.requires_grad]
    adapters = [name for name in trained if name.endswith(("lora_A", "lora_B"))]
    quantizers = [name for name in trained if "__nncf_hooks" in name]
    assert sorted(adapters + quantizers) == sorted(trained)
    assert bool(quantizers) == quantized
    adapted = {m for m in unet.modules() if torch.nn.utils.parametrize.is_parametrized(m, "weight")}
    assert len(adapters) == 2 * len(adapted) > 0
    names = [name for name, m in unet.named_modules() if m in adapted]
    assert all(name.endswith(LORA_STUDENT_TARGETS) for name in names)
    assert any(n.endswith("conv1") for n in names) and any(n.endswith("to_q") for n in names)
    ema = WeightEMA(unet, 0.9)  # the target network averages the adapters only
    assert sorted(ema.shadow) == sorted(adapters)


def test_the_int8_weight_quantizers_round_the_fused_weight_and_fusing_keeps_the_output(qunet):
    unet = add_lora_student(copy.deepcopy(qunet), rank=4)
    _randomize_adapters(unet)
    trained = _out(unet)
    assert not torch.allclose(trained, _out(qunet), atol=1e-3)  # the adapters change the output
    # The same weights fused into a plain quantized UNet: its quantizers see W + BA as the op's weight
    fused = copy.deepcopy(qunet)
    adapters = {
        name: module.parametrizations.weight[0].delta()
        for name, module in unet.named_modules()
        if torch.nn.utils.parametrize.is_parametrized(module, "weight")
    }
    with torch.no_grad():
        for name, delta in adapters.items():
            fused.get_submodule(name).weight.add_(delta)
    torch.testing.assert_close(trained, _out(fused), rtol=0, atol=0)
    # fuse_lora_student gives that plain quantized UNet
    done = fuse_lora_student(copy.deepcopy(unet))
    assert not has_lora_student(done) and done.state_dict().keys() == qunet.state_dict().keys()
    torch.testing.assert_close(_out(done), trained, rtol=0, atol=0)


def test_gradients_reach_the_adapters_through_the_quantizers_and_not_the_base_weights(qunet):
    unet = add_lora_student(copy.deepcopy(qunet), rank=4)
    _randomize_adapters(unet)
    unet(*_inputs(), return_dict=False)[0].square().mean().backward()
    adapters = [m for m in unet.modules() if isinstance(m, LoRAWeight)]
    assert all(m.lora_A.grad is not None and m.lora_B.grad is not None for m in adapters)
    assert sum(float(m.lora_A.grad.abs().sum()) for m in adapters) > 0
    base = [m.parametrizations.weight.original for m in unet.modules() if hasattr(m, "parametrizations")]
    assert base and all(w.grad is None and not w.requires_grad for w in base)


def test_bad_settings_and_a_second_student_are_refused(pipe, qunet):
    with pytest.raises(InvalidConfigError, match="rank"):
        add_lora_student(copy.deepcopy(pipe.unet), rank=0)
    with pytest.raises(InvalidConfigError, match="alpha"):
        add_lora_student(copy.deepcopy(pipe.unet), rank=4, alpha=float("nan"))
    unet = add_lora_student(copy.deepcopy(pipe.unet), rank=2)
    with pytest.raises(AlreadyAppliedError, match="fuse them first"):
        add_lora_student(unet, rank=2)


def test_a_weight_quantizer_on_the_parameter_itself_is_refused(qunet):
    from nncf.torch.function_hook.wrapper import get_hook_storage

    unet = copy.deepcopy(qunet)
    name = next(n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and n.endswith("to_q"))
    get_hook_storage(unet).register_post_function_hook(f"{name}.weight", 0, nn.Identity())
    with pytest.raises(UnsupportedModelError, match="on the parameter itself"):
        add_lora_student(unet, rank=2)
    assert not has_lora_student(unet)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lora_rank": -1}, "lora_rank"),
        ({"lora_rank": 4, "lora_alpha": 0.0}, "lora_alpha"),
        ({"lora_alpha": 8.0}, "lora_rank is 0"),
    ],
)
def test_distill_config_checks_the_lora_settings(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        DistillConfig(**kwargs)


def test_a_student_with_tome_takes_adapters_and_a_fused_copy_leaves_it_working(pipe):
    from sd_ovopt import ToMeConfig
    from sd_ovopt.tome.patch import apply_tome

    unet = apply_tome(copy.deepcopy(pipe.unet), ToMeConfig(ratio=0.5))
    calibration = collect_calibration(pipe, ["a red square"], num_inference_steps=2, show_progress=False)
    student = add_lora_student(quantize_unet(unet, calibration, QuantizationConfig(subset_size=4)), rank=4)
    _randomize_adapters(student)
    assert sum(isinstance(m, LoRAWeight) for m in student.modules()) > 0
    fused = _out(fuse_lora_student(copy.deepcopy(student)))  # the copy shares torch's parametrized class
    torch.testing.assert_close(fused, _out(student), rtol=0, atol=0)
    assert has_lora_student(student)
