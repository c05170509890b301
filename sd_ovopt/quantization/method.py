"""INT8 quantization as a registered method: the recipe calibrates and quantizes the prepared UNet; the
export stores its weights as int8 (hybrid mode: matmul weights compressed weight-only)."""

from __future__ import annotations

import argparse
from typing import Any

from sd_ovopt._nncf import compress_weights_int8
from sd_ovopt._validation import check_int
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.methods import Method, RecipeSettings, register_method
from sd_ovopt.quantization.calibration import collect_calibration
from sd_ovopt.quantization.config import QuantizationConfig
from sd_ovopt.quantization.ptq import get_quantization_config, quantize_unet

__all__ = ["Int8Method"]


class Int8Method(Method):
    """8-bit quantization with NNCF: applied only by calibrating (the recipe), never removed."""

    name = "int8"
    config_class = QuantizationConfig
    rank = 90  # records the graph it is given: after every method that changes it
    label = "INT8"
    quantizes = True

    def applied_config(self, unet: Any) -> QuantizationConfig | None:
        return get_quantization_config(unet)

    def apply(self, unet: Any, config: QuantizationConfig) -> Any:
        if self.applied_config(unet) == config:
            return unet
        raise InvalidConfigError(
            "INT8 quantization needs calibration inputs, so it cannot be applied to a UNet on its own: use "
            "sd_ovopt.optimize_pipeline(..., methods=[QuantizationConfig()]) or sd_ovopt.quantize_unet, "
            "and export the quantized UNet (export_pipeline(..., unet=quantized))."
        )

    def remove(self, unet: Any) -> Any:
        if self.applied_config(unet) is None:
            return unet
        raise InvalidConfigError(
            "a quantized UNet cannot be turned back into the float one; keep the float UNet (quantize_unet "
            "returns a new UNet and leaves its input as it was)."
        )

    def add_cli_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        if command != "quantize":
            return
        parser.add_argument("--num-samples", type=int, default=200, help="UNet calls to record (default 200)")
        parser.add_argument("--mode", choices=("full", "hybrid"), default="full")

    def config_from_cli(self, args: argparse.Namespace, command: str) -> QuantizationConfig | None:
        if command != "quantize":
            return None
        check_int("--num-samples", args.num_samples, minimum=1)
        return QuantizationConfig(mode=args.mode, subset_size=args.num_samples)

    def prepare(self, unet: Any, config: QuantizationConfig, settings: RecipeSettings) -> Any:
        """Calibrate ``unet`` along its own sampling (or on the given inputs) and quantize it."""
        calibration = settings.calibrate(unet, collect_calibration, config.subset_size)
        quantizer = settings.quantizer or quantize_unet
        return quantizer(unet, calibration, config)

    def finish_unet_ir(self, model: Any, config: QuantizationConfig) -> Any:
        if config.mode != "hybrid":
            return model
        # hybrid: matmul weights to int8 (weight-only); NNCF fully quantized the convolutions
        return compress_weights_int8(model, skip_types=("Convolution",))


register_method(Int8Method())
