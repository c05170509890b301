"""``ToMeConfig``: the settings of token merging, frozen, validated and JSON round-trippable."""

from __future__ import annotations

from dataclasses import dataclass

from sd_ovopt._config import JsonConfig
from sd_ovopt.errors import InvalidConfigError

__all__ = ["ToMeConfig"]

_DOWNSAMPLES = (1, 2, 4, 8)
#: The token methods: ToMe's merge, and token downsampling.
METHODS = ("merge", "downsample")


@dataclass(frozen=True)
class ToMeConfig(JsonConfig):
    """Token merging (ToMe for Stable Diffusion) settings.

    Attributes:
        ratio: Fraction of a block's tokens merged away, ``0 < ratio <= 1 - 1/(sx*sy)`` (0.75 for 2x2).
        max_downsample: Merge only in blocks whose latent is downsampled at most this much (1, 2, 4 or 8);
            1 means the full-resolution blocks only (tomesd's default).
        sx: Width of the stride cell; each ``sx x sy`` cell of the latent keeps one destination token.
        sy: Height of the stride cell.
        merge_attn: Merge tokens around self-attention (recommended).
        merge_crossattn: Merge tokens around cross-attention (not recommended).
        merge_mlp: Merge tokens around the feed-forward layer (very not recommended).
        method: ``"merge"`` (ToMe: merge similar tokens around the wrapped layers, then unmerge) or
            ``"downsample"`` (ToDo-style: self-attention keys and values come from the token grid
            strided by ``downsample_factor``; queries and outputs keep every token, nothing to unmerge).
        downsample_factor: Stride of the key/value grid in ``"downsample"`` mode (2 keeps 1 in 4).
        seed: Which token of each cell is the destination: ``None`` takes the top-left one (tomesd's
            ``use_rand=False``); an integer draws a fixed layout from that seed, in Python, once. The layout
            is a constant of the model either way: no random op ever enters the graph, so the same seed
            gives the same image in PyTorch and OpenVINO.
        version: Layout version of this config, for serialized copies.

    Example:
        >>> from sd_ovopt import ToMeConfig
        >>> ToMeConfig(ratio=0.4).to_dict()["ratio"]
        0.4
    """

    ratio: float = 0.5
    max_downsample: int = 1
    sx: int = 2
    sy: int = 2
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False
    method: str = "merge"
    downsample_factor: int = 2
    seed: int | None = None
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("sx", "sy"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidConfigError(
                    f"ToMeConfig.{name}={value!r}; it must be an integer >= 1 (default 2)."
                )
        if self.sx * self.sy < 2:
            raise InvalidConfigError("ToMeConfig: sx * sy must be at least 2, or no token is left to merge.")
        limit = 1 - 1 / (self.sx * self.sy)
        if (
            isinstance(self.ratio, bool)
            or not isinstance(self.ratio, (int, float))
            or not 0 < self.ratio <= limit
        ):
            raise InvalidConfigError(
                f"ToMeConfig.ratio={self.ratio!r}; it must be in (0, {limit:g}] for sx={self.sx}, sy={self.sy} "
                "(one token of each cell is kept). Typical values: 0.3 to 0.5."
            )
        if self.max_downsample not in _DOWNSAMPLES:
            raise InvalidConfigError(
                f"ToMeConfig.max_downsample={self.max_downsample!r}; use one of {_DOWNSAMPLES} (1 = full resolution only)."
            )
        flags = (self.merge_attn, self.merge_crossattn, self.merge_mlp)
        if not all(isinstance(flag, bool) for flag in flags):
            raise InvalidConfigError(
                "ToMeConfig: merge_attn, merge_crossattn and merge_mlp must be booleans."
            )
        if not any(flags):
            raise InvalidConfigError(
                "ToMeConfig: set at least one of merge_attn, merge_crossattn, merge_mlp."
            )
        if self.method not in METHODS:
            raise InvalidConfigError(f"ToMeConfig.method={self.method!r}; use one of {', '.join(METHODS)}.")
        factor = self.downsample_factor
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
            raise InvalidConfigError(f"ToMeConfig.downsample_factor={factor!r}; it must be an integer >= 2.")
        if self.method == "downsample" and (self.merge_crossattn or self.merge_mlp or not self.merge_attn):
            raise InvalidConfigError(
                "ToMeConfig: method='downsample' acts on self-attention only; set merge_attn=True, "
                "merge_crossattn=False, merge_mlp=False."
            )
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0
        ):
            raise InvalidConfigError(
                f"ToMeConfig.seed={self.seed!r}; use None (top-left layout) or an integer >= 0."
            )
        if self.version != 1:
            raise InvalidConfigError(f"ToMeConfig.version={self.version!r}; this sd_ovopt reads version 1.")
