"""A small random LoRA file for a given UNet, made offline: for tests, the docs and trying the method out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

__all__ = ["EXAMPLE_TARGETS", "write_example_lora"]

#: The layer kinds LCM-LoRA and Hyper-SD adapt: attention projections, feed-forward, and convolutions.
EXAMPLE_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "proj_in", "proj_out",
)  # fmt: skip


def write_example_lora(
    path: str | Path, unet: Any = None, *, rank: int = 4, seed: int = 0, std: float = 0.05
) -> Path:
    """Write a LoRA ``.safetensors`` file in the diffusers/PEFT format (``unet.<module>.lora_A.weight``)
    with random, non-zero down and up weights on every module of ``unet`` whose name ends with one of
    :data:`EXAMPLE_TARGETS`; return its path.

    Args:
        path: The file to write (its folder is created).
        unet: The UNet the LoRA is for (default: the tiny test UNet, :func:`sd_ovopt.testing.tiny_pipeline`).
        rank: The LoRA rank.
        seed: Seed of the random weights (the global torch RNG is left untouched).
        std: Standard deviation of the random weights.

    Example:
        >>> from sd_ovopt.lora import LoRAConfig, write_example_lora
        >>> config = LoRAConfig(write_example_lora("tiny-lora.safetensors"))  # doctest: +SKIP
    """
    if unet is None:
        from diffusers import UNet2DConditionModel  # loads transformers: only when no UNet is given

        from sd_ovopt.testing import TINY_UNET_CONFIG

        with torch.device("meta"):  # the layer names and shapes only
            unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if not (isinstance(module, (nn.Linear, nn.Conv2d)) and name.endswith(EXAMPLE_TARGETS)):
            continue
        out_features, in_features, *kernel = module.weight.shape
        down = torch.randn(rank, in_features, *kernel, generator=generator) * std
        up = torch.randn(out_features, rank, *[1] * len(kernel), generator=generator) * std
        tensors[f"unet.{name}.lora_A.weight"], tensors[f"unet.{name}.lora_B.weight"] = down, up
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(file), metadata={"format": "pt"})
    return file
