"""``export_pipeline``: a diffusers Stable Diffusion pipeline → an optimum-intel-layout OpenVINO folder."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from sd_ovopt._fs import atomic_output_dir, check_output_dir
from sd_ovopt._loading import check_image_size, load_sd_pipeline
from sd_ovopt._nncf import import_nncf
from sd_ovopt.errors import InvalidConfigError, ShapeMismatchError, UnsupportedModelError
from sd_ovopt.export.metadata import ExportMetadata

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from sd_ovopt.deepcache.config import DeepCacheConfig
    from sd_ovopt.tome.config import ToMeConfig

__all__ = ["export_pipeline"]

logger = logging.getLogger(__name__)

OV_XML = "openvino_model.xml"
#: What OpenVINO GenAI's ``Text2ImagePipeline`` reads in ``tokenizer/`` (optimum-intel writes the same names).
OV_TOKENIZER_XML = "openvino_tokenizer.xml"
OV_DETOKENIZER_XML = "openvino_detokenizer.xml"
_WEIGHTS_DTYPES = ("f32", "f16")


def _save_part(model: Any, folder: Path, config: dict[str, Any], *, weights_dtype: str) -> None:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, folder / OV_XML, compress_to_fp16=weights_dtype == "f16")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=list) + "\n")


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """The Hugging Face tokenizer files, plus its OpenVINO conversion for OpenVINO GenAI."""
    import openvino as ov

    from sd_ovopt.export.convert import convert_tokenizer

    tokenizer.save_pretrained(folder)
    try:
        encoder, decoder = convert_tokenizer(tokenizer)
    except Exception as exc:  # openvino_tokenizers raises OVTypeError, ValueError, ... for what it lacks
        warnings.warn(
            f"the tokenizer ({type(tokenizer).__name__}) could not be converted to OpenVINO ({exc}); the "
            "folder loads with SdOvOptPipeline and optimum-intel, but not with openvino_genai.Text2ImagePipeline.",
            stacklevel=4,
        )
        return
    ov.save_model(encoder, folder / OV_TOKENIZER_XML, compress_to_fp16=False)
    if decoder is not None:
        ov.save_model(decoder, folder / OV_DETOKENIZER_XML, compress_to_fp16=False)


def export_pipeline(
    pipeline_or_path: StableDiffusionPipeline | str | Path,
    output_dir: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 1,
    num_images_per_prompt: int = 1,
    classifier_free_guidance: bool = True,
    weights_dtype: str = "f32",
    tome: ToMeConfig | None = None,
    unet: torch.nn.Module | None = None,
    compress_weights: bool = False,
    deepcache: DeepCacheConfig | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Export a Stable Diffusion pipeline to an OpenVINO folder with a static-shape UNet.

    The folder has optimum-intel's layout (``unet/``, ``text_encoder/``, ``vae_decoder/``, ``vae_encoder/``,
    ``tokenizer/`` with its OpenVINO conversion, ``scheduler/``, ``model_index.json``) plus ``sd_ovopt.json``,
    which records what is baked in. It loads with :class:`sd_ovopt.SdOvOptPipeline`, with optimum-intel's
    ``OVStableDiffusionPipeline`` and, without torch, with ``openvino_genai.Text2ImagePipeline``. The write
    is atomic: on any error nothing is left at ``output_dir``.

    Args:
        pipeline_or_path: A ``StableDiffusionPipeline`` or the local folder of one.
        output_dir: Where to write. An existing non-empty folder is refused unless ``overwrite``.
        height: Image height in pixels, a multiple of 8 (default: the UNet's native size).
        width: Image width in pixels, a multiple of 8 (default: the UNet's native size).
        batch_size: Prompts per call.
        num_images_per_prompt: Images per prompt.
        classifier_free_guidance: Double the UNet batch for guidance (calls with ``guidance_scale > 1``).
        weights_dtype: ``"f32"`` (exact) or ``"f16"`` (half the disk size) for stored float weights.
        tome: Token merging to bake into the UNet IR. It is applied for the export and removed again, so
            the UNet passed in is left as it was. A UNet that already has ToMe applied is exported with it,
            and its config recorded, when ``tome`` is ``None``.
        unet: A UNet to export instead of the pipeline's, e.g. from :func:`sd_ovopt.quantize_unet` (its
            weights are stored as int8) or from quantization-aware training.
        compress_weights: Also store the text encoder and VAE weights as int8 (weight-only, with
            ``nncf.compress_weights``), so the whole pipeline shrinks, not only the UNet.
        deepcache: Step caching: ``unet/`` then holds the full UNet, which also returns the cached feature,
            and ``unet_shallow/`` the shallow UNet that takes it (see :mod:`sd_ovopt.deepcache`). A UNet
            carrying the step-caching patch (from the recipe's calibration) is exported with its config.
        overwrite: Replace an existing folder.
        show_progress: Show a progress bar over the parts.

    Returns:
        The path of the written folder.

    Example:
        >>> from sd_ovopt import export_pipeline
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> path = export_pipeline(tiny_pipeline(), "tiny-ov", height=32, width=32)  # doctest: +SKIP
    """
    from sd_ovopt.quantization.ptq import get_quantization_config
    from sd_ovopt.tome.patch import apply_tome, get_tome_config, remove_tome

    if weights_dtype not in _WEIGHTS_DTYPES:
        raise InvalidConfigError(f"weights_dtype={weights_dtype!r}; use one of {_WEIGHTS_DTYPES}.")
    for name, value in (("batch_size", batch_size), ("num_images_per_prompt", num_images_per_prompt)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ShapeMismatchError(f"{name}={value!r}; it must be an integer >= 1.")
    pipe = load_sd_pipeline(pipeline_or_path)
    source = pipeline_or_path if isinstance(pipeline_or_path, (str, Path)) else pipe.name_or_path
    check_output_dir(output_dir, overwrite=overwrite, source=source)  # refuse before converting anything
    unet = pipe.unet if unet is None else _check_unet(unet, pipe.unet)
    vae_scale = pipe.vae_scale_factor
    height = height if height is not None else pipe.unet.config.sample_size * vae_scale
    width = width if width is not None else pipe.unet.config.sample_size * vae_scale
    check_image_size(height, width, vae_scale_factor=vae_scale)

    quantization = get_quantization_config(unet)
    tome_before = get_tome_config(unet)
    if tome is not None and quantization is not None and tome != tome_before:
        raise InvalidConfigError(
            "ToMe must be applied before quantization (quantize_unet records the merged graph); apply_tome to "
            "the float UNet, then quantize it, then export without tome=."
        )
    if tome is not None:
        apply_tome(unet, tome)  # raises AlreadyAppliedError if another config is applied
    applied = tome or tome_before
    deepcache = _deepcache_config(unet, deepcache)
    images = batch_size * num_images_per_prompt
    meta = ExportMetadata(
        height=height,
        width=width,
        batch_size=batch_size,
        num_images_per_prompt=num_images_per_prompt,
        classifier_free_guidance=classifier_free_guidance,
        unet_batch=images * (2 if classifier_free_guidance else 1),
        latent_height=height // vae_scale,
        latent_width=width // vae_scale,
        weights_dtype=weights_dtype,
        tome=None if applied is None else applied.to_dict(),
        quantization=_quantization_record(quantization, compress_weights),
        deepcache=None if deepcache is None else _deepcache_record(deepcache),
    )
    try:
        return _write(
            pipe, unet, meta, output_dir, overwrite=overwrite, show_progress=show_progress, source=source
        )
    finally:
        if tome is not None and tome_before is None:
            remove_tome(unet)


def _deepcache_config(unet: Any, deepcache: Any) -> Any:
    from sd_ovopt.deepcache.config import DeepCacheConfig
    from sd_ovopt.deepcache.patch import state_of

    if deepcache is not None and not isinstance(deepcache, DeepCacheConfig):
        raise InvalidConfigError(
            f"deepcache must be a DeepCacheConfig or None, got {type(deepcache).__name__}."
        )
    state = state_of(unet)
    config = deepcache if deepcache is not None or state is None else state.config
    if config is not None:
        from sd_ovopt.deepcache.patch import plan_skips

        plan_skips(unet, config.branch)  # a branch this UNet lacks is refused before anything is written
    return config


def _deepcache_record(config: Any) -> dict[str, Any]:
    from sd_ovopt.deepcache.export import FEATURE_NAME, SHALLOW_PART

    return {
        "config": config.to_dict(),
        "full": f"unet/{OV_XML}",
        "shallow": f"{SHALLOW_PART}/{OV_XML}",
        "feature": FEATURE_NAME,
    }


def _check_unet(unet: Any, reference: Any) -> Any:
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedModelError(
            f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}."
        )
    for key in ("in_channels", "out_channels", "cross_attention_dim"):
        if unet.config[key] != reference.config[key]:
            raise UnsupportedModelError(
                f"unet.config.{key}={unet.config[key]} but the pipeline's UNet has {reference.config[key]}: "
                "this UNet does not belong to this pipeline."
            )
    return unet


def _quantization_record(quantization: Any, compress_weights: bool) -> dict[str, Any] | None:
    if quantization is None and not compress_weights:
        return None
    return {
        "unet": None if quantization is None else quantization.to_dict(),
        "weight_compression": "int8" if compress_weights else None,
    }


def _compress(model: Any, **kwargs: Any) -> Any:
    nncf = import_nncf()
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, **kwargs)


def _shallow_part() -> str:
    from sd_ovopt.deepcache.export import SHALLOW_PART

    return SHALLOW_PART


def _write(
    pipe: Any,
    unet: Any,
    meta: ExportMetadata,
    output_dir: str | Path,
    *,
    overwrite: bool,
    show_progress: bool,
    source: str | Path | None = None,
) -> Path:
    from sd_ovopt.export.convert import (
        convert_text_encoder,
        convert_unet,
        convert_vae_decoder,
        convert_vae_encoder,
    )

    text_length = pipe.tokenizer.model_max_length
    quant = meta.quantization or {}
    hybrid = (quant.get("unet") or {}).get("mode") == "hybrid"
    compress_others = quant.get("weight_compression") == "int8"

    shape = {
        "batch": meta.unet_batch,
        "latent_height": meta.latent_height,
        "latent_width": meta.latent_width,
        "text_length": text_length,
    }
    shallow: list[Any] = []  # the shallow IR, converted with the full one

    def hybrid_compress(model: Any) -> Any:
        if hybrid:  # matmul weights to int8 (weight-only); convolutions were fully quantized by NNCF
            model = _compress(model, ignored_scope=import_nncf().IgnoredScope(types=["Convolution"]))
        return model

    def unet_part() -> Any:
        nonlocal meta
        if meta.deepcache is None:
            return hybrid_compress(convert_unet(unet, **shape))
        from sd_ovopt.deepcache.config import DeepCacheConfig
        from sd_ovopt.deepcache.export import convert_deepcache_unets

        config = DeepCacheConfig.from_dict(meta.deepcache["config"])
        full, cut, feature_shape = convert_deepcache_unets(unet, config, **shape)
        shallow.append(hybrid_compress(cut))
        meta = replace(meta, deepcache={**meta.deepcache, "feature_shape": list(feature_shape)})
        return hybrid_compress(full)

    def other(model: Any) -> Any:
        return _compress(model) if compress_others else model

    parts = {
        "unet": (unet_part, dict(unet.config)),
        **({_shallow_part(): (shallow.pop, dict(unet.config))} if meta.deepcache else {}),
        "text_encoder": (
            lambda: other(convert_text_encoder(pipe.text_encoder, text_length=text_length)),
            pipe.text_encoder.config.to_dict(),
        ),
        "vae_decoder": (
            lambda: other(
                convert_vae_decoder(
                    pipe.vae, latent_height=meta.latent_height, latent_width=meta.latent_width
                )
            ),
            dict(pipe.vae.config),
        ),
        "vae_encoder": (
            lambda: other(convert_vae_encoder(pipe.vae, height=meta.height, width=meta.width)),
            dict(pipe.vae.config),
        ),
    }
    with atomic_output_dir(output_dir, overwrite=overwrite, source=source) as tmp:
        progress = tqdm(parts.items(), desc="Exporting", unit="part", disable=not show_progress)
        for name, (convert, config) in progress:
            progress.set_postfix_str(name)
            logger.info("converting %s", name)
            model = convert()
            _save_part(model, tmp / name, config, weights_dtype=meta.weights_dtype)
            del model
        _save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        pipe.save_config(tmp)
        meta.save(tmp)
    final = Path(output_dir).expanduser().resolve()
    logger.info("exported %s (%dx%d, UNet batch %d)", final, meta.height, meta.width, meta.unet_batch)
    return final
