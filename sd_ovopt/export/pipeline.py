"""``export_pipeline``: a diffusers Stable Diffusion pipeline → an optimum-intel-layout OpenVINO folder."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from sd_ovopt._fs import atomic_output_dir
from sd_ovopt._loading import (
    check_image_size,
    check_requested_size,
    guidance_embedding_dim,
    load_for_output,
    refuse_guidance_embedded,
)
from sd_ovopt._nncf import import_nncf, nncf_output_on_stderr
from sd_ovopt._validation import check_int
from sd_ovopt.errors import InvalidConfigError, ShapeMismatchError, UnsupportedModelError
from sd_ovopt.export.metadata import ExportMetadata

if TYPE_CHECKING:
    import openvino as ov
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
    classifier_free_guidance: bool | None = None,
    weights_dtype: str = "f32",
    tome: ToMeConfig | None = None,
    unet: torch.nn.Module | None = None,
    compress_weights: bool = False,
    deepcache: DeepCacheConfig | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Export a Stable Diffusion pipeline to an OpenVINO folder with a static-shape UNet; return its path.

    The folder has optimum-intel's layout (``unet/``, ``text_encoder/``, ``vae_decoder/``, ``vae_encoder/``,
    ``tokenizer/`` with its OpenVINO conversion, ``scheduler/``, ``model_index.json``) plus ``sd_ovopt.json``
    (what is baked in). It loads with :class:`sd_ovopt.SdOvOptPipeline`, optimum-intel (and, without torch,
    with ``openvino_genai.Text2ImagePipeline``). The write is atomic: on any error nothing is left behind.

    Args:
        pipeline_or_path: A ``StableDiffusionPipeline`` or the local folder of one.
        output_dir: Where to write. An existing non-empty folder is refused unless ``overwrite``.
        height: Image height in pixels, a multiple of 8 (default: the UNet's native size).
        width: Image width in pixels, a multiple of 8 (default: the UNet's native size).
        batch_size: Prompts per call.
        num_images_per_prompt: Images per prompt.
        classifier_free_guidance: Double the UNet batch for guidance (calls with ``guidance_scale > 1``).
            Default: yes, except for a UNet whose guidance is an input (``time_cond_proj_dim``, as in LCM
            models), which runs one row per image at any guidance scale.
        weights_dtype: ``"f32"`` (exact) or ``"f16"`` (half the disk size) for stored float weights.
        tome: Token merging baked into the UNet IR, applied for the export only (the UNet is left as it
            was). A UNet that already has ToMe applied is exported with it when ``tome`` is ``None``.
        unet: A UNet to export instead of the pipeline's, e.g. from :func:`sd_ovopt.quantize_unet` (its
            weights are stored as int8) or from quantization-aware training.
        compress_weights: Also store the text encoder and VAE weights as int8 (weight-only, with
            ``nncf.compress_weights``), so the whole pipeline shrinks, not only the UNet.
        deepcache: Step caching: ``unet/`` then holds the full UNet, which also returns the cached feature,
            and ``unet_shallow/`` the shallow UNet that takes it (see :mod:`sd_ovopt.deepcache`). A UNet
            carrying the step-caching patch (from the recipe's calibration) is exported with its config.
        overwrite: Replace an existing folder.
        show_progress: Show a progress bar over the parts.

    Example:
        >>> from sd_ovopt import export_pipeline
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> path = export_pipeline(tiny_pipeline(), "tiny-ov", height=32, width=32)  # doctest: +SKIP
    """
    # 1. Check the request: nothing is converted before it passes
    batch_size, num_images_per_prompt = _check_export_args(
        weights_dtype,
        batch_size,
        num_images_per_prompt,
        compress_weights=compress_weights,
        overwrite=overwrite,
    )
    check_requested_size(height, width)
    pipe, source = load_for_output(pipeline_or_path, output_dir, overwrite=overwrite)
    unet = pipe.unet if unet is None else _check_unet(unet, pipe.unet)
    classifier_free_guidance = _guidance_rows(unet, classifier_free_guidance)
    # 2. Record what the IRs bake in: the static shape, ToMe, INT8, step caching
    shape = _static_shape(pipe, height, width, batch_size, num_images_per_prompt, classifier_free_guidance)
    meta = _metadata(shape, unet, tome, deepcache, weights_dtype, compress_weights)
    # 3. Convert and write every part, with ToMe applied to the UNet for the export only
    with _tome_applied(unet, tome):
        return _write(pipe, unet, meta, output_dir, source, overwrite=overwrite, show_progress=show_progress)


# -- 1. the request -----------------------------------------------------------------------------------
def _check_export_args(
    weights_dtype: str, batch_size: Any, num_images_per_prompt: Any, **flags: Any
) -> tuple[int, int]:
    """``batch_size`` and ``num_images_per_prompt`` as ints (numpy integers accepted), once every
    argument is checked: a string such as ``"False"`` for a flag would silently mean True."""
    if weights_dtype not in _WEIGHTS_DTYPES:
        raise InvalidConfigError(f"weights_dtype={weights_dtype!r}; use one of {_WEIGHTS_DTYPES}.")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InvalidConfigError(f"{name}={value!r} ({type(value).__name__}); pass True or False.")
    counts = []
    for name, value in (("batch_size", batch_size), ("num_images_per_prompt", num_images_per_prompt)):
        try:
            counts.append(check_int(name, value, minimum=1))
        except InvalidConfigError:
            raise ShapeMismatchError(f"{name}={value!r}; it must be an integer >= 1.") from None
    return counts[0], counts[1]


def _guidance_rows(unet: Any, classifier_free_guidance: Any) -> bool:
    """Whether the UNet runs two rows per image (classifier-free guidance); see ``export_pipeline``."""
    embedded = guidance_embedding_dim(unet) is not None
    if classifier_free_guidance is None:
        return not embedded
    if not isinstance(classifier_free_guidance, bool):
        raise InvalidConfigError(
            f"classifier_free_guidance={classifier_free_guidance!r} ({type(classifier_free_guidance).__name__}); "
            "pass True or False (or None: the UNet's own way)."
        )
    if classifier_free_guidance and embedded:
        raise InvalidConfigError(
            "classifier_free_guidance=True, but this UNet takes its guidance as an input (time_cond_proj_dim, "
            "as LCM models do) and never runs a second, unconditional row. Leave it out or pass False."
        )
    return classifier_free_guidance


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


# -- 2. what the IRs bake in --------------------------------------------------------------------------
def _static_shape(
    pipe: Any,
    height: int | None,
    width: int | None,
    batch_size: int,
    num_images_per_prompt: int,
    classifier_free_guidance: bool,
) -> dict[str, Any]:
    """The shape fields of :class:`ExportMetadata` (the image size defaults to the UNet's native one)."""
    vae_scale = pipe.vae_scale_factor
    native = pipe.unet.config.sample_size * vae_scale
    height = height if height is not None else native
    width = width if width is not None else native
    height, width = check_image_size(height, width, vae_scale_factor=vae_scale)
    images = batch_size * num_images_per_prompt
    return {
        "height": height,
        "width": width,
        "batch_size": batch_size,
        "num_images_per_prompt": num_images_per_prompt,
        "classifier_free_guidance": classifier_free_guidance,
        "unet_batch": images * (2 if classifier_free_guidance else 1),
        "latent_height": height // vae_scale,
        "latent_width": width // vae_scale,
    }


def _metadata(
    shape: dict[str, Any],
    unet: Any,
    tome: ToMeConfig | None,
    deepcache: DeepCacheConfig | None,
    weights_dtype: str,
    compress_weights: bool,
) -> ExportMetadata:
    """The folder's record: ``shape``, and what ``unet`` carries or is given (ToMe, INT8, step caching)."""
    from sd_ovopt.quantization.ptq import get_quantization_config
    from sd_ovopt.tome.patch import get_tome_config

    quantization = get_quantization_config(unet)
    tome_before = get_tome_config(unet)
    if tome is not None and quantization is not None and tome != tome_before:
        raise InvalidConfigError(
            "ToMe must be applied before quantization (quantize_unet records the merged graph); apply_tome to "
            "the float UNet, then quantize it, then export without tome=."
        )
    applied = tome or tome_before
    deepcache = _deepcache_config(unet, deepcache)
    return ExportMetadata(
        **shape,
        weights_dtype=weights_dtype,
        tome=None if applied is None else applied.to_dict(),
        quantization=_quantization_record(quantization, compress_weights),
        deepcache=None if deepcache is None else _deepcache_record(deepcache),
    )


def _deepcache_config(unet: Any, deepcache: Any) -> Any:
    from sd_ovopt.deepcache.config import DeepCacheConfig
    from sd_ovopt.deepcache.patch import plan_skips, state_of

    if deepcache is not None and not isinstance(deepcache, DeepCacheConfig):
        raise InvalidConfigError(
            f"deepcache must be a DeepCacheConfig or None, got {type(deepcache).__name__}."
        )
    state = state_of(unet)
    config = deepcache if deepcache is not None or state is None else state.config
    if config is not None:
        refuse_guidance_embedded(unet, "step caching")
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


def _quantization_record(quantization: Any, compress_weights: bool) -> dict[str, Any] | None:
    if quantization is None and not compress_weights:
        return None
    return {
        "unet": None if quantization is None else quantization.to_dict(),
        "weight_compression": "int8" if compress_weights else None,
    }


# -- 3. convert and write -----------------------------------------------------------------------------
@contextlib.contextmanager
def _tome_applied(unet: Any, tome: ToMeConfig | None) -> Iterator[None]:
    """``tome`` applied to ``unet`` inside (removed again after, unless the UNet had it before)."""
    from sd_ovopt.tome.patch import apply_tome, get_tome_config, remove_tome

    if tome is None:
        yield
        return
    before = get_tome_config(unet)
    apply_tome(unet, tome)  # raises AlreadyAppliedError if another config is applied
    try:
        yield
    finally:
        if before is None:
            remove_tome(unet)


#: A part of the folder: its subfolder name -> (what converts it, the config.json written beside it).
_Parts = dict[str, tuple[Callable[[], Any], dict[str, Any]]]


def _write(
    pipe: Any,
    unet: Any,
    meta: ExportMetadata,
    output_dir: str | Path,
    source: str | Path | None,
    *,
    overwrite: bool,
    show_progress: bool,
) -> Path:
    """Convert every part, one at a time, and write the folder atomically; return its final path."""
    unets = _UNetParts(unet, meta, text_length=pipe.tokenizer.model_max_length)
    parts = {**unets.parts(), **_other_parts(pipe, meta)}
    with atomic_output_dir(output_dir, overwrite=overwrite, source=source) as tmp:
        _convert_and_save(parts, tmp, weights_dtype=meta.weights_dtype, show_progress=show_progress)
        _save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        pipe.save_config(tmp)
        unets.completed(meta).save(tmp)
    final = Path(output_dir).expanduser().resolve()
    logger.info("exported %s (%dx%d, UNet batch %d)", final, meta.height, meta.width, meta.unet_batch)
    return final


def _convert_and_save(parts: _Parts, folder: Path, *, weights_dtype: str, show_progress: bool) -> None:
    progress = tqdm(parts.items(), desc="Exporting", unit="part", disable=not show_progress)
    for name, (convert, config) in progress:
        progress.set_postfix_str(name)
        logger.info("converting %s", name)
        model = convert()
        _save_part(model, folder / name, config, weights_dtype=weights_dtype)
        del model


class _UNetParts:
    """The UNet's part of the folder, or with step caching its two parts (the full and the shallow IR,
    traced together; the cached feature's shape is then added to the record)."""

    def __init__(self, unet: Any, meta: ExportMetadata, *, text_length: int) -> None:
        self.unet, self.deepcache = unet, meta.deepcache
        self.shape = {
            "batch": meta.unet_batch,
            "latent_height": meta.latent_height,
            "latent_width": meta.latent_width,
            "text_length": text_length,
        }
        # hybrid: matmul weights to int8 (weight-only); convolutions were fully quantized by NNCF
        self.hybrid = ((meta.quantization or {}).get("unet") or {}).get("mode") == "hybrid"
        self.shallow: list[ov.Model] = []  # the shallow IR, converted with the full one
        self.feature_shape: tuple[int, ...] | None = None

    def parts(self) -> _Parts:
        config = dict(self.unet.config)
        if self.deepcache is None:
            return {"unet": (self.plain, config)}
        from sd_ovopt.deepcache.export import SHALLOW_PART

        return {"unet": (self.full, config), SHALLOW_PART: (self.shallow.pop, dict(self.unet.config))}

    def plain(self) -> ov.Model:
        from sd_ovopt.export.convert import convert_unet

        return self._compressed(convert_unet(self.unet, **self.shape))

    def full(self) -> ov.Model:
        from sd_ovopt.deepcache.config import DeepCacheConfig
        from sd_ovopt.deepcache.export import convert_deepcache_unets

        config = DeepCacheConfig.from_dict(self.deepcache["config"])
        full, shallow, self.feature_shape = convert_deepcache_unets(self.unet, config, **self.shape)
        self.shallow.append(self._compressed(shallow))
        return self._compressed(full)

    def completed(self, meta: ExportMetadata) -> ExportMetadata:
        """``meta`` with the cached feature's shape, once the step-caching IRs are converted."""
        if self.feature_shape is None:
            return meta
        deepcache = {**meta.deepcache, "feature_shape": list(self.feature_shape)}
        return replace(meta, deepcache=deepcache)

    def _compressed(self, model: Any) -> Any:
        if self.hybrid:
            model = _compress(model, ignored_scope=import_nncf().IgnoredScope(types=["Convolution"]))
        return model


def _other_parts(pipe: Any, meta: ExportMetadata) -> _Parts:
    """The text encoder and the VAE halves (weights int8 when the record asks for weight compression)."""
    from sd_ovopt.export.convert import convert_text_encoder, convert_vae_decoder, convert_vae_encoder

    compress = (meta.quantization or {}).get("weight_compression") == "int8"
    text_length = pipe.tokenizer.model_max_length

    def stored(model: Any) -> Any:
        return _compress(model) if compress else model

    return {
        "text_encoder": (
            lambda: stored(convert_text_encoder(pipe.text_encoder, text_length=text_length)),
            pipe.text_encoder.config.to_dict(),
        ),
        "vae_decoder": (
            lambda: stored(
                convert_vae_decoder(
                    pipe.vae, latent_height=meta.latent_height, latent_width=meta.latent_width
                )
            ),
            dict(pipe.vae.config),
        ),
        "vae_encoder": (
            lambda: stored(convert_vae_encoder(pipe.vae, height=meta.height, width=meta.width)),
            dict(pipe.vae.config),
        ),
    }


def _compress(model: Any, **kwargs: Any) -> Any:
    nncf = import_nncf()
    with nncf_output_on_stderr():
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, **kwargs)
