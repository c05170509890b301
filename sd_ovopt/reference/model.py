"""The reference model's architecture (real SD classes, small sizes) and where its trained weights live."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_ovopt._loading import load_sd_pipeline
from sd_ovopt.errors import ModelNotFoundError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = [
    "REFERENCE_TEXT_ENCODER_CONFIG",
    "REFERENCE_UNET_CONFIG",
    "REFERENCE_VAE_CONFIG",
    "TEXT_LENGTH",
    "few_step_model_dir",
    "reference_model_dir",
    "reference_pipeline",
    "tiny_vae_dir",
]

# Every word of the prompt grammar is one token: prompts are at most 13 tokens with BOS/EOS, so a
# 16-token context truncates none and keeps cross-attention cheap.
TEXT_LENGTH = 16

# 32x32 images, 16x16 latents; self- and cross-attention at the full latent resolution (256 tokens), so
# token merging has work to do. Four heads: CPU attention kernels are slow with 8-wide heads.
REFERENCE_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
}

REFERENCE_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}

REFERENCE_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 779,  # the shipped tokenizer's size (scripts/make_tokenizer.py)
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": TEXT_LENGTH,
    "projection_dim": 64,
}


def _shipped(folder: str, marker: str, what: str, remake: str) -> Path:
    """The shipped folder ``data/folder`` (it holds ``marker``); ModelNotFoundError naming how to remake it."""
    path = Path(str(resources.files("sd_ovopt.reference") / "data" / folder))
    if not (path / marker).is_file():
        raise ModelNotFoundError(f"{what} is missing from {path}; reinstall sd_ovopt, or {remake}")
    return path


def reference_model_dir() -> Path:
    """The folder of the trained reference pipeline shipped with sd_ovopt (diffusers layout)."""
    return _shipped(
        "shapes-sd",
        "model_index.json",
        "the reference model",
        "retrain it with `python -m sd_ovopt.reference.train --output <dir>` (see docs/reference_model.md)",
    )


def few_step_model_dir() -> Path:
    """The folder of the reference model's few-step student shipped with sd_ovopt: an INT8 OpenVINO folder,
    guidance-free, with the LCM scheduler (1 to 4 steps), distilled and quantized in one loop by
    :func:`sd_ovopt.distill_student` (``benchmarks/distill_reference.py`` makes it)."""
    return _shipped(
        "shapes-lcm-int8",
        "sd_ovopt.json",
        "the reference model's few-step student",
        "make it with `python benchmarks/distill_reference.py --work <dir>` (its int8/ov folder).",
    )


def tiny_vae_dir() -> Path:
    """The folder of the reference model's tiny autoencoder shipped with sd_ovopt: TAESD's architecture
    (``AutoencoderTiny``, one sampling stage for the 2x latents), distilled from the reference VAE by
    ``python -m sd_ovopt.reference.tiny_vae``; pass it as ``vae=`` or ``--vae-tiny``."""
    return _shipped(
        "shapes-taesd",
        "config.json",
        "the reference model's tiny autoencoder",
        "make it with `python -m sd_ovopt.reference.tiny_vae --output <dir> --work <dir>`.",
    )


def reference_pipeline() -> StableDiffusionPipeline:
    """Load the shipped reference pipeline in float32, offline, with the progress bar off."""

    pipe = load_sd_pipeline(reference_model_dir())
    pipe.set_progress_bar_config(disable=True)
    return pipe
