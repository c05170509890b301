"""How far a variant's images are from the reference's: PSNR and SSIM (scikit-image), and prompt accuracy.

Images are compared as 8-bit RGB, the form a user saves, with ``data_range=255``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sd_ovopt.errors import InvalidConfigError, MissingDependencyError, ShapeMismatchError

__all__ = ["Fidelity", "Judge", "image_fidelity", "prompt_accuracy", "to_uint8"]

#: A judge says whether an image shows what its prompt asks for: ``judge(image, prompt) -> bool``.
Judge = Callable[[Any, str], bool]


@dataclass(frozen=True)
class Fidelity:
    """PSNR (dB; ``inf`` for identical images) and SSIM (1.0 for identical images) of one image pair."""

    psnr_db: float
    ssim: float


def to_uint8(image: Any) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 array from a PIL image, a uint8 array, or a float array in ``[0, 1]``."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        out = array
    elif np.issubdtype(array.dtype, np.floating):
        out = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    else:
        raise InvalidConfigError(
            f"image has dtype {array.dtype}; pass a PIL image, a uint8 array or a float array in [0, 1]."
        )
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    if out.ndim != 3 or out.shape[-1] not in (3, 4):
        raise ShapeMismatchError(f"image has shape {out.shape}; expected [height, width, 3].")
    return out[..., :3]


def _metrics() -> tuple[Any, Any]:
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # an optional dependency
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
        raise MissingDependencyError(
            "fidelity metrics need scikit-image; install it with `pip install scikit-image`."
        ) from exc
    return peak_signal_noise_ratio, structural_similarity


def image_fidelity(image: Any, reference: Any) -> Fidelity:
    """PSNR and SSIM of ``image`` against ``reference`` (same size), both as 8-bit RGB.

    SSIM uses scikit-image's defaults (uniform 7x7 window, per channel, averaged); the window
    shrinks to the largest odd size that fits images smaller than 7 pixels.

    Example:
        >>> import numpy as np
        >>> from sd_ovopt.evaluation import image_fidelity
        >>> a = np.zeros((32, 32, 3), np.uint8)
        >>> image_fidelity(a, a).ssim
        1.0
    """
    psnr_fn, ssim_fn = _metrics()
    a, b = to_uint8(image), to_uint8(reference)
    if a.shape != b.shape:
        raise ShapeMismatchError(
            f"image {a.shape} and reference {b.shape} differ in size; compare equal sizes."
        )
    if np.array_equal(a, b):
        return Fidelity(psnr_db=math.inf, ssim=1.0)
    side = min(a.shape[0], a.shape[1])
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise ShapeMismatchError(f"images of {a.shape[0]}x{a.shape[1]} are too small for SSIM (need 3x3).")
    psnr = float(psnr_fn(b, a, data_range=255))
    ssim = float(ssim_fn(b, a, data_range=255, channel_axis=-1, win_size=window))
    return Fidelity(psnr_db=psnr, ssim=ssim)


def prompt_accuracy(images: Sequence[Any], prompts: Sequence[str], judge: Judge) -> float:
    """Fraction of ``images`` that ``judge(image, prompt)`` accepts (images are passed as PIL images)."""

    if len(images) != len(prompts) or not images:
        raise InvalidConfigError(
            f"prompt_accuracy needs one prompt per image; got {len(images)} images, {len(prompts)} prompts."
        )
    hits = sum(bool(judge(Image.fromarray(to_uint8(im)), p)) for im, p in zip(images, prompts, strict=True))
    return hits / len(images)
