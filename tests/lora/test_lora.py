"""LoRA fusing: files of LCM-LoRA's layer kinds made here (diffusers/PEFT and kohya keys, attention,
feed-forward and convolution layers) fuse as diffusers' own fuse_lora does, restore bit for bit, refuse
what they cannot read with typed errors, and go through the export and the INT8 recipe."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

from sd_ovopt import (
    AlreadyAppliedError,
    CorruptModelError,
    InvalidConfigError,
    LoRAConfig,
    ModelNotFoundError,
    QuantizationConfig,
    SdOvOptPipeline,
    UnsupportedModelError,
    export_pipeline,
    optimize_pipeline,
    read_metadata,
)
from sd_ovopt._convert import unet_example_inputs
from sd_ovopt.lora import EXAMPLE_TARGETS, apply_lora, get_lora_config, remove_lora
from sd_ovopt.methods import get_method
from sd_ovopt.testing import tiny_pipeline

SIZE = 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _targets(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(EXAMPLE_TARGETS)
    ]


def _down_up(module: torch.nn.Module, rank: int, generator: torch.Generator):
    out_features, in_features, *kernel = module.weight.shape
    down = torch.randn(rank, in_features, *kernel, generator=generator) * 0.1
    up = torch.randn(out_features, rank, *[1] * len(kernel), generator=generator) * 0.1  # non-zero
    return down, up


@pytest.fixture(scope="module")
def peft_file(pipe, tmp_path_factory):
    """A diffusers/PEFT LoRA (``unet.<module>.lora_A.weight``) saved by diffusers' save_lora_weights, with
    the adapter metadata it writes (lora_alpha 8 on rank 4, one module at alpha 2)."""
    generator = torch.Generator().manual_seed(1)
    layers, names = {}, []
    for name, module in _targets(pipe.unet):
        layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"] = _down_up(module, 4, generator)
        names.append(name)
    folder = tmp_path_factory.mktemp("peft-lora")
    metadata = {
        "r": 4,
        "lora_alpha": 8,
        "rank_pattern": {},
        "alpha_pattern": {names[0]: 2},
        "target_modules": names,
    }
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata
    )
    return folder / "pytorch_lora_weights.safetensors"


def _kohya(
    unet: torch.nn.Module, seed: int = 2, text_encoder: bool = False, alphas: tuple[float, ...] = (2.0, 1.0)
) -> dict[str, torch.Tensor]:
    """kohya/A1111 keys (``lora_unet_<module with _>.lora_down.weight``, ``.alpha``), ranks 2 and 4."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for index, (name, module) in enumerate(_targets(unet)):
        key = "lora_unet_" + name.replace(".", "_")
        down, up = _down_up(module, 2 if index % 3 == 0 else 4, generator)
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        tensors[f"{key}.alpha"] = torch.tensor(alphas[index % len(alphas)])
    if text_encoder:
        key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        tensors[f"{key}.lora_down.weight"] = torch.randn(2, 32, generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn(32, 2, generator=generator)
    return tensors


@pytest.fixture(scope="module")
def kohya_file(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("kohya-lora") / "style.safetensors"
    safetensors.torch.save_file(_kohya(pipe.unet), str(path))
    return path


def _inputs(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The export's own example inputs at the tiny export shape (batch 2: guidance on)."""
    return unet_example_inputs(unet, batch=2, latent_height=SIZE // 2, latent_width=SIZE // 2, text_length=77)


def _run(unet: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return unet(**_inputs(unet), return_dict=False)[0]


def test_config_validates_hashes_and_round_trips(kohya_file, tmp_path):
    config = LoRAConfig(kohya_file, scale=0.5)
    assert config.path == (str(kohya_file),) and config.scale == (0.5,) and config.name == ("style",)
    assert (
        len(config.sha256[0]) == 64
        and LoRAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    )
    two = LoRAConfig([kohya_file, kohya_file], scale=[1, 0.5], name=["a", "b"])
    assert [a[1:3] for a in two.adapters] == [(1.0, "a"), (0.5, "b")]
    with pytest.raises(InvalidConfigError, match="nothing untrusted is unpickled"):
        LoRAConfig(tmp_path / "lcm-lora.bin")
    with pytest.raises(InvalidConfigError, match=r"\.safetensors"):
        LoRAConfig(tmp_path / "lora.txt")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        LoRAConfig(tmp_path / "missing.safetensors")
    for scale in (float("nan"), float("inf"), "1", True):
        with pytest.raises(InvalidConfigError, match="scale"):
            LoRAConfig(kohya_file, scale=scale)
    with pytest.raises(InvalidConfigError, match="3 values for 2 files"):
        LoRAConfig([kohya_file, kohya_file], scale=[1, 1, 1])
    with pytest.raises(InvalidConfigError, match="sha256"):
        LoRAConfig(kohya_file, sha256="abc")


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="diffusers' fuse_lora needs peft")
@pytest.mark.parametrize("which", ["peft_file", "kohya_file"])
def test_fused_outputs_equal_diffusers_fuse_lora(which, pipe, request):
    path, scale = request.getfixturevalue(which), 0.7
    reference = copy.deepcopy(pipe)
    reference.load_lora_weights(str(path.parent), weight_name=path.name)  # offline: named file
    reference.fuse_lora(lora_scale=scale)
    fused = apply_lora(copy.deepcopy(pipe.unet), LoRAConfig(path, scale=scale))
    assert (_run(fused) - _run(reference.unet)).abs().max() < 1e-5


def test_kohya_file_fuses_every_layer_kind_with_its_alpha(pipe, tmp_path):
    """Without diffusers' reference (it needs peft): each weight is ``W + scale * alpha / r * up @ down``,
    convolutions included (the einsum here is not the code's arithmetic)."""
    tensors, scale = _kohya(pipe.unet, seed=4, alphas=(3.0,)), 0.7
    path = tmp_path / "uniform-alpha.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    unet = apply_lora(copy.deepcopy(pipe.unet), LoRAConfig(path, scale=scale))
    for name, module in _targets(pipe.unet):
        key = "lora_unet_" + name.replace(".", "_")
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        delta = torch.einsum("or,rk->ok", up.flatten(1), down.flatten(1)).reshape(module.weight.shape)
        expected = module.weight + scale * 3.0 / down.shape[0] * delta
        assert torch.allclose(unet.get_submodule(name).weight, expected, atol=1e-6), name
    kinds = {name.rsplit(".", 1)[-1] for name, _ in _targets(pipe.unet)}
    assert {"conv1", "conv2", "conv_shortcut", "proj_in", "proj_out", "to_q", "to_k", "to_v"} <= kinds


def test_scale_zero_changes_nothing_and_remove_restores_bit_for_bit(pipe, peft_file, kohya_file):
    unet = copy.deepcopy(pipe.unet)
    before = _run(unet)
    apply_lora(unet, LoRAConfig(peft_file, scale=0.0))
    assert torch.equal(_run(unet), before)
    remove_lora(unet)
    config = LoRAConfig([peft_file, kohya_file], scale=[1.0, -0.5])
    apply_lora(unet, config)
    fused = _run(unet)
    assert not torch.allclose(fused, before) and apply_lora(unet, config) is unet  # same config: no-op
    assert torch.equal(_run(unet), fused) and get_lora_config(unet) == config
    with pytest.raises(AlreadyAppliedError, match="remove_lora"):
        apply_lora(unet, LoRAConfig(peft_file))
    twin = copy.deepcopy(unet)
    assert get_lora_config(twin) == config and unet.state_dict().keys() == pipe.unet.state_dict().keys()
    remove_lora(unet)
    remove_lora(unet)  # again: a no-op
    assert get_lora_config(unet) is None and torch.equal(_run(unet), before)
    for name, value in unet.state_dict().items():
        assert torch.equal(value, pipe.unet.state_dict()[name]), name
    assert torch.equal(_run(remove_lora(twin)), before)  # the copy restores its own weights


def test_unreadable_files_are_refused_with_typed_errors_and_change_nothing(pipe, kohya_file, tmp_path):
    unet = copy.deepcopy(pipe.unet)
    before = _run(unet)
    text_only = tmp_path / "text.safetensors"
    safetensors.torch.save_file(
        {k: v for k, v in _kohya(unet, text_encoder=True).items() if "_te_" in k}, str(text_only)
    )
    with pytest.raises(UnsupportedModelError, match="no UNet LoRA layers"):
        apply_lora(unet, LoRAConfig(text_only))
    both = tmp_path / "both.safetensors"
    safetensors.torch.save_file(_kohya(unet, text_encoder=True), str(both))
    with pytest.raises(InvalidConfigError, match="ignore_text_encoder=True"):
        apply_lora(unet, LoRAConfig(both))
    apply_lora(unet, LoRAConfig(both, ignore_text_encoder=True))
    remove_lora(unet)
    other = tmp_path / "sdxl.safetensors"
    tensors = _kohya(unet)
    tensors["lora_unet_down_blocks_5_resnets_0_conv1.lora_down.weight"] = torch.ones(2, 32, 3, 3)
    tensors["lora_unet_down_blocks_5_resnets_0_conv1.lora_up.weight"] = torch.ones(32, 2, 1, 1)
    safetensors.torch.save_file(tensors, str(other))
    with pytest.raises(UnsupportedModelError, match="another base model"):  # refused before any change
        apply_lora(unet, LoRAConfig([kohya_file, other]))
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(kohya_file.read_bytes())
    config = LoRAConfig(changed)
    safetensors.torch.save_file(_kohya(unet, seed=3), str(changed))
    with pytest.raises(InvalidConfigError, match="changed since"):
        apply_lora(unet, config)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CorruptModelError):
        apply_lora(unet, LoRAConfig(broken))
    changed.unlink()
    with pytest.raises(ModelNotFoundError):
        apply_lora(unet, config)
    assert get_lora_config(unet) is None and torch.equal(_run(unet), before)


def test_export_records_the_adapter_and_the_ir_matches_pytorch(pipe, peft_file, tmp_path):
    config = LoRAConfig(peft_file, scale=0.8, name="lcm")
    out = export_pipeline(
        pipe, tmp_path / "ov", methods=[config], height=SIZE, width=SIZE, show_progress=False
    )
    assert get_lora_config(pipe.unet) is None  # fused for the export only
    record = json.loads((out / "sd_ovopt.json").read_text())["methods"]["lora"]["config"]
    assert record["name"] == ["lcm"] and record["scale"] == [0.8] and record["sha256"] == list(config.sha256)
    assert read_metadata(out).config("lora") == config
    ov_pipe = SdOvOptPipeline.from_pretrained(out, precision="f32")
    fused = apply_lora(copy.deepcopy(pipe.unet), config)
    inputs = _inputs(fused)
    ir = np.asarray(ov_pipe.unet(**inputs)[0])
    reference = _run(fused).numpy()
    assert np.abs(ir - reference).max() / np.abs(reference).max() < 1e-4


def test_recipe_calibrates_int8_on_the_fused_unet(pipe, kohya_file, tmp_path):
    config = LoRAConfig(kohya_file, scale=0.5)
    out = optimize_pipeline(
        pipe, tmp_path / "q", methods=[QuantizationConfig(subset_size=4), config],
        calibration_steps=2, height=SIZE, width=SIZE, show_progress=False,
    )  # fmt: skip
    meta = read_metadata(out)
    assert list(meta.methods) == ["lora", "int8"] and meta.config("lora") == config
    assert get_lora_config(pipe.unet) is None


def test_cli_flags(kohya_file, peft_file):
    method, parser = get_method("lora"), argparse.ArgumentParser()
    method.add_cli_arguments(parser, "export")
    assert method.config_from_cli(parser.parse_args([]), "export") is None
    args = parser.parse_args(["--lora", str(kohya_file), "--lora", str(peft_file), "--lora-scale", "0.5"])
    assert method.config_from_cli(args, "export") == LoRAConfig([kohya_file, peft_file], scale=0.5)
    with pytest.raises(InvalidConfigError, match="need --lora"):
        method.config_from_cli(parser.parse_args(["--lora-scale", "0.5"]), "export")
    args = parser.parse_args(
        ["--lora", str(kohya_file), "--lora-scale", "1", "--lora-scale", "2", "--lora-scale", "3"]
    )
    with pytest.raises(InvalidConfigError, match="once per file"):
        method.config_from_cli(args, "quantize")
