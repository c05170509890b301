"""LoRA fusing as a registered method: adapters fused into the UNet's weights before anything else."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.lora.config import LoRAConfig
from sd_ovopt.lora.example import write_example_lora
from sd_ovopt.lora.fuse import apply_lora, get_lora_config, remove_lora
from sd_ovopt.methods import Method, register_method

__all__ = ["LoRAMethod"]


class LoRAMethod(Method):
    """LoRA adapters fused into the weights: the IR holds plain weights, so the record holds only the
    config (each adapter's path as given, name, scale and sha256)."""

    name = "lora"
    config_class = LoRAConfig
    rank = 5  # changes the weights: before ToMe and step caching, and before INT8 calibrates
    label = "LoRA"

    def applied_config(self, unet: Any) -> LoRAConfig | None:
        return get_lora_config(unet)

    def apply(self, unet: Any, config: LoRAConfig) -> Any:
        return apply_lora(unet, config)

    def remove(self, unet: Any) -> Any:
        return remove_lora(unet)

    @classmethod
    def example_config(cls, folder: Path) -> LoRAConfig:
        """A LoRA file on the tiny UNet's attention, feed-forward and convolution layers, written to
        ``folder`` (for the contract suite)."""
        return LoRAConfig(write_example_lora(Path(folder) / "example_lora.safetensors"), scale=0.7)

    def add_cli_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        parser.add_argument(
            "--lora",
            action="append",
            default=None,
            metavar="FILE",
            help="a LoRA .safetensors file fused into the UNet first (repeat for several, fused in order)",
        )
        parser.add_argument(
            "--lora-scale",
            type=float,
            action="append",
            default=None,
            help="strength of the LoRA (default 1.0); once for all files or once per --lora",
        )
        parser.add_argument(
            "--lora-ignore-text-encoder",
            action="store_true",
            help="fuse the UNet layers of a LoRA that also carries text-encoder layers (those are left out)",
        )

    def config_from_cli(self, args: argparse.Namespace, command: str) -> LoRAConfig | None:
        if not args.lora:
            if args.lora_scale is not None or args.lora_ignore_text_encoder:
                raise InvalidConfigError(
                    "--lora-scale and --lora-ignore-text-encoder need --lora FILE.safetensors."
                )
            return None
        scales = args.lora_scale or [1.0]
        if len(scales) not in (1, len(args.lora)):
            raise InvalidConfigError(
                f"--lora-scale was given {len(scales)} times for {len(args.lora)} --lora files; give it once "
                "(for all of them) or once per file."
            )
        return LoRAConfig(
            path=tuple(args.lora), scale=tuple(scales), ignore_text_encoder=args.lora_ignore_text_encoder
        )


register_method(LoRAMethod())
