"""The one recipe: ToMe, then calibration, then INT8 quantization, then export.

Every caller (``sd-ovopt quantize``, the benchmark's INT8 variants, QAT's post-training start, the examples)
goes through :func:`optimize_pipeline` or, when it needs the quantized UNet itself,
:func:`quantize_pipeline_unet`. The order is fixed here once:

1. ToMe is applied to the UNet that will be quantized (the merge is part of the graph NNCF sees).
2. Calibration inputs are recorded along the sampling trajectory of that merged UNet, i.e. the inputs the
   deployed model will really see (on the reference model this measures the same as recording along the
   float UNet's sampling: docs/results.md, "Calibration order").
3. ``quantize_unet`` inserts INT8 quantizers and sets their ranges on those inputs.
4. ``export_pipeline`` writes the OpenVINO folder with the INT8 weights compressed.

With step caching (``deepcache=``), step 2 records along the *cached* sampling of the merged UNet (the
cached feature of every cached step kept), step 3 replays each call in its own mode (refresh steps through
the full UNet, cached steps through the shallow branch with their feature), and step 4 writes the two UNet
IRs (:mod:`sd_ovopt.deepcache`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_ovopt._loading import check_requested_size, check_steps, load_for_output
from sd_ovopt._validation import check_float

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from sd_ovopt.deepcache.config import DeepCacheConfig
    from sd_ovopt.quantization.config import QuantizationConfig
    from sd_ovopt.tome.config import ToMeConfig

__all__ = ["DEFAULT_CALIBRATION_PROMPTS", "optimize_pipeline", "quantize_pipeline_unet"]

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


def quantize_pipeline_unet(
    pipeline: StableDiffusionPipeline,
    *,
    tome: ToMeConfig | None = None,
    quantization: QuantizationConfig | None = None,
    calibration: Sequence[Any] | None = None,
    calibration_prompts: Sequence[str] | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    show_progress: bool = True,
    deepcache: DeepCacheConfig | None = None,
) -> torch.nn.Module:
    """Return an INT8 copy of ``pipeline.unet`` (ToMe merged first when given); the pipeline is unchanged.

    Args:
        pipeline: A PyTorch ``StableDiffusionPipeline``.
        tome: Token merging to bake into the quantized graph.
        quantization: NNCF settings (default ``QuantizationConfig()``).
        calibration: UNet inputs to calibrate on; recorded here when not given.
        calibration_prompts: Prompts to record calibration along (default: :data:`DEFAULT_CALIBRATION_PROMPTS`).
        num_inference_steps: Denoising steps of each calibration run.
        guidance_scale: Guidance of the calibration runs (> 1 records the guidance batch).
        height: Image height of the calibration runs (default: the pipeline's).
        width: Image width of the calibration runs.
        show_progress: Show a progress bar while recording.
        deepcache: Step caching: calibrate along the cached sampling, each call in its own mode; the result
            carries the step-caching patch for ``export_pipeline``. Given ``calibration`` must then come
            from :func:`sd_ovopt.deepcache.collect_deepcache_calibration`.

    Example:
        >>> from sd_ovopt.recipe import quantize_pipeline_unet
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> qunet = quantize_pipeline_unet(tiny_pipeline(), num_inference_steps=2)  # doctest: +SKIP
    """
    from sd_ovopt.quantization.config import QuantizationConfig
    from sd_ovopt.tome.patch import apply_tome

    # 1. The student: a copy of the UNet with ToMe merged in (the pipeline keeps its own)
    quantization = quantization or QuantizationConfig()
    student = copy.deepcopy(pipeline.unet)
    if tome is not None:
        apply_tome(student, tome)
    # 2. Calibration along the student's own sampling (the cached sampling with step caching)
    if calibration is None:
        calibration = _record_calibration(
            pipeline,
            student,
            quantization,
            deepcache,
            calibration_prompts,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            show_progress=show_progress,
        )
    # 3. INT8 quantization on those inputs (with step caching, each recorded call in its own mode)
    return _quantize(student, calibration, quantization, deepcache)


@contextlib.contextmanager
def _unet_swapped(pipe: Any, unet: Any) -> Iterator[Any]:
    original = pipe.unet
    pipe.unet = unet
    try:
        yield pipe
    finally:
        pipe.unet = original


def _record_calibration(
    pipeline: Any,
    student: torch.nn.Module,
    quantization: QuantizationConfig,
    deepcache: DeepCacheConfig | None,
    prompts: Sequence[str] | None,
    *,
    num_inference_steps: int,
    **call: Any,
) -> list[dict[str, Any]]:
    """UNet inputs recorded while ``pipeline`` samples with ``student``: the prompts (default
    :data:`DEFAULT_CALIBRATION_PROMPTS`) cycled, new noise each pass, until the quantizer's subset is full."""
    from sd_ovopt.quantization.calibration import collect_calibration

    check_steps(num_inference_steps)
    prompts = list(prompts or DEFAULT_CALIBRATION_PROMPTS)
    passes = -(-quantization.subset_size // (len(prompts) * num_inference_steps))
    collect: Any = collect_calibration
    if deepcache is not None:
        from sd_ovopt.deepcache.calibration import collect_deepcache_calibration

        collect = functools.partial(collect_deepcache_calibration, config=deepcache)
    with _unet_swapped(pipeline, student):
        return collect(
            pipeline,
            prompts * passes,
            num_inference_steps=num_inference_steps,
            max_samples=quantization.subset_size,
            **call,
        )


def _quantize(
    student: torch.nn.Module,
    calibration: Sequence[Any],
    quantization: QuantizationConfig,
    deepcache: DeepCacheConfig | None,
) -> torch.nn.Module:
    from sd_ovopt.quantization.ptq import quantize_unet

    if deepcache is None:
        return quantize_unet(student, calibration, quantization)
    from sd_ovopt.deepcache.calibration import quantize_deepcache_unet

    return quantize_deepcache_unet(student, calibration, deepcache, quantization)


def optimize_pipeline(
    pipeline_or_path: StableDiffusionPipeline | str | Path,
    output_dir: str | Path,
    *,
    tome: ToMeConfig | None = None,
    quantization: QuantizationConfig | None = None,
    calibration: Sequence[Any] | None = None,
    calibration_prompts: Sequence[str] | None = None,
    calibration_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    compress_weights: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
    deepcache: DeepCacheConfig | None = None,
) -> Path:
    """Export ``pipeline_or_path`` to an OpenVINO folder with ToMe and/or INT8 applied; return the folder.

    With neither ``tome`` nor ``quantization`` this is a plain FP32 export. The pipeline passed in is left
    as it was (its UNet is copied before merging and quantizing).

    Args:
        pipeline_or_path: A ``StableDiffusionPipeline`` or the local folder of one.
        output_dir: Where to write (atomically; an existing non-empty folder needs ``overwrite``).
        tome: Token merging baked into the exported UNet.
        quantization: INT8 post-training quantization of the UNet (None: float UNet).
        calibration: UNet inputs to calibrate on (recorded along the merged UNet's sampling when not given).
        calibration_prompts: Prompts to record calibration along (default: :data:`DEFAULT_CALIBRATION_PROMPTS`).
        calibration_steps: Denoising steps of each calibration run.
        guidance_scale: Guidance the folder is exported (and calibrated) for: > 1 doubles the UNet batch.
        height: Image height baked into the folder (default: the UNet's native size).
        width: Image width baked into the folder.
        compress_weights: Store the INT8 UNet's weights as int8 (4x smaller).
        overwrite: Replace an existing output folder.
        show_progress: Show progress bars.
        deepcache: Step caching (DeepCache): the folder gets the full and the shallow UNet IRs, and INT8
            calibration follows the cached sampling (see :mod:`sd_ovopt.deepcache`).

    Example:
        >>> from sd_ovopt import QuantizationConfig, ToMeConfig, optimize_pipeline
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> optimize_pipeline(
        ...     tiny_pipeline(), "tiny-int8", tome=ToMeConfig(ratio=0.4), quantization=QuantizationConfig()
        ... )  # doctest: +SKIP
    """
    recipe = _Recipe(
        pipeline_or_path=pipeline_or_path,
        output_dir=output_dir,
        tome=tome,
        quantization=quantization,
        calibration=calibration,
        calibration_prompts=calibration_prompts,
        calibration_steps=calibration_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        compress_weights=compress_weights,
        overwrite=overwrite,
        show_progress=show_progress,
        deepcache=deepcache,
    )
    return recipe.run()


@dataclass(frozen=True)
class _Recipe:
    """One call of :func:`optimize_pipeline`: its arguments, and its stages in order (:meth:`run`)."""

    pipeline_or_path: StableDiffusionPipeline | str | Path
    output_dir: str | Path
    tome: ToMeConfig | None
    quantization: QuantizationConfig | None
    calibration: Sequence[Any] | None
    calibration_prompts: Sequence[str] | None
    calibration_steps: int
    guidance_scale: float
    height: int | None
    width: int | None
    compress_weights: bool
    overwrite: bool
    show_progress: bool
    deepcache: DeepCacheConfig | None

    def run(self) -> Path:
        from sd_ovopt.export.pipeline import export_pipeline

        # 1. Check the request, load the pipeline; the output folder is refused before the slow part
        self.check()
        pipe, _ = load_for_output(self.pipeline_or_path, self.output_dir, overwrite=self.overwrite)
        # 2. The UNet to export: INT8 (ToMe merged first), float with ToMe merged, or the pipeline's own
        unet = self.merged_unet(pipe) if self.quantization is None else self.quantized_unet(pipe)
        # 3. The OpenVINO folder at the calibrated shape; an INT8 UNet's weights stored as int8
        return export_pipeline(
            pipe,
            self.output_dir,
            unet=unet,
            deepcache=self.deepcache,
            compress_weights=self.compress_weights and self.quantization is not None,
            height=self.height,
            width=self.width,
            # > 1: two rows per image, unless the UNet takes its guidance as an input (LCM)
            classifier_free_guidance=None if self.guidance_scale > 1 else False,
            overwrite=self.overwrite,
            show_progress=self.show_progress,
        )

    def check(self) -> None:
        """What can be checked before the model loads (the VAE's own size factor is checked after)."""
        check_float("guidance_scale", self.guidance_scale, minimum=0)
        check_steps(self.calibration_steps, "calibration_steps")
        check_requested_size(self.height, self.width)

    def merged_unet(self, pipe: Any) -> torch.nn.Module | None:
        """A copy of the float UNet with ToMe merged in, or ``None`` (export the pipeline's own)."""
        if self.tome is None:
            return None
        from sd_ovopt.tome.patch import apply_tome

        return apply_tome(copy.deepcopy(pipe.unet), self.tome)

    def quantized_unet(self, pipe: Any) -> torch.nn.Module:
        return quantize_pipeline_unet(
            pipe,
            tome=self.tome,
            quantization=self.quantization,
            calibration=self.calibration,
            calibration_prompts=self.calibration_prompts,
            num_inference_steps=self.calibration_steps,
            guidance_scale=self.guidance_scale,
            height=self.height,
            width=self.width,
            show_progress=self.show_progress,
            deepcache=self.deepcache,
        )
