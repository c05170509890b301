"""Fuse LoRA adapters into a diffusers UNet's weights, and undo it bit for bit.

``apply_lora`` adds each adapter's ``(up @ down) * alpha / r * scale`` to the weight of the module it
names (linear layers and convolutions alike, the arithmetic of PEFT's ``merge``), in the config's order.
No module is added or replaced: the UNet keeps its plain ``nn.Linear``/``nn.Conv2d`` layers, so the export
traces an ordinary UNet whose weights happen to be fused.

The state lives in one private attribute of the UNet: the config and a copy of the original tensor of
exactly the parameters the fuse changed. ``remove_lora`` copies them back, so outputs return bit for bit; a
``copy.deepcopy`` of the UNet copies them too, and ``state_dict`` does not see them. The copies cost the
memory of the changed weights (most of the UNet for LCM-LoRA) while the adapter is fused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sd_ovopt._loading import find_unet
from sd_ovopt.errors import AlreadyAppliedError, UnsupportedModelError
from sd_ovopt.lora.config import LoRAConfig
from sd_ovopt.lora.load import LoRALayer, read_lora_layers

__all__ = ["apply_lora", "get_lora_config", "remove_lora"]

_STATE = "_sd_ovopt_lora"


class _LoRAState:
    """What a fused UNet carries: the config, and the original tensors of the parameters it changed."""

    def __init__(self, config: LoRAConfig) -> None:
        self.config = config
        self.originals: dict[str, Any] = {}


def get_lora_config(target: Any) -> LoRAConfig | None:
    """The :class:`LoRAConfig` fused into ``target`` (a UNet or a pipeline), or ``None``."""
    unet = getattr(target, "unet", target)
    state = getattr(unet, "__dict__", {}).get(_STATE)
    return None if state is None else state.config


def apply_lora(target: Any, config: LoRAConfig) -> Any:
    """Fuse the adapters of ``config`` into the UNet of ``target`` (a UNet or a pipeline); return ``target``.

    The same config again is a no-op; another one raises ``AlreadyAppliedError`` (remove it first). If
    an adapter cannot be fused (a missing file, a layer this UNet lacks) nothing stays changed.

    Example:
        >>> from sd_ovopt.lora import LoRAConfig, apply_lora, remove_lora  # doctest: +SKIP
        >>> apply_lora(pipe.unet, LoRAConfig("lcm-lora-sdv1-5.safetensors"))  # doctest: +SKIP
        >>> remove_lora(pipe.unet)  # the original weights, bit for bit  # doctest: +SKIP
    """
    unet = find_unet(target, user="apply_lora")
    if not isinstance(config, LoRAConfig):
        raise UnsupportedModelError(f"apply_lora needs a LoRAConfig, got {type(config).__name__}.")
    current = get_lora_config(unet)
    if current == config:
        return target
    if current is not None:
        raise AlreadyAppliedError(
            f"the UNet carries the LoRA {current.name} at {current.scale}, not {config.name} at "
            f"{config.scale}; call remove_lora first."
        )
    state = _LoRAState(config)
    try:
        for path, scale, _name, sha256 in config.adapters:
            layers = read_lora_layers(path, sha256, ignore_text_encoder=config.ignore_text_encoder)
            _fuse(unet, layers, scale, state.originals, path)
    except BaseException:
        _restore(unet, state.originals)
        raise
    unet.__dict__[_STATE] = state
    return target


def remove_lora(target: Any) -> Any:
    """Put back the weights :func:`apply_lora` changed (bit for bit); a no-op without a fused LoRA."""
    unet = getattr(target, "unet", target)
    state = getattr(unet, "__dict__", {}).pop(_STATE, None)
    if state is not None:
        _restore(unet, state.originals)
    return target


def _restore(unet: Any, originals: dict[str, Any]) -> None:
    with torch.no_grad():
        for name, tensor in originals.items():
            unet.get_parameter(name).copy_(tensor)


def _module(unet: Any, layer: LoRALayer, path: str) -> Any:
    """The ``nn.Linear``/``nn.Conv2d`` the layer adapts, its shapes checked."""
    try:
        module = unet.get_submodule(layer.module)
    except AttributeError:
        module = None
    if not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
        raise UnsupportedModelError(
            f"{path}: its layer {layer.module!r} is not a linear layer or plain convolution of this UNet; "
            "the LoRA was made for another base model (use one for this model's architecture, e.g. SD-1.5)."
        )
    out_features, in_features, *kernel = module.weight.shape
    rank = layer.down.shape[0]
    if tuple(layer.down.shape) != (rank, in_features, *kernel) or tuple(layer.up.shape) != (
        out_features,
        rank,
        *[1] * len(kernel),
    ):
        raise UnsupportedModelError(
            f"{path}: the LoRA of {layer.module!r} has shapes {tuple(layer.down.shape)} and "
            f"{tuple(layer.up.shape)}, which do not fit its weight {tuple(module.weight.shape)}; the LoRA "
            "was made for another base model."
        )
    return module


def delta_weight(layer: LoRALayer, module: Any, scale: float) -> Any:
    """``(up @ down) * alpha / r * scale`` in the weight's shape, computed as PEFT's ``get_delta_weight``
    does (float32 on the CPU for half-precision weights)."""
    weight = module.weight
    dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    down = layer.down.to(device=weight.device, dtype=dtype)
    up = layer.up.to(device=weight.device, dtype=dtype)
    factor = layer.factor
    factor *= scale  # PEFT's scale_layer: scaling *= lora_scale
    if weight.dim() == 2:
        delta = (up @ down) * factor
    elif tuple(weight.shape[2:4]) == (1, 1):
        delta = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * factor
    else:
        delta = F.conv2d(down.transpose(0, 1), up).transpose(0, 1) * factor
    return delta.to(weight.dtype)


def _fuse(unet: Any, layers: list[LoRALayer], scale: float, originals: dict[str, Any], path: str) -> None:
    """Add each layer's delta to its module's weight, keeping the original the first time it changes."""
    modules = [_module(unet, layer, path) for layer in layers]  # every layer checked before any change
    if scale == 0:
        return
    with torch.no_grad():
        for layer, module in zip(layers, modules, strict=True):
            name = f"{layer.module}.weight"
            if name not in originals:
                originals[name] = module.weight.detach().clone()
            module.weight += delta_weight(layer, module, scale)
