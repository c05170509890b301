"""``SdOvOptPipeline``: optimum-intel's OpenVINO Stable Diffusion pipeline, made static, explicit and safe.

It loads folders written by :func:`sd_ovopt.export_pipeline`, reshapes and compiles every part static at
the shape recorded in ``sd_ovopt.json`` or at any other batch and multiple-of-8 size asked for (the IRs
take any shape), pins the inference precision, and refuses calls the compiled shapes cannot serve with a
typed error instead of a CPU-plugin crash. Each method recorded in the folder
loads what it needs and wraps the calls it changes (:mod:`sd_ovopt.methods`); the denoising loop is
diffusers' own ``StableDiffusionPipeline.__call__``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from optimum.intel import OVStableDiffusionPipeline
from optimum.intel.openvino.modeling_diffusion import OVPipelinePart

from sd_ovopt._compile_cache import (
    CacheSetting,
    cache_properties,
    max_cache_bytes,
    resolve_cache_dir,
    trim_cache,
)
from sd_ovopt._fs import read_json_object
from sd_ovopt._loading import check_image_size, check_requested_size, guidance_embedding_dim, read_model_index
from sd_ovopt._precision import PRECISIONS, check_device_config, openvino_message, precision_config
from sd_ovopt._validation import check_int, check_keywords
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


def unet_ir_shapes(model: Any, shape: ExportMetadata) -> dict[Any, Any]:
    """The static input shapes of a UNet IR of any shape at ``shape``: the UNet batch on every input but
    ``timestep`` (size 1), and the latent size on ``sample``."""
    shapes = {}
    for port in model.inputs:
        dims = port.get_partial_shape()
        name = port.get_any_name()
        if name != "timestep":
            dims[0] = shape.unet_batch
        if name == "sample":
            dims[2], dims[3] = shape.latent_height, shape.latent_width
        shapes[port] = dims
    return shapes


def _count(name: str, value: Any) -> int:
    try:
        return check_int(name, value, minimum=1)
    except InvalidConfigError:
        raise ShapeMismatchError(f"{name}={value!r}; it must be an integer >= 1.") from None


def _check_unet_matches_record(model: Any, meta: ExportMetadata, path: Path) -> None:
    """The UNet IR's ``sample`` input must be 4-d, and static at the shape ``sd_ovopt.json`` records unless
    the record says the IRs take any shape."""
    sample = next((port for port in model.inputs if "sample" in port.get_names()), None)
    shape = sample.get_partial_shape() if sample is not None else None
    if meta.any_shape and shape is not None and shape.rank.is_static and len(shape) == 4:
        return
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


def _given(value: Any, default: Any, fallback: Any) -> Any:
    """``value`` when given, else ``default`` when there is one, else ``fallback``."""
    if value is not None:
        return value
    return default if default is not None else fallback


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


def _cache_at_f32_only(cache_dir: CacheSetting, config: dict[str, Any], precision: str) -> CacheSetting:
    """The cache setting to compile with: ``cache_dir`` at f32; off below it, a ``CACHE_DIR`` in ``config``
    dropped too. OpenVINO 2026.4.1's CPU plugin gives NaN images from some models cached below f32 (an 8-bit
    UNet at bf16 on AVX512-BF16, a float pipeline at bf16 on other CPUs); uncached, they are finite."""
    if precision == "f32":
        return cache_dir
    if config.pop("CACHE_DIR", None) is not None or resolve_cache_dir(cache_dir) is not None:
        logger.info("compiling at %s precision: the compiled-model cache is used at f32 only", precision)
    return False


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
    #: The shape the parts are compiled for: the record's, or another one for a folder of any shape.
    _sd_ovopt_shape: ExportMetadata | None = None
    _sd_ovopt_precision: str = "default"
    #: The compiled-model cache folder this pipeline trims after compiling (None: off or the user's own).
    _sd_ovopt_cache: Path | None = None
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
        height: int | None = None,
        width: int | None = None,
        batch_size: int | None = None,
        num_images_per_prompt: int | None = None,
        cache_dir: str | Path | bool | None = None,
        **kwargs: Any,
    ) -> SdOvOptPipeline:
        """Load an exported folder, reshape it static (at the recorded shape, or the one asked for) and
        compile it.

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
            height: Image height to compile for, a multiple of 8 (default: the exported one). Folders written
                by this version of sd_ovopt run at any size; see :meth:`reshape`.
            width: Image width to compile for (default: the exported one).
            batch_size: Prompts per call (default: the exported number).
            num_images_per_prompt: Images per prompt (default: the exported number).
            cache_dir: OpenVINO's compiled-model cache, so that a second load at the same shape skips
                compiling: ``None`` (default) keeps it in the per-user folder (``$SD_OVOPT_CACHE_DIR``, else
                ``~/.cache/sd_ovopt/compiled``; ``SD_OVOPT_CACHE_DIR=off`` turns it off), trimmed to
                ``$SD_OVOPT_CACHE_MAX_GB`` (20 GiB) oldest first; ``False`` turns it off; a path uses that
                folder. A ``CACHE_DIR`` in ``ov_config`` wins.
            **kwargs: Passed to optimum-intel (e.g. ``scheduler=``).
        """
        check_keywords(kwargs, _LOAD_KEYWORDS, where="SdOvOptPipeline.from_pretrained")
        check_device_config(device, ov_config)
        check_requested_size(height, width)
        counts = [
            _count(n, v)
            for n, v in (("batch_size", batch_size), ("num_images_per_prompt", num_images_per_prompt))
            if v is not None
        ]
        config, precision = precision_config(precision, ov_config, device)
        if resolve_cache_dir(cache_dir) is not None:
            max_cache_bytes()  # a bad $SD_OVOPT_CACHE_MAX_GB is refused before anything loads
        cache_dir = _cache_at_f32_only(cache_dir, config, precision)
        config = cache_properties(cache_dir, config)
        path = Path(model_dir).expanduser()
        _check_folder(path)
        meta = read_metadata(path)
        pipe = cls._load(path, meta, config, device, kwargs)
        pipe._sd_ovopt_metadata = meta
        pipe._sd_ovopt_precision = precision
        pipe._sd_ovopt_cache = resolve_cache_dir(cache_dir)
        if meta is not None:
            _check_unet_matches_record(pipe.unet.model, meta, path)
            pipe._sd_ovopt_loaded = {
                name: get_method(name).load(pipe, record, path) for name, record in meta.methods.items()
            }
            pipe._sd_ovopt_shape = meta
        if meta is not None or counts or height is not None or width is not None:
            default = meta if meta is not None else None
            pipe.reshape(
                _given(batch_size, default and default.batch_size, 1),
                _given(height, default and default.height, -1),
                _given(width, default and default.width, -1),
                _given(num_images_per_prompt, default and default.num_images_per_prompt, 1),
            )
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
    def _apply_shape(self) -> None:
        """Reshape every part, the methods' included, static at ``_sd_ovopt_shape``."""
        shape = self._sd_ovopt_shape
        assert shape is not None
        super().reshape(shape.batch_size, shape.height, shape.width, shape.num_images_per_prompt)
        # optimum-intel sizes the VAE decoder for num_images_per_prompt only; diffusers decodes all images
        # of a call at once, so it needs batch_size * num_images_per_prompt.
        images = shape.batch_size * shape.num_images_per_prompt
        decoder = self.vae_decoder.model
        dims = decoder.inputs[0].get_partial_shape()
        dims[0] = images
        decoder.reshape({decoder.inputs[0]: dims})
        for name, record in self.methods.items():
            get_method(name).reshape(self, record, self._sd_ovopt_loaded.get(name))
        self.clear_requests()

    def _reshape_unet(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        """A folder with ``sd_ovopt.json``: the UNet batch it records (optimum-intel would double the batch
        for guidance even for a guidance-free export), at the asked latent size when its IRs take any
        shape; a static one was traced at the recorded shape (checked when loaded) and stays as it is."""
        shape = self._sd_ovopt_shape
        if shape is None:
            return super()._reshape_unet(model, *args, **kwargs)
        if shape.any_shape:
            model.reshape(unet_ir_shapes(model, shape))
        return model

    def reshape(
        self, batch_size: int, height: int, width: int, num_images_per_prompt: int = -1, **kwargs: Any
    ):
        """Compile for another shape (on the next call, or ``compile()``); return the pipeline.

        A folder written by this version of sd_ovopt takes any batch and any multiple-of-8 size: its IRs
        are traced with dynamic shapes (ToMe's and step caching's included) and compiled static at the
        asked shape, the fast path. A folder traced at one static shape (``any_shape`` false in its
        ``sd_ovopt.json``) accepts only that shape. ``num_images_per_prompt=-1`` keeps the current number.

        Example:
            >>> pipe = SdOvOptPipeline.from_pretrained("tiny-ov")  # doctest: +SKIP
            >>> pipe.reshape(batch_size=1, height=48, width=32)  # doctest: +SKIP
        """
        meta = self._sd_ovopt_metadata
        if meta is None:
            inputs = self.unet.model.inputs if self.unet is not None else []
            sample = next((i.get_partial_shape() for i in inputs if "sample" in i.get_names()), None)
            if sample is not None and sample.is_static and self._sd_ovopt_static_sample is None:
                self._sd_ovopt_static_sample = tuple(dim.get_length() for dim in sample)
            return super().reshape(batch_size, height, width, num_images_per_prompt, **kwargs)
        current = self._sd_ovopt_shape or meta
        if num_images_per_prompt == -1:
            num_images_per_prompt = current.num_images_per_prompt
        counts = [_count("batch_size", batch_size), _count("num_images_per_prompt", num_images_per_prompt)]
        size = check_image_size(height, width, vae_scale_factor=meta.height // meta.latent_height)
        wanted = meta.at_shape(counts[0], size[0], size[1], counts[1])
        if not meta.any_shape and wanted != meta:
            baked = (meta.batch_size, meta.height, meta.width, meta.num_images_per_prompt)
            raise ShapeMismatchError(
                f"this folder's IRs were traced at one static shape (batch_size, height, width, "
                f"num_images_per_prompt = {baked}); {(counts[0], *size, counts[1])} is not possible. Export "
                "it again with this version of sd_ovopt, whose folders run at any size."
            )
        self._sd_ovopt_shape = wanted
        try:
            self._apply_shape()
        except RuntimeError as exc:  # an IR that does not take the shape its record promises
            self._sd_ovopt_shape = current
            raise CorruptModelError(
                f"OpenVINO could not reshape the folder's IRs to {wanted.height}x{wanted.width} at batch "
                f"{wanted.batch_size}: {openvino_message(exc)} Its sd_ovopt.json says they take any shape, so "
                "the IRs were replaced or edited; export the pipeline again."
            ) from exc
        return self

    def method_part(self, name: str) -> Any:
        """What the recorded method ``name`` loaded beside the pipeline's parts (step caching: its shallow
        UNet, an optimum-intel pipeline part at the pipeline's shape), or ``None``."""
        return self._sd_ovopt_loaded.get(name)

    def _method_parts(self) -> list[Any]:
        return [part for part in self._sd_ovopt_loaded.values() if isinstance(part, OVPipelinePart)]

    def clear_requests(self) -> None:
        super().clear_requests()
        for part in self._method_parts():
            part.clear_requests()

    def compile(self) -> None:
        """Compile every part not compiled yet (at the current shape), through the compiled-model cache
        when it is on; a cache that fails is left out, with a warning, rather than failing the load."""
        try:
            self._compile_parts()
        except RuntimeError as exc:
            if not self.ov_config.get("CACHE_DIR"):
                raise CorruptModelError(
                    f"OpenVINO could not compile the pipeline: {exc}. The IR may be corrupt; export it again."
                ) from exc
            warnings.warn(
                f"compiling with the compiled-model cache {self.ov_config['CACHE_DIR']} failed ({exc}); "
                "compiling without it. If this repeats, run `sd-ovopt cache clear`.",
                stacklevel=2,
            )
            self.ov_config["CACHE_DIR"] = ""  # "" turns OpenVINO's cache off; every part shares this dict
            self.compile()
            return
        trim_cache(self._sd_ovopt_cache, max_cache_bytes())

    def _compile_parts(self) -> None:
        super().compile()
        for part in self._method_parts():
            part.compile()

    # -- what is baked in --------------------------------------------------------------------------
    @property
    def export_metadata(self) -> ExportMetadata | None:
        """What ``sd_ovopt.json`` records (static shape, versions, each method's record), or ``None``."""
        return self._sd_ovopt_metadata

    @property
    def compiled_shape(self) -> ExportMetadata | None:
        """The record at the shape the parts are compiled for (the exported one until :meth:`reshape`
        changes it), or ``None`` for a folder without ``sd_ovopt.json``."""
        return self._sd_ovopt_shape

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
        shape = self._sd_ovopt_shape
        if shape is not None:
            images = shape.batch_size * shape.num_images_per_prompt
            return (images, channels, shape.latent_height, shape.latent_width)
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
        shape = self._sd_ovopt_shape
        if shape is None:
            self._check_static_unet(kwargs, prompt)
            return
        compiled = "compiled" if shape.any_shape else "exported"
        fix = (
            "call pipe.reshape(batch_size=, height=, width=, num_images_per_prompt=) with the shape you need"
            if shape.any_shape
            else "export again at that shape"
        )
        for name in ("height", "width"):
            value = kwargs.get(name)
            if value is not None and value != getattr(shape, name):
                raise ShapeMismatchError(
                    f"{name}={value} was requested, but this pipeline is {compiled} for {shape.height}x"
                    f"{shape.width} (height x width). Omit {name}, or {fix}."
                )
        nipp = kwargs.get("num_images_per_prompt") or 1
        if nipp != shape.num_images_per_prompt:
            raise ShapeMismatchError(
                f"num_images_per_prompt={nipp}, but the pipeline is {compiled} for "
                f"{shape.num_images_per_prompt}. Pass num_images_per_prompt={shape.num_images_per_prompt}, or {fix}."
            )
        if prompt is not None:
            batch = 1 if isinstance(prompt, str) else len(prompt)
        elif kwargs.get("prompt_embeds") is not None:
            batch = kwargs["prompt_embeds"].shape[0]
        else:
            batch = shape.batch_size
        if batch != shape.batch_size:
            raise ShapeMismatchError(
                f"{batch} prompt(s) were given, but the pipeline is {compiled} for batch_size="
                f"{shape.batch_size}. Pass {shape.batch_size} prompt(s), or {fix}."
            )
        self._check_guidance(kwargs.get("guidance_scale", 7.5), shape)

    def _check_guidance(self, guidance: Any, shape: ExportMetadata) -> None:
        if self._guidance_rows(guidance) != shape.classifier_free_guidance:
            needs = "> 1" if shape.classifier_free_guidance else "<= 1"
            raise ShapeMismatchError(
                f"guidance_scale={guidance}, but the UNet was exported "
                f"{'with' if shape.classifier_free_guidance else 'without'} classifier-free guidance "
                f"(batch {shape.unet_batch}). Use guidance_scale {needs}, or export again with "
                f"classifier_free_guidance={not shape.classifier_free_guidance}."
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
