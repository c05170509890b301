"""``run_benchmark``: build every variant, measure its memory, time it, score its images, write the table."""

from __future__ import annotations

import gc
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sd_ovopt._precision import PRECISIONS, resolve_precision
from sd_ovopt.errors import InvalidConfigError, NotAPipelineError, OutputExistsError
from sd_ovopt.evaluation.fidelity import Judge, image_fidelity, prompt_accuracy
from sd_ovopt.evaluation.results import BenchmarkResult, VariantResult, machine_info
from sd_ovopt.evaluation.timing import Call
from sd_ovopt.evaluation.variants import REFERENCE, BuildSettings, BuiltVariant, Unavailable, variant_labels
from sd_ovopt.recipe import DEFAULT_CALIBRATION_PROMPTS as _RECIPE_PROMPTS

__all__ = ["DEFAULT_CALIBRATION_PROMPTS", "DEFAULT_PROMPTS", "BenchmarkSettings", "run_benchmark"]

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS: tuple[str, ...] = (
    "a red circle on a blue background",
    "a photo of an astronaut riding a horse",
)
#: Calibration prompts (the recipe's default set) differ from the evaluation prompts, so PTQ is not scored
#: on what it saw.
DEFAULT_CALIBRATION_PROMPTS: tuple[str, ...] = _RECIPE_PROMPTS


def _geometry(model: Path) -> tuple[int, int]:
    """The model's native image size and its VAE's scale factor, from the part configs."""
    from sd_ovopt._fs import read_json_object

    fix = "Save the pipeline again with save_pretrained."
    unet = read_json_object(model / "unet" / "config.json", fix=fix)
    vae = read_json_object(model / "vae" / "config.json", fix=fix)
    scale = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
    return int(unet.get("sample_size", 64)) * scale, scale


def _check_model(model: Any) -> Path:
    from sd_ovopt._loading import read_model_index

    if not isinstance(model, (str, Path)):
        raise NotAPipelineError(
            f"model must be the path of a local diffusers folder, got {type(model).__name__}."
        )
    path = Path(model).expanduser().resolve()
    if read_model_index(path).get("_class_name") != "StableDiffusionPipeline":
        raise NotAPipelineError(f"{path} is not a StableDiffusionPipeline folder (see its model_index.json).")
    return path


def _output_dir(output_dir: str | Path) -> Path:
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} is a file; pass a folder (an existing one is reused).")
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass(frozen=True)
class BenchmarkSettings:
    """What one benchmark run compares and how (frozen, validated; ``run_benchmark`` takes it).

    Attributes:
        variants: Names from :data:`sd_ovopt.evaluation.VARIANTS` (default: all but ``ov-int8-qat``,
            which joins when ``qat_model`` is given).
        prompts: Evaluation prompts; every prompt runs with every seed.
        seeds: Seeds of the initial noise (a CPU ``torch.Generator``).
        steps: Denoising steps per image.
        rounds: Timed rounds (each runs every (prompt, seed) pair and one UNet step per variant).
        guidance_scale: Classifier-free guidance (> 1 doubles the UNet batch).
        height: Image height (default: the model's native size).
        width: Image width (default: the model's native size).
        tome_ratio: ToMe ratio of ``ov-tome-int8``.
        qat_model: A folder exported from a quantization-aware-trained UNet (``ov-int8-qat``).
        calibration_prompts: PTQ calibration prompts (ours and the peers').
        num_samples: UNet calls recorded for calibration (ours and the peers').
        calibration_steps: Steps per calibration prompt (default: ``steps``).
        precision: OpenVINO precision of the INT8 variants and the peers (``"f32"``: the non-quantized ops
            match PyTorch; ``"default"``: the CPU's choice, bf16 where supported).
        unet_only: Time UNet steps only: no pipeline calls, images, fidelity or grid.
        unet_error_samples: With ``pytorch-fp32`` among the variants, compare every variant's UNet with
            it on this many inputs recorded along its sampling of the first prompts (0: not measured;
            each costs PyTorch UNet calls, so keep it 0 for full-size models on small machines).
        measure_memory: Measure peak memory (one extra process per variant).
        rebuild: Build every model again even if an equal build exists.
        show_progress: Show progress bars.
    """

    variants: tuple[str, ...] | None = None
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0,)
    steps: int = 20
    rounds: int = 3
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    tome_ratio: float = 0.4
    qat_model: str | Path | None = None
    calibration_prompts: tuple[str, ...] = DEFAULT_CALIBRATION_PROMPTS
    num_samples: int = 200
    calibration_steps: int | None = None
    precision: str = "f32"
    unet_only: bool = False
    unet_error_samples: int = 0
    measure_memory: bool = True
    rebuild: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        from sd_ovopt._validation import check_int
        from sd_ovopt.tome.config import ToMeConfig

        for name in ("prompts", "calibration_prompts"):
            value = getattr(self, name)
            if isinstance(value, str) or not value or not all(isinstance(p, str) and p for p in value):
                raise InvalidConfigError(f"{name}={value!r}; pass a non-empty list of non-empty strings.")
            object.__setattr__(self, name, tuple(value))
        seeds = self.seeds
        if isinstance(seeds, int) or not seeds or not all(isinstance(v, int) and v >= 0 for v in seeds):
            raise InvalidConfigError(f"seeds={seeds!r}; pass a non-empty list of integers >= 0.")
        object.__setattr__(self, "seeds", tuple(seeds))
        if self.variants is not None and not isinstance(self.variants, str):
            object.__setattr__(self, "variants", tuple(self.variants))
        for name in ("steps", "rounds", "num_samples"):
            check_int(name, getattr(self, name), minimum=1)
        if self.calibration_steps is not None:
            check_int("calibration_steps", self.calibration_steps, minimum=1)
        check_int("unet_error_samples", self.unet_error_samples, minimum=0)
        if self.precision not in PRECISIONS:
            raise InvalidConfigError(f"precision={self.precision!r}; use one of {PRECISIONS}.")
        # "auto" (sd_ovopt's default) resolves here, so our variants and the peers get the same hint
        object.__setattr__(self, "precision", resolve_precision(self.precision))
        ToMeConfig(ratio=self.tome_ratio)  # raises for a ratio out of range


def run_benchmark(
    model: str | Path,
    output_dir: str | Path,
    settings: BenchmarkSettings | None = None,
    *,
    judge: Judge | None = None,
    **overrides: Any,
) -> BenchmarkResult:
    """Compare PyTorch FP32, sd_ovopt's OpenVINO variants and optimum-intel's 8-bit paths on one model.

    Builds each variant from the local diffusers folder ``model`` into ``output_dir/models`` (reused on
    the next run when the settings are the same), measures each variant's peak memory in a process of
    its own, then times all variants in one process, interleaved, warm-up excluded: full-pipeline
    latency for ``steps`` steps and the latency of one UNet step. Every image is compared with the
    PyTorch FP32 image of the same prompt and seed (PSNR, SSIM), and judged when ``judge`` is given.
    Writes ``results.json``, ``results.md``, ``chart.png`` and ``grid.png`` into ``output_dir``.

    Args:
        model: Local folder written by ``StableDiffusionPipeline.save_pretrained``.
        output_dir: Where results, images and built models go (an existing folder is reused).
        settings: What to compare and how (default ``BenchmarkSettings()``).
        judge: ``judge(image, prompt) -> bool``; fills the prompt-accuracy column.
        **overrides: Fields of :class:`BenchmarkSettings` to change, e.g. ``steps=2``.

    Returns:
        The :class:`BenchmarkResult` (also written as ``results.json``).

    Example:
        >>> from sd_ovopt.evaluation import run_benchmark
        >>> result = run_benchmark("tiny-sd", "bench", variants=["pytorch-fp32", "ov-f32"], steps=2)  # doctest: +SKIP
        >>> result.speedup("ov-f32", "pytorch-fp32")  # doctest: +SKIP
    """
    from sd_ovopt.evaluation.report import write_report

    plan = _plan(model, output_dir, settings or BenchmarkSettings(), overrides, judge)
    rows, images = _build_and_measure(plan)
    reference = next((n for n in (REFERENCE, "ov-f32") if images.get(n)), None)
    _score(rows, images, reference, plan.pairs, judge)
    result = BenchmarkResult(
        model=str(plan.source),
        settings=_recorded_settings(plan, judge),
        machine=machine_info(),
        reference=reference,
        variants=[rows[n] for n in plan.names],
    )
    write_report(result, images, plan.pairs, plan.out)
    return result


@dataclass(frozen=True)
class _Plan:
    """What one ``run_benchmark`` call measures, resolved from its settings and the model folder."""

    cfg: BenchmarkSettings
    source: Path  # the diffusers folder
    out: Path
    names: list[str]  # the variants, in table order
    build: BuildSettings
    qat_model: Path | None
    call: Call  # the timed pipeline call
    pairs: list[tuple[str, int]]  # every (prompt, seed)


def _plan(
    model: str | Path,
    output_dir: str | Path,
    settings: BenchmarkSettings,
    overrides: dict[str, Any],
    judge: Judge | None,
) -> _Plan:
    """Check the request (settings, judge, model, image size) and resolve what to build and time."""
    import dataclasses

    from sd_ovopt._loading import check_image_size
    from sd_ovopt.evaluation.variants import check_qat_model, resolve_variants

    unknown = set(overrides) - {f.name for f in dataclasses.fields(BenchmarkSettings)}
    if unknown:
        raise InvalidConfigError(
            f"run_benchmark got unknown settings {sorted(unknown)}; see BenchmarkSettings."
        )
    cfg = dataclasses.replace(settings, **overrides)
    if judge is not None and not callable(judge):
        raise InvalidConfigError(
            f"judge must be a callable (image, prompt) -> bool, got {type(judge).__name__}."
        )
    source = _check_model(model)
    names = resolve_variants(cfg.variants, qat_model=cfg.qat_model)
    native, vae_scale = _geometry(source)
    height, width = cfg.height or native, cfg.width or native
    check_image_size(height, width, vae_scale_factor=vae_scale)
    build = BuildSettings(
        height=height,
        width=width,
        guidance_scale=float(cfg.guidance_scale),
        tome_ratio=float(cfg.tome_ratio),
        calibration_prompts=cfg.calibration_prompts,
        num_samples=cfg.num_samples,
        calibration_steps=cfg.steps if cfg.calibration_steps is None else cfg.calibration_steps,
        precision=cfg.precision,
    )
    qat_model = None if cfg.qat_model is None else check_qat_model(cfg.qat_model, build)
    call = Call(steps=cfg.steps, guidance_scale=float(cfg.guidance_scale), height=height, width=width)
    pairs = [(p, s) for p in cfg.prompts for s in cfg.seeds]
    return _Plan(cfg, source, _output_dir(output_dir), list(names), build, qat_model, call, pairs)


def _build_and_measure(plan: _Plan) -> tuple[dict[str, VariantResult], dict[str, list[Any]]]:
    """Build (or reuse) every variant, measure peak memory, time; the table rows and first-round images."""
    from sd_ovopt.evaluation.variants import build_variants

    cfg = plan.cfg
    built = build_variants(
        plan.source,
        plan.out / "models",
        plan.names,
        plan.build,
        qat_model=plan.qat_model,
        rebuild=cfg.rebuild,
        show_progress=cfg.show_progress,
    )
    gc.collect()  # the PyTorch pipeline and calibration data of the builds are gone now
    rows = _rows(built)
    ready = [item for item in built if isinstance(item, BuiltVariant)]
    if cfg.measure_memory:
        _measure_memory(rows, ready, plan.call, plan.pairs[0], unet_only=cfg.unet_only)
    return rows, _time(rows, ready, plan.call, plan.pairs, cfg)


def _recorded_settings(plan: _Plan, judge: Judge | None) -> dict[str, Any]:
    """The settings ``results.json`` records: the build's and the timing's."""
    cfg, build = plan.cfg, plan.build
    return {
        **asdict(build),
        "calibration_prompts": list(build.calibration_prompts),
        "steps": cfg.steps,
        "rounds": cfg.rounds,
        "prompts": list(cfg.prompts),
        "seeds": list(cfg.seeds),
        "unet_batch": plan.call.unet_batch,
        "unet_only": cfg.unet_only,
        "unet_error_samples": cfg.unet_error_samples,
        "qat_model": None if plan.qat_model is None else str(plan.qat_model),
        "judge": None if judge is None else getattr(judge, "__qualname__", repr(judge)),
    }


def _rows(built: Sequence[BuiltVariant | Unavailable]) -> dict[str, VariantResult]:
    from sd_ovopt.evaluation.variants import disk_size

    rows = {}
    for item in built:
        row = VariantResult(name=item.name, label=variant_labels()[item.name])
        if isinstance(item, Unavailable):
            row.status, row.reason = item.status, item.reason
        else:
            row.runtime, row.path, row.precision = item.runtime, str(item.path), item.precision
            row.build_s, row.reused = item.build_s, item.reused
            row.unet_bytes, row.total_bytes = disk_size(item)
        rows[item.name] = row
    return rows


def _measure_memory(
    rows: dict[str, VariantResult],
    ready: list[BuiltVariant],
    call: Call,
    pair: tuple[str, int],
    *,
    unet_only: bool,
) -> None:
    from sd_ovopt.evaluation.memory import measure_peak_memory

    for item in ready:
        logger.info("measuring the peak memory of %s in a process of its own", item.name)
        peak = measure_peak_memory(item, call, prompt=pair[0], seed=pair[1], unet_only=unet_only)
        row = rows[item.name]
        row.peak_rss_bytes, row.baseline_rss_bytes = peak.peak_bytes, peak.baseline_bytes
        row.memory_method, row.memory_error = peak.method, peak.error


def _time(
    rows: dict[str, VariantResult],
    ready: list[BuiltVariant],
    call: Call,
    pairs: list[tuple[str, int]],
    cfg: BenchmarkSettings,
) -> dict[str, list[Any]]:
    """Load every ready variant into this process, time them interleaved; return first-round images."""
    from sd_ovopt.evaluation.timing import time_variants
    from sd_ovopt.evaluation.variants import load_variant

    size = {"height": call.height, "width": call.width, "guidance_scale": call.guidance_scale}
    pipes = {item.name: (load_variant(item, **size), item.runtime) for item in ready}
    for name, (pipe, runtime) in pipes.items():
        rows[name].runtime_precision = _runtime_precision(pipe, runtime)
    if REFERENCE in pipes and cfg.unet_error_samples:
        _unet_error(rows, pipes, [p for p, _ in pairs], call, cfg.unet_error_samples)
    t0 = time.perf_counter()
    timings, images = time_variants(
        pipes, pairs, call, rounds=cfg.rounds, unet_only=cfg.unet_only, show_progress=cfg.show_progress
    )
    logger.info("timed %d variants in %.0f s", len(pipes), time.perf_counter() - t0)
    del pipes
    gc.collect()
    for name, timing in timings.items():
        rows[name].pipeline_s, rows[name].unet_step_s = timing.pipeline_s, timing.unet_step_s
    return images


def _runtime_precision(pipe: Any, runtime: str) -> str:
    if runtime == "torch":
        return str(next(pipe.unet.parameters()).dtype).removeprefix("torch.")
    pipe.unet.compile()
    value = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


#: The UNet-error column records the sampling trajectories of up to this many benchmark prompts.
_UNET_ERROR_PROMPTS = 8


def _unet_error(
    rows: dict[str, VariantResult],
    pipes: dict[str, tuple[Any, str]],
    prompts: list[str],
    call: Call,
    samples: int,
) -> None:
    """Each variant's UNet against the PyTorch FP32 UNet on ``samples`` inputs spread evenly over the
    reference's own sampling trajectories of the first benchmark prompts."""
    import numpy as np

    from sd_ovopt.evaluation.timing import unet_outputs
    from sd_ovopt.quantization import collect_calibration

    reference = pipes[REFERENCE][0]
    inputs = collect_calibration(
        reference,
        list(dict.fromkeys(prompts))[:_UNET_ERROR_PROMPTS],
        num_inference_steps=call.steps,
        guidance_scale=call.guidance_scale,
        height=call.height,
        width=call.width,
        show_progress=False,
    )
    inputs = [{k: v.numpy() for k, v in item.items()} for item in inputs[:: -(-len(inputs) // samples)]]
    expected = unet_outputs(reference, "torch", inputs)
    for name, (pipe, runtime) in pipes.items():
        got = unet_outputs(pipe, runtime, inputs)
        errors = [
            np.linalg.norm(g - e) / max(np.linalg.norm(e), 1e-12) for g, e in zip(got, expected, strict=True)
        ]
        rows[name].unet_rel_error = float(np.mean(errors))


def _score(
    rows: dict[str, VariantResult],
    images: dict[str, list[Any]],
    reference: str | None,
    pairs: list[tuple[str, int]],
    judge: Judge | None,
) -> None:
    prompts = [p for p, _ in pairs]
    for name, imgs in images.items():
        if not imgs:
            continue
        if reference is not None and name != reference:
            scores = [image_fidelity(a, b) for a, b in zip(imgs, images[reference], strict=True)]
            psnrs = [s.psnr_db for s in scores]
            finite = [p for p in psnrs if math.isfinite(p)]
            rows[name].psnr_db = statistics.fmean(finite) if finite else math.inf
            rows[name].psnr_min_db = min(psnrs)
            rows[name].ssim = statistics.fmean(s.ssim for s in scores)
        if judge is not None:
            rows[name].prompt_accuracy = prompt_accuracy(imgs, prompts, judge)
            for seed in dict.fromkeys(s for _, s in pairs):
                picked = [i for i, (_, s) in enumerate(pairs) if s == seed]
                rows[name].prompt_accuracy_by_seed[str(seed)] = prompt_accuracy(
                    [imgs[i] for i in picked], [prompts[i] for i in picked], judge
                )
