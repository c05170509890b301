"""The tiny autoencoder's decoder in INT8: calibrated on the latents the pipeline itself produces.

At a few steps the decoder is a large part of a call even when it is TAESD's: INT8 (activations and
weights) halves it again on CPUs with VNNI or AMX. Only the tiny autoencoder is offered: the full VAE
decoder's images do not survive INT8 (see docs/results.md), TAESD's do on the reference model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sd_ovopt._nncf import import_nncf, nncf_output_on_stderr
from sd_ovopt._seeding import noise_generator
from sd_ovopt.errors import InvalidConfigError, UnsupportedModelError

if TYPE_CHECKING:
    import openvino as ov

__all__ = [
    "DECODER_CALIBRATION_PROMPTS",
    "check_int8_decoder_vae",
    "collect_decoder_latents",
    "quantize_tiny_decoder",
]

#: How many of the recipe's calibration prompts the decoder is calibrated on by default.
DECODER_CALIBRATION_PROMPTS = 8


def check_int8_decoder_vae(vae: Any, option: str, fix: str) -> None:
    """Refuse, naming ``option`` (what asked for it) and ``fix``, an INT8 decoder for a VAE that is not an
    ``AutoencoderTiny``: the full VAE decoder's INT8 images lose too much (a seventh fall below 30 dB)."""
    if type(vae).__name__ != "AutoencoderTiny":
        raise UnsupportedModelError(
            f"{option} quantizes a tiny autoencoder's decoder, and this VAE is a {type(vae).__name__}, whose "
            f"INT8 images lose too much. {fix}"
        )


def collect_decoder_latents(
    pipeline: Any,
    prompts: Sequence[str],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    scaling_factor: float | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """A decoder's input for each prompt: the pipeline's final latents divided by ``scaling_factor``.

    ``pipeline`` is a diffusers pipeline or an :class:`sd_ovopt.SdOvOptPipeline` (its own sampling: what
    the deployed decoder will see); prompt ``i`` draws its noise from ``noise_generator(seed, i)``.
    ``scaling_factor`` is that of the autoencoder whose decoder the latents are for (TAESD's is 1.0);
    by default the pipeline's own VAE's.
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidConfigError("prompts must be a non-empty list of strings.")
    if scaling_factor is None:
        scaling_factor = _vae_config(pipeline).get("scaling_factor", 1.0)
    scale = float(scaling_factor)
    latents = []
    for i, prompt in enumerate(prompts):
        out = pipeline(
            prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=noise_generator(seed, i),
            output_type="latent",
        ).images
        latents.append(np.asarray(out, dtype=np.float32) / scale)
    return latents


def _vae_config(pipeline: Any) -> dict[str, Any]:
    """The autoencoder's config of a diffusers pipeline (``vae``) or an OpenVINO one (``vae_decoder``)."""
    for name in ("vae", "vae_decoder"):
        part = getattr(pipeline, name, None)
        if part is not None and getattr(part, "config", None) is not None:
            return dict(part.config)
    raise UnsupportedModelError(
        f"{type(pipeline).__name__} has no vae or vae_decoder with a config; pass a Stable Diffusion pipeline."
    )


def quantize_tiny_decoder(model: ov.Model, latents: Sequence[np.ndarray]) -> ov.Model:
    """``model`` (a tiny autoencoder's decoder IR) with INT8 activations and weights, calibrated on ``latents``.

    NNCF's ``performance`` preset (symmetric activations), every latent used once.
    """
    if not latents:
        raise InvalidConfigError("quantizing the tiny decoder needs at least one calibration latent.")
    nncf = import_nncf()
    with nncf_output_on_stderr():
        return nncf.quantize(
            model,
            nncf.Dataset([np.asarray(x, dtype=np.float32) for x in latents]),
            subset_size=len(latents),
            preset=nncf.QuantizationPreset.PERFORMANCE,
        )
