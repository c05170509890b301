"""ToMe on a diffusers UNet: parity with tomesd, exact removal, idempotence, deepcopy."""

import copy

import pytest
import torch

from sd_ovopt import (
    AlreadyAppliedError,
    ToMeConfig,
    UnsupportedModelError,
    apply_tome,
    get_tome_config,
    is_tome_applied,
    remove_tome,
)


@pytest.fixture
def unet_inputs():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 4, 16, 16, generator=g),
        torch.tensor([500.0]),
        torch.randn(2, 77, 32, generator=g),
    )


def _run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": 0.5},
        {"ratio": 0.3},
        {"ratio": 0.7},
        {"ratio": 0.4, "sx": 4, "sy": 2},
        {"ratio": 0.5, "max_downsample": 2},
        {"ratio": 0.5, "merge_crossattn": True},
        {"ratio": 0.5, "merge_mlp": True},
    ],
)
def test_matches_tomesd_reference(tiny_pipe, unet_inputs, kwargs):
    tomesd = pytest.importorskip("tomesd")
    unet = tiny_pipe.unet
    base = _run(unet, unet_inputs)
    tomesd.apply_patch(unet, use_rand=False, **kwargs)
    ref = _run(unet, unet_inputs)
    tomesd.remove_patch(unet)
    apply_tome(unet, ToMeConfig(**kwargs))
    ours = _run(unet, unet_inputs)
    assert (ref - base).abs().max() > 1e-3  # the reference really merges
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_changes_output_and_removal_restores_bit_for_bit(tiny_pipe, unet_inputs):
    unet = tiny_pipe.unet
    base = _run(unet, unet_inputs)
    apply_tome(tiny_pipe, ToMeConfig(ratio=0.5))  # a pipeline works as target too
    assert is_tome_applied(tiny_pipe) and is_tome_applied(unet)
    merged = _run(unet, unet_inputs)
    assert (merged - base).abs().max() > 1e-3
    remove_tome(tiny_pipe)
    assert not is_tome_applied(unet)
    assert torch.equal(_run(unet, unet_inputs), base)
    assert not any("sd_ovopt_tome" in name for name, _ in unet.named_modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


def test_keyword_call_matches_positional_call(tiny_pipe, unet_inputs):
    unet = apply_tome(tiny_pipe.unet, ToMeConfig(ratio=0.5))
    sample, t, ehs = unet_inputs
    with torch.no_grad():
        kw = unet(sample=sample, timestep=t, encoder_hidden_states=ehs).sample
    assert torch.equal(kw, _run(unet, unet_inputs))


def test_apply_is_idempotent_and_conflicts_raise(tiny_pipe, unet_inputs):
    unet = tiny_pipe.unet
    cfg = ToMeConfig(ratio=0.5)
    apply_tome(unet, cfg)
    once = _run(unet, unet_inputs)
    apply_tome(unet, ToMeConfig(ratio=0.5))
    assert torch.equal(_run(unet, unet_inputs), once)
    assert len(unet.conv_in._forward_pre_hooks) == 1
    with pytest.raises(AlreadyAppliedError, match="replace=True"):
        apply_tome(unet, ToMeConfig(ratio=0.3))
    apply_tome(unet, ToMeConfig(ratio=0.3), replace=True)
    assert get_tome_config(unet) == ToMeConfig(ratio=0.3)
    assert not torch.equal(_run(unet, unet_inputs), once)


def test_seeded_layout_is_deterministic_and_distinct(tiny_pipe, unet_inputs):
    unet = tiny_pipe.unet
    apply_tome(unet, ToMeConfig(ratio=0.5, seed=11))
    a = _run(unet, unet_inputs)
    b = _run(unet, unet_inputs)
    apply_tome(unet, ToMeConfig(ratio=0.5), replace=True)
    c = _run(unet, unet_inputs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_deepcopy_carries_a_working_independent_patch(tiny_pipe, unet_inputs):
    unet = apply_tome(tiny_pipe.unet, ToMeConfig(ratio=0.5))
    clone = copy.deepcopy(unet)
    assert torch.equal(_run(clone, unet_inputs), _run(unet, unet_inputs))
    remove_tome(clone)
    assert is_tome_applied(unet) and not is_tome_applied(clone)
    assert not torch.equal(_run(clone, unet_inputs), _run(unet, unet_inputs))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in clone.modules())
    assert len(unet.conv_in._forward_pre_hooks) == 1  # the copy's handles removed only the copy's hooks


def test_remove_keeps_the_users_own_hooks(tiny_pipe, unet_inputs):
    unet = tiny_pipe.unet
    seen = []
    mine = unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    apply_tome(unet, ToMeConfig(ratio=0.5))
    remove_tome(unet)
    _run(unet, unet_inputs)
    assert len(seen) == 1 and list(unet.conv_in._forward_pre_hooks) == [mine.id]


def test_gradients_flow_through_merged_blocks(tiny_pipe, unet_inputs):
    unet = apply_tome(tiny_pipe.unet, ToMeConfig(ratio=0.5)).train()
    unet(*unet_inputs).sample.square().mean().backward()
    grad = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_unsupported_targets(tiny_pipe):
    with pytest.raises(UnsupportedModelError, match="UNet2DConditionModel"):
        apply_tome(tiny_pipe.vae, ToMeConfig())
    with pytest.raises(UnsupportedModelError, match="ToMeConfig"):
        apply_tome(tiny_pipe.unet, {"ratio": 0.5})
    tiny_pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].set_chunk_feed_forward(2, 1)
    with pytest.raises(UnsupportedModelError, match="chunk"):
        apply_tome(tiny_pipe.unet, ToMeConfig(merge_mlp=True))
    assert not is_tome_applied(tiny_pipe.unet)  # nothing half-applied


def test_downsample_method_strides_keys_and_values(tiny_pipe, unet_inputs):
    unet = tiny_pipe.unet
    base = _run(unet, unet_inputs)
    apply_tome(unet, ToMeConfig(method="downsample", downsample_factor=2))
    attn1 = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    shapes = {}

    def record(name):
        def hook(module, args, output):
            shapes.setdefault(name, args[0].shape)  # returns None: the output is left alone

        return hook

    hooks = [attn1.to_q.register_forward_hook(record("q")), attn1.to_k.register_forward_hook(record("k"))]
    out = _run(unet, unet_inputs)
    for hook in hooks:
        hook.remove()
    assert shapes["q"][1] == 256 and shapes["k"][1] == 64  # 16x16 queries, 8x8 keys/values
    assert (out - base).abs().max() > 1e-3
    remove_tome(unet)
    assert torch.equal(_run(unet, unet_inputs), base)


def test_downsample_method_rejects_other_layers():
    from sd_ovopt import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="self-attention only"):
        ToMeConfig(method="downsample", merge_mlp=True)
    with pytest.raises(InvalidConfigError, match="downsample_factor"):
        ToMeConfig(method="downsample", downsample_factor=1)
