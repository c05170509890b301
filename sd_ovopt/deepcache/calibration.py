"""Calibration along a cached run, and INT8 quantization of a UNet that is exported as the two DeepCache IRs.

The shallow IR sees a cached feature as an input; its quantizer ranges must come from what it really sees.
So calibration runs the pipeline with step caching applied and records, for every UNet call, its inputs
and, on cached steps, the cached feature it was given. Quantization then replays each recorded call in
its own mode: refresh steps through the full UNet, cached steps through the shallow branch with their
feature, so every quantizer's range covers the inputs of the path that will run it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from sd_ovopt._loading import refuse_guidance_embedded
from sd_ovopt.deepcache.config import DeepCacheConfig
from sd_ovopt.deepcache.export import FEATURE_NAME
from sd_ovopt.deepcache.patch import apply_deepcache, attach, remove_deepcache, state_of
from sd_ovopt.errors import InvalidConfigError, UnsupportedModelError
from sd_ovopt.quantization.calibration import (
    UNET_INPUTS,
    InputRecorder,
    check_collect_request,
    run_prompts,
)
from sd_ovopt.quantization.ptq import quantize_unet

__all__ = ["collect_deepcache_calibration", "quantize_deepcache_unet"]


def collect_deepcache_calibration(
    pipeline: Any,
    prompts: Sequence[str],
    config: DeepCacheConfig,
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Run ``pipeline`` with step caching and record every UNet call's inputs.

    Items are :func:`sd_ovopt.collect_calibration`'s dicts; those of cached steps also hold
    ``"deepcache_feature"``, the cached feature the shallow branch was given. The pipeline is left as it
    was (step caching is removed again unless it was applied with ``config`` before).

    Example:
        >>> from sd_ovopt import DeepCacheConfig
        >>> from sd_ovopt.deepcache import collect_deepcache_calibration
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> items = collect_deepcache_calibration(
        ...     tiny_pipeline(), ["a red circle"], DeepCacheConfig(interval=2), num_inference_steps=4,
        ...     show_progress=False)
        >>> sum("deepcache_feature" in item for item in items)  # steps 1 and 3 are cached
        2
    """
    unet = check_collect_request(pipeline, prompts, max_samples, num_inference_steps)
    refuse_guidance_embedded(unet, "step caching")
    had = state_of(unet)
    apply_deepcache(pipeline, config)
    try:
        return run_prompts(
            pipeline,
            prompts,
            _CachedStepRecorder(max_samples, state_of(unet)),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            seed=seed,
            show_progress=show_progress,
        )
    finally:
        if had is None:
            remove_deepcache(pipeline)


class _CachedStepRecorder(InputRecorder):
    """The calibration recorder as a UNet forward hook: after each call, its inputs and, on a cached step,
    the cached feature the shallow branch was given (one copy per refresh, shared by its cached steps)."""

    def __init__(self, max_samples: int | None, state: Any) -> None:
        super().__init__(max_samples)
        self.state = state
        self.kept: dict[int, torch.Tensor] = {}

    def attach(self, unet: torch.nn.Module) -> Any:
        # after each call, not before: the call's step (refresh or cached) is decided inside it
        return unet.register_forward_hook(self, with_kwargs=True)

    def __call__(self, unet: torch.nn.Module, args: tuple, kwargs: dict, output: Any = None) -> None:
        extra = {}
        feature = self.state.feature
        if self.state.shallow and feature is not None:
            extra[FEATURE_NAME] = self.kept.setdefault(id(feature), feature.detach().float().cpu())
        self.add(args, kwargs, **extra)


def quantize_deepcache_unet(
    unet: torch.nn.Module,
    calibration: Sequence[dict[str, torch.Tensor]],
    config: DeepCacheConfig,
    quantization: Any = None,
) -> torch.nn.Module:
    """An INT8 copy of ``unet`` (see :func:`sd_ovopt.quantize_unet`) calibrated in the mode of each step.

    ``calibration`` comes from :func:`collect_deepcache_calibration`. The result carries the step-caching
    patch (without a pipeline: it runs the full UNet unless given the cached feature), ready for
    ``export_pipeline(..., unet=result, deepcache=config)``. ``unet`` is not modified.
    """

    items = list(calibration)
    if not items or FEATURE_NAME in items[0]:
        raise InvalidConfigError(
            "calibration must start with a refresh step (an item without 'deepcache_feature'); record it "
            "with collect_deepcache_calibration."
        )
    student = copy.deepcopy(unet)
    if state_of(student) is not None:
        remove_deepcache(student)
    attach(student, config)
    plain = [{key: item[key] for key in UNET_INPUTS} for item in items]  # the same tensors
    shallow = {
        id(p["sample"]): item[FEATURE_NAME]
        for p, item in zip(plain, items, strict=True)
        if FEATURE_NAME in item
    }
    state_of(student).replay = shallow  # type: ignore[union-attr]
    quantized = quantize_unet(student, plain, quantization)
    state = state_of(quantized)
    if state is None:
        raise UnsupportedModelError(
            "the quantized UNet lost the step-caching patch; NNCF did not deep-copy it."
        )
    if shallow and state.replay_hits == 0:
        raise UnsupportedModelError(
            "no cached step was replayed through the shallow branch during calibration (the calibration "
            "tensors were copied on the way to the UNet); the shallow IR's ranges would be wrong."
        )
    state.replay, state.replay_hits, state.cache, state.feature = {}, 0, {}, None
    return quantized
