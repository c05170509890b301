"""The benchmark and fidelity harness: the same prompts and seeds through PyTorch FP32, sd_ovopt's OpenVINO
variants and optimum-intel's 8-bit path; latency, peak memory, size on disk, PSNR/SSIM and prompt accuracy;
written as JSON, a markdown table, a chart and an image grid. Presets (``run_preset("sd15-512", ...)``)
bring their own model, built offline, and settings.

Example:
    >>> from sd_ovopt.evaluation import run_benchmark
    >>> result = run_benchmark("path/to/sd-folder", "bench-out", steps=20)  # doctest: +SKIP
    >>> print(open("bench-out/results.md").read())  # doctest: +SKIP

Names load lazily: importing this package imports neither torch nor OpenVINO.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd_ovopt._lazy import lazy_attributes

_LAZY = {
    "DEFAULT_CALIBRATION_PROMPTS": "sd_ovopt.evaluation.settings",
    "DEFAULT_PROMPTS": "sd_ovopt.evaluation.settings",
    "DEFAULT_VARIANTS": "sd_ovopt.evaluation.variants",
    "PEER": "sd_ovopt.evaluation.variants",
    "PEER_FULL": "sd_ovopt.evaluation.variants",
    "REFERENCE": "sd_ovopt.evaluation.variants",
    "VARIANTS": "sd_ovopt.evaluation.variants",
    "BenchmarkResult": "sd_ovopt.evaluation.results",
    "BenchmarkSettings": "sd_ovopt.evaluation.settings",
    "Preset": "sd_ovopt.evaluation.presets",
    "preset_names": "sd_ovopt.evaluation.presets",
    "register_preset": "sd_ovopt.evaluation.presets",
    "run_preset": "sd_ovopt.evaluation.presets",
    "VariantSpec": "sd_ovopt.evaluation.variants",
    "register_variant": "sd_ovopt.evaluation.variants",
    "Fidelity": "sd_ovopt.evaluation.fidelity",
    "VariantResult": "sd_ovopt.evaluation.results",
    "image_fidelity": "sd_ovopt.evaluation.fidelity",
    "markdown_table": "sd_ovopt.evaluation.report",
    "prompt_accuracy": "sd_ovopt.evaluation.fidelity",
    "run_benchmark": "sd_ovopt.evaluation.benchmark",
}

__all__ = [
    "DEFAULT_CALIBRATION_PROMPTS",
    "DEFAULT_PROMPTS",
    "DEFAULT_VARIANTS",
    "PEER",
    "PEER_FULL",
    "REFERENCE",
    "VARIANTS",
    "BenchmarkResult",
    "BenchmarkSettings",
    "Fidelity",
    "Preset",
    "VariantResult",
    "VariantSpec",
    "image_fidelity",
    "markdown_table",
    "preset_names",
    "prompt_accuracy",
    "register_preset",
    "register_variant",
    "run_benchmark",
    "run_preset",
]

if TYPE_CHECKING:
    from sd_ovopt.evaluation.benchmark import run_benchmark
    from sd_ovopt.evaluation.fidelity import Fidelity, image_fidelity, prompt_accuracy
    from sd_ovopt.evaluation.presets import Preset, preset_names, register_preset, run_preset
    from sd_ovopt.evaluation.report import markdown_table
    from sd_ovopt.evaluation.results import BenchmarkResult, VariantResult
    from sd_ovopt.evaluation.settings import DEFAULT_CALIBRATION_PROMPTS, DEFAULT_PROMPTS, BenchmarkSettings
    from sd_ovopt.evaluation.variants import (
        DEFAULT_VARIANTS,
        PEER,
        PEER_FULL,
        REFERENCE,
        VARIANTS,
        VariantSpec,
        register_variant,
    )


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
