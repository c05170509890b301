"""ToMe as a registered method: applied to the UNet before quantization, traced into the UNet IR."""

from __future__ import annotations

import argparse
from typing import Any

from sd_ovopt._validation import check_float
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.methods import Method, register_method
from sd_ovopt.tome.config import METHODS, ToMeConfig
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
        parser.add_argument(
            "--tome-method",
            default=None,
            help="merge (ToMe, the default once --tome-ratio is given) or downsample (token downsampling: "
            "self-attention keys and values from 1 token in 4, nothing merged back; no ratio)",
        )
        parser.add_argument(
            "--tome-max-downsample",
            type=int,
            default=None,
            help="act in the UNet levels downsampled at most this much: 1 (the top level, default), 2, 4 or 8",
        )

    def config_from_cli(self, args: argparse.Namespace, command: str) -> ToMeConfig | None:
        method, levels, ratio = args.tome_method, args.tome_max_downsample, args.tome_ratio
        if ratio is None and method is None and levels is None:
            return None
        if method not in (None, *METHODS):
            raise InvalidConfigError(f"--tome-method={method!r}; use one of {', '.join(METHODS)}.")
        if ratio is not None:
            check_float("--tome-ratio", ratio)  # finite; its range: ToMeConfig
        if method == "downsample" and ratio is not None:
            raise InvalidConfigError(
                f"--tome-ratio={ratio!r} with --tome-method downsample: token downsampling keeps 1 key and "
                "value in 4 and has no ratio; drop --tome-ratio, or use --tome-method merge."
            )
        if method != "downsample" and ratio is None:
            raise InvalidConfigError(
                "--tome-method merge and --tome-max-downsample need --tome-ratio (e.g. 0.4), or use "
                "--tome-method downsample."
            )
        fields = {"method": method or "merge", "max_downsample": 1 if levels is None else levels}
        return ToMeConfig(**fields, **({} if ratio is None else {"ratio": ratio}))


register_method(ToMeMethod())
