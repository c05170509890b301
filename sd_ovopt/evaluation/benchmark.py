"""``run_benchmark``: build every variant, measure its memory, time it, score its images, write the table.

The loop names no variant: what each one is (how it is built, loaded, which UNet IRs it runs, what it is
compared with) is its registration in :mod:`sd_ovopt.evaluation.variants`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sd_ovopt._fs import read_json_object
from sd_ovopt._loading import check_image_size, read_model_index
from sd_ovopt._precision import HINT, hint_name
from sd_ovopt.errors import InvalidConfigError, NotAPipelineError, OutputExistsError
from sd_ovopt.evaluation.fidelity import Judge, image_fidelity, prompt_accuracy
from sd_ovopt.evaluation.memory import measure_peak_memory, peak_rss_bytes, reset_peak_rss
from sd_ovopt.evaluation.report import write_report
from sd_ovopt.evaluation.results import BenchmarkResult, VariantResult, machine_info
from sd_ovopt.evaluation.settings import DEFAULT_CALIBRATION_PROMPTS, DEFAULT_PROMPTS, BenchmarkSettings
from sd_ovopt.evaluation.timing import Call, Loaded, Sample, time_variants, unet_outputs
from sd_ovopt.evaluation.variants import (
    REFERENCE,
    BuildSettings,
    BuiltVariant,
    Unavailable,
    build_variants,
    check_qat_model,
    disk_size,
    load_variant,
    resolve_variants,
    variant_labels,
    variant_spec,
)
from sd_ovopt.quantization import collect_calibration

__all__ = ["DEFAULT_CALIBRATION_PROMPTS", "DEFAULT_PROMPTS", "BenchmarkSettings", "run_benchmark"]

logger = logging.getLogger(__name__)


def _geometry(model: Path) -> tuple[int, int]:
    """The model's native image size and its VAE's scale factor, from the part configs."""

    fix = "Save the pipeline again with save_pretrained."
    unet = read_json_object(model / "unet" / "config.json", fix=fix)
    vae = read_json_object(model / "vae" / "config.json", fix=fix)
    scale = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
    return int(unet.get("sample_size", 64)) * scale, scale


def _check_model(model: Any) -> Path:
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
    latency for ``steps`` steps and the latency of one UNet step (and, with ``check_extrapolation``, of
    every UNet IR and of the text encoder and VAE decoder). Every image is compared with the PyTorch FP32
    image of the same prompt and seed (PSNR, SSIM), and judged when ``judge`` is given. Writes
    ``results.json``, ``results.md``, ``chart.png`` and ``grid.png`` into ``output_dir``.

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

    plan = _plan(model, output_dir, settings or BenchmarkSettings(), overrides, judge)
    rows, images, timing = _build_and_measure(plan)
    reference = next((n for n in (REFERENCE, "ov-f32") if images.get(n)), None)
    _score(rows, images, reference, plan.samples, judge)
    result = BenchmarkResult(
        model=str(plan.source),
        settings={**_recorded_settings(plan, judge), **timing.settings},
        machine=machine_info(),
        reference=reference,
        variants=[rows[n] for n in plan.names],
        timing_peak_rss_bytes=timing.peak_rss_bytes,
    )
    write_report(result, images, plan.samples, plan.out)
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
    samples: list[Sample]  # every (prompt, seed) image


def _plan(
    model: str | Path,
    output_dir: str | Path,
    settings: BenchmarkSettings,
    overrides: dict[str, Any],
    judge: Judge | None,
) -> _Plan:
    """Check the request (settings, judge, model, image size) and resolve what to build and time."""

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
    build = cfg.build_settings(height, width)
    qat_model = None if cfg.qat_model is None else check_qat_model(cfg.qat_model, build)
    call = Call(steps=cfg.steps, guidance_scale=float(cfg.guidance_scale), height=height, width=width)
    samples = [Sample(p, s, i) for i, p in enumerate(cfg.prompts) for s in cfg.seeds]
    return _Plan(cfg, source, _output_dir(output_dir), list(names), build, qat_model, call, samples)


@dataclass(frozen=True)
class _TimingRun:
    """How the timing ran: the load mode, its estimate, and the timing process's peak memory."""

    mode: str
    estimate_bytes: int
    peak_rss_bytes: int | None

    @property
    def settings(self) -> dict[str, Any]:
        return {"load_mode": self.mode, "estimated_all_at_once_bytes": self.estimate_bytes}


def _build_and_measure(
    plan: _Plan,
) -> tuple[dict[str, VariantResult], dict[str, list[Any]], _TimingRun]:
    """Build (or reuse) every variant, measure peak memory, time; the table rows and first-round images."""

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
        _measure_memory(rows, ready, plan.call, plan.samples[0], unet_only=cfg.unet_only)
    images, timing = _time(rows, ready, plan)
    return rows, images, timing


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
        "check_extrapolation": cfg.check_extrapolation,
        "load": cfg.load,
        "memory_budget_gib": cfg.memory_budget_gib,
        "qat_model": None if plan.qat_model is None else str(plan.qat_model),
        "judge": None if judge is None else getattr(judge, "__qualname__", repr(judge)),
    }


def _rows(built: Sequence[BuiltVariant | Unavailable]) -> dict[str, VariantResult]:
    rows = {}
    for item in built:
        row = VariantResult(name=item.name, label=variant_labels()[item.name])
        row.baseline = variant_spec(item.name).baseline
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
    sample: Sample,
    *,
    unet_only: bool,
) -> None:
    for item in ready:
        logger.info("measuring the peak memory of %s in a process of its own", item.name)
        peak = measure_peak_memory(item, call, sample=sample, unet_only=unet_only)
        row = rows[item.name]
        row.peak_rss_bytes, row.baseline_rss_bytes = peak.peak_bytes, peak.baseline_bytes
        row.memory_method, row.memory_error = peak.method, peak.error


def _load_mode(
    cfg: BenchmarkSettings, ready: list[BuiltVariant], rows: dict[str, VariantResult]
) -> _TimingRun:
    """The load mode: ``cfg.load``, or for ``"auto"`` one at a time when the estimated resident size of all
    variants at once exceeds the budget (twice an OpenVINO folder's weights on disk, the mapped file and
    the compiled copy; 1.25 times a PyTorch folder's)."""
    estimate = sum(
        int((1.25 if item.runtime == "torch" else 2.0) * (rows[item.name].total_bytes or 0)) for item in ready
    )
    mode = cfg.load
    if mode == "auto":
        mode = "one" if estimate > cfg.memory_budget_gib * 2**30 else "all"
    return _TimingRun(mode, estimate, None)


def _load(item: BuiltVariant, call: Call) -> Loaded:
    """Load a built variant for timing, with the further UNet IRs its registration names."""

    spec = variant_spec(item.name)
    own = spec.call(call)
    size = {"height": own.height, "width": own.width, "guidance_scale": own.guidance_scale}
    pipe = load_variant(item, **size)
    return Loaded(pipe, item.runtime, spec.unet_irs(pipe, item), None if own == call else own)


def _time(
    rows: dict[str, VariantResult], ready: list[BuiltVariant], plan: _Plan
) -> tuple[dict[str, list[Any]], _TimingRun]:
    """Time every ready variant, interleaved (all loaded, or one at a time); return first-round images."""

    cfg, call = plan.cfg, plan.call
    run = _load_mode(cfg, ready, rows)
    logger.info("timing %d variants, load mode %s", len(ready), run.mode)
    probe = None
    if cfg.unet_error_samples and any(item.name == REFERENCE for item in ready):
        reference = next(item for item in ready if item.name == REFERENCE)
        probe = _UNetProbe.record(reference, call, [s.prompt for s in plan.samples], cfg.unet_error_samples)
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    timings, images = time_variants(
        {item.name: partial(_load, item, call) for item in ready},
        plan.samples,
        call,
        rounds=cfg.rounds,
        one_at_a_time=run.mode == "one",
        unet_only=cfg.unet_only,
        time_parts=cfg.check_extrapolation,
        on_load=partial(_on_load, rows, call, cfg.check_extrapolation, probe),
        show_progress=cfg.show_progress,
    )
    logger.info("timed %d variants in %.0f s", len(ready), time.perf_counter() - t0)
    gc.collect()
    for name, timing in timings.items():
        row = rows[name]
        row.pipeline_s, row.unet_step_s = timing.pipeline_s, timing.unet_step_s
        row.unet_ir_s, row.other_s = timing.unet_ir_s, timing.other_s
    peak = peak_rss_bytes() if reset else None
    return images, dataclasses.replace(run, peak_rss_bytes=peak)


def _on_load(
    rows: dict[str, VariantResult],
    call: Call,
    extrapolation: bool,
    probe: _UNetProbe | None,
    name: str,
    loaded: Loaded,
) -> None:
    """What a variant's first load tells: the precision it runs at, its UNet calls, its UNet error."""
    row = rows[name]
    row.runtime_precision = _runtime_precision(loaded.pipe, loaded.runtime)
    if extrapolation:
        spec = variant_spec(name)
        row.unet_calls = spec.unet_calls(loaded.pipe, call.steps)
        row.unet_calls_50 = spec.unet_calls(loaded.pipe, 50)
    if probe is not None:
        row.unet_rel_error = probe.error(loaded.pipe, loaded.runtime)


def _runtime_precision(pipe: Any, runtime: str) -> str:
    if runtime == "torch":
        return str(next(pipe.unet.parameters()).dtype).removeprefix("torch.")
    pipe.unet.compile()
    return hint_name(pipe.unet.request.get_property(HINT))


#: The UNet-error column records the sampling trajectories of up to this many benchmark prompts.
_UNET_ERROR_PROMPTS = 8


@dataclass(frozen=True)
class _UNetProbe:
    """Inputs recorded along the PyTorch FP32 reference's sampling, and its UNet's outputs on them."""

    inputs: list[dict[str, Any]]
    expected: list[Any]

    @classmethod
    def record(cls, reference: BuiltVariant, call: Call, prompts: list[str], samples: int) -> _UNetProbe:
        """``samples`` inputs spread evenly over the reference's own sampling of the first prompts."""

        pipe = _load(reference, call).pipe
        inputs = collect_calibration(
            pipe,
            list(dict.fromkeys(prompts))[:_UNET_ERROR_PROMPTS],
            num_inference_steps=call.steps,
            guidance_scale=call.guidance_scale,
            height=call.height,
            width=call.width,
            show_progress=False,
        )
        picked = [{k: v.numpy() for k, v in item.items()} for item in inputs[:: -(-len(inputs) // samples)]]
        return cls(picked, unet_outputs(pipe, "torch", picked))

    def error(self, pipe: Any, runtime: str) -> float:
        """The mean relative L2 error of ``pipe``'s UNet against the reference's on the recorded inputs."""

        got = unet_outputs(pipe, runtime, self.inputs)
        errors = [
            np.linalg.norm(g - e) / max(np.linalg.norm(e), 1e-12)
            for g, e in zip(got, self.expected, strict=True)
        ]
        return float(np.mean(errors))


def _score(
    rows: dict[str, VariantResult],
    images: dict[str, list[Any]],
    reference: str | None,
    samples: list[Sample],
    judge: Judge | None,
) -> None:
    prompts = [s.prompt for s in samples]
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
            for seed in dict.fromkeys(s.seed for s in samples):
                picked = [i for i, s in enumerate(samples) if s.seed == seed]
                rows[name].prompt_accuracy_by_seed[str(seed)] = prompt_accuracy(
                    [imgs[i] for i in picked], [prompts[i] for i in picked], judge
                )
