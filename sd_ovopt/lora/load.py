"""Read a LoRA ``.safetensors`` file into the UNet's LoRA layers: one ``(down, up, alpha)`` per module.

The file is read once: its bytes are hashed (and checked against the config's sha256) and parsed by
``safetensors.torch.load``; nothing is unpickled. Key formats are converted by diffusers' own converters
(``StableDiffusionLoraLoaderMixin.lora_state_dict`` for kohya / A1111 files, then
``convert_unet_state_dict_to_peft``), and each module's alpha is found the way diffusers' ``load_lora_weights``
finds it, so a fused weight equals the one ``pipe.fuse_lora(lora_scale=...)`` gives:

* from the file's ``lora_adapter_metadata`` (written by diffusers' ``save_lora_weights``): ``lora_alpha``,
  ``alpha_pattern``, ``rank_pattern`` and ``use_rslora``;
* else from the alphas a kohya file stores per module (the most common one where a module has none; as in
  diffusers, whose converter names the alphas of attention projections after the old attention-processor
  keys, those layers take the most common alpha: the same numbers whenever a file's alphas are uniform);
* else the rank of the file's first layer (``alpha = r``: no scaling for a file of one rank).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch

from sd_ovopt.errors import CorruptModelError, InvalidConfigError, ModelNotFoundError, UnsupportedModelError

__all__ = ["LoRALayer", "read_lora_layers"]

_LAYER_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])\.weight")


@dataclass
class LoRALayer:
    """One module's adapter: ``weight += (up @ down) * factor * scale``.

    Attributes:
        module: The module's name in the UNet (``down_blocks.0.resnets.0.conv1``).
        down: ``lora_A`` (``[r, in]`` or ``[r, in, kh, kw]``).
        up: ``lora_B`` (``[out, r]`` or ``[out, r, 1, 1]``).
        factor: ``alpha / r`` (``alpha / sqrt(r)`` with rank-stabilized LoRA).
    """

    module: str
    down: Any
    up: Any
    factor: float


def read_lora_layers(path: str, sha256: str, *, ignore_text_encoder: bool) -> list[LoRALayer]:
    """The UNet layers of the LoRA file at ``path``, whose contents must hash to ``sha256``."""
    data, metadata = _read_checked(path, sha256)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CorruptModelError(
            f"{path} is not a readable safetensors file ({exc}); download it again."
        ) from exc
    unet, alphas = _unet_state_dict(tensors, path, ignore_text_encoder=ignore_text_encoder)
    pairs = _pairs(unet, path)
    factors = _factors(pairs, alphas, _unet_metadata(metadata, path))
    return [LoRALayer(module, down, up, factors[module]) for module, (down, up) in pairs.items()]


def _read_checked(path: str, sha256: str) -> tuple[bytes, dict[str, str]]:
    """The file's bytes (hashed against ``sha256``) and the ``__metadata__`` of its safetensors header."""
    file = Path(path)
    if not file.is_file():
        raise ModelNotFoundError(
            f"the LoRA file {path!r} {'is a folder' if file.is_dir() else 'does not exist'}; pass the path "
            "of its .safetensors file (LoRAConfig.path)."
        )
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InvalidConfigError(
            f"the LoRA file {path!r} changed since its LoRAConfig was made (sha256 "
            f"{hashlib.sha256(data).hexdigest()[:12]}…, the config says {sha256[:12]}…); make the LoRAConfig "
            "again (sha256=None hashes the file as it is now) or restore the file."
        )
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size]) if len(data) >= 8 + size else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise CorruptModelError(f"{path} has no safetensors header; it is not a safetensors file.")
    return data, header.get("__metadata__") or {}


def _unet_state_dict(
    tensors: dict[str, Any], path: str, *, ignore_text_encoder: bool
) -> tuple[dict[str, Any], dict[str, float]]:
    """The file's UNet LoRA tensors in diffusers/PEFT keys, and its per-module alphas (kohya files)."""
    # diffusers' loaders import transformers: loaded when a file is read, not with sd_ovopt.lora
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    if any("dora_scale" in k or "lora_magnitude_vector" in k for k in tensors):
        raise UnsupportedModelError(f"{path} is a DoRA adapter; sd_ovopt fuses plain LoRA adapters only.")
    try:
        state_dict, network_alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(dict(tensors))
    except (ValueError, KeyError) as exc:
        raise UnsupportedModelError(
            f"{path} holds LoRA keys diffusers cannot convert ({exc}); use a LoRA for Stable Diffusion 1.x/2.x "
            "in the diffusers, PEFT or kohya format."
        ) from exc
    unet = {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")}
    text = [k for k in state_dict if k.startswith("text_encoder.")]
    other = [k for k in state_dict if not k.startswith(("unet.", "text_encoder."))]
    if other:
        raise UnsupportedModelError(
            f"{path} holds tensors that are neither UNet nor text-encoder LoRA layers (e.g. {other[:3]}); "
            "it is not a LoRA for a Stable Diffusion 1.x/2.x pipeline."
        )
    if not unet:
        raise UnsupportedModelError(
            f"{path} holds no UNet LoRA layers ({len(text)} text-encoder tensors); sd_ovopt fuses LoRA "
            "into the UNet: use an adapter trained on the UNet (e.g. LCM-LoRA, Hyper-SD, TCD)."
        )
    if text and not ignore_text_encoder:
        raise InvalidConfigError(
            f"{path} also carries text-encoder LoRA layers ({len(text)} tensors), which sd_ovopt does not "
            "fuse; pass LoRAConfig(..., ignore_text_encoder=True) (CLI: --lora-ignore-text-encoder) to fuse "
            "its UNet layers alone, knowing images then differ from the adapter's intent."
        )
    if "lora_A" not in next(iter(unet)):  # as diffusers' load_lora_adapter decides
        from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

        unet = convert_unet_state_dict_to_peft(unet)
    alphas = {
        k.removeprefix("unet.").removesuffix(".alpha"): float(v)
        for k, v in (network_alphas or {}).items()
        if k.startswith("unet.")
    }
    return unet, alphas


def _pairs(unet: dict[str, Any], path: str) -> dict[str, tuple[Any, Any]]:
    """``module -> (lora_A, lora_B)`` in the file's order; anything else is refused."""
    found: dict[str, dict[str, Any]] = {}
    for key, value in unet.items():
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            kind = "a LoRA bias (lora_B.bias)" if key.endswith("lora_B.bias") else "not a LoRA weight"
            raise UnsupportedModelError(
                f"{path}: the UNet tensor {key!r} is {kind}; sd_ovopt fuses plain LoRA layers (lora_A/lora_B "
                "or lora_down/lora_up weights) only."
            )
        found.setdefault(match["module"], {})[match["part"]] = value
    broken = [module for module, parts in found.items() if set(parts) != {"A", "B"}]
    if broken:
        raise CorruptModelError(
            f"{path}: the layers {broken[:3]} lack their down or up weight; the file is incomplete."
        )
    return {module: (parts["A"], parts["B"]) for module, parts in found.items()}


def _unet_metadata(metadata: dict[str, str], path: str) -> dict[str, Any] | None:
    """The UNet's LoRA settings written by diffusers' ``save_lora_weights``, or ``None``."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CorruptModelError(f"{path}: its lora_adapter_metadata is not JSON ({exc}).") from exc
    unet = {k.removeprefix("unet."): v for k, v in settings.items() if k.startswith("unet.")}
    if unet.get("use_dora"):
        raise UnsupportedModelError(f"{path} is a DoRA adapter; sd_ovopt fuses plain LoRA adapters only.")
    return unet or None


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: the first key that matches the module's name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _factors(
    pairs: dict[str, tuple[Any, Any]], alphas: dict[str, float], settings: dict[str, Any] | None
) -> dict[str, float]:
    """``alpha / r`` per module, as diffusers' ``load_lora_weights`` configures PEFT (see the module doc)."""
    ranks = {module: int(up.shape[1]) for module, (_down, up) in pairs.items()}
    if settings is not None:
        default = settings.get("lora_alpha", settings.get("r", 8))
        patterns = settings.get("alpha_pattern") or {}
        rslora = bool(settings.get("use_rslora", False))
        return {
            m: _pattern_value(patterns, m, default) / (math.sqrt(r) if rslora else r)
            for m, r in ranks.items()
        }
    if alphas:
        default = collections.Counter(alphas.values()).most_common()[0][0]
        return {m: alphas.get(m, default) / r for m, r in ranks.items()}
    first = next(iter(ranks.values()))
    return {m: first / r for m, r in ranks.items()}
