"""``quantize_unet``: an 8-bit (fake-quantized, trainable) diffusers UNet made with NNCF 3.x."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from sd_ovopt._loading import find_unet
from sd_ovopt._nncf import import_nncf, nncf_output_on_stderr
from sd_ovopt.errors import UnsupportedModelError
from sd_ovopt.quantization.calibration import GUIDANCE_INPUT, validate_calibration
from sd_ovopt.quantization.config import QuantizationConfig
from sd_ovopt.tome.patch import TOME_SCOPE_PATTERN

__all__ = ["QUANTIZATION_ATTR", "get_quantization_config", "is_quantized", "quantize_unet"]

logger = logging.getLogger(__name__)

#: Attribute holding the QuantizationConfig on a UNet returned by quantize_unet (survives deepcopy).
QUANTIZATION_ATTR = "_sd_ovopt_quantization"


def _find_unet(target: Any) -> torch.nn.Module:
    unet = find_unet(target, user="quantize_unet")
    if is_quantized(unet):
        raise UnsupportedModelError("this UNet is already quantized; quantize the float UNet instead.")
    return unet


def is_quantized(unet: torch.nn.Module) -> bool:
    """Whether ``unet`` was returned by :func:`quantize_unet`."""
    return hasattr(unet, QUANTIZATION_ATTR)


def get_quantization_config(unet: torch.nn.Module) -> QuantizationConfig | None:
    """The config a quantized UNet was made with, or ``None`` for a float UNet."""
    return getattr(unet, QUANTIZATION_ATTR, None)


def _ignored_scope(nncf: Any, config: QuantizationConfig) -> Any:
    types = []
    if config.mode == "hybrid":
        # Linear layers and matmuls keep float activations; their weights become int8 at export.
        types = ["linear", "matmul", "baddbmm", "bmm", "scaled_dot_product_attention"]
    return nncf.IgnoredScope(
        patterns=[*config.ignored_patterns, TOME_SCOPE_PATTERN], types=types, validate=False
    )


def _unet_inputs(unet: torch.nn.Module) -> Callable[[dict[str, torch.Tensor]], dict[str, Any]]:
    """What NNCF's dataset maps a calibration item with: the UNet's keyword inputs on its device and dtype."""
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype

    def to_inputs(item: dict[str, torch.Tensor]) -> dict[str, Any]:
        inputs = {
            "sample": item["sample"].to(device, dtype),
            "timestep": item["timestep"].to(device),
            "encoder_hidden_states": item["encoder_hidden_states"].to(device, dtype),
            "return_dict": False,
        }
        if item.get(GUIDANCE_INPUT) is not None:  # a guidance-embedded (LCM) UNet
            inputs[GUIDANCE_INPUT] = item[GUIDANCE_INPUT].to(device, dtype)
        return inputs

    return to_inputs


def _nncf_quantize(
    unet: torch.nn.Module, items: list[dict[str, torch.Tensor]], config: QuantizationConfig
) -> torch.nn.Module:
    """``nncf.quantize`` with the settings of ``config`` (the UNet in eval mode, without gradients)."""
    nncf = import_nncf()
    # after import_nncf's set-up
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    advanced = AdvancedQuantizationParameters(
        overflow_fix=nncf.OverflowFix.DISABLE,
        disable_bias_correction=not config.bias_correction,
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=0.95 if config.smooth_quant else -1),
    )
    with nncf_output_on_stderr():
        return nncf.quantize(
            unet,
            nncf.Dataset(items, _unet_inputs(unet)),
            preset=nncf.QuantizationPreset(config.preset),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=min(config.subset_size, len(items)),
            ignored_scope=_ignored_scope(nncf, config),
            advanced_parameters=advanced,
        )


def quantize_unet(
    unet_or_pipeline: Any,
    calibration: Iterable[dict[str, torch.Tensor]],
    config: QuantizationConfig | None = None,
) -> torch.nn.Module:
    """Quantize a diffusers UNet to 8 bits with NNCF: a new, fake-quantized, trainable UNet.

    The input UNet is not modified (NNCF works on a deep copy), so it can serve as the FP32 teacher
    of quantization-aware training. The result runs in PyTorch (for QAT or checks) and exports to an
    int8 OpenVINO IR with ``export_pipeline(..., unet=quantized)``. If ToMe is applied to the UNet, its
    similarity, top-k and index ops stay in float.

    Args:
        unet_or_pipeline: A ``UNet2DConditionModel`` or a pipeline holding one as ``.unet``.
        calibration: UNet inputs: dicts with ``sample``, ``timestep`` and ``encoder_hidden_states``, e.g.
            from :func:`sd_ovopt.collect_calibration`.
        config: The quantization settings (default: ``QuantizationConfig()``).

    Example:
        >>> from sd_ovopt import collect_calibration, quantize_unet
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline()
        >>> qunet = quantize_unet(pipe, collect_calibration(pipe, ["a red circle"], num_inference_steps=2))  # doctest: +SKIP
    """
    config = config or QuantizationConfig()
    if not isinstance(config, QuantizationConfig):
        raise UnsupportedModelError(f"config must be a QuantizationConfig, got {type(config).__name__}.")
    unet = _find_unet(unet_or_pipeline)
    items = validate_calibration(calibration, unet)
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad():
            quantized = _nncf_quantize(unet, items, config)
    finally:
        unet.train(was_training)
    setattr(quantized, QUANTIZATION_ATTR, config)
    logger.info(
        "quantized the UNet with %s on %d calibration samples", config, min(config.subset_size, len(items))
    )
    return quantized
