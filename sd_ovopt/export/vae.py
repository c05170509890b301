"""``replace_vae``: an exported folder with another autoencoder (e.g. TAESD), its other parts kept as they are."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sd_ovopt._fs import atomic_output_dir, check_output_dir, read_json_object
from sd_ovopt._loading import read_model_index
from sd_ovopt.errors import InvalidConfigError, NotAPipelineError
from sd_ovopt.export.metadata import METADATA_FILE, ExportMetadata, read_metadata
from sd_ovopt.export.pipeline import _convert_and_save, list_vae_as_genai_reads_it, vae_parts
from sd_ovopt.vae import check_vae, read_vae
from sd_ovopt.vae.int8 import check_int8_decoder_vae

__all__ = ["replace_vae"]

logger = logging.getLogger(__name__)

_VAE_PARTS = ("vae_decoder", "vae_encoder")


def replace_vae(
    folder: str | Path,
    vae: Any,
    output_dir: str | Path,
    *,
    decoder_latents: Sequence[Any] | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Path:
    """Write a copy of the exported ``folder`` whose autoencoder is ``vae``; return the copy's path.

    Only the VAE decoder and encoder are converted (at the folder's recorded shape and weight storage);
    every other file is linked (a hard link where the file system allows, else a copy), so an INT8 folder
    keeps its calibrated UNet and nothing is exported twice. The write is atomic.

    Args:
        folder: A folder written by :func:`sd_ovopt.export_pipeline` or the recipe (with ``sd_ovopt.json``).
        vae: An ``AutoencoderTiny`` (TAESD) or ``AutoencoderKL``, or the local folder of a tiny autoencoder;
            it must match the folder's latents (channels and size factor).
        output_dir: Where to write (not ``folder`` itself; an existing non-empty folder needs ``overwrite``).
        decoder_latents: Latents (arrays of shape ``(n, channels, h, w)``, as the decoder takes them) to
            quantize the tiny autoencoder's decoder to INT8 on (activations and weights; it halves the
            decoder on CPUs with VNNI or AMX). :func:`sd_ovopt.replace_vae_int8` collects them from the
            folder's own sampling. ``None`` keeps the decoder in float.
        overwrite: Replace an existing output folder.
        show_progress: Show a progress bar over the two parts.

    Example:
        >>> from sd_ovopt.export import replace_vae
        >>> replace_vae("sd15-int8", "taesd", "sd15-int8-taesd")  # doctest: +SKIP
    """
    # 1. Check the folder and the autoencoder before anything is written
    source, meta, vae = check_vae_replacement(folder, vae, output_dir, overwrite=overwrite)
    latents = None if decoder_latents is None else _checked_latents(decoder_latents, vae)
    # 2. The copy: every other file linked, the VAE parts converted, the record naming the new class
    with atomic_output_dir(output_dir, overwrite=overwrite, source=source) as tmp:
        _link_tree(source, tmp, skip=_VAE_PARTS)
        _convert_and_save(
            vae_parts(vae, meta, latents), tmp, weights_dtype=meta.weights_dtype, show_progress=show_progress
        )
        list_vae_as_genai_reads_it(tmp)
        record = {"vae": type(vae).__name__, "vae_decoder_int8": latents is not None}
        ExportMetadata(**{**meta.to_fields(), **record}).save(tmp)
    final = Path(output_dir).expanduser().resolve()
    logger.info("wrote %s with a %s", final, type(vae).__name__)
    return final


def check_vae_replacement(
    folder: str | Path, vae: Any, output_dir: str | Path, *, overwrite: bool
) -> tuple[Path, ExportMetadata, Any]:
    """What :func:`replace_vae` checks before it writes: ``folder`` is an sd_ovopt export, ``vae`` (read
    from its folder if given one) fits its latents, and ``output_dir`` may be written. Returns the folder's
    path, its record and the autoencoder."""
    source = Path(folder).expanduser()
    read_model_index(source)
    meta = read_metadata(source)
    if meta is None:
        raise NotAPipelineError(
            f"{source} has no {METADATA_FILE}: it was not exported by sd_ovopt, so its static shape is "
            "unknown. Export it with sd_ovopt.export_pipeline (CLI: sd-ovopt export) and pass vae= there."
        )
    unet = read_json_object(source / "unet" / "config.json", fix="Export the pipeline again.")
    vae = check_vae(
        read_vae(vae), latent_channels=unet.get("in_channels", 4), factor=meta.height // meta.latent_height
    )
    check_output_dir(output_dir, overwrite=overwrite, source=source)
    return source, meta, vae


def _checked_latents(latents: Sequence[Any], vae: Any) -> list[np.ndarray]:
    """``latents`` as float32 arrays, once the VAE is a tiny one and each has its latent channels."""
    check_int8_decoder_vae(vae, "decoder_latents", "Pass an AutoencoderTiny (TAESD), or no decoder_latents.")
    arrays = [np.asarray(x, dtype=np.float32) for x in latents]
    channels = vae.config.latent_channels
    if not arrays or any(x.ndim != 4 or x.shape[1] != channels for x in arrays):
        shapes = [x.shape for x in arrays][:3]
        raise InvalidConfigError(
            f"decoder_latents must be a non-empty list of (n, {channels}, h, w) arrays, got shapes {shapes}; "
            "collect them with sd_ovopt.vae.collect_decoder_latents (or use sd_ovopt.replace_vae_int8)."
        )
    return arrays


def _link_tree(source: Path, target: Path, *, skip: tuple[str, ...]) -> None:
    """Every file under ``source`` but the top-level folders ``skip``: the parts' files hard-linked (copied
    where links fail; nothing writes them), the top-level files (``model_index.json``, ``sd_ovopt.json``,
    rewritten in the copy) copied, so the source never changes."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if relative.parts[0] in skip or path.is_dir():
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if len(relative.parts) == 1:
            shutil.copy2(path, destination)
            continue
        try:
            os.link(path, destination)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copy2(path, destination)
