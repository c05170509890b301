"""The reference model kit: a procedural shapes dataset, a deterministic judge, and a trained small
Stable Diffusion pipeline (real SD classes) shipped with the package.

Example:
    >>> from sd_ovopt.reference import held_out_prompts, judge_image, reference_pipeline
    >>> pipe = reference_pipeline()  # doctest: +SKIP
    >>> image = pipe(held_out_prompts()[0].prompt, guidance_scale=4.0).images[0]  # doctest: +SKIP
    >>> judge_image(image).matches(held_out_prompts()[0].prompt)  # doctest: +SKIP
"""

from sd_ovopt.reference.evaluate import PromptScore, generate_images, make_grid, score_images
from sd_ovopt.reference.judge import Judgement, judge_image, prompt_accuracy, score_image
from sd_ovopt.reference.model import few_step_model_dir, reference_model_dir, reference_pipeline, tiny_vae_dir
from sd_ovopt.reference.shapes import (
    ShapeSpec,
    held_out_prompts,
    parse_prompt,
    render,
    sample_specs,
    train_prompts,
    write_dataset,
)

__all__ = [
    "Judgement",
    "PromptScore",
    "ShapeSpec",
    "few_step_model_dir",
    "generate_images",
    "held_out_prompts",
    "judge_image",
    "make_grid",
    "parse_prompt",
    "prompt_accuracy",
    "reference_model_dir",
    "reference_pipeline",
    "render",
    "sample_specs",
    "score_image",
    "score_images",
    "tiny_vae_dir",
    "train_prompts",
    "write_dataset",
]
