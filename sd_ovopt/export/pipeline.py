"""``export_pipeline``: a diffusers Stable Diffusion pipeline → an optimum-intel-layout OpenVINO folder."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openvino as ov
from diffusers import UNet2DConditionModel
from tqdm.auto import tqdm

from sd_ovopt._convert import (
    convert_text_encoder,
    convert_tokenizer,
    convert_unet,
    convert_vae_decoder,
    convert_vae_encoder,
)
from sd_ovopt._fs import atomic_output_dir
from sd_ovopt._loading import (
    check_image_size,
    check_requested_size,
    guidance_embedding_dim,
    load_for_output,
    pipeline_with,
)
from sd_ovopt._nncf import compress_weights_int8
from sd_ovopt._schedulers import check_scheduler_name, pipeline_scheduler
from sd_ovopt._validation import check_int
from sd_ovopt.errors import AlreadyAppliedError, InvalidConfigError, ShapeMismatchError, UnsupportedModelError
from sd_ovopt.export.metadata import ExportMetadata
from sd_ovopt.export.split_linear import split_chunked_linears
from sd_ovopt.methods import ExportShape, Method, MethodRecord, methods_in_order, registered_methods
from sd_ovopt.vae import pipeline_vae, read_vae
from sd_ovopt.vae.int8 import quantize_tiny_decoder

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

__all__ = ["export_pipeline"]

logger = logging.getLogger(__name__)

OV_XML = "openvino_model.xml"
#: What OpenVINO GenAI's ``Text2ImagePipeline`` reads in ``tokenizer/`` (optimum-intel writes the same names).
OV_TOKENIZER_XML = "openvino_tokenizer.xml"
OV_DETOKENIZER_XML = "openvino_detokenizer.xml"
_WEIGHTS_DTYPES = ("f32", "f16")


def _save_part(model: Any, folder: Path, config: dict[str, Any], *, weights_dtype: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, folder / OV_XML, compress_to_fp16=weights_dtype == "f16")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=list) + "\n")


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """The Hugging Face tokenizer files, plus its OpenVINO conversion for OpenVINO GenAI."""
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
    methods: Sequence[Any] = (),
    unet: torch.nn.Module | None = None,
    vae: torch.nn.Module | str | Path | None = None,
    scheduler: Any = None,
    compress_weights: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Export a Stable Diffusion pipeline to an OpenVINO folder with a static-shape UNet; return its path.

    The folder has optimum-intel's layout (``unet/``, ``text_encoder/``, ``vae_decoder/``, ``vae_encoder/``,
    ``tokenizer/`` with its OpenVINO conversion, ``scheduler/``, ``model_index.json``) plus ``sd_ovopt.json``
    (the static shape and each method's record; a method may add parts). It loads with :class:`sd_ovopt.SdOvOptPipeline`, optimum-intel (and, without torch,
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
        methods: Configs of registered methods (:func:`sd_ovopt.methods.registered_methods`), each applied
            to the UNet for the export only (the UNet is left as it was). Methods the UNet already carries
            (applied, or quantized by the recipe) are exported with it without being named here.
        unet: A UNet to export instead of the pipeline's, e.g. from :func:`sd_ovopt.quantize_unet` (its
            weights are stored as int8) or from quantization-aware training.
        vae: An autoencoder to export instead of the pipeline's: a diffusers ``AutoencoderTiny`` (TAESD's
            architecture: its decoder costs a fraction of the full VAE's, which dominates a few-step call)
            or the local folder of one. It must match the pipeline's latents (channels and size factor).
        scheduler: A scheduler to write instead of the pipeline's: a diffusers scheduler, or a name of
            :data:`sd_ovopt.SCHEDULERS` (``"lcm"``, ``"tcd"``: what LCM-LoRA, TCD and Hyper-SD sample with),
            made from the pipeline's scheduler config.
        compress_weights: Also store the text encoder and VAE weights as int8 (weight-only, with
            ``nncf.compress_weights``), so the whole pipeline shrinks, not only the UNet.
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
    check_scheduler_name(scheduler)
    vae = read_vae(vae)
    pipe, source = load_for_output(pipeline_or_path, output_dir, overwrite=overwrite)
    pipe = pipeline_with(pipe, vae=pipeline_vae(vae, pipe), scheduler=pipeline_scheduler(scheduler, pipe))
    unet = pipe.unet if unet is None else _check_unet(unet, pipe.unet)
    classifier_free_guidance = _guidance_rows(unet, classifier_free_guidance)
    plan = method_plan(unet, methods)
    # 2. What the folder records: the static shape, the weight storage (method records follow conversion)
    shape = _static_shape(pipe, height, width, batch_size, num_images_per_prompt, classifier_free_guidance)
    meta = ExportMetadata(
        **shape,
        weights_dtype=weights_dtype,
        weight_compression="int8" if compress_weights else None,
        vae=type(pipe.vae).__name__,
        any_shape=True,
    )
    # 3. Convert and write every part, each requested method applied to the UNet for the export only
    with contextlib.ExitStack() as applied:
        for method, config in plan:
            applied.enter_context(method.applied_for_export(unet, config))
        return _write(
            pipe, unet, plan, meta, output_dir, source, overwrite=overwrite, show_progress=show_progress
        )


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


def method_plan(unet: Any, requested: Sequence[Any]) -> list[tuple[Method, Any]]:
    """The methods of an export, in rank order: those ``requested`` (configs) and those ``unet`` carries.

    Refused before anything is converted: a requested config other than the one the UNet carries, a
    method requested below one the UNet already carries (a graph change onto a quantized UNet, whose
    quantizers recorded the graph without it), and whatever a method's own ``check_export`` refuses.
    """
    pairs = dict((method.name, (method, config)) for method, config in methods_in_order(requested))
    carried = {}
    for name, method in registered_methods().items():
        applied = method.applied_config(unet)
        if applied is None:
            continue
        carried[name] = method
        asked = pairs.get(name, (method, applied))[1]
        if asked != applied:
            raise AlreadyAppliedError(
                f"the UNet carries {method.label or name} {applied}, but the export asks for {asked}; export "
                "with the config the UNet carries (or leave it out: carried methods are exported as they are)."
            )
        pairs[name] = (method, applied)
    for name, (method, _config) in pairs.items():
        later = [] if name in carried else [m for m in carried.values() if m.rank > method.rank]
        if later:
            raise InvalidConfigError(
                f"{method.label or name} must be applied before {later[0].label or later[0].name} (which "
                f"records the graph it is given): apply it to the float UNet first, then {later[0].name}, "
                "then export without naming it."
            )
    plan = sorted(pairs.values(), key=lambda pair: (pair[0].rank, pair[0].name))
    writers = [m.name for m, _ in plan if type(m).convert_unet is not Method.convert_unet]
    if len(writers) > 1:
        raise UnsupportedModelError(
            f"{writers[0]} and {writers[1]} each write the UNet as IRs of their own; export with one of them."
        )
    for method, config in plan:
        method.check_export(unet, config)
    return plan


# -- 3. convert and write -----------------------------------------------------------------------------
#: A part of the folder: its subfolder name -> (what converts it, the config.json written beside it).
_Parts = dict[str, tuple[Callable[[], Any], dict[str, Any]]]


def _write(
    pipe: Any,
    unet: Any,
    plan: list[tuple[Method, Any]],
    meta: ExportMetadata,
    output_dir: str | Path,
    source: str | Path | None,
    *,
    overwrite: bool,
    show_progress: bool,
) -> Path:
    """Convert every part, one at a time, and write the folder atomically; return its final path."""
    text_length = pipe.tokenizer.model_max_length
    shape = ExportShape(
        meta.unet_batch, meta.latent_height, meta.latent_width, text_length, any_shape=meta.any_shape
    )
    with atomic_output_dir(output_dir, overwrite=overwrite, source=source) as tmp:
        records = _write_unet(unet, plan, shape, tmp, weights_dtype=meta.weights_dtype)
        parts = _other_parts(pipe, meta)
        _convert_and_save(parts, tmp, weights_dtype=meta.weights_dtype, show_progress=show_progress)
        _save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        _save_model_index(pipe, tmp)
        ExportMetadata(**{**meta.to_fields(), "methods": records}).save(tmp)
    final = Path(output_dir).expanduser().resolve()
    logger.info("exported %s (%dx%d, UNet batch %d)", final, meta.height, meta.width, meta.unet_batch)
    return final


def _write_unet(
    unet: Any, plan: list[tuple[Method, Any]], shape: ExportShape, folder: Path, *, weights_dtype: str
) -> dict[str, MethodRecord]:
    """The UNet's IRs (the plain one, or those a method writes itself), each finished by every method and
    with its chunked linear layers split (:func:`split_chunked_linears`); return the methods' records."""
    logger.info("converting unet")
    conversions = [(m, m.convert_unet(unet, config, shape)) for m, config in plan]
    claimed = [c for _, c in conversions if c is not None]  # at most one (method_plan checked)
    irs = claimed[0].parts if claimed else {"unet": convert_unet(unet, **shape.as_kwargs())}
    records = {
        m.name: (c.record if c is not None else m.record(config))
        for (m, c), (_, config) in zip(conversions, plan, strict=True)
    }
    config = dict(unet.config)
    for name in list(irs):
        model = irs.pop(name)
        for method, method_config in plan:
            model = method.finish_unet_ir(model, method_config)
        split_chunked_linears(model)  # GEGLU's projection as two matmuls: no split, fused gating
        _save_part(model, folder / name, config, weights_dtype=weights_dtype)
        del model
    return records


def _convert_and_save(parts: _Parts, folder: Path, *, weights_dtype: str, show_progress: bool) -> None:
    progress = tqdm(parts.items(), desc="Exporting", unit="part", disable=not show_progress)
    for name, (convert, config) in progress:
        progress.set_postfix_str(name)
        logger.info("converting %s", name)
        model = convert()
        _save_part(model, folder / name, config, weights_dtype=weights_dtype)
        del model


def _save_model_index(pipe: Any, folder: Path) -> None:
    """The pipeline's ``model_index.json``, its VAE listed as :func:`list_vae_as_genai_reads_it` says."""
    pipe.save_config(folder)
    list_vae_as_genai_reads_it(folder)


def list_vae_as_genai_reads_it(folder: Path) -> None:
    """List the folder's VAE as ``AutoencoderKL`` in ``model_index.json``: a tiny autoencoder's IRs have
    that interface (latents in, image in [-1, 1] out), and OpenVINO GenAI refuses a folder that names any
    other VAE class. The parts' own ``config.json`` and ``sd_ovopt.json`` name the real class."""
    index = folder / "model_index.json"
    config = json.loads(index.read_text(encoding="utf-8"))
    if config.get("vae") != ["diffusers", "AutoencoderKL"]:
        config["vae"] = ["diffusers", "AutoencoderKL"]
        index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _stored(model: Any, meta: ExportMetadata) -> Any:
    """``model`` with int8 weights when the record asks for weight compression."""
    return compress_weights_int8(model) if meta.weight_compression == "int8" else model


def _other_parts(pipe: Any, meta: ExportMetadata) -> _Parts:
    """The text encoder and the VAE halves (weights int8 when the record asks for weight compression)."""
    text_length = pipe.tokenizer.model_max_length
    return {
        "text_encoder": (
            lambda: _stored(convert_text_encoder(pipe.text_encoder, text_length=text_length), meta),
            pipe.text_encoder.config.to_dict(),
        ),
        **vae_parts(pipe.vae, meta),
    }


def vae_parts(vae: Any, meta: ExportMetadata, decoder_latents: Sequence[Any] | None = None) -> _Parts:
    """The VAE decoder and encoder at the record's shape, or of any size when it says so (weights int8
    when it asks for compression); the decoder in INT8, calibrated on ``decoder_latents``, when given."""
    latent = {"latent_height": meta.latent_height, "latent_width": meta.latent_width}
    image = {"height": meta.height, "width": meta.width}

    def decoder() -> Any:
        model = convert_vae_decoder(vae, **latent, any_shape=meta.any_shape)
        return (
            _stored(model, meta) if decoder_latents is None else quantize_tiny_decoder(model, decoder_latents)
        )

    return {
        "vae_decoder": (decoder, dict(vae.config)),
        "vae_encoder": (
            lambda: _stored(convert_vae_encoder(vae, **image, any_shape=meta.any_shape), meta),
            dict(vae.config),
        ),
    }
