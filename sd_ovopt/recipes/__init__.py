"""The workflows on top of the methods, the export and the pipeline: :func:`optimize_pipeline` (methods
applied in rank order, INT8 calibrated on the prepared UNet's own sampling, then export) and
:func:`train_qat` (quantization-aware training from that post-training start), and
:func:`replace_vae_int8` (a folder's tiny decoder in INT8, calibrated on its own sampling)."""

from sd_ovopt.recipes.optimize import DEFAULT_CALIBRATION_PROMPTS, optimize_pipeline, prepare_unet
from sd_ovopt.recipes.qat import train_qat
from sd_ovopt.recipes.tiny_decoder import replace_vae_int8

__all__ = [
    "DEFAULT_CALIBRATION_PROMPTS",
    "optimize_pipeline",
    "prepare_unet",
    "replace_vae_int8",
    "train_qat",
]
