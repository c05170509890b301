"""``QuantizationConfig``: the 8-bit choices that matter for a Stable Diffusion UNet, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from sd_ovopt._config import JsonConfig
from sd_ovopt.errors import InvalidConfigError

__all__ = ["DEFAULT_IGNORED_PATTERNS", "QuantizationConfig"]

#: Kept in float by default: the time embedding MLP (tiny, and its error shifts every block), the first
#: convolution (4 input channels: no int8 gain, raw latents) and the last one (its output is the noise
#: prediction itself). OpenVINO's SD notebooks report these layers "impact the accuracy dramatically".
DEFAULT_IGNORED_PATTERNS: tuple[str, ...] = (r"^time_embedding/.*", r"^conv_in/.*", r"^conv_out/.*")

_PRESETS = ("mixed", "performance")
_MODES = ("full", "hybrid")


@dataclass(frozen=True)
class QuantizationConfig(JsonConfig):
    """How :func:`sd_ovopt.quantize_unet` quantizes a UNet with NNCF.

    Defaults (chosen for SD-1.x/2.x UNets):

    * ``preset="mixed"``: symmetric int8 weights, asymmetric int8 activations, which suits the one-sided
      outputs of SiLU/GELU (the preset of the 2023 QAT recipe and of optimum-intel).
    * ``mode="full"``: weights and activations of convolutions and linear layers in int8, which is the
      fastest IR on CPU and what quantization-aware training restores the quality of. ``"hybrid"``
      quantizes activations of convolutions only and stores matmul weights in int8 without activation
      quantizers (optimum-intel's post-training recipe for SD): safer without fine-tuning, a bit slower.
    * ``subset_size=200``: calibration samples used for ranges (optimum-intel's default for SD).
    * ``smooth_quant=False``: SmoothQuant is reported to hurt diffusion UNets and adds trainable scales
      that ignore the ignored scope.
    * ``bias_correction=False``: little gain on SD (OpenVINO's SD notebooks turn it off) and slow.
    * ``ignored_patterns``: see :data:`DEFAULT_IGNORED_PATTERNS`. ToMe's ops are always ignored on top.

    Attributes:
        preset: ``"mixed"`` or ``"performance"`` (symmetric activations too).
        mode: ``"full"`` or ``"hybrid"``.
        subset_size: Calibration samples NNCF uses (at most the number given).
        smooth_quant: Apply SmoothQuant to matmuls.
        bias_correction: Apply NNCF's fast bias correction.
        ignored_patterns: Regular expressions of NNCF node names to keep in float.
        version: Layout version of this config, for serialized copies.

    Example:
        >>> from sd_ovopt import QuantizationConfig
        >>> QuantizationConfig(mode="hybrid").to_dict()["mode"]
        'hybrid'
    """

    preset: str = "mixed"
    mode: str = "full"
    subset_size: int = 200
    smooth_quant: bool = False
    bias_correction: bool = False
    ignored_patterns: tuple[str, ...] = DEFAULT_IGNORED_PATTERNS
    version: int = 1

    def __post_init__(self) -> None:
        if self.preset not in _PRESETS:
            raise InvalidConfigError(f"QuantizationConfig.preset={self.preset!r}; use one of {_PRESETS}.")
        if self.mode not in _MODES:
            raise InvalidConfigError(f"QuantizationConfig.mode={self.mode!r}; use one of {_MODES}.")
        if (
            not isinstance(self.subset_size, int)
            or isinstance(self.subset_size, bool)
            or self.subset_size < 1
        ):
            raise InvalidConfigError(
                f"QuantizationConfig.subset_size={self.subset_size!r}; it must be an integer >= 1 (default 200)."
            )
        for name in ("smooth_quant", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidConfigError(f"QuantizationConfig.{name} must be a boolean.")
        patterns = self.ignored_patterns
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
            raise InvalidConfigError(
                "QuantizationConfig.ignored_patterns must be a sequence of regex strings."
            )
        object.__setattr__(self, "ignored_patterns", tuple(patterns))
        if self.version != 1:
            raise InvalidConfigError(
                f"QuantizationConfig.version={self.version!r}; this sd_ovopt reads version 1."
            )
