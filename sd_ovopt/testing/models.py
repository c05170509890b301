"""Stable Diffusion models built from configs, offline, with fixed seeds.

``tiny_pipeline()`` is a complete, real-class SD pipeline small enough for unit tests; its UNet runs
cross- and self-attention at full latent resolution, so token merging has work to do.
``sd15_unet()`` is the full SD-1.5-architecture UNet (about 860 M parameters) with random weights: it
costs exactly what the real one costs, which is all that speed and memory work needs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

__all__ = [
    "SD15_TEXT_ENCODER_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "TAESD_CONFIG",
    "TINY_TAESD_CONFIG",
    "TINY_TEXT_ENCODER_CONFIG",
    "TINY_UNET_CONFIG",
    "TINY_VAE_CONFIG",
    "assemble_pipeline",
    "sd15_pipeline",
    "sd15_unet",
    "taesd",
    "tiny_pipeline",
    "tiny_taesd",
    "tiny_tokenizer",
    "tokenizer_dir",
]

# Attention in the first down block and the last up block runs at the full latent resolution.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

# Two blocks: the latent is half the image size (a real SD VAE has four blocks: 1/8).
TINY_VAE_CONFIG: dict[str, Any] = {
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

TINY_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}


SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}

# The tiny autoencoder of the tiny pipeline: two blocks, so one latent covers 2x2 pixels as TINY_VAE_CONFIG's.
TINY_TAESD_CONFIG: dict[str, Any] = {
    "encoder_block_out_channels": (16, 16),
    "decoder_block_out_channels": (16, 16),
    "num_encoder_blocks": (1, 2),
    "num_decoder_blocks": (2, 1),
    "latent_channels": 4,
}

# TAESD's architecture (madebyollin/taesd, the tiny autoencoder of SD-1.x/2.x): AutoencoderTiny's defaults.
TAESD_CONFIG: dict[str, Any] = {
    "encoder_block_out_channels": (64, 64, 64, 64),
    "decoder_block_out_channels": (64, 64, 64, 64),
    "num_encoder_blocks": (1, 3, 3, 3),
    "num_decoder_blocks": (3, 3, 3, 1),
    "latent_channels": 4,
    "scaling_factor": 1.0,
}


# CLIP ViT-L/14's text tower, with its full 49408-token embedding (our shipped tokenizer uses the first 798).
SD15_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


def tokenizer_dir() -> Path:
    """The folder of the CLIP BPE tokenizer files shipped inside the package."""
    return Path(str(resources.files("sd_ovopt.testing") / "data" / "tokenizer"))


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer from the shipped vocabulary (798 tokens, max length 77)."""

    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()))


def assemble_pipeline(
    vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of these parts in eval mode, without a safety checker, progress bar off."""

    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build a tiny but complete Stable Diffusion pipeline with random weights.

    The same ``seed`` always gives the same weights; the global torch RNG is left untouched.
    ``pipeline.save_pretrained(path)`` writes a folder that diffusers and ``export_pipeline`` load.

    Example:
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline()
        >>> image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
        >>> image.shape
        (32, 32, 3)
    """

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_TEXT_ENCODER_CONFIG,
        )
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler)


def sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of SD-1.5's architecture (UNet, VAE, CLIP-L text encoder), random weights.

    For speed and size work only: its images are noise. Building it allocates about 4.3 GB.
    """

    tokenizer = tiny_tokenizer()
    unet = sd15_unet(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **SD15_TEXT_ENCODER_CONFIG,
            )
        )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    return assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler)


def sd15_unet(seed: int = 0, device: str | None = None) -> UNet2DConditionModel:
    """The SD-1.5-architecture UNet (859.5 M parameters) with random weights.

    Use it for speed and memory work: it costs what the real UNet costs. Pass ``device="meta"`` to
    build it without allocating its 3.4 GB of weights (for counting parameters).
    """

    if device == "meta":
        with torch.device("meta"):
            return UNet2DConditionModel(**SD15_UNET_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    return unet.eval()


def tiny_taesd(seed: int = 0) -> AutoencoderTiny:
    """The tiny pipeline's tiny autoencoder (:data:`TINY_TAESD_CONFIG`), random weights, in eval mode.

    Example:
        >>> from sd_ovopt.testing import tiny_pipeline, tiny_taesd
        >>> pipe = tiny_pipeline()
        >>> pipe.vae = tiny_taesd()
        >>> pipe("a red circle", num_inference_steps=2, output_type="np").images[0].shape
        (32, 32, 3)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**TINY_TAESD_CONFIG).eval()


def taesd(seed: int = 0) -> AutoencoderTiny:
    """An ``AutoencoderTiny`` of TAESD's architecture (2.4 M parameters) with random weights: it costs what
    TAESD costs, for speed work beside :func:`sd15_pipeline`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**TAESD_CONFIG).eval()
