"""The pipeline's autoencoder: the tiny one (``AutoencoderTiny``, TAESD's architecture) as a drop-in
replacement for the full VAE, read safely from a local folder and checked against the pipeline."""

from sd_ovopt.vae.tiny import VAE_CLASSES, check_vae, load_tiny_vae, pipeline_vae, read_vae, scale_factor

__all__ = ["VAE_CLASSES", "check_vae", "load_tiny_vae", "pipeline_vae", "read_vae", "scale_factor"]
