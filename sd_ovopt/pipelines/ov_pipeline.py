"""``SdOvOptPipeline``: optimum-intel's OpenVINO Stable Diffusion pipeline, made static, explicit and safe.

It loads folders written by :func:`sd_ovopt.export_pipeline`, reshapes and compiles every part to the
static shape recorded in ``sd_ovopt.json``, pins the inference precision, and refuses calls the compiled
shapes cannot serve with a typed error instead of a CPU-plugin crash. Each method recorded in the folder
loads what it needs and wraps the calls it changes (:mod:`sd_ovopt.methods`); the denoising loop is
diffusers' own ``StableDiffusionPipeline.__call__``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from optimum.intel import OVStableDiffusionPipeline
from optimum.intel.openvino.modeling_diffusion import OVPipelinePart

from sd_ovopt._fs import read_json_object
from sd_ovopt._loading import guidance_embedding_dim, read_model_index
from sd_ovopt._precision import PRECISIONS, check_device_config, openvino_message, precision_config
from sd_ovopt._validation import check_keywords
from sd_ovopt.errors import (
    CorruptModelError,
    InvalidConfigError,
    NotAPipelineError,
    SdOvOptError,
    ShapeMismatchError,
)
from sd_ovopt.export.metadata import METADATA_FILE, ExportMetadata, read_metadata
from sd_ovopt.methods import MethodRecord, get_method
from sd_ovopt.pipelines.call_checks import check_call_arguments

__all__ = ["PRECISIONS", "SdOvOptPipeline"]

logger = logging.getLogger(__name__)

_REQUIRED_PARTS = ("unet", "text_encoder", "vae_decoder")


#: What ``from_pretrained`` passes on to optimum-intel: parts to use instead of the folder's.
_LOAD_KEYWORDS = ("feature_extractor", "safety_checker", "scheduler", "tokenizer")
#: The JSON files optimum-intel reads besides the IRs (each must hold a JSON object).
_CONFIG_FILES = (
    "unet/config.json",
    "text_encoder/config.json",
    "vae_decoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
)


def _check_folder(path: Path) -> None:
    """The folder's ``model_index.json`` (names only allowed libraries), IRs and config files."""
    config = read_model_index(path)
    if config.get("_class_name") != "StableDiffusionPipeline":
        raise NotAPipelineError(
            f"{path} holds a {config.get('_class_name')!r}; SdOvOptPipeline loads StableDiffusionPipeline folders."
        )
    fix = "Export it again with sd_ovopt.export_pipeline (CLI: sd-ovopt export)."
    for part in _REQUIRED_PARTS:
        for suffix in (".xml", ".bin"):
            file = path / part / f"openvino_model{suffix}"
            if not file.is_file():
                raise CorruptModelError(f"{file} is missing: {path} is not a complete OpenVINO export. {fix}")
    for name in _CONFIG_FILES:
        file = path / name
        if not file.is_file():
            raise CorruptModelError(f"{file} is missing: {path} is not a complete OpenVINO export. {fix}")
        read_json_object(file, fix=fix)


def _check_unet_matches_record(model: Any, meta: ExportMetadata, path: Path) -> None:
    """The UNet IR's ``sample`` input must have the static shape ``sd_ovopt.json`` records."""
    sample = next((port for port in model.inputs if "sample" in port.get_names()), None)
    shape = sample.get_partial_shape() if sample is not None else None
    if shape is None or not shape.is_static or len(shape) != 4:
        raise CorruptModelError(
            f"{path / 'unet'}: the UNet IR has no static 4-d 'sample' input, but {METADATA_FILE} records a "
            "static export. Export the pipeline again."
        )
    dims = [dim.get_length() for dim in shape]
    if (dims[0], dims[2], dims[3]) != (meta.unet_batch, meta.latent_height, meta.latent_width):
        raise CorruptModelError(
            f"{path / METADATA_FILE} records UNet batch {meta.unet_batch} at {meta.latent_height}x"
            f"{meta.latent_width} latents, but the UNet IR's sample input is {dims}: the record does not "
            "belong to this IR (edited or copied). Export the pipeline again."
        )


@contextlib.contextmanager
def quiet_safety_checker_warning() -> Iterator[None]:
    """optimum-intel cannot pass ``requires_safety_checker=False`` on, so diffusers warns on every load
    of a folder exported without a safety checker, which is every sd_ovopt export. Silence that logger."""
    sd_logger = logging.getLogger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    level = sd_logger.level
    sd_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sd_logger.setLevel(level)


class SdOvOptPipeline(OVStableDiffusionPipeline):
    """OpenVINO Stable Diffusion pipeline with static shapes, pinned precision and typed errors.

    Example:
        >>> from sd_ovopt import SdOvOptPipeline
        >>> pipe = SdOvOptPipeline.from_pretrained("tiny-ov")  # doctest: +SKIP
        >>> pipe.inference_precision  # doctest: +SKIP
        'bf16'
        >>> image = pipe("a red circle", num_inference_steps=20).images[0]  # doctest: +SKIP
    """

    _sd_ovopt_metadata: ExportMetadata | None = None
    _sd_ovopt_precision: str = "default"
    #: The UNet's static ``sample`` shape as read from a folder without ``sd_ovopt.json`` (an IR traced at
    #: one shape whose record was lost), before optimum-intel makes the inputs dynamic; ``None`` otherwise.
    _sd_ovopt_static_sample: tuple[int, ...] | None = None
    #: What each recorded method loaded beside the pipeline's parts (see ``Method.load``), by name.
    _sd_ovopt_loaded: Mapping[str, Any] = MappingProxyType({})
    #: Recorded methods switched off for calls (``disable_method``).
    _sd_ovopt_disabled: frozenset[str] = frozenset()
    #: What the UNet ran at each step of the last call, when a method tells (step caching: ``"full"`` /
    #: ``"shallow"``); empty otherwise.
    last_unet_steps: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model_dir: str | Path,
        *,
        precision: str | None = None,
        device: str = "CPU",
        ov_config: dict[str, Any] | None = None,
        compile: bool = True,
        **kwargs: Any,
    ) -> SdOvOptPipeline:
        """Load an exported folder, reshape it to its baked static shape and compile it.

        Args:
            model_dir: A folder written by :func:`sd_ovopt.export_pipeline` (or by optimum-intel, in which
                case shapes stay dynamic).
            precision: What OpenVINO computes float ops in: ``"auto"`` (the default when neither this nor
                ``ov_config``'s ``INFERENCE_PRECISION_HINT`` is given: bf16 where the CPU plugin reports
                native BF16, f32 elsewhere), ``"f32"`` (matches PyTorch), ``"bf16"``, ``"f16"`` or
                ``"default"`` (no hint: the plugin's choice). Quantized ops run in int8 regardless.
                ``pipe.inference_precision`` reports what the compiled UNet uses.
            device: OpenVINO device name.
            ov_config: Extra OpenVINO properties. An ``INFERENCE_PRECISION_HINT`` there (optimum-intel's
                convention) is used when ``precision`` is not given; given both, they must agree.
            compile: Compile now (otherwise on the first call).
            **kwargs: Passed to optimum-intel (e.g. ``scheduler=``).
        """
        check_keywords(kwargs, _LOAD_KEYWORDS, where="SdOvOptPipeline.from_pretrained")
        check_device_config(device, ov_config)
        config, precision = precision_config(precision, ov_config, device)
        path = Path(model_dir).expanduser()
        _check_folder(path)
        meta = read_metadata(path)
        pipe = cls._load(path, meta, config, device, kwargs)
        pipe._sd_ovopt_metadata = meta
        pipe._sd_ovopt_precision = precision
        if meta is not None:
            _check_unet_matches_record(pipe.unet.model, meta, path)
            pipe._sd_ovopt_loaded = {
                name: get_method(name).load(pipe, record, path) for name, record in meta.methods.items()
            }
            pipe._reshape_to_metadata()
        if compile:
            pipe.compile()
        return pipe

    @classmethod
    def _load(
        cls, path: Path, meta: ExportMetadata | None, config: dict[str, Any], device: str, kwargs: dict
    ) -> SdOvOptPipeline:
        """optimum-intel's loader on a checked local folder (it skips the hub look-ups that only log
        noise offline), with its errors turned into ones that name the folder."""
        try:
            with quiet_safety_checker_warning():
                return cls._from_pretrained(
                    model_id=str(path),
                    config=cls._load_config(str(path)),
                    ov_config=config,
                    device=device,
                    compile=False,
                    dynamic_shapes=meta is None,
                    **kwargs,
                )
        except SdOvOptError:
            raise
        except RuntimeError as exc:
            raise CorruptModelError(
                f"OpenVINO could not read the model in {path}: {openvino_message(exc)} The IR files are "
                "corrupt or truncated; export the pipeline again."
            ) from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptModelError(
                f"could not load the parts of {path} ({type(exc).__name__}: {exc}). A part folder "
                "(tokenizer/, scheduler/, a config.json) is missing or damaged; export the pipeline again."
            ) from exc

    # -- shapes ------------------------------------------------------------------------------------
    def _reshape_to_metadata(self) -> None:
        meta = self._sd_ovopt_metadata
        assert meta is not None
        super().reshape(meta.batch_size, meta.height, meta.width, meta.num_images_per_prompt)
        # optimum-intel sizes the VAE decoder for num_images_per_prompt only; diffusers decodes all images
        # of a call at once, so it needs batch_size * num_images_per_prompt.
        images = meta.batch_size * meta.num_images_per_prompt
        decoder = self.vae_decoder.model
        shape = decoder.inputs[0].get_partial_shape()
        shape[0] = images
        decoder.reshape({decoder.inputs[0]: shape})
        self.clear_requests()

    def _reshape_unet(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        """An export with ``sd_ovopt.json`` was traced at the recorded shape (checked when loaded): keep
        it. optimum-intel would double the batch for guidance even for a guidance-free export."""
        if self._sd_ovopt_metadata is not None:
            return model
        return super()._reshape_unet(model, *args, **kwargs)

    def reshape(
        self, batch_size: int, height: int, width: int, num_images_per_prompt: int = -1, **kwargs: Any
    ):
        """Refuse shapes other than the exported one (its UNet was traced at that shape)."""
        meta = self._sd_ovopt_metadata
        if meta is None:
            inputs = self.unet.model.inputs if self.unet is not None else []
            sample = next((i.get_partial_shape() for i in inputs if "sample" in i.get_names()), None)
            if sample is not None and sample.is_static and self._sd_ovopt_static_sample is None:
                self._sd_ovopt_static_sample = tuple(dim.get_length() for dim in sample)
            return super().reshape(batch_size, height, width, num_images_per_prompt, **kwargs)
        wanted = (batch_size, height, width, num_images_per_prompt)
        baked = (meta.batch_size, meta.height, meta.width, meta.num_images_per_prompt)
        if wanted != baked:
            raise ShapeMismatchError(
                f"this pipeline was exported for batch_size, height, width, num_images_per_prompt = {baked}; "
                f"reshape to {wanted} is not possible. Export again with those values "
                "(sd_ovopt.export_pipeline(..., height=, width=, batch_size=))."
            )
        self._reshape_to_metadata()
        return self

    def _method_parts(self) -> list[Any]:
        return [part for part in self._sd_ovopt_loaded.values() if isinstance(part, OVPipelinePart)]

    def clear_requests(self) -> None:
        super().clear_requests()
        for part in self._method_parts():
            part.clear_requests()

    def compile(self) -> None:
        try:
            super().compile()
            for part in self._method_parts():
                part.compile()
        except RuntimeError as exc:
            raise CorruptModelError(
                f"OpenVINO could not compile the pipeline: {exc}. The IR may be corrupt; export it again."
            ) from exc

    # -- what is baked in --------------------------------------------------------------------------
    @property
    def export_metadata(self) -> ExportMetadata | None:
        """What ``sd_ovopt.json`` records (static shape, versions, each method's record), or ``None``."""
        return self._sd_ovopt_metadata

    @property
    def methods(self) -> dict[str, MethodRecord]:
        """The record of each method the folder was exported with, by name (empty for a plain folder)."""
        meta = self._sd_ovopt_metadata
        return {} if meta is None else dict(meta.methods)

    def method_config(self, name: str) -> Any:
        """The config of the recorded method ``name`` (e.g. ``"int8"``), or ``None`` when not recorded."""
        record = self.methods.get(name)
        return None if record is None else record.config

    def disable_method(self, name: str) -> None:
        """Switch the recorded method ``name`` off for calls (e.g. ``"step_caching"``: the full UNet then
        runs at every step, computing what a plain export does). Methods baked into the graph cannot be."""
        if name not in self.methods:
            raise InvalidConfigError(
                f"{name!r} is not a method of this folder; it has {sorted(self.methods)}."
            )
        if not get_method(name).switchable:
            raise InvalidConfigError(
                f"{name!r} is baked into the exported IRs and cannot be switched off; load a folder exported "
                "without it."
            )
        self._sd_ovopt_disabled = self._sd_ovopt_disabled | {name}

    def enable_method(self, name: str) -> None:
        """Switch a method turned off with :meth:`disable_method` back on (the default)."""
        self._sd_ovopt_disabled = self._sd_ovopt_disabled - {name}

    @property
    def inference_precision(self) -> str:
        """The precision the compiled UNet computes float ops in, as OpenVINO reports it (e.g. ``"f32"``).

        With ``precision="auto"`` this is ``"bf16"`` on CPUs with native BF16 and ``"f32"`` elsewhere; a
        ``"bf16"`` request on a CPU without it reads ``"f32"`` here, because the plugin falls back.
        """
        self.unet.compile()
        value = self.unet.request.get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    # -- calls -------------------------------------------------------------------------------------
    def _check_inputs(self, kwargs: dict[str, Any], prompt: Any) -> None:
        """What any folder needs: prompts, steps, and finite latents of the compiled shape."""
        if prompt is None and kwargs.get("prompt_embeds") is None:
            raise InvalidConfigError(
                "prompt=None; pass a prompt (a string or a list of strings) or prompt_embeds."
            )
        if prompt is not None and not (
            isinstance(prompt, str)
            or (isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt))
        ):
            raise InvalidConfigError(
                f"prompt={prompt!r} ({type(prompt).__name__}); pass a string or a non-empty list of strings."
            )
        latents = kwargs.get("latents")
        if latents is not None:
            values = torch.as_tensor(latents)
            wanted = self._latents_shape(kwargs, prompt)
            if wanted is not None and tuple(values.shape) != wanted:
                raise ShapeMismatchError(
                    f"latents have shape {tuple(values.shape)}; this pipeline needs {wanted} (images, "
                    "channels, height / vae_scale_factor, width / vae_scale_factor). Omit latents or pass that shape."
                )

    def _latents_shape(self, kwargs: dict[str, Any], prompt: Any) -> tuple[int, ...] | None:
        channels = self.unet.config.get("in_channels", 4) if self.unet is not None else 4
        meta = self._sd_ovopt_metadata
        if meta is not None:
            images = meta.batch_size * meta.num_images_per_prompt
            return (images, channels, meta.latent_height, meta.latent_width)
        batch = 1 if isinstance(prompt, str) or prompt is None else len(prompt)
        images = batch * (kwargs.get("num_images_per_prompt") or 1)
        scale = self.vae_scale_factor
        default = self.unet.config.get("sample_size", 64) * scale if self.unet is not None else 512
        height, width = kwargs.get("height") or default, kwargs.get("width") or default
        return (images, channels, height // scale, width // scale)

    def _check_static_unet(self, kwargs: dict[str, Any], prompt: Any) -> None:
        """Without ``sd_ovopt.json``, compare the call with the UNet's static shape read from its IR."""
        static = self._sd_ovopt_static_sample
        if static is None or len(static) != 4:
            return
        images, _, latent_height, latent_width = self._latents_shape(kwargs, prompt)  # type: ignore[misc]
        unet_batch = images * (2 if self._guidance_rows(kwargs.get("guidance_scale", 7.5)) else 1)
        wanted = (unet_batch, latent_height, latent_width)
        baked = (static[0], static[2], static[3])
        if wanted != baked:
            scale = self.vae_scale_factor
            raise ShapeMismatchError(
                f"this folder has no sd_ovopt.json, and its UNet was exported at a static shape: UNet batch "
                f"{baked[0]} (images x 2 with guidance_scale > 1), {baked[1] * scale}x{baked[2] * scale} "
                f"pixels. This call needs UNet batch {wanted[0]} at {wanted[1] * scale}x{wanted[2] * scale}. "
                "Call with the exported shape, or export again (sd_ovopt.export_pipeline) at the shape you need."
            )

    def _guidance_rows(self, guidance_scale: float) -> bool:
        """Whether a call runs two UNet rows per image: diffusers' rule (guidance > 1, unless the UNet
        takes its guidance as an input, as LCM UNets do)."""
        return guidance_scale > 1 and guidance_embedding_dim(self.unet) is None

    def _check_call(self, kwargs: dict[str, Any], prompt: Any) -> None:
        self._check_inputs(kwargs, prompt)
        meta = self._sd_ovopt_metadata
        if meta is None:
            self._check_static_unet(kwargs, prompt)
            return
        for name in ("height", "width"):
            value = kwargs.get(name)
            if value is not None and value != getattr(meta, name):
                raise ShapeMismatchError(
                    f"{name}={value} was requested, but this pipeline was exported for {meta.height}x"
                    f"{meta.width} (height x width). Omit {name}, or export again at that size."
                )
        nipp = kwargs.get("num_images_per_prompt") or 1
        if nipp != meta.num_images_per_prompt:
            raise ShapeMismatchError(
                f"num_images_per_prompt={nipp}, but the pipeline was exported for "
                f"{meta.num_images_per_prompt}. Export again with num_images_per_prompt={nipp}."
            )
        if prompt is not None:
            batch = 1 if isinstance(prompt, str) else len(prompt)
        elif kwargs.get("prompt_embeds") is not None:
            batch = kwargs["prompt_embeds"].shape[0]
        else:
            batch = meta.batch_size
        if batch != meta.batch_size:
            raise ShapeMismatchError(
                f"{batch} prompt(s) were given, but the pipeline was exported for batch_size="
                f"{meta.batch_size}. Pass {meta.batch_size} prompt(s) or export again with batch_size={batch}."
            )
        guidance = kwargs.get("guidance_scale", 7.5)
        if self._guidance_rows(guidance) != meta.classifier_free_guidance:
            needs = "> 1" if meta.classifier_free_guidance else "<= 1"
            raise ShapeMismatchError(
                f"guidance_scale={guidance}, but the UNet was exported "
                f"{'with' if meta.classifier_free_guidance else 'without'} classifier-free guidance "
                f"(batch {meta.unet_batch}). Use guidance_scale {needs}, or export again with "
                f"classifier_free_guidance={not meta.classifier_free_guidance}."
            )

    def __call__(self, prompt: str | list[str] | None = None, *args: Any, **kwargs: Any):
        """Generate images; see ``diffusers.StableDiffusionPipeline.__call__`` for the arguments."""
        if args:
            raise InvalidConfigError(
                f"got {len(args)} positional argument(s) after the prompt; pass them by keyword (height=, width=, ...)"
            )
        kwargs = check_call_arguments(kwargs, self)
        self._check_call(kwargs, prompt)
        self.last_unet_steps = ()
        with contextlib.ExitStack() as methods:
            for name, record in self.methods.items():
                if name not in self._sd_ovopt_disabled:
                    method = get_method(name)
                    methods.enter_context(method.call_context(self, record, self._sd_ovopt_loaded.get(name)))
            return super().__call__(prompt, **kwargs)
