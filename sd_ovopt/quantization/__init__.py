"""8-bit quantization of Stable Diffusion UNets with NNCF: post-training, then quantization-aware training."""

from sd_ovopt.quantization.calibration import collect_calibration
from sd_ovopt.quantization.config import DEFAULT_IGNORED_PATTERNS, QATConfig, QuantizationConfig
from sd_ovopt.quantization.ptq import get_quantization_config, is_quantized, quantize_unet
from sd_ovopt.quantization.qat import DistillationLoss, QATModel, WeightEMA

__all__ = [
    "DEFAULT_IGNORED_PATTERNS",
    "DistillationLoss",
    "QATConfig",
    "QATModel",
    "QuantizationConfig",
    "WeightEMA",
    "collect_calibration",
    "get_quantization_config",
    "is_quantized",
    "quantize_unet",
]
