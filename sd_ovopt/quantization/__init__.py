"""8-bit quantization of Stable Diffusion UNets with NNCF."""

from sd_ovopt.quantization.calibration import collect_calibration
from sd_ovopt.quantization.config import DEFAULT_IGNORED_PATTERNS, QuantizationConfig
from sd_ovopt.quantization.ptq import get_quantization_config, is_quantized, quantize_unet

__all__ = [
    "DEFAULT_IGNORED_PATTERNS",
    "QuantizationConfig",
    "collect_calibration",
    "get_quantization_config",
    "is_quantized",
    "quantize_unet",
]
