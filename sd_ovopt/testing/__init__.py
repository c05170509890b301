"""Offline models and data for tests, examples and downstream users. Nothing here downloads."""

from sd_ovopt.testing.models import (
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    TAESD_CONFIG,
    TINY_TAESD_CONFIG,
    TINY_TEXT_ENCODER_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    sd15_pipeline,
    sd15_unet,
    taesd,
    tiny_pipeline,
    tiny_taesd,
    tiny_tokenizer,
    tokenizer_dir,
)

__all__ = [
    "SD15_TEXT_ENCODER_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "TAESD_CONFIG",
    "TINY_TAESD_CONFIG",
    "TINY_TEXT_ENCODER_CONFIG",
    "TINY_UNET_CONFIG",
    "TINY_VAE_CONFIG",
    "sd15_pipeline",
    "sd15_unet",
    "taesd",
    "tiny_pipeline",
    "tiny_taesd",
    "tiny_tokenizer",
    "tokenizer_dir",
]
