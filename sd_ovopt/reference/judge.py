"""A deterministic judge for the shapes dataset: recover background, colour, shape and position by plain
image analysis (no learned classifier), and score prompt accuracy.

The background is the median of the border pixels. The shape is the largest connected region that
differs from it; its colour is the median of its core pixels, snapped to the nearest palette colour. Its
kind comes from template fitting on a soft (anti-aliasing aware) coverage map: for each of the four
shapes, a template with the region's area, placed at its centroid and blurred by a few amounts (generated
images are softer than drawn ones), and the shape whose template leaves the smallest squared residual
wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from sd_ovopt.errors import ShapeMismatchError
from sd_ovopt.evaluation import fidelity
from sd_ovopt.reference.shapes import BACKGROUNDS, COLOURS, coverage, parse_prompt

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Judgement", "judge_image", "prompt_accuracy", "score_image"]

_MIN_PIXELS = 12  # a region smaller than this is not a shape
_FOREGROUND_DISTANCE = 50.0  # RGB distance from the background that marks a shape pixel


@dataclass(frozen=True)
class Judgement:
    """What the judge sees in one image; ``shape`` and ``colour`` are None when no shape is found."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None
    residual: float = 0.0  # how far the image is from the best template (0 = exact)

    def matches(self, prompt: str) -> bool:
        """Colour and shape both match the dataset prompt."""
        spec = parse_prompt(prompt)
        return self.colour == spec.colour and self.shape == spec.shape


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dist = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    return names[int(np.argmin(dist))]


def _largest_region(mask: np.ndarray) -> np.ndarray:

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


_AREA_PER_SIDE2 = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "diamond": 0.5}
_BLURS = (0.0, 0.6, 1.0, 1.4)  # Gaussian sigmas tried on each template: generated images are softer


def _fit_shape(alpha: np.ndarray) -> tuple[str, float]:
    """The shape whose template (size from the area, placed at the centroid) best explains ``alpha``.

    Returns the shape and its relative residual (sum of squared errors over the area).
    """

    h, w = alpha.shape
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = float((alpha * xs).sum() / area), float((alpha * ys).sum() / area)
    best, best_err = "circle", np.inf
    for shape, k in _AREA_PER_SIDE2.items():
        side = np.sqrt(area / k)
        box_cy = cy - side / 6 if shape == "triangle" else cy  # a triangle's centroid is 2/3 down its box
        box = (cx - side / 2, box_cy - side / 2, cx + side / 2, box_cy + side / 2)
        template = coverage(shape, box, h)
        for sigma in _BLURS:
            blurred = ndimage.gaussian_filter(template, sigma) if sigma else template
            err = float(((alpha - blurred) ** 2).sum())
            if err < best_err:
                best, best_err = shape, err
    return best, best_err / area


def _position(cx: float, cy: float, size: int) -> str:
    dx, dy = cx / size - 0.5, cy / size - 0.5
    if max(abs(dx), abs(dy)) < 0.06:  # corner placements sit >= 0.1 off the middle, jitter is 0.03
        return "center"
    return f"{'top' if dy < 0 else 'bottom'} {'left' if dx < 0 else 'right'}"


def judge_image(image: Image.Image | np.ndarray) -> Judgement:
    """Analyse one RGB image (PIL image or HxWx3 array, 0..255)."""
    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ShapeMismatchError(
            f"expected an RGB image (H, W, 3), got an array of shape {rgb.shape}; pass a PIL image or HxWx3 array"
        )
    h, w, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    distance = np.linalg.norm(rgb - bg_rgb, axis=2)
    region = _largest_region(distance > _FOREGROUND_DISTANCE)
    if region.sum() < _MIN_PIXELS:
        return Judgement(background, None, None, None)
    core = region & (distance >= np.percentile(distance[region], 50))
    fg_rgb = np.median(rgb[core], axis=0)
    colour = _nearest(fg_rgb, COLOURS)

    # Soft coverage: 0 at the background colour, 1 at the shape colour (anti-aliased edges in between),
    # restricted to the region grown by one pixel so that other blobs do not count.

    grown = ndimage.binary_dilation(region, structure=np.ones((3, 3), dtype=bool))
    span = max(float(np.linalg.norm(fg_rgb - bg_rgb)), 1.0)
    alpha = np.clip(distance / span, 0.0, 1.0) * grown
    shape, residual = _fit_shape(alpha)
    rows = np.nonzero(alpha.max(axis=1) > 0.5)[0]
    cols = np.nonzero(alpha.max(axis=0) > 0.5)[0]
    top, bottom = (rows[0], rows[-1] + 1) if rows.size else (0, h)
    left, right = (cols[0], cols[-1] + 1) if cols.size else (0, w)
    return Judgement(
        background=background,
        colour=colour,
        shape=shape,
        position=_position((left + right) / 2, (top + bottom) / 2, w),
        residual=residual,
    )


def score_image(image: Image.Image | np.ndarray, prompt: str) -> bool:
    """True when the image shows the prompt's colour and shape."""
    return judge_image(image).matches(prompt)


def prompt_accuracy(images: Iterable[Image.Image | np.ndarray], prompts: Sequence[str]) -> float:
    """Fraction of ``images`` whose colour and shape match their prompt: the harness's
    :func:`sd_ovopt.evaluation.prompt_accuracy` with this judge."""
    return fidelity.prompt_accuracy(list(images), list(prompts), score_image)
