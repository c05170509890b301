"""The one recipe: the requested methods applied to a copy of the UNet in rank order, then export.

Every caller (``sd-ovopt quantize``, the benchmark's variants, QAT's post-training start, the examples) goes
through :func:`optimize_pipeline` or, when it needs the prepared UNet itself, :func:`prepare_unet`. The
recipe names no method; the order is the methods' ranks (:mod:`sd_ovopt.methods`), so with the methods that
ship:

1. ToMe is applied to the copy that will be quantized (the merge is part of the graph NNCF sees).
2. Step caching makes calibration follow the cached sampling (the cached feature of every cached step
   kept) and quantization replay each call in its own mode.
3. INT8 records calibration inputs along the sampling of that prepared UNet (the inputs the deployed model
   will see) and quantizes it with NNCF.
4. ``export_pipeline`` writes the OpenVINO folder (the INT8 weights stored as int8).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_ovopt._fs import atomic_output_dir
from sd_ovopt._loading import check_requested_size, check_steps, load_for_output, pipeline_with
from sd_ovopt._prompts import DEFAULT_CALIBRATION_PROMPTS
from sd_ovopt._schedulers import check_scheduler_name, pipeline_scheduler
from sd_ovopt._validation import check_float
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.export.pipeline import export_pipeline
from sd_ovopt.methods import RecipeSettings, methods_in_order
from sd_ovopt.recipes.tiny_decoder import replace_vae_int8
from sd_ovopt.vae import pipeline_vae, read_vae
from sd_ovopt.vae.int8 import DECODER_CALIBRATION_PROMPTS, check_int8_decoder_vae

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

__all__ = ["DEFAULT_CALIBRATION_PROMPTS", "optimize_pipeline", "prepare_unet"]


def prepare_unet(
    pipeline: StableDiffusionPipeline,
    methods: Sequence[Any],
    *,
    calibration: Sequence[Any] | None = None,
    calibration_prompts: Sequence[str] | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    show_progress: bool = True,
) -> torch.nn.Module:
    """The pipeline's UNet with ``methods`` applied in rank order (INT8 calibrated along the prepared UNet's
    own sampling); the pipeline is unchanged (a method that changes the UNet works on a copy).

    Args:
        pipeline: A PyTorch ``StableDiffusionPipeline``.
        methods: Configs of registered methods, e.g. ``[ToMeConfig(ratio=0.4), QuantizationConfig()]``.
        calibration: UNet inputs to calibrate on; recorded here when not given (a method that changes the
            sampling says what they must hold, e.g. :func:`sd_ovopt.deepcache.collect_deepcache_calibration`).
        calibration_prompts: Prompts to record calibration along (default: :data:`DEFAULT_CALIBRATION_PROMPTS`).
        num_inference_steps: Denoising steps of each calibration run.
        guidance_scale: Guidance of the calibration runs (> 1 records the guidance batch).
        height: Image height of the calibration runs (default: the pipeline's).
        width: Image width of the calibration runs.
        show_progress: Show a progress bar while recording.

    Example:
        >>> from sd_ovopt import QuantizationConfig
        >>> from sd_ovopt.recipes import prepare_unet
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> qunet = prepare_unet(tiny_pipeline(), [QuantizationConfig()], num_inference_steps=2)  # doctest: +SKIP
    """
    check_steps(num_inference_steps)
    call = {
        "guidance_scale": guidance_scale,
        "height": height,
        "width": width,
        "show_progress": show_progress,
    }
    record = _recorder(pipeline, calibration_prompts, num_inference_steps, call)
    settings = RecipeSettings(record=record, calibration=calibration)
    unet = pipeline.unet
    for method, config in methods_in_order(methods):
        unet = method.prepare(unet, config, settings)
    return unet


@contextlib.contextmanager
def _unet_swapped(pipe: Any, unet: Any) -> Iterator[Any]:
    original = pipe.unet
    pipe.unet = unet
    try:
        yield pipe
    finally:
        pipe.unet = original


def _recorder(
    pipeline: Any, prompts: Sequence[str] | None, num_inference_steps: int, call: dict[str, Any]
) -> Callable[[Callable[..., Sequence[Any]], Any, int], Sequence[Any]]:
    """The recipe's calibration recorder (:class:`sd_ovopt.methods.RecipeSettings`): ``collector`` run
    while ``pipeline`` samples with ``unet``, the prompts (default :data:`DEFAULT_CALIBRATION_PROMPTS`)
    cycled with new noise each pass until ``max_samples`` inputs are recorded."""
    prompts = list(prompts or DEFAULT_CALIBRATION_PROMPTS)

    def record(collector: Callable[..., Sequence[Any]], unet: Any, max_samples: int) -> Sequence[Any]:
        passes = -(-max_samples // (len(prompts) * num_inference_steps))
        with _unet_swapped(pipeline, unet):
            return collector(
                pipeline,
                prompts * passes,
                num_inference_steps=num_inference_steps,
                max_samples=max_samples,
                **call,
            )

    return record


def optimize_pipeline(
    pipeline_or_path: StableDiffusionPipeline | str | Path,
    output_dir: str | Path,
    *,
    methods: Sequence[Any] = (),
    calibration: Sequence[Any] | None = None,
    calibration_prompts: Sequence[str] | None = None,
    calibration_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    vae: Any = None,
    vae_int8: bool = False,
    scheduler: Any = None,
    compress_weights: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Export ``pipeline_or_path`` to an OpenVINO folder with ``methods`` applied; return the folder.

    With no methods this is a plain FP32 export. The pipeline passed in is left as it was.

    Args:
        pipeline_or_path: A ``StableDiffusionPipeline`` or the local folder of one.
        output_dir: Where to write (atomically; an existing non-empty folder needs ``overwrite``).
        methods: Configs of registered methods (:mod:`sd_ovopt.methods`), applied in rank order: e.g.
            ``[ToMeConfig(ratio=0.4), QuantizationConfig()]`` for ToMe then INT8, or ``[DeepCacheConfig()]``.
        calibration: UNet inputs to calibrate on (recorded along the prepared UNet's sampling when not given).
        calibration_prompts: Prompts to record calibration along (default: :data:`DEFAULT_CALIBRATION_PROMPTS`).
        calibration_steps: Denoising steps of each calibration run.
        guidance_scale: Guidance the folder is exported (and calibrated) for: > 1 doubles the UNet batch.
        height: Image height baked into the folder (default: the UNet's native size).
        width: Image width baked into the folder.
        vae: An autoencoder to export instead of the pipeline's: an ``AutoencoderTiny`` (TAESD) or the local
            folder of one (see :func:`sd_ovopt.export_pipeline`). Checked before calibration starts.
        vae_int8: Quantize the tiny autoencoder's decoder to INT8 as well (:func:`sd_ovopt.replace_vae_int8`:
            calibrated on the exported folder's own final latents, at
            ``calibration_steps`` and this guidance, on the first 8 calibration prompts). Needs an
            ``AutoencoderTiny``.
        scheduler: The scheduler to calibrate along and write: a diffusers scheduler or a name of
            :data:`sd_ovopt.SCHEDULERS` (``"lcm"`` for LCM-LoRA, ``"tcd"`` for TCD and Hyper-SD LoRAs).
        compress_weights: Store the text encoder and VAE weights as int8 too when the UNet is quantized.
        overwrite: Replace an existing output folder.
        show_progress: Show progress bars.

    Example:
        >>> from sd_ovopt import QuantizationConfig, ToMeConfig, optimize_pipeline
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> optimize_pipeline(
        ...     tiny_pipeline(), "tiny-int8", methods=[ToMeConfig(ratio=0.4), QuantizationConfig()]
        ... )  # doctest: +SKIP
    """
    recipe = _Recipe(
        pipeline_or_path=pipeline_or_path,
        output_dir=output_dir,
        methods=tuple(methods) if isinstance(methods, (list, tuple)) else methods,
        calibration=calibration,
        calibration_prompts=calibration_prompts,
        calibration_steps=calibration_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        vae=vae,
        vae_int8=vae_int8,
        scheduler=scheduler,
        compress_weights=compress_weights,
        overwrite=overwrite,
        show_progress=show_progress,
    )
    return recipe.run()


def _first(prompts: Sequence[str] | None, count: int) -> list[str] | None:
    """The first ``count`` of ``prompts`` (``None``, the default set, stays ``None``)."""
    return None if prompts is None else list(prompts)[:count]


@dataclass(frozen=True)
class _Recipe:
    """One call of :func:`optimize_pipeline`: its arguments, and its stages in order (:meth:`run`)."""

    pipeline_or_path: StableDiffusionPipeline | str | Path
    output_dir: str | Path
    methods: Sequence[Any]
    calibration: Sequence[Any] | None
    calibration_prompts: Sequence[str] | None
    calibration_steps: int
    guidance_scale: float
    height: int | None
    width: int | None
    vae: Any
    vae_int8: bool
    scheduler: Any
    compress_weights: bool
    overwrite: bool
    show_progress: bool

    def run(self) -> Path:
        # 1. Check the request, load the pipeline; the output folder is refused before the slow part
        self.check()
        vae = read_vae(self.vae)
        pipe, _ = load_for_output(self.pipeline_or_path, self.output_dir, overwrite=self.overwrite)
        pipe = pipeline_with(
            pipe, vae=pipeline_vae(vae, pipe), scheduler=pipeline_scheduler(self.scheduler, pipe)
        )
        if self.vae_int8:
            fix = "Pass vae= an AutoencoderTiny (CLI: --vae-tiny DIR), or leave vae_int8 off."
            check_int8_decoder_vae(pipe.vae, "vae_int8", fix)
        # 2. The UNet to export: each method prepared on it in rank order (INT8 calibrated on its sampling)
        unet = prepare_unet(
            pipe,
            self.methods,
            calibration=self.calibration,
            calibration_prompts=self.calibration_prompts,
            num_inference_steps=self.calibration_steps,
            guidance_scale=self.guidance_scale,
            height=self.height,
            width=self.width,
            show_progress=self.show_progress,
        )
        # 3. The OpenVINO folder at the calibrated shape, with every requested method recorded
        if not self.vae_int8:
            return self.export(pipe, unet, self.output_dir, overwrite=self.overwrite)
        # 4. With the tiny decoder in INT8: calibrated on that folder's own latents, written in one move
        with atomic_output_dir(self.output_dir, overwrite=self.overwrite) as tmp:
            float_vae = self.export(pipe, unet, tmp / "float-decoder", overwrite=False)
            int8_vae = replace_vae_int8(
                float_vae,
                pipe.vae,
                tmp / "int8-decoder",
                calibration_prompts=_first(self.calibration_prompts, DECODER_CALIBRATION_PROMPTS),
                calibration_steps=self.calibration_steps,
                guidance_scale=self.guidance_scale,
            )
            shutil.rmtree(float_vae)  # the int8 copy holds its own links to the files it shares
            for path in int8_vae.iterdir():
                path.rename(tmp / path.name)
            int8_vae.rmdir()
        return Path(self.output_dir).expanduser().resolve()

    def export(self, pipe: Any, unet: Any, output_dir: str | Path, *, overwrite: bool) -> Path:
        """``export_pipeline`` of ``pipe`` with ``unet`` at the recipe's shape and guidance."""
        quantized = any(method.quantizes for method, _ in methods_in_order(self.methods))
        return export_pipeline(
            pipe,
            output_dir,
            unet=unet,
            methods=self.methods,
            compress_weights=self.compress_weights and quantized,
            height=self.height,
            width=self.width,
            # > 1: two rows per image, unless the UNet takes its guidance as an input (LCM)
            classifier_free_guidance=None if self.guidance_scale > 1 else False,
            overwrite=overwrite,
            show_progress=self.show_progress,
        )

    def check(self) -> None:
        """What can be checked before the model loads (the VAE's own size factor is checked after)."""
        methods_in_order(self.methods)  # every config belongs to a registered method
        check_float("guidance_scale", self.guidance_scale, minimum=0)
        check_steps(self.calibration_steps, "calibration_steps")
        check_requested_size(self.height, self.width)
        check_scheduler_name(self.scheduler)
        if not isinstance(self.vae_int8, bool):
            raise InvalidConfigError(f"vae_int8={self.vae_int8!r}; pass True or False.")
