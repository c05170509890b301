"""Step caching in PyTorch: parity with the `deepcache` package, restore, schedule, bad inputs."""

import copy

import numpy as np
import pytest
import torch

from sd_ovopt import (
    AlreadyAppliedError,
    DeepCacheConfig,
    InvalidConfigError,
    UnsupportedModelError,
    apply_deepcache,
    get_deepcache_config,
    is_deepcache_applied,
    remove_deepcache,
)
from sd_ovopt.deepcache import plan_skips

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 7


def _image(pipe, seed=0):
    return pipe(
        "a red circle",
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]


@pytest.fixture(scope="module")
def deep_pipe():
    """The tiny pipeline with SD-1.x's block depth (layers_per_block=2), so branches number as in deepcache."""
    from diffusers import UNet2DConditionModel

    from sd_ovopt.testing import TINY_UNET_CONFIG, tiny_pipeline

    pipe = tiny_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        pipe.unet = UNet2DConditionModel(**{**TINY_UNET_CONFIG, "layers_per_block": 2}).eval()
    return pipe


@pytest.mark.parametrize("branch", range(6))
def test_matches_the_deepcache_package(deep_pipe, branch):
    """Same images as deepcache 0.1.1's DeepCacheSDHelper (same interval and branch), to 1e-5."""
    helper_module = pytest.importorskip("DeepCache", reason="the deepcache package is not installed")
    theirs = copy.deepcopy(deep_pipe)
    helper = helper_module.DeepCacheSDHelper(pipe=theirs)
    helper.set_params(cache_interval=3, cache_branch_id=branch)
    helper.enable()
    reference = _image(theirs)
    helper.disable()
    apply_deepcache(deep_pipe, DeepCacheConfig(interval=3, branch=branch))
    try:
        ours = _image(deep_pipe)
    finally:
        remove_deepcache(deep_pipe)
    assert np.abs(ours - reference).max() <= 1e-5
    assert np.abs(ours - _image(deep_pipe)).max() > 1e-4  # and caching changed the image


def test_cached_steps_skip_the_deep_modules(tiny_pipe):
    calls = {"mid": 0, "unet": 0}  # a module inside the mid block runs only when the block computes
    tiny_pipe.unet.mid_block.resnets[0].register_forward_hook(
        lambda *_: calls.__setitem__("mid", calls["mid"] + 1)
    )
    tiny_pipe.unet.register_forward_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1))
    apply_deepcache(tiny_pipe, DeepCacheConfig(interval=3))
    _image(tiny_pipe)
    assert calls == {"unet": STEPS, "mid": len(DeepCacheConfig(interval=3).refresh_steps(STEPS))}


def test_remove_restores_outputs_bit_for_bit_and_repeats_are_deterministic(tiny_pipe):
    before = _image(tiny_pipe)
    apply_deepcache(tiny_pipe, DeepCacheConfig(interval=3))
    first, second = _image(tiny_pipe), _image(tiny_pipe)
    assert np.array_equal(first, second)  # same seed, same image: the cache starts over every run
    assert not np.array_equal(first, before)
    remove_deepcache(tiny_pipe)
    assert not is_deepcache_applied(tiny_pipe)
    assert np.array_equal(_image(tiny_pipe), before)
    assert not any("forward" in m.__dict__ for m in tiny_pipe.unet.modules())


def test_interval_one_is_the_uncached_pipeline(tiny_pipe):
    before = _image(tiny_pipe)
    apply_deepcache(tiny_pipe, DeepCacheConfig(interval=1))
    assert np.array_equal(_image(tiny_pipe), before)


def test_a_deepcopy_carries_a_working_patch_of_its_own(tiny_pipe):
    apply_deepcache(tiny_pipe, DeepCacheConfig(interval=2))
    clone = copy.deepcopy(tiny_pipe)
    assert np.array_equal(_image(clone), _image(tiny_pipe))
    remove_deepcache(tiny_pipe)
    assert get_deepcache_config(clone) == DeepCacheConfig(interval=2)


def test_apply_twice_is_a_no_op_another_config_needs_replace(tiny_pipe):
    config = DeepCacheConfig(interval=3)
    apply_deepcache(tiny_pipe, config)
    apply_deepcache(tiny_pipe, config)
    with pytest.raises(AlreadyAppliedError, match="replace=True"):
        apply_deepcache(tiny_pipe, DeepCacheConfig(interval=2))
    apply_deepcache(tiny_pipe, DeepCacheConfig(interval=2), replace=True)
    assert get_deepcache_config(tiny_pipe) == DeepCacheConfig(interval=2)


def test_bad_targets_and_branches_are_refused(tiny_pipe):
    with pytest.raises(UnsupportedModelError, match="pipeline"):
        apply_deepcache(tiny_pipe.unet, DeepCacheConfig())
    with pytest.raises(UnsupportedModelError, match="DeepCacheConfig"):
        apply_deepcache(tiny_pipe, {"interval": 3})
    with pytest.raises(InvalidConfigError, match="branches 0 to 3"):
        apply_deepcache(tiny_pipe, DeepCacheConfig(branch=4))
    assert not is_deepcache_applied(tiny_pipe)


def test_branch_zero_keeps_only_the_outermost_layers(tiny_pipe):
    plan = plan_skips(tiny_pipe.unet, 0)
    assert plan.feature == "up_blocks.1.attentions.0"
    assert plan.skipped[:3] == ("down_blocks.0", "down_blocks.1", "mid_block")
    assert "up_blocks.1.resnets.1" not in plan.skipped and "up_blocks.1.attentions.1" not in plan.skipped
