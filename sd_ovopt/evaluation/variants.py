"""The variants a benchmark compares, built from one local diffusers folder into a work folder.

Each built variant is a folder plus the runtime that loads it, so that another process (the peak-memory
probe) can load it again. Folders built earlier with the same settings are reused.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from optimum.intel import (
    OVConfig,
    OVQuantizationConfig,
    OVQuantizer,
    OVStableDiffusionPipeline,
    OVWeightQuantizationConfig,
)

from sd_ovopt._convert import quiet_tracing
from sd_ovopt._fs import atomic_output_dir
from sd_ovopt._loading import load_sd_pipeline, read_model_index
from sd_ovopt._precision import precision_hint, resolve_precision
from sd_ovopt._schedulers import pipeline_scheduler
from sd_ovopt.deepcache import StepTracker
from sd_ovopt.deepcache.config import DeepCacheConfig
from sd_ovopt.errors import InvalidConfigError, ModelNotFoundError, ShapeMismatchError
from sd_ovopt.evaluation.genai import GenAIPipeline, genai_missing
from sd_ovopt.evaluation.timing import Call
from sd_ovopt.export.metadata import read_metadata
from sd_ovopt.export.vae import replace_vae
from sd_ovopt.methods import methods_in_order
from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline, quiet_safety_checker_warning
from sd_ovopt.quantization import QuantizationConfig
from sd_ovopt.recipes import optimize_pipeline, replace_vae_int8
from sd_ovopt.tome import ToMeConfig

__all__ = [
    "DEFAULT_VARIANTS",
    "PEER",
    "PEERS",
    "PEER_FULL",
    "REFERENCE",
    "VARIANTS",
    "BuildSettings",
    "BuiltVariant",
    "Unavailable",
    "VariantSpec",
    "build_variants",
    "check_qat_model",
    "default_variants",
    "disk_size",
    "load_variant",
    "register_variant",
    "resolve_variants",
    "variant_labels",
    "variant_spec",
]

logger = logging.getLogger(__name__)

#: The image and speed reference (speed-ups are also reported against :data:`PEER`).
REFERENCE = "pytorch-fp32"
#: What a user would pick instead of sd_ovopt: optimum-intel's own hybrid 8-bit quantization.
PEER = "optimum-int8-hybrid"
#: optimum-intel's full INT8 UNet (``OVQuantizationConfig(bits=8)`` through ``OVQuantizer``).
PEER_FULL = "optimum-int8-full"
PEERS = (PEER, PEER_FULL)
#: optimum-intel calibrates by calling the pipeline with its default number of steps.
_PEER_STEPS = 50
#: Token downsampling for few-step folders: self-attention keys and values from 1 token in 4, in the two
#: top levels of the UNet (ToDo's setting); queries keep every token, so nothing is merged back.
TOKEN_DOWNSAMPLING = ToMeConfig(method="downsample", downsample_factor=2, max_downsample=2)


def _timesteps(pipe: Any, steps: int) -> list[Any]:
    """The timesteps of a ``steps``-step call: one UNet call each (PNDM repeats one: steps + 1 calls)."""

    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    return list(scheduler.timesteps)


def _scheduled_calls(pipe: Any, steps: int) -> dict[str, int]:
    return {"unet": len(_timesteps(pipe, steps))}


@dataclass(frozen=True)
class VariantSpec:
    """How the harness builds, loads and labels one variant: adding a variant is one :func:`register_variant`.

    Attributes:
        name: The variant's name (``--variants`` takes it).
        label: What the table calls it.
        runtime: ``"torch"``, ``"sd_ovopt"``, ``"optimum"`` or ``"genai"`` (OpenVINO GenAI's
            ``Text2ImagePipeline``): which loader :func:`load_variant` uses.
        build: ``build(builder) -> (folder, build seconds, reused)``; ``builder`` is the shared
            :class:`_Builder` (PyTorch pipeline, calibration data, settings, reuse records).
        precision: The OpenVINO precision hint it runs with, from the settings (None for PyTorch).
        unavailable: Why it cannot run on this machine (None when it can): it is then skipped.
        default: Whether it runs when no variant list is given.
        unet_irs: ``unet_irs(pipe, variant) -> {name: compiled model}``: UNet IRs the pipeline runs besides
            its ``unet`` (e.g. the shallow IR of step caching), timed one call each.
        unet_calls: ``unet_calls(pipe, steps) -> {ir: calls}``: UNet calls per IR (``"unet"`` and the names
            of ``unet_irs``) of a ``steps``-step pipeline call, for the extrapolation check.
        baseline: The variant this one is compared with (e.g. its uncached twin), or None.
        call: ``call(shared) -> Call``: the call this variant is timed with (default: the run's shared
            call; e.g. the same steps with guidance, for a many-step baseline beside few-step rows).
        scheduler: A name of :data:`sd_ovopt.SCHEDULERS` the variant runs with instead of its folder's
            (made from the folder's scheduler config), or None.
    """

    name: str
    label: str
    runtime: str
    build: Callable[[_Builder], tuple[Path, float | None, bool]]
    precision: Callable[[BuildSettings], str | None] = lambda settings: settings.precision
    unavailable: Callable[[], str | None] = lambda: None
    default: bool = True
    unet_irs: Callable[[Any, BuiltVariant], dict[str, Any]] = lambda pipe, variant: {}
    unet_calls: Callable[[Any, int], dict[str, int]] = _scheduled_calls
    baseline: str | None = None
    call: Callable[[Call], Call] = lambda call: call
    scheduler: str | None = None


_REGISTRY: dict[str, VariantSpec] = {}


def register_variant(spec: VariantSpec) -> VariantSpec:
    """Add a variant to the harness (a name registered twice raises)."""
    if spec.name in _REGISTRY:
        raise InvalidConfigError(f"a benchmark variant named {spec.name!r} is registered already.")
    if spec.runtime not in _LOADERS:
        raise InvalidConfigError(
            f"variant {spec.name!r}: runtime={spec.runtime!r}; use one of {list(_LOADERS)}."
        )
    _REGISTRY[spec.name] = spec
    return spec


def unregister_variant(name: str) -> None:
    """Remove a registered variant (for tests and plug-ins that unload)."""
    _REGISTRY.pop(name, None)


@dataclass(frozen=True)
class BuildSettings:
    """What the built variants depend on (a change rebuilds them).

    Attributes:
        height: Image height the OpenVINO variants are exported (and the peer reshaped) for.
        width: Image width.
        guidance_scale: Guidance of the benchmark calls (> 1 doubles the UNet batch).
        tome_ratio: ToMe ratio of ``ov-tome-int8``.
        calibration_prompts: Prompts for PTQ calibration, of ours and of the peer alike.
        num_samples: UNet calls recorded for calibration (ours and the peer's ``num_samples``).
        calibration_steps: Denoising steps per calibration prompt (ours; the peer uses its own 50).
        precision: OpenVINO inference precision of the quantized variants and the peer.
        tiny_vae: Folder of the tiny autoencoder the ``-taesd`` variants export instead of the model's VAE.
    """

    height: int
    width: int
    guidance_scale: float = 7.5
    tome_ratio: float = 0.4
    calibration_prompts: tuple[str, ...] = ()
    num_samples: int = 200
    calibration_steps: int = 20
    precision: str = "f32"
    tiny_vae: str | None = None


@dataclass(frozen=True)
class BuiltVariant:
    """A variant ready to load: ``runtime`` is ``"torch"``, ``"sd_ovopt"`` or ``"optimum"``."""

    name: str
    runtime: str
    path: Path
    precision: str | None
    build_s: float | None = None
    reused: bool = False


@dataclass(frozen=True)
class Unavailable:
    """A variant that was not run: ``status`` is ``"skipped"`` (not applicable here) or ``"failed"``."""

    name: str
    status: str
    reason: str


def resolve_variants(names: Sequence[str] | None, *, qat_model: str | Path | None) -> tuple[str, ...]:
    """Validate variant names (default: :data:`DEFAULT_VARIANTS`, plus QAT when ``qat_model`` is given)."""
    if names is None:
        return (*default_variants(), *(("ov-int8-qat",) if qat_model is not None else ()))
    if isinstance(names, str) or not names:
        raise InvalidConfigError(
            f"variants={names!r}; pass a non-empty list of names from {list(_REGISTRY)}."
        )
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise InvalidConfigError(f"unknown variant(s) {unknown}; choose from {list(_REGISTRY)}.")
    if "ov-int8-qat" in names and qat_model is None:
        raise InvalidConfigError(
            "variant 'ov-int8-qat' needs an exported QAT pipeline: pass qat_model= (CLI: --qat-model DIR)."
        )
    return tuple(dict.fromkeys(names))


def _stamp(model: Path) -> dict[str, Any]:
    files = [model / "model_index.json", *sorted((model / "unet").glob("diffusion_pytorch_model*"))]
    return {str(f.relative_to(model)): [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}


class _Builder:
    """Builds the requested variants, sharing the PyTorch pipeline and the calibration data."""

    def __init__(
        self,
        model: Path,
        work_dir: Path,
        settings: BuildSettings,
        *,
        rebuild: bool,
        progress: bool,
        qat_model: Path | None = None,
    ):
        self.model, self.work_dir, self.settings = model, work_dir, settings
        self.qat_model = qat_model
        self.rebuild, self.progress = rebuild, progress
        self._pipe: Any = None

    # -- shared inputs ----------------------------------------------------------------------------
    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = load_sd_pipeline(self.model)
        return self._pipe

    # -- reuse ------------------------------------------------------------------------------------
    def _record(self, folder: str, keys: Sequence[str], methods: Sequence[Any]) -> dict[str, Any]:
        settings = asdict(self.settings)
        return {
            "source": str(self.model),
            "source_files": _stamp(self.model),
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items() if k in keys},
            "methods": [{type(config).__name__: config.to_dict()} for config in methods],
        }

    def folder(
        self, folder: str, keys: Sequence[str], build: Any, *, methods: Sequence[Any] = ()
    ) -> tuple[Path, float, bool]:
        """Build ``folder`` with ``build(path)`` unless an equal build record (the settings named by
        ``keys`` and the method configs) says it is there."""
        path = self.work_dir / folder
        record_file = self.work_dir / f"{folder}.build.json"
        record = self._record(folder, keys, methods)
        if not self.rebuild and path.is_dir() and record_file.is_file():
            old = json.loads(record_file.read_text(encoding="utf-8"))
            if {k: old.get(k) for k in record} == record:
                logger.info("reusing %s (built with the same settings)", path)
                return path, float(old.get("build_s", 0.0)), True
        t0 = time.perf_counter()
        build(path)
        build_s = time.perf_counter() - t0
        record_file.write_text(json.dumps({**record, "build_s": build_s}, indent=2) + "\n", encoding="utf-8")
        return path, build_s, False

    # -- the variants -----------------------------------------------------------------------------
    _SHAPE = ("height", "width", "guidance_scale")
    _CALIBRATION = (*_SHAPE, "calibration_prompts", "num_samples", "calibration_steps")

    def recipe(self, name: str, methods: Sequence[Any] = ()) -> tuple[Path, float, bool]:
        """The folder :func:`sd_ovopt.optimize_pipeline` writes at the benchmark's shape with ``methods``
        (method configs); the cache key holds the calibration settings when a method quantizes."""

        s = self.settings

        def build(path: Path) -> None:
            optimize_pipeline(
                self.pipe,
                path,
                methods=methods,
                calibration_prompts=s.calibration_prompts,
                calibration_steps=s.calibration_steps,
                guidance_scale=s.guidance_scale,
                height=s.height,
                width=s.width,
                overwrite=True,
                show_progress=self.progress,
            )

        return self.folder(name, self._keys(methods), build, methods=methods)

    def _keys(self, methods: Sequence[Any]) -> tuple[str, ...]:
        quantizes = any(method.quantizes for method, _ in methods_in_order(methods))
        return self._CALIBRATION if quantizes else self._SHAPE

    def with_tiny_vae(
        self, name: str, base: str, methods: Sequence[Any] = (), *, decoder_int8: bool = False
    ) -> tuple[Path, float, bool]:
        """The recipe's folder ``base`` (built first) with the settings' tiny autoencoder in place of its
        VAE (:func:`sd_ovopt.replace_vae`): only the VAE is converted again, the UNet is the same. With
        ``decoder_int8`` its decoder is INT8, calibrated on the folder's own latents at the run's steps."""
        s = self.settings
        if s.tiny_vae is None:
            raise InvalidConfigError(
                f"variant {name!r} runs a tiny autoencoder: pass tiny_vae= (CLI: --vae-tiny DIR), the "
                "folder of an AutoencoderTiny such as TAESD."
            )
        source, _, _ = self.recipe(base, methods)

        def build(path: Path) -> None:
            if decoder_int8:
                replace_vae_int8(
                    source,
                    s.tiny_vae,
                    path,
                    calibration_steps=s.calibration_steps,
                    overwrite=True,
                    show_progress=self.progress,
                )
            else:
                replace_vae(source, s.tiny_vae, path, overwrite=True, show_progress=self.progress)

        keys = (*self._keys(methods), "tiny_vae", *(("calibration_steps",) if decoder_int8 else ()))
        return self.folder(name, keys, build, methods=methods)

    def ov_f32(self) -> tuple[Path, float, bool]:
        return self.recipe("ov-f32")

    def int8_methods(self, *, tome: bool) -> list[Any]:
        """INT8 calibrated with the benchmark's settings, ToMe at its ratio first when asked."""
        int8 = QuantizationConfig(subset_size=self.settings.num_samples)
        return [ToMeConfig(ratio=self.settings.tome_ratio), int8] if tome else [int8]

    def downsampling_int8_methods(self) -> list[Any]:
        """INT8 calibrated with the benchmark's settings after token downsampling
        (:data:`TOKEN_DOWNSAMPLING`)."""
        return [TOKEN_DOWNSAMPLING, *self.int8_methods(tome=False)]

    def int8(self, name: str, *, tome: bool) -> tuple[Path, float, bool]:
        """The recipe's INT8 folder, ToMe (at the benchmark's ratio) merged first when asked."""
        return self.recipe(name, self.int8_methods(tome=tome))

    def peer(self, name: str) -> tuple[Path, float, bool]:
        """optimum-intel's hybrid 8-bit (weights int8, activations of the non-MatMul ops int8) or full INT8."""
        s = self.settings

        def build(path: Path) -> None:
            passes = -(
                -s.num_samples // (len(s.calibration_prompts) * _PEER_STEPS)
            )  # as many samples as ours
            dataset = list(s.calibration_prompts) * passes
            # optimum-intel traces like our export does: the same trace-time notices kept quiet
            with quiet_tracing(), atomic_output_dir(path, overwrite=True) as tmp:
                if name == PEER:
                    config = OVWeightQuantizationConfig(
                        bits=8, quant_method="hybrid", dataset=dataset, num_samples=s.num_samples
                    )
                    peer = OVStableDiffusionPipeline.from_pretrained(
                        str(self.model), export=True, quantization_config=config, local_files_only=True
                    )
                    peer.save_pretrained(tmp)
                else:  # the path of `optimum-cli export openvino --quant-mode int8`
                    peer = OVStableDiffusionPipeline.from_pretrained(
                        str(self.model), export=True, compile=False, local_files_only=True
                    )
                    config = OVQuantizationConfig(bits=8, dataset=dataset, num_samples=s.num_samples)
                    OVQuantizer(peer).quantize(
                        ov_config=OVConfig(quantization_config=config), save_directory=tmp
                    )
                del peer

        return self.folder(name, ("calibration_prompts", "num_samples"), build)


def _bf16_missing() -> str | None:
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return None
    return (
        f"this CPU's OpenVINO plugin reports no BF16 capability (OPTIMIZATION_CAPABILITIES={capabilities}); "
        "a bf16 hint would silently run f32"
    )


def check_qat_model(path: str | Path, settings: BuildSettings) -> Path:
    """Resolve a QAT folder and check that it is an exported pipeline of the benchmark's size."""

    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        raise ModelNotFoundError(
            f"qat_model {folder} does not exist; pass a folder exported from a QAT UNet."
        )
    read_model_index(folder)
    if not (folder / "unet" / "openvino_model.xml").is_file():
        raise ModelNotFoundError(
            f"qat_model {folder} has no unet/openvino_model.xml; export the QAT UNet with "
            "sd_ovopt.export_pipeline(..., unet=qat_unet) first."
        )
    meta = read_metadata(folder)
    if meta is not None and (meta.height, meta.width) != (settings.height, settings.width):
        raise ShapeMismatchError(
            f"qat_model {folder} was exported for {meta.height}x{meta.width}, the benchmark runs "
            f"{settings.height}x{settings.width}; pass height=/width= (CLI: --height/--width) to match."
        )
    return folder


def build_variants(
    model: str | Path,
    work_dir: str | Path,
    names: Sequence[str],
    settings: BuildSettings,
    *,
    qat_model: str | Path | None = None,
    rebuild: bool = False,
    show_progress: bool = True,
) -> list[BuiltVariant | Unavailable]:
    """Build (or reuse) the folders of ``names`` from the diffusers folder ``model`` under ``work_dir``.

    ``ov-bf16`` is skipped where OpenVINO's CPU plugin lacks BF16; a peer that cannot be built (e.g.
    optimum-intel refuses the model) is recorded as failed with the reason, not raised.
    """
    model = Path(model).expanduser().resolve()
    work = Path(work_dir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    builder = _Builder(
        model,
        work,
        settings,
        rebuild=rebuild,
        progress=show_progress,
        qat_model=None if qat_model is None else check_qat_model(qat_model, settings),
    )
    out: list[BuiltVariant | Unavailable] = []
    for name in resolve_variants(names, qat_model=qat_model):
        spec = _REGISTRY[name]
        reason = spec.unavailable()
        if reason is not None:
            out.append(Unavailable(name, "skipped", reason))
            continue
        try:
            path, build_s, reused = spec.build(builder)
        except Exception as exc:
            if spec.runtime != "optimum":
                raise
            # third-party code: record why, keep the other variants
            logger.warning("the optimum-intel peer %s could not be built: %s", name, exc)
            out.append(Unavailable(name, "failed", f"optimum-intel: {type(exc).__name__}: {exc}"))
            continue
        out.append(BuiltVariant(name, spec.runtime, path, spec.precision(settings), build_s, reused))
    return out


def _load_torch(variant: BuiltVariant, **_: Any) -> Any:
    pipe = load_sd_pipeline(variant.path)
    if pipe.unet.dtype != torch.float32:  # e.g. a folder saved in float16
        pipe = pipe.to(dtype=torch.float32)
    return pipe


def _load_sd_ovopt(variant: BuiltVariant, **_: Any) -> Any:
    return SdOvOptPipeline.from_pretrained(variant.path, precision=variant.precision or "f32")


def _load_optimum(variant: BuiltVariant, *, height: int, width: int, guidance_scale: float) -> Any:
    hint = precision_hint(variant.precision)
    with quiet_safety_checker_warning():  # a local folder: no hub look-ups
        pipe = OVStableDiffusionPipeline.from_pretrained(
            str(variant.path), ov_config=hint, compile=False, local_files_only=True
        )
    # optimum-intel's reshape doubles the UNet batch for guidance; without guidance only the image size
    # is made static (its public API cannot fix a UNet batch of 1)
    images = 1 if guidance_scale > 1 else -1
    pipe.reshape(batch_size=images, height=height, width=width, num_images_per_prompt=images)
    pipe.compile()
    return pipe


def _load_genai(variant: BuiltVariant, *, height: int, width: int, guidance_scale: float, **_: Any) -> Any:
    """GenAI's pipeline reshaped static to the benchmark's image, as its users do for speed."""
    return GenAIPipeline(
        variant.path, precision=variant.precision, height=height, width=width, guidance_scale=guidance_scale
    )


_LOADERS: dict[str, Callable[..., Any]] = {
    "torch": _load_torch,
    "sd_ovopt": _load_sd_ovopt,
    "optimum": _load_optimum,
    "genai": _load_genai,
}


def load_variant(variant: BuiltVariant, *, height: int, width: int, guidance_scale: float = 7.5) -> Any:
    """Load a built variant as a pipeline that generates at ``height`` x ``width``, progress bars off.

    The peer's folder has dynamic shapes; it is reshaped to the benchmark's static shape, as its users do
    for speed (optimum-intel's static UNet batch assumes guidance, so without guidance it stays dynamic).
    """
    if variant.runtime not in _LOADERS:
        raise InvalidConfigError(f"runtime={variant.runtime!r}; use one of {list(_LOADERS)}.")
    pipe = _LOADERS[variant.runtime](variant, height=height, width=width, guidance_scale=guidance_scale)
    scheduler = _REGISTRY[variant.name].scheduler if variant.name in _REGISTRY else None
    if scheduler is not None:
        pipe.scheduler = pipeline_scheduler(scheduler, pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _torch_weights_bytes(folder: Path) -> int:
    """Bytes of the weight files diffusers loads by default: safetensors if any, else .bin, no variants."""
    for suffix in (".safetensors", ".bin"):
        # "name.suffix" or sharded "name-00001-of-00002.suffix"; variants such as "name.fp16.suffix" excluded
        files = [f for f in folder.glob(f"*{suffix}") if f.name.count(".") == 1]
        if files:
            return sum(f.stat().st_size for f in files)
    return 0


def disk_size(variant: BuiltVariant) -> tuple[int, int]:
    """Bytes on disk of the variant's UNet weights and of all its model weights (tokenizer etc. excluded)."""
    if variant.runtime == "torch":
        parts = ("unet", "text_encoder", "vae")
        sizes = {p: _torch_weights_bytes(variant.path / p) for p in parts}
    else:
        parts = ("unet", "text_encoder", "vae_decoder", "vae_encoder")
        sizes = {p: sum(f.stat().st_size for f in (variant.path / p).glob("openvino_model.*")) for p in parts}
    return sizes["unet"], sum(sizes.values())


def _source(builder: _Builder) -> tuple[Path, float | None, bool]:
    return builder.model, None, False


def _qat(builder: _Builder) -> tuple[Path, float | None, bool]:
    if builder.qat_model is None:
        raise InvalidConfigError("variant 'ov-int8-qat' needs qat_model= (CLI: --qat-model DIR).")
    return builder.qat_model, None, False


for _spec in (
    VariantSpec(REFERENCE, "PyTorch FP32 (diffusers)", "torch", _source, precision=lambda s: None),
    VariantSpec(
        "ov-f32", "OpenVINO FP32 (f32 pinned)", "sd_ovopt", _Builder.ov_f32, precision=lambda s: "f32"
    ),
    VariantSpec(
        "ov-bf16",
        "OpenVINO bf16",
        "sd_ovopt",
        _Builder.ov_f32,
        precision=lambda s: "bf16",
        unavailable=_bf16_missing,
    ),
    VariantSpec(
        "ov-int8-ptq", "OpenVINO INT8 (PTQ)", "sd_ovopt", lambda b: b.int8("ov-int8-ptq", tome=False)
    ),
    VariantSpec("ov-int8-qat", "OpenVINO INT8 (QAT)", "sd_ovopt", _qat, default=False),
    VariantSpec(
        "ov-tome-int8", "OpenVINO ToMe + INT8 (PTQ)", "sd_ovopt", lambda b: b.int8("ov-tome-int8", tome=True)
    ),
    VariantSpec(PEER, "optimum-intel 8-bit hybrid (peer)", "optimum", lambda b: b.peer(PEER)),
    VariantSpec(PEER_FULL, "optimum-intel full INT8 (peer)", "optimum", lambda b: b.peer(PEER_FULL)),
):
    register_variant(_spec)


# Our best folder (the ov-tome-int8 build, reused) deployed torch-free in OpenVINO GenAI's C++ pipeline.
register_variant(
    VariantSpec(
        "genai-tome-int8",
        "OpenVINO GenAI: ToMe + INT8 (C++ pipeline, no torch)",
        "genai",
        lambda b: b.int8("ov-tome-int8", tome=True),
        unavailable=genai_missing,
    )
)


# Step caching (DeepCache, interval 3, branch 0): the folder holds the full and the shallow UNet IRs and
# SdOvOptPipeline runs the schedule. Compare ov-deepcache with ov-f32 and ov-tome-int8-deepcache with
# ov-tome-int8 (same precision, uncached). The UNet-step timing times the full IR (a refresh step).
_DEEPCACHE = {"interval": 3, "branch": 0}


def _deepcache_build(builder: _Builder, name: str, *, int8: bool) -> tuple[Path, float, bool]:
    tome_int8 = builder.int8_methods(tome=True) if int8 else []
    return builder.recipe(name, [*tome_int8, DeepCacheConfig(**_DEEPCACHE)])


def _shallow_ir(pipe: Any, variant: BuiltVariant) -> dict[str, Any]:
    """The shallow UNet IR of a step-caching folder, as the pipeline compiled it (its shape and precision)."""

    shallow = pipe.method_part("step_caching")
    shallow.compile()
    return {"shallow": shallow.request}


def _cached_calls(pipe: Any, steps: int) -> dict[str, int]:
    """Full and shallow UNet calls of a ``steps``-step call, counted on the pipeline's own scheduler by the
    step tracker the pipeline runs."""

    timesteps = _timesteps(pipe, steps)
    tracker = StepTracker(pipe.method_config("step_caching"))
    full = sum(bool(tracker.refresh(t, timesteps)) for t in timesteps)
    return {"unet": full, "shallow": len(timesteps) - full}


def _deepcache_spec(
    name: str, label: str, *, folder: str, int8: bool, baseline: str, **precision: Any
) -> VariantSpec:
    """A step-caching variant: built into ``folder``, timed with its shallow IR, compared with ``baseline``."""
    return VariantSpec(
        name,
        label,
        "sd_ovopt",
        lambda b: _deepcache_build(b, folder, int8=int8),
        default=False,
        unet_irs=_shallow_ir,
        unet_calls=_cached_calls,
        baseline=baseline,
        **precision,
    )


def _auto(settings: BuildSettings) -> str:
    """sd_ovopt's own default precision (``"auto"``) resolved on this CPU, whatever the settings ask."""

    return resolve_precision("auto")


for _spec in (
    _deepcache_spec(
        "ov-deepcache",
        "OpenVINO FP32 + step caching (DeepCache, interval 3)",
        folder="ov-deepcache",
        int8=False,
        baseline="ov-f32",
        precision=lambda s: "f32",
    ),
    _deepcache_spec(
        "ov-tome-int8-deepcache",
        "OpenVINO ToMe + INT8 + step caching (DeepCache, interval 3)",
        folder="ov-tome-int8-deepcache",
        int8=True,
        baseline="ov-tome-int8",
    ),
    VariantSpec(
        "ov-fp32-auto",
        "OpenVINO FP32 folder, sd_ovopt default precision",
        "sd_ovopt",
        _Builder.ov_f32,
        precision=_auto,
        default=False,
    ),
    _deepcache_spec(
        "ov-deepcache-auto",
        "OpenVINO FP32 folder + step caching (interval 3), sd_ovopt default precision",
        folder="ov-deepcache",
        int8=False,
        baseline="ov-fp32-auto",
        precision=_auto,
    ),
):
    register_variant(_spec)


# Few-step rows: each OpenVINO folder again with the tiny autoencoder (the settings' tiny_vae, e.g. TAESD)
# in place of the full VAE, and PyTorch FP32 as the many-step workflow runs it (PNDM, guidance 7.5), timed
# at the run's steps; its 50-step call is extrapolated from its parts (``pipeline_50_steps_s``).
def _tiny_vae_spec(
    name: str,
    label: str,
    base: str,
    methods: Callable[[_Builder], list[Any]],
    *,
    decoder_int8: bool = False,
    **precision: Any,
) -> VariantSpec:
    """The recipe's folder ``base`` (built with ``methods(builder)``) with the tiny autoencoder swapped in
    (its decoder in INT8 with ``decoder_int8``)."""
    folder = f"{base}-taesd{'-int8' if decoder_int8 else ''}"
    return VariantSpec(
        name,
        label,
        "sd_ovopt",
        lambda b: b.with_tiny_vae(folder, base, methods(b), decoder_int8=decoder_int8),
        default=False,
        **precision,
    )


for _spec in (
    _tiny_vae_spec(
        "ov-fp32-auto-taesd",
        "OpenVINO FP32 folder + tiny decoder (TAESD), sd_ovopt default precision",
        "ov-f32",
        lambda b: [],
        precision=_auto,
    ),
    _tiny_vae_spec(
        "ov-int8-ptq-taesd",
        "OpenVINO INT8 (PTQ) + tiny decoder (TAESD)",
        "ov-int8-ptq",
        lambda b: b.int8_methods(tome=False),
    ),
    _tiny_vae_spec(
        "ov-tome-int8-taesd",
        "OpenVINO ToMe + INT8 (PTQ) + tiny decoder (TAESD)",
        "ov-tome-int8",
        lambda b: b.int8_methods(tome=True),
    ),
    _tiny_vae_spec(
        "ov-tome-int8-taesd-int8",
        "OpenVINO ToMe + INT8 (PTQ) + tiny decoder (TAESD) in INT8",
        "ov-tome-int8",
        lambda b: b.int8_methods(tome=True),
        decoder_int8=True,
    ),
    _tiny_vae_spec(
        "ov-todo-int8-taesd-int8",
        "OpenVINO token downsampling (keys/values 1 in 4, two top levels) + INT8 (PTQ) + tiny decoder in INT8",
        "ov-todo-int8",
        lambda b: b.downsampling_int8_methods(),
        decoder_int8=True,
    ),
    VariantSpec(
        "pytorch-fp32-cfg",
        "PyTorch FP32 (diffusers), PNDM + guidance 7.5: the many-step workflow",
        "torch",
        _source,
        precision=lambda s: None,
        default=False,
        call=lambda call: replace(call, guidance_scale=7.5),
        scheduler="pndm",
    ),
):
    register_variant(_spec)


def variant_spec(name: str) -> VariantSpec:
    """The registration of variant ``name``."""
    if name not in _REGISTRY:
        raise InvalidConfigError(f"unknown variant {name!r}; choose from {list(_REGISTRY)}.")
    return _REGISTRY[name]


def variant_labels() -> dict[str, str]:
    """Every registered variant's name and the label its table shows, in registration order."""
    return {name: spec.label for name, spec in _REGISTRY.items()}


def default_variants() -> tuple[str, ...]:
    """The variants run when no list is given (``ov-int8-qat`` joins when a QAT folder is given)."""
    return tuple(name for name, spec in _REGISTRY.items() if spec.default)


#: Every variant the harness knows, with the label its table shows.
VARIANTS: dict[str, str] = variant_labels()
#: Run when no list is given; ``ov-int8-qat`` joins when a QAT folder is given.
DEFAULT_VARIANTS: tuple[str, ...] = default_variants()
