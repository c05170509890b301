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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_ovopt._loading import check_requested_size, check_steps, load_for_output, pipeline_with
from sd_ovopt._schedulers import check_scheduler_name, pipeline_scheduler
from sd_ovopt._validation import check_float
from sd_ovopt.export.pipeline import export_pipeline
from sd_ovopt.methods import RecipeSettings, methods_in_order
from sd_ovopt.vae import pipeline_vae, read_vae

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

__all__ = ["DEFAULT_CALIBRATION_PROMPTS", "optimize_pipeline", "prepare_unet"]

#: Prompts calibration uses when none are given: varied subjects, styles and compositions, so that
#: activation ranges cover what users ask for (none of them is a benchmark prompt).
DEFAULT_CALIBRATION_PROMPTS: tuple[str, ...] = (
    "a photo of a cat sitting on a sofa",
    "a mountain lake at sunset, highly detailed",
    "a bowl of fruit on a wooden table, still life painting",
    "a city street at night in the rain, neon lights",
    "a portrait of an old fisherman, oil painting",
    "an astronaut riding a horse on mars",
    "a red sports car on a coastal road",
    "a cozy living room with a fireplace, interior design",
    "a watercolor painting of a forest in autumn",
    "a futuristic city skyline, digital art",
    "a close-up photo of a dew drop on a leaf",
    "a green square on a white background",
    "a dog running on a beach, golden hour",
    "a medieval castle on a hill, fantasy illustration",
    "a plate of sushi, food photography",
    "a black and white photo of a busy train station",
)


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
        scheduler=scheduler,
        compress_weights=compress_weights,
        overwrite=overwrite,
        show_progress=show_progress,
    )
    return recipe.run()


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
        quantized = any(method.quantizes for method, _ in methods_in_order(self.methods))
        # 3. The OpenVINO folder at the calibrated shape, with every requested method recorded
        return export_pipeline(
            pipe,
            self.output_dir,
            unet=unet,
            methods=self.methods,
            compress_weights=self.compress_weights and quantized,
            height=self.height,
            width=self.width,
            # > 1: two rows per image, unless the UNet takes its guidance as an input (LCM)
            classifier_free_guidance=None if self.guidance_scale > 1 else False,
            overwrite=self.overwrite,
            show_progress=self.show_progress,
        )

    def check(self) -> None:
        """What can be checked before the model loads (the VAE's own size factor is checked after)."""
        methods_in_order(self.methods)  # every config belongs to a registered method
        check_float("guidance_scale", self.guidance_scale, minimum=0)
        check_steps(self.calibration_steps, "calibration_steps")
        check_requested_size(self.height, self.width)
        check_scheduler_name(self.scheduler)
