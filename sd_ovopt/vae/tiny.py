"""Read a tiny autoencoder folder (TAESD: ``config.json`` + ``diffusion_pytorch_model.safetensors``) and check
that a VAE fits a pipeline (same latent channels, same image-to-latent factor).

The folder is read as data: its ``config.json`` must name ``AutoencoderTiny`` and the weights must be a
``.safetensors`` file; a pickled ``.bin`` is refused, and nothing the folder names is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, AutoencoderTiny

from sd_ovopt._fs import read_json_object
from sd_ovopt.errors import CorruptModelError, ModelNotFoundError, UnsupportedModelError

__all__ = ["VAE_CLASSES", "check_vae", "load_tiny_vae", "pipeline_vae", "read_vae", "scale_factor"]

#: The autoencoders an export converts: the full KL VAE and the tiny one.
VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
_WEIGHTS = "diffusion_pytorch_model.safetensors"
_FIX = "Pass a folder written by AutoencoderTiny.save_pretrained (e.g. a local copy of madebyollin/taesd)."


def load_tiny_vae(path: str | Path) -> AutoencoderTiny:
    """Load the ``AutoencoderTiny`` saved in the local folder ``path`` (nothing is downloaded).

    Raises:
        ModelNotFoundError: ``path`` is not a folder.
        UnsupportedModelError: its ``config.json`` names another class.
        CorruptModelError: it has no ``.safetensors`` weights (pickled ``.bin`` weights are refused), or
            they do not fit the config.

    Example:
        >>> from sd_ovopt.vae import load_tiny_vae
        >>> vae = load_tiny_vae("taesd")  # doctest: +SKIP
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"the tiny autoencoder folder {str(path)!r} "
            f"{'is a file' if folder.exists() else 'does not exist'}. {_FIX}"
        )
    config = read_json_object(folder / "config.json", fix=_FIX)
    if config.get("_class_name") != "AutoencoderTiny":
        raise UnsupportedModelError(
            f"{folder}/config.json describes a {config.get('_class_name')!r}, not an AutoencoderTiny. {_FIX}"
        )
    if not (folder / _WEIGHTS).is_file():
        pickled = " (only pickled .bin weights are there, which sd_ovopt never unpickles)"
        has_bin = any(folder.glob("*.bin"))
        raise CorruptModelError(f"{folder} has no {_WEIGHTS}{pickled if has_bin else ''}. {_FIX}")
    try:
        vae = AutoencoderTiny.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CorruptModelError(
            f"could not load the tiny autoencoder in {folder} ({type(exc).__name__}: {exc}). {_FIX}"
        ) from exc
    return vae.eval()


def scale_factor(vae: Any) -> int:
    """How many pixels one latent covers per side."""
    if isinstance(vae, AutoencoderTiny):
        return vae.config.upsampling_scaling_factor ** (len(vae.config.decoder_block_out_channels) - 1)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_vae(vae: Any, *, latent_channels: int, factor: int) -> Any:
    """Return ``vae`` if it can serve a UNet of ``latent_channels`` channels whose latents cover ``factor``
    pixels per side: an ``AutoencoderKL`` or ``AutoencoderTiny`` of those; raise UnsupportedModelError if not."""
    if not isinstance(vae, (AutoencoderKL, AutoencoderTiny)):
        raise UnsupportedModelError(
            f"vae must be a diffusers {' or '.join(VAE_CLASSES)}, got {type(vae).__name__}. Load a tiny "
            "autoencoder folder with sd_ovopt.vae.load_tiny_vae(path)."
        )
    channels, wanted = vae.config.latent_channels, latent_channels
    if channels != wanted:
        raise UnsupportedModelError(
            f"the VAE has {channels} latent channels but the UNet takes {wanted}: it belongs to another "
            "model family (e.g. TAESD3 or TAEF1, with 16 channels). Use the tiny autoencoder of this "
            "model family (TAESD for SD-1.x/2.x)."
        )
    own = scale_factor(vae)
    if own != factor:
        raise UnsupportedModelError(
            f"the VAE maps one latent to {own}x{own} pixels but the pipeline's to {factor}x{factor}; "
            "use a tiny autoencoder made for this pipeline's latents."
        )
    return vae


def pipeline_vae(vae: Any, pipe: Any) -> Any:
    """The autoencoder to export for ``pipe``: ``vae`` checked by :func:`check_vae` (a folder path is read
    first: callers read it with :func:`load_tiny_vae` before the slower pipeline load), or the pipeline's own
    when ``vae`` is ``None``."""
    if vae is None:
        return pipe.vae
    return check_vae(
        read_vae(vae), latent_channels=pipe.unet.config.in_channels, factor=scale_factor(pipe.vae)
    )


def read_vae(vae: Any) -> Any:
    """``vae`` with a folder path read into its ``AutoencoderTiny`` (a module or ``None`` is returned as it
    is): a bad folder is refused before a pipeline loads."""
    return load_tiny_vae(vae) if isinstance(vae, (str, Path)) else vae
