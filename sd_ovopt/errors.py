"""Errors raised by sd_ovopt.

Every error derives from :class:`SdOvOptError` and also from the builtin exception a caller would
expect (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
Messages name the problem, show the value, and say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AlreadyAppliedError",
    "CorruptModelError",
    "InvalidConfigError",
    "InvalidDatasetError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "NonFiniteLossError",
    "NotAPipelineError",
    "OutputExistsError",
    "SdOvOptError",
    "ShapeMismatchError",
    "UnsafeOutputError",
    "UnsupportedModelError",
]


class SdOvOptError(Exception):
    """Base class of every error raised by sd_ovopt."""


class ModelNotFoundError(SdOvOptError, FileNotFoundError):
    """A model path given by the user does not exist."""


class NotAPipelineError(SdOvOptError, ValueError):
    """A folder or object is not the Stable Diffusion pipeline (or part) that was expected."""


class CorruptModelError(SdOvOptError, ValueError):
    """A model file exists but cannot be read: truncated, corrupt or of another format."""


class ShapeMismatchError(SdOvOptError, ValueError):
    """A height, width or batch size is invalid, or differs from the static shape baked into an IR."""


class OutputExistsError(SdOvOptError, FileExistsError):
    """An output folder already exists and is not empty, and overwriting was not requested."""


class UnsafeOutputError(SdOvOptError, ValueError):
    """An output path whose replacement would delete what is not ours: empty, the working directory or an
    ancestor of it, the home directory, a filesystem root, or a folder equal to, inside or around the source."""


class InvalidConfigError(SdOvOptError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class MissingDependencyError(SdOvOptError, ImportError):
    """An optional dependency needed for this feature is not installed."""


class UnsupportedModelError(SdOvOptError, TypeError):
    """An object is not the kind of model a function works on (e.g. ToMe on something without a UNet)."""


class AlreadyAppliedError(SdOvOptError, RuntimeError):
    """A patch is already applied with other settings, and replacing it was not requested."""


class InvalidDatasetError(SdOvOptError, ValueError):
    """A training data folder is missing, has no captions or no images, or they do not match."""


class NonFiniteLossError(SdOvOptError, FloatingPointError):
    """Training produced a NaN or infinite loss; it stopped before the bad update was applied or saved."""
