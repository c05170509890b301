"""ToMe as a registered method: applied to the UNet before quantization, traced into the UNet IR."""

from __future__ import annotations

import argparse
from typing import Any

from sd_ovopt._validation import check_float
from sd_ovopt.methods import Method, register_method
from sd_ovopt.tome.config import ToMeConfig
from sd_ovopt.tome.patch import apply_tome, get_tome_config, remove_tome

__all__ = ["ToMeMethod"]


class ToMeMethod(Method):
    """Token merging: the merge is part of the traced graph, so the record holds only its config."""

    name = "tome"
    config_class = ToMeConfig
    rank = 10  # changes the graph: before quantization, which records the graph it is given
    label = "ToMe"

    def applied_config(self, unet: Any) -> ToMeConfig | None:
        return get_tome_config(unet)

    def apply(self, unet: Any, config: ToMeConfig) -> Any:
        return apply_tome(unet, config)

    def remove(self, unet: Any) -> Any:
        return remove_tome(unet)

    def add_cli_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        parser.add_argument(
            "--tome-ratio",
            type=float,
            default=None,
            help="token merging (ToMe) ratio, e.g. 0.4 (default: off)",
        )

    def config_from_cli(self, args: argparse.Namespace, command: str) -> ToMeConfig | None:
        if args.tome_ratio is None:
            return None
        check_float("--tome-ratio", args.tome_ratio)  # finite; its range: ToMeConfig
        return ToMeConfig(ratio=args.tome_ratio)


register_method(ToMeMethod())
