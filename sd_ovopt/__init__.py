"""sd_ovopt: fast, small Stable Diffusion on CPUs with OpenVINO and NNCF, for Hugging Face Diffusers.

The public API is listed in ``__all__``. Heavy modules (torch, OpenVINO, NNCF, optimum) load only when
the name that needs them is first used, so ``import sd_ovopt`` stays cheap.

Example:
    >>> from sd_ovopt import SdOvOptPipeline, export_pipeline
    >>> from sd_ovopt.testing import tiny_pipeline
    >>> export_pipeline(tiny_pipeline(), "tiny-ov")  # doctest: +SKIP
    >>> image = SdOvOptPipeline.from_pretrained("tiny-ov")("a red circle").images[0]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd_ovopt._lazy import lazy_attributes
from sd_ovopt.errors import (
    AlreadyAppliedError,
    CorruptModelError,
    InvalidConfigError,
    InvalidDatasetError,
    MissingDependencyError,
    ModelNotFoundError,
    NonFiniteLossError,
    NotAPipelineError,
    OutputExistsError,
    SdOvOptError,
    ShapeMismatchError,
    UnsafeOutputError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {
    "BenchmarkResult": "sd_ovopt.evaluation.results",
    "DeepCacheConfig": "sd_ovopt.deepcache.config",
    "DistillConfig": "sd_ovopt.distill.model",
    "DistillationLoss": "sd_ovopt.quantization.qat",
    "ExportMetadata": "sd_ovopt.export.metadata",
    "LoRAConfig": "sd_ovopt.lora.config",
    "QATConfig": "sd_ovopt.quantization.config",
    "QATModel": "sd_ovopt.quantization.qat",
    "QuantizationConfig": "sd_ovopt.quantization.config",
    "SdOvOptPipeline": "sd_ovopt.pipelines.ov_pipeline",
    "ToMeConfig": "sd_ovopt.tome.config",
    "WeightEMA": "sd_ovopt.quantization.qat",
    "apply_deepcache": "sd_ovopt.deepcache.patch",
    "apply_tome": "sd_ovopt.tome.patch",
    "DEFAULT_CALIBRATION_PROMPTS": "sd_ovopt.recipes.optimize",
    "collect_calibration": "sd_ovopt.quantization.calibration",
    "export_pipeline": "sd_ovopt.export.pipeline",
    "get_deepcache_config": "sd_ovopt.deepcache.patch",
    "get_tome_config": "sd_ovopt.tome.patch",
    "is_deepcache_applied": "sd_ovopt.deepcache.patch",
    "is_tome_applied": "sd_ovopt.tome.patch",
    "optimize_pipeline": "sd_ovopt.recipes.optimize",
    "prepare_unet": "sd_ovopt.recipes.optimize",
    "Method": "sd_ovopt.methods.base",
    "register_method": "sd_ovopt.methods.registry",
    "quantize_unet": "sd_ovopt.quantization.ptq",
    "read_metadata": "sd_ovopt.export.metadata",
    "remove_deepcache": "sd_ovopt.deepcache.patch",
    "remove_tome": "sd_ovopt.tome.patch",
    "replace_vae": "sd_ovopt.export.vae",
    "replace_vae_int8": "sd_ovopt.recipes.tiny_decoder",
    "run_benchmark": "sd_ovopt.evaluation.benchmark",
    "SCHEDULERS": "sd_ovopt._schedulers",
    "load_tiny_vae": "sd_ovopt.vae.tiny",
    "train_qat": "sd_ovopt.recipes.qat",
    "distill_student": "sd_ovopt.recipes.distill",
}

__all__ = [
    "DEFAULT_CALIBRATION_PROMPTS",
    "SCHEDULERS",
    "AlreadyAppliedError",
    "BenchmarkResult",
    "CorruptModelError",
    "DeepCacheConfig",
    "DistillConfig",
    "DistillationLoss",
    "ExportMetadata",
    "InvalidConfigError",
    "InvalidDatasetError",
    "LoRAConfig",
    "Method",
    "MissingDependencyError",
    "ModelNotFoundError",
    "NonFiniteLossError",
    "NotAPipelineError",
    "OutputExistsError",
    "QATConfig",
    "QATModel",
    "QuantizationConfig",
    "SdOvOptError",
    "SdOvOptPipeline",
    "ShapeMismatchError",
    "ToMeConfig",
    "UnsafeOutputError",
    "UnsupportedModelError",
    "WeightEMA",
    "__version__",
    "apply_deepcache",
    "apply_tome",
    "collect_calibration",
    "distill_student",
    "export_pipeline",
    "get_deepcache_config",
    "get_tome_config",
    "is_deepcache_applied",
    "is_tome_applied",
    "load_tiny_vae",
    "optimize_pipeline",
    "prepare_unet",
    "quantize_unet",
    "read_metadata",
    "register_method",
    "remove_deepcache",
    "remove_tome",
    "replace_vae",
    "replace_vae_int8",
    "run_benchmark",
    "train_qat",
]

if TYPE_CHECKING:
    from sd_ovopt._schedulers import SCHEDULERS
    from sd_ovopt.deepcache.config import DeepCacheConfig
    from sd_ovopt.deepcache.patch import (
        apply_deepcache,
        get_deepcache_config,
        is_deepcache_applied,
        remove_deepcache,
    )
    from sd_ovopt.distill.model import DistillConfig
    from sd_ovopt.evaluation.benchmark import run_benchmark
    from sd_ovopt.evaluation.results import BenchmarkResult
    from sd_ovopt.export.metadata import ExportMetadata, read_metadata
    from sd_ovopt.export.pipeline import export_pipeline
    from sd_ovopt.export.vae import replace_vae
    from sd_ovopt.lora.config import LoRAConfig
    from sd_ovopt.methods.base import Method
    from sd_ovopt.methods.registry import register_method
    from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline
    from sd_ovopt.quantization.calibration import collect_calibration
    from sd_ovopt.quantization.config import QATConfig, QuantizationConfig
    from sd_ovopt.quantization.ptq import quantize_unet
    from sd_ovopt.quantization.qat import DistillationLoss, QATModel, WeightEMA
    from sd_ovopt.recipes.distill import distill_student
    from sd_ovopt.recipes.optimize import DEFAULT_CALIBRATION_PROMPTS, optimize_pipeline, prepare_unet
    from sd_ovopt.recipes.qat import train_qat
    from sd_ovopt.recipes.tiny_decoder import replace_vae_int8
    from sd_ovopt.tome.config import ToMeConfig
    from sd_ovopt.tome.patch import apply_tome, get_tome_config, is_tome_applied, remove_tome
    from sd_ovopt.vae.tiny import load_tiny_vae


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
