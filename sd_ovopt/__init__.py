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

import importlib
from typing import TYPE_CHECKING, Any

from sd_ovopt.errors import (
    CorruptModelError,
    InvalidConfigError,
    MissingDependencyError,
    ModelNotFoundError,
    NotAPipelineError,
    OutputExistsError,
    SdOvOptError,
    ShapeMismatchError,
)

__version__ = "0.1.0"

_LAZY = {
    "ExportMetadata": "sd_ovopt.export.metadata",
    "SdOvOptPipeline": "sd_ovopt.pipelines.ov_pipeline",
    "export_pipeline": "sd_ovopt.export.pipeline",
    "read_metadata": "sd_ovopt.export.metadata",
}

__all__ = [
    "CorruptModelError",
    "ExportMetadata",
    "InvalidConfigError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "NotAPipelineError",
    "OutputExistsError",
    "SdOvOptError",
    "SdOvOptPipeline",
    "ShapeMismatchError",
    "__version__",
    "export_pipeline",
    "read_metadata",
]

if TYPE_CHECKING:
    from sd_ovopt.export.metadata import ExportMetadata, read_metadata
    from sd_ovopt.export.pipeline import export_pipeline
    from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sd_ovopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
