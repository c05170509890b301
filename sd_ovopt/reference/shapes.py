"""The procedural shapes dataset: one coloured shape on a plain background, with its caption.

Every image is a pure function of its :class:`ShapeSpec`, and every spec a pure function of a seed, so the
dataset is reproducible bit for bit. ``write_dataset`` writes the layout diffusers' text-to-image training
reads: an image folder with ``metadata.jsonl`` (``file_name``, ``text``, plus the attributes).

The prompt space (colour x shape x background x size x position, 720 prompts) is split once and for all:
for each colour-shape pair, 6 of its 30 (background, size, position) settings are held out of training
(144 prompts in all). Held-out prompts are unseen *combinations*: every colour, shape, background, size and
position, and every colour-shape pair, also occurs in training.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from sd_ovopt._fs import atomic_output_dir
from sd_ovopt.errors import InvalidConfigError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "IMAGE_SIZE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "ShapeSpec",
    "all_prompts",
    "coverage",
    "held_out_prompts",
    "parse_prompt",
    "render",
    "sample_specs",
    "train_prompts",
    "write_dataset",
]

IMAGE_SIZE = 32
_SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 170, 55),
    "blue": (35, 75, 230),
    "yellow": (240, 215, 35),
    "purple": (150, 55, 205),
    "cyan": (35, 200, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (235, 235, 235),
    "gray": (125, 125, 125),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# Side of the shape's bounding box, in pixels of the 32x32 image.
SIZES: dict[str, int] = {"small": 12, "large": 18}
# Centre of the shape as a fraction of the free range (0 = against the top/left edge, 1 = bottom/right).
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top left": (0.15, 0.15),
    "top right": (0.85, 0.15),
    "bottom left": (0.15, 0.85),
    "bottom right": (0.85, 0.85),
}
_HELD_OUT_PER_PAIR = 6  # of the 30 (background, size, position) settings of each colour-shape pair


@dataclass(frozen=True)
class ShapeSpec:
    """One image: what is drawn, where, and the pixel jitter that makes images of one prompt differ."""

    shape: str
    colour: str
    background: str
    size: str
    position: str
    jitter_x: int = 0
    jitter_y: int = 0
    jitter_size: int = 0

    @property
    def prompt(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background, {self.position}"

    def box(self, image_size: int = IMAGE_SIZE) -> tuple[float, float, float, float]:
        """The shape's bounding box ``(left, top, right, bottom)`` in pixels."""
        side = SIZES[self.size] + self.jitter_size
        fx, fy = POSITIONS[self.position]
        margin = 2
        free = image_size - side - 2 * margin
        left = margin + fx * free + self.jitter_x
        top = margin + fy * free + self.jitter_y
        return left, top, left + side, top + side


def all_prompts() -> list[ShapeSpec]:
    """Every prompt of the dataset as a jitter-free spec, in a fixed order."""
    combos = itertools.product(SHAPES, COLOURS, BACKGROUNDS, SIZES, POSITIONS)
    return [ShapeSpec(s, c, b, z, p) for s, c, b, z, p in combos]


def held_out_prompts() -> list[ShapeSpec]:
    """The 144 prompts never used for training: 6 per colour-shape pair, in ``all_prompts`` order.

    Pair ``k`` (in shape-major order) holds out settings ``r = 7k, 7k+1, ..., 7k+5`` (mod 30), where
    setting ``r`` is position ``r % 5``, background ``r % 3`` and size ``r % 2``: six distinct settings per
    pair, and across pairs every position, background and size is held out about equally often.
    """
    positions, backgrounds, sizes = list(POSITIONS), list(BACKGROUNDS), list(SIZES)
    held: set[ShapeSpec] = set()
    for k, (shape, colour) in enumerate(itertools.product(SHAPES, COLOURS)):
        for j in range(_HELD_OUT_PER_PAIR):
            r = (7 * k + j) % 30
            held.add(ShapeSpec(shape, colour, backgrounds[r % 3], sizes[r % 2], positions[r % 5]))
    return [spec for spec in all_prompts() if spec in held]


def train_prompts() -> list[ShapeSpec]:
    held = set(held_out_prompts())
    return [s for s in all_prompts() if s not in held]


def sample_specs(n: int, seed: int, *, split: str = "train") -> list[ShapeSpec]:
    """``n`` specs drawn from the ``split`` prompts ("train", "held_out" or "all") with jitter, from ``seed``."""
    pools = {"train": train_prompts, "held_out": held_out_prompts, "all": all_prompts}
    if split not in pools:
        raise InvalidConfigError(f"split must be one of {sorted(pools)}, got {split!r}")
    if n < 1:
        raise InvalidConfigError(f"n must be at least 1, got {n}")
    pool = pools[split]()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(pool), size=n)
    jitter = rng.integers(-1, 2, size=(n, 3))
    return [
        ShapeSpec(**{**asdict(pool[i]), "jitter_x": int(jx), "jitter_y": int(jy), "jitter_size": int(js)})
        for i, (jx, jy, js) in zip(picks, jitter, strict=True)
    ]


def _polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    left, top, right, bottom = box
    cx = (left + right) / 2
    cy = (top + bottom) / 2
    if shape == "triangle":
        return [(cx, top), (right, bottom), (left, bottom)]
    if shape == "diamond":
        return [(cx, top), (right, cy), (cx, bottom), (left, cy)]
    if shape == "square":
        return [(left, top), (right, top), (right, bottom), (left, bottom)]
    return None


def render(spec: ShapeSpec, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``spec`` anti-aliased (4x supersampled) as an RGB image."""

    big = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[spec.background])
    draw = ImageDraw.Draw(image)
    box = tuple(v * _SUPERSAMPLE for v in spec.box(image_size))
    fill = COLOURS[spec.colour]
    polygon = _polygon(spec.shape, box)
    if polygon is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(polygon, fill=fill)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def coverage(shape: str, box: tuple[float, float, float, float], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The fraction of each pixel that ``shape`` drawn in ``box`` covers (anti-aliased like ``render``)."""

    big = image_size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    box = tuple(v * _SUPERSAMPLE for v in box)
    polygon = _polygon(shape, box)
    if polygon is None:
        draw.ellipse(box, fill=255)
    else:
        draw.polygon(polygon, fill=255)
    small = mask.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def parse_prompt(prompt: str) -> ShapeSpec:
    """The spec a dataset prompt describes; raises InvalidConfigError for any other text."""
    for spec in all_prompts():
        if spec.prompt == prompt.strip():
            return spec
    raise InvalidConfigError(
        f"not a shapes-dataset prompt: {prompt!r}; expected e.g. {all_prompts()[0].prompt!r}"
    )


def write_dataset(
    output_dir: str | Path, num_images: int, *, seed: int = 0, split: str = "train", overwrite: bool = False
) -> Path:
    """Write ``num_images`` PNGs and ``metadata.jsonl`` into ``output_dir`` (atomically); return the folder."""
    specs = sample_specs(num_images, seed, split=split)
    with (
        atomic_output_dir(output_dir, overwrite=overwrite) as tmp,
        open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta,
    ):
        for i, spec in enumerate(specs):
            name = f"{i:06d}.png"
            render(spec).save(tmp / name)
            meta.write(json.dumps({"file_name": name, "text": spec.prompt, **asdict(spec)}) + "\n")
    return Path(output_dir).expanduser().resolve()
