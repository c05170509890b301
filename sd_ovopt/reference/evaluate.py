"""Score a pipeline on the held-out prompts with the judge, and draw a grid of its images.

    python -m sd_ovopt.reference.evaluate                       # the shipped model, PyTorch, seeds 0 and 1
    python -m sd_ovopt.reference.evaluate --model shapes-ov     # a folder written by export_pipeline
    python -m sd_ovopt.reference.evaluate --grid docs/images/reference_grid.png

Works with a diffusers ``StableDiffusionPipeline`` or an ``SdOvOptPipeline``. Prompt ``i`` of a run with
seed ``s`` draws its noise from ``sd_ovopt._seeding.noise_generator(s, i)`` (a CPU generator seeded
``s * 1_000_000 + i``), so one prompt gives the same image however the prompts are batched, and two seeds
never share noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from sd_ovopt._loading import load_sd_pipeline
from sd_ovopt._seeding import noise_generator
from sd_ovopt.errors import InvalidConfigError, SdOvOptError
from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline
from sd_ovopt.reference.judge import judge_image
from sd_ovopt.reference.model import reference_model_dir
from sd_ovopt.reference.shapes import held_out_prompts, parse_prompt

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["PromptScore", "generate_images", "main", "make_grid", "score_images"]

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0


@dataclass(frozen=True)
class PromptScore:
    """Judge results over a prompt set: ``accuracy`` counts colour and shape both right."""

    num_prompts: int
    accuracy: float
    colour_accuracy: float
    shape_accuracy: float
    position_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate_images(
    pipe: Any,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int | None = None,
) -> list[Image.Image]:
    """Generate one image per prompt; prompt ``i`` draws its noise from ``noise_generator(seed, i)``.

    ``batch_size`` defaults to the exported batch of an OpenVINO pipeline and to 16 otherwise; it does not
    change the images. The last call of a static-batch pipeline is padded with copies of the last prompt,
    whose noise continues the rule (indices ``len(prompts)``, ...) and whose images are dropped.

    Example:
        >>> images = generate_images(pipe, ["a red circle on a white background, centre"], seed=1)
    """
    metadata = getattr(pipe, "compiled_shape", None)
    if batch_size is None:
        batch_size = metadata.batch_size if metadata is not None else 16
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidConfigError(
            f"batch_size={batch_size!r}; pass an integer >= 1 (or None for the default)."
        )
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [noise_generator(seed, start + i) for i in range(len(chunk))]
        if metadata is not None and len(chunk) < batch_size:  # static batch: pad the last call
            pad = batch_size - len(chunk)
            chunk += chunk[-1:] * pad
            generators += [noise_generator(seed, len(prompts) + i) for i in range(pad)]
        out = pipe(
            chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
        ).images
        images.extend(out[: min(batch_size, len(prompts) - start)])
    return images


def score_images(images: Sequence[Image.Image], prompts: Sequence[str]) -> PromptScore:
    """Judge each image against its prompt."""
    if len(images) != len(prompts) or not prompts:
        raise InvalidConfigError(
            f"need one image per prompt, got {len(images)} images for {len(prompts)} prompts; pass equal, non-empty lists"
        )
    hits = {"both": 0, "colour": 0, "shape": 0, "position": 0}
    for image, prompt in zip(images, prompts, strict=True):
        seen, want = judge_image(image), parse_prompt(prompt)
        hits["colour"] += seen.colour == want.colour
        hits["shape"] += seen.shape == want.shape
        hits["position"] += seen.position == want.position
        hits["both"] += seen.colour == want.colour and seen.shape == want.shape
    n = len(prompts)
    return PromptScore(
        num_prompts=n,
        accuracy=hits["both"] / n,
        colour_accuracy=hits["colour"] / n,
        shape_accuracy=hits["shape"] / n,
        position_accuracy=hits["position"] / n,
    )


def make_grid(images: Sequence[Image.Image], columns: int, *, scale: int = 3, gap: int = 2) -> Image.Image:
    """Tile ``images`` (all one size) into a grid, each upscaled ``scale`` times (nearest neighbour)."""

    if not images:
        raise InvalidConfigError("make_grid needs at least one image; pass a non-empty list")
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * (w + gap) - gap, rows * (h + gap) - gap), (255, 255, 255))
    for i, image in enumerate(images):
        tile = image.convert("RGB").resize((w, h), Image.Resampling.NEAREST)
        grid.paste(tile, ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return grid


def _load(model: str | None, precision: str) -> Any:
    """The shipped model, an exported OpenVINO folder, or a diffusers folder."""

    if model is not None and (Path(model) / "sd_ovopt.json").is_file():
        pipe = SdOvOptPipeline.from_pretrained(model, precision=precision)
    else:
        pipe = load_sd_pipeline(model or reference_model_dir())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sd_ovopt.reference.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default=None, help="diffusers or exported folder (default: shipped model)")
    parser.add_argument("--precision", default="f32", help="OpenVINO inference precision (exported folders)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1],
        help="noise seeds; each scores every prompt (default 0 1)",
    )
    parser.add_argument(
        "--grid", default=None, help="write a PNG grid of the first 48 images (first seed) here"
    )
    parser.add_argument("--json", default=None, help="write the scores as JSON here")
    args = parser.parse_args(argv)
    try:
        pipe = _load(args.model, args.precision)
        prompts = [spec.prompt for spec in held_out_prompts()]
        by_seed = {
            seed: generate_images(
                pipe, prompts, seed=seed, num_inference_steps=args.steps, guidance_scale=args.guidance_scale
            )
            for seed in args.seeds
        }
    except SdOvOptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scores = {seed: score_images(images, prompts) for seed, images in by_seed.items()}
    accuracies = [score.accuracy for score in scores.values()]
    summary = {
        "model": args.model or "shipped",
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "accuracy": sum(accuracies) / len(accuracies),
        "accuracy_spread": max(accuracies) - min(accuracies),
        "seeds": {str(seed): score.to_dict() for seed, score in scores.items()},
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.grid:
        make_grid(by_seed[args.seeds[0]][:48], columns=12).save(args.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
