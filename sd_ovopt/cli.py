"""``sd-ovopt``: the command line, thin over the Python API.

sd-ovopt export SRC OUT --height 512 --width 512
sd-ovopt generate MODEL_DIR "a photo of a cat" --seed 0 --steps 20 --output cat.png
sd-ovopt quantize SRC OUT --prompts prompts.txt --num-samples 200 [--tome-ratio 0.4] [--deepcache-interval 3]
sd-ovopt bench --model SRC --output OUT [--variants ...] [--steps 20] [--qat-model DIR]
sd-ovopt bench --preset sd15-512 --output OUT [--variants ...] [--rounds 2]
sd-ovopt train-qat --model SRC --train-data DIR --output OUT [--resume-from-checkpoint latest]
sd-ovopt distill --model SRC --train-data DIR --output OUT [--guidance-scale 7.5] [--num-ddim-timesteps 50]
sd-ovopt demo
sd-ovopt cache info|clear [--dir PATH]
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sd_ovopt._compile_cache import (
    ENV_CACHE_DIR,
    ENV_MAX_GB,
    cache_info,
    clear_cache,
    default_cache_dir,
    max_cache_bytes,
    resolve_cache_dir,
)
from sd_ovopt._fs import atomic_file, check_safe_output_path
from sd_ovopt._loading import MAX_IMAGE_SIDE, check_steps, read_model_index
from sd_ovopt._precision import PRECISIONS
from sd_ovopt._schedulers import SCHEDULERS
from sd_ovopt._validation import check_float, check_int
from sd_ovopt.errors import (
    InvalidConfigError,
    MissingDependencyError,
    OutputExistsError,
    SdOvOptError,
    ShapeMismatchError,
    UnsafeOutputError,
)
from sd_ovopt.methods import registered_methods

__all__ = ["main"]

#: The largest noise seed: ``torch.Generator.manual_seed`` takes 0 to 2**64 - 1.
SEED_MAX = 2**64 - 1
_GUIDANCE_HINT = "It is the classifier-free guidance: 7.5 is typical, <= 1 turns it off."


# -- argument checks: every subcommand checks all its arguments before it loads or builds a model ------
def _check_seed(flag: str, value: int, *, maximum: int = SEED_MAX) -> int:
    return check_int(flag, value, minimum=0, maximum=maximum)


def _check_finite(args: argparse.Namespace, *flags: str) -> None:
    """argparse's ``float`` reads "nan" and "inf": refuse them (ranges are checked by the configs)."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            check_float(flag, value)


def _check_side(flag: str, value: int | None) -> None:
    """An image side asked for: None (the model's own) or a positive multiple of 8, at most 4096. The
    model's VAE may ask for a larger multiple; that is checked once it is read."""
    if value is not None and (value <= 0 or value % 8 or value > MAX_IMAGE_SIDE):
        near = min(MAX_IMAGE_SIDE, max(8, round(value / 8) * 8))
        raise ShapeMismatchError(
            f"{flag}={value}; it must be a positive multiple of 8, at most {MAX_IMAGE_SIDE} pixels "
            f"(e.g. {near}), or left out for the model's native size."
        )


def _check_reused_dir(flag: str, path: str, *, source: str | None = None) -> Path:
    """A folder that is written into and reused, never replaced: not a file, not inside a file, and not
    the working directory, an ancestor of it, the home directory, a filesystem root (or around ``source``)."""
    out = check_safe_output_path(path, source=source)
    blocker = next(p for p in (out, *out.parents) if p.exists())
    if not blocker.is_dir():
        what = "is a file" if blocker == out else f"cannot be made: {blocker} is a file"
        raise OutputExistsError(f"{flag} {out} {what}; pass a folder (an existing one is reused).")
    return out


def _check_image_output(output: str | Path) -> Path:
    """``generate --output``: a file PIL can write, whose folder is (or can be made) a folder."""
    from PIL import Image  # heavy imports wait for the command that needs them: --help stays quick

    out = Path(output).expanduser().resolve()
    if out.is_dir():
        raise OutputExistsError(
            f"--output {out} is a folder; pass a PNG file path, e.g. {out / 'image.png'}."
        )
    blocker = next(p for p in out.parents if p.exists())
    if not blocker.is_dir():
        raise OutputExistsError(
            f"--output {out}: {blocker} is a file, so the image cannot be written inside it. Choose another path."
        )
    Image.init()
    image_format = Image.registered_extensions().get(out.suffix.lower())
    try:
        Image.new("RGB", (8, 8)).save(io.BytesIO(), format=image_format)
    except (KeyError, ValueError, OSError) as exc:
        what = f"{out.suffix!r} is not an image format that holds RGB" if out.suffix else "no extension"
        raise InvalidConfigError(
            f"--output {out}: {what}, so the image cannot be written; end the name with .png (or .jpg, .webp)."
        ) from exc
    return out


def _read_prompts(path: str, flag: str = "--prompts") -> list[str]:
    """The non-blank lines of a UTF-8 prompt file, or an error naming the flag and what is wrong."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise InvalidConfigError(
            f"{flag}: prompt file {file} is a folder; pass a text file, one prompt per line."
        )
    if not file.is_file():
        raise InvalidConfigError(f"{flag}: prompt file {file} does not exist; write one prompt per line.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidConfigError(
            f"{flag}: prompt file {file} is not UTF-8 text (byte {exc.start}: "
            f"{exc.object[exc.start : exc.start + 4]!r}). Save it as UTF-8, one prompt per line."
        ) from exc
    except OSError as exc:
        raise InvalidConfigError(f"{flag}: prompt file {file} cannot be read ({exc}).") from exc
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InvalidConfigError(
            f"{flag}: prompt file {file} has no prompts (only blank lines); write one prompt per line."
        )
    return prompts


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a diffusers Stable Diffusion folder to OpenVINO IR")
    p.add_argument("src", help="local folder written by StableDiffusionPipeline.save_pretrained")
    p.add_argument("out", help="output folder (refused if it exists and is not empty, unless --overwrite)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's native size)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per call (default 1)")
    p.add_argument("--num-images-per-prompt", type=int, default=1)
    p.add_argument("--weights-dtype", choices=("f32", "f16"), default="f32")
    p.add_argument(
        "--guidance-free",
        dest="classifier_free_guidance",
        action="store_false",
        default=None,
        help="one UNet row per image, for calls with --guidance-scale <= 1 (few-step models); the default "
        "is two rows, unless the UNet takes its guidance as an input (LCM), which always runs one",
    )
    _add_part_args(p)
    _add_method_args(p, "export")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_run_export)


def _add_part_args(p: argparse.ArgumentParser) -> None:
    """The parts that may replace the source folder's: the autoencoder and the scheduler."""
    p.add_argument(
        "--vae-tiny",
        metavar="PATH",
        default=None,
        help="folder of a tiny autoencoder (AutoencoderTiny, e.g. a local copy of madebyollin/taesd) to use "
        "instead of the folder's VAE: a fraction of the decoder's cost, which dominates few-step calls",
    )
    p.add_argument(
        "--scheduler",
        choices=sorted(SCHEDULERS),
        default=None,
        help="scheduler to write instead of the folder's, from its config: lcm for LCM-LoRA and LCM models, "
        "tcd for TCD and Hyper-SD LoRAs",
    )


def _add_method_args(p: argparse.ArgumentParser, command: str) -> None:
    """Every registered method's flags for ``command``."""
    for method in registered_methods().values():
        method.add_cli_arguments(p, command)


def _method_configs(args: argparse.Namespace, command: str) -> list[Any]:
    """The configs of the methods the flags ask for (each method reads and checks its own flags)."""
    configs = [method.config_from_cli(args, command) for method in registered_methods().values()]
    return [config for config in configs if config is not None]


def _run_export(args: argparse.Namespace) -> int:
    from sd_ovopt.export.pipeline import export_pipeline  # heavy: loads with the command that runs

    _check_side("--height", args.height)
    _check_side("--width", args.width)
    # batch sizes and the output folder: export_pipeline checks them before it loads the model
    methods = _method_configs(args, "export")
    path = export_pipeline(
        args.src,
        args.out,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        num_images_per_prompt=args.num_images_per_prompt,
        weights_dtype=args.weights_dtype,
        classifier_free_guidance=args.classifier_free_guidance,
        methods=methods,
        vae=args.vae_tiny,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
    )
    print(path)
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate an image with an exported OpenVINO pipeline")
    p.add_argument("model_dir", help="folder written by sd-ovopt export")
    p.add_argument("prompt")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="OpenVINO inference precision (default auto: bf16 where the CPU has native BF16, else f32)",
    )
    p.add_argument("--output", default="image.png", help="PNG file to write (default image.png)")
    p.set_defaults(func=_run_generate)


def generate_image(
    model_dir: str | Path,
    prompt: str,
    output: str | Path,
    *,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    precision: str = "auto",
) -> Path:
    """Generate one image with an exported pipeline and save it as PNG; return the path written.

    Every argument is checked before the pipeline loads. A missing folder of ``output`` is made.
    """
    # torch and OpenVINO load with the command that runs: --help stays quick
    import torch

    from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline

    if isinstance(prompt, str) and not prompt.strip():  # other types: the pipeline refuses them
        raise InvalidConfigError(
            f"the prompt {prompt!r} is empty; say what to draw, e.g. 'a photo of a cat' (quoted in a shell)."
        )
    check_steps(steps, "--steps")
    _check_seed("--seed", seed)
    check_float("--guidance-scale", guidance_scale, minimum=0, hint=_GUIDANCE_HINT)
    out = _check_image_output(output)
    read_model_index(model_dir)  # a missing model folder, or a file, is said before anything loads
    pipe = SdOvOptPipeline.from_pretrained(model_dir, precision=precision)
    image = pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputExistsError(f"--output {out}: a part of its folder is a file ({exc}).") from exc
    with atomic_file(out, suffix=out.suffix) as tmp:
        image.save(tmp)
    return out


def _run_generate(args: argparse.Namespace) -> int:
    path = generate_image(
        args.model_dir,
        args.prompt,
        args.output,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        precision=args.precision,
    )
    print(path)
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="8-bit UNet (NNCF post-training) from real pipeline calibration, exported"
    )
    p.add_argument("src", help="local folder written by StableDiffusionPipeline.save_pretrained")
    p.add_argument("out", help="output folder for the OpenVINO pipeline")
    p.add_argument(
        "--prompts",
        default=None,
        help="text file, one calibration prompt per line (default: sd_ovopt's own calibration prompt set)",
    )
    p.add_argument("--steps", type=int, default=20, help="denoising steps per calibration prompt")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=7.5,
        help="guidance of the calls the folder serves, calibrated at it (default 7.5); <= 1 exports one UNet "
        "row per image, as few-step models (LCM-LoRA, TCD, Hyper-SD) run",
    )
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument(
        "--no-compress-weights", action="store_true", help="keep text encoder and VAE weights in float"
    )
    _add_part_args(p)
    p.add_argument(
        "--vae-int8",
        action="store_true",
        help="also quantize the tiny autoencoder's decoder (--vae-tiny) to INT8, calibrated on the folder's "
        "own latents: it halves the decoder on CPUs with VNNI or AMX",
    )
    _add_method_args(p, "quantize")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_quantize)


def _run_quantize(args: argparse.Namespace) -> int:
    from sd_ovopt.recipes import optimize_pipeline  # heavy: loads with the command that runs

    prompts = None if args.prompts is None else _read_prompts(args.prompts)
    check_steps(args.steps, "--steps")
    check_float("--guidance-scale", args.guidance_scale, minimum=0, hint=_GUIDANCE_HINT)
    _check_side("--height", args.height)
    _check_side("--width", args.width)
    methods = _method_configs(
        args, "quantize"
    )  # the output folder: optimize_pipeline checks it before loading
    path = optimize_pipeline(
        args.src,
        args.out,
        methods=methods,
        calibration_prompts=prompts,
        calibration_steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
        vae=args.vae_tiny,
        vae_int8=args.vae_int8,
        scheduler=args.scheduler,
        compress_weights=not args.no_compress_weights,
        overwrite=args.overwrite,
    )
    print(path)
    return 0


#: ``bench`` flags that set the :class:`~sd_ovopt.evaluation.BenchmarkSettings` field of the same name when
#: given; left out (None), the preset's value or the settings' default applies.
_BENCH_SETTINGS = (
    "variants",
    "steps",
    "rounds",
    "seeds",
    "qat_model",
    "tome_ratio",
    "tiny_vae",
    "unet_only",
    "height",
    "width",
    "guidance_scale",
    "num_samples",
    "calibration_steps",
    "precision",
    "unet_error_samples",
    "measure_memory",
    "check_extrapolation",
    "load",
    "memory_budget_gib",
    "rebuild",
)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="latency, memory, size and fidelity of every variant vs PyTorch FP32 and optimum-intel"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local folder written by StableDiffusionPipeline.save_pretrained")
    source.add_argument(
        "--preset",
        help="a named benchmark with its own model (built offline, random weights) and settings: sd15-512 "
        "(SD-1.5's architecture, 512x512, 10 steps, every row), sd15-512-deepcache (50 steps, step caching), "
        "sd15-512-lcm4 (LCM-LoRA fused, no guidance, 4 steps, full and tiny decoder), or tiny-32 and "
        "tiny-32-lcm4 (the tiny test pipeline); the other flags override its settings",
    )
    p.add_argument(
        "--output", required=True, help="folder for results.json/.md, chart.png, grid.png and models/"
    )
    p.add_argument("--variants", nargs="+", default=None, help="variant names (default: all but ov-int8-qat)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per image (default 20)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds after the warm-up (default 3)")
    p.add_argument("--prompts", default=None, help="text file, one evaluation prompt per line")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="noise seeds (default 0)")
    p.add_argument("--qat-model", default=None, help="folder exported from a QAT UNet (adds ov-int8-qat)")
    p.add_argument("--tome-ratio", type=float, default=None, help="ToMe ratio of ov-tome-int8 (default 0.4)")
    p.add_argument(
        "--vae-tiny",
        dest="tiny_vae",
        metavar="PATH",
        default=None,
        help="folder of a tiny autoencoder (AutoencoderTiny, e.g. TAESD) for the -taesd variants",
    )
    p.add_argument(
        "--unet-only", action="store_true", default=None, help="time UNet steps only (no images, no fidelity)"
    )
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's native size)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the model's native size)")
    p.add_argument("--guidance-scale", type=float, default=None, help="guidance (default 7.5)")
    p.add_argument("--calibration-prompts", default=None, help="text file of PTQ calibration prompts")
    p.add_argument("--num-samples", type=int, default=None, help="UNet calls for calibration (default 200)")
    p.add_argument("--calibration-steps", type=int, default=None, help="steps per calibration prompt")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="OpenVINO precision of the INT8 variants and the peer (default f32; auto: sd_ovopt's default, "
        "bf16 where the CPU has native BF16, else f32)",
    )
    p.add_argument("--judge", default=None, help="MODULE:FUNCTION judging (image, prompt) -> bool")
    p.add_argument(
        "--held-out-prompts",
        action="store_true",
        help="evaluate the reference model's 144 held-out prompts with its judge (instead of --prompts/--judge)",
    )
    _add_bench_timing(p)
    p.set_defaults(func=_run_bench)


def _add_bench_timing(p: argparse.ArgumentParser) -> None:
    """The ``bench`` flags of what is measured besides latency, and how the variants are loaded."""
    p.add_argument(
        "--unet-error-samples",
        type=int,
        default=None,
        help="compare each variant's UNet with PyTorch FP32 on N recorded inputs (default 0: off)",
    )
    p.add_argument(
        "--memory",
        dest="measure_memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure each variant's peak memory in a process of its own (default on; presets: off)",
    )
    p.add_argument(
        "--check-extrapolation",
        action="store_true",
        default=None,
        help="also time each variant's UNet IRs, text encoder and VAE decoder: the pipeline call vs its parts",
    )
    p.add_argument(
        "--load",
        choices=("auto", "all", "one"),
        default=None,
        help="load all variants at once, one at a time in each round, or auto: one at a time when they do "
        "not fit in --memory-budget-gib (default all; presets: auto)",
    )
    p.add_argument(
        "--memory-budget-gib", type=float, default=None, help="what --load auto allows (default 20)"
    )
    p.add_argument("--rebuild", action="store_true", default=None, help="build every model again")


def _load_judge(spec: str) -> Any:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise InvalidConfigError(f"--judge {spec!r}; use MODULE:FUNCTION, e.g. mypackage.judge:is_match.")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise MissingDependencyError(f"--judge {spec!r} cannot be imported: {exc}.") from exc


def _check_bench_output(args: argparse.Namespace) -> None:
    """``bench --output`` is reused, never replaced, but it must not be in the model (``models/`` is rebuilt)."""
    out = _check_reused_dir("--output", args.output)
    if args.model is None:  # a preset: its model is written under the output folder
        return
    src = Path(args.model).expanduser().resolve()
    if src.is_dir() and (out == src or src in out.parents or out / "models" in (src, *src.parents)):
        raise UnsafeOutputError(
            f"--output {out} and --model {src} overlap: the benchmark writes results and rebuilds models/ "
            "there, which would damage the model. Choose an output folder outside the model."
        )


def _bench_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The prompts, judge and calibration prompts of ``bench`` (None: not given), once every argument is
    checked (the benchmark itself checks the model, the variants and its integer settings before it
    builds anything)."""
    if args.held_out_prompts and (args.prompts is not None or args.judge is not None):
        raise InvalidConfigError(
            "--held-out-prompts brings its own prompts and judge; drop --prompts and --judge, or drop "
            "--held-out-prompts."
        )
    if args.guidance_scale is not None:
        check_float("--guidance-scale", args.guidance_scale, minimum=0, hint=_GUIDANCE_HINT)
    _check_finite(args, "--tome-ratio", "--memory-budget-gib")  # ranges: the benchmark's settings
    for seed in args.seeds or ():
        _check_seed("--seeds", seed)
    _check_side("--height", args.height)
    _check_side("--width", args.width)
    _check_bench_output(args)
    prompts = None if args.prompts is None else _read_prompts(args.prompts)
    calibration = (
        None
        if args.calibration_prompts is None
        else _read_prompts(args.calibration_prompts, "--calibration-prompts")
    )
    judge = None if args.judge is None else _load_judge(args.judge)
    if args.held_out_prompts:
        from sd_ovopt.reference import held_out_prompts, score_image  # the reference model's code, on use

        prompts, judge = [spec.prompt for spec in held_out_prompts()], score_image
    return prompts, judge, calibration


def _run_bench(args: argparse.Namespace) -> int:
    from sd_ovopt.evaluation import run_benchmark, run_preset  # heavy: loads with the command that runs

    prompts, judge, calibration = _bench_inputs(args)
    overrides = {name: getattr(args, name) for name in _BENCH_SETTINGS if getattr(args, name) is not None}
    for name, value in (("prompts", prompts), ("calibration_prompts", calibration)):
        if value is not None:
            overrides[name] = value
    if args.preset is not None:
        result = run_preset(args.preset, args.output, judge=judge, **overrides)
    else:
        result = run_benchmark(args.model, args.output, judge=judge, **overrides)
    print(Path(result.outputs["markdown"]).read_text(encoding="utf-8"))
    return 0


#: The QATConfig fields train-qat sets from flags of the same name (left out: QATConfig's default).
_QAT_FLAGS = (
    ("--max-train-steps", int),
    ("--learning-rate", float),
    ("--weight-decay", float),
    ("--train-batch-size", int),
    ("--gradient-accumulation-steps", int),
    ("--max-grad-norm", float),
    ("--task-loss-weight", float),
    ("--distillation-loss-weight", float),
    ("--ema-decay", float),
    ("--resolution", int),
    ("--checkpointing-steps", int),
    ("--checkpoints-total-limit", int),
    ("--seed", int),
)


def _add_train_qat(sub: argparse._SubParsersAction) -> None:
    _add_training(
        sub,
        "train-qat",
        "quantization-aware training (distillation + EMA) on accelerate, then an INT8 OpenVINO export",
    ).set_defaults(func=_run_train_qat)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = _add_training(
        sub,
        "distill",
        "latent consistency distillation of an INT8 few-step student on accelerate, exported guidance-free "
        "with the LCM scheduler (1 to 4 steps)",
    )
    p.add_argument("--guidance-scale", type=float, default=7.5, help="the teacher's guidance (default 7.5)")
    p.add_argument(
        "--num-ddim-timesteps", type=int, default=50, help="the teacher solver's steps over 1000 (default 50)"
    )
    p.add_argument("--loss-type", choices=("huber", "l2"), default="huber", help="default huber")
    p.add_argument("--huber-c", type=float, default=0.001, help="pseudo-Huber constant (default 0.001)")
    p.add_argument(
        "--student",
        choices=("int8", "float"),  # DistillConfig.student (its module loads with the command)
        default="int8",
        help="int8: quantized from the first step (default); float: a float student, also written as a "
        "PyTorch pipeline to OUT/diffusers",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="0: train the whole UNet (default); r: a LoRA student, rank-r adapters on LCM-LoRA's layers "
        "(LCM-LoRA: 64), fused before the INT8 export",
    )
    p.add_argument("--lora-alpha", type=float, default=None, help="the adapters' alpha (default: the rank)")
    p.set_defaults(func=_run_distill)


def _add_training(sub: argparse._SubParsersAction, command: str, help_text: str) -> argparse.ArgumentParser:
    """The parser of a training command (``train-qat``, ``distill``): model, data, run folder, QATConfig."""
    p = sub.add_parser(
        command,
        help=help_text,
        description="Options left out take QATConfig's defaults. Several processes: accelerate launch "
        f"[--multi_gpu --num_processes N] -m sd_ovopt {command} ... (add --cpu for CPU processes).",
    )
    p.add_argument(
        "--model", required=True, help="local folder written by StableDiffusionPipeline.save_pretrained"
    )
    p.add_argument("--train-data", required=True, help="image folder with metadata.jsonl (file_name, text)")
    p.add_argument(
        "--output", required=True, help="run folder: checkpoints/, train_log.jsonl, ov/ (the export)"
    )
    p.add_argument(
        "--resume-from-checkpoint", default=None, help="'latest' or a checkpoints/checkpoint-N folder"
    )
    for flag, kind in _QAT_FLAGS:
        p.add_argument(flag, type=kind, default=None)
    p.add_argument("--no-ema-warmup", action="store_true", help="constant EMA decay from the first step")
    p.add_argument(
        "--ema-device",
        choices=("cpu", "accelerator"),  # QATConfig's EMA_DEVICES (its module loads with the command)
        default=None,
        help="where the EMA weights live: cpu (default) or accelerator (the GPU: faster steps, one more "
        "copy of the trained weights in its memory)",
    )
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="refused: it corrupts NNCF QAT gradients"
    )
    p.add_argument(
        "--mode", choices=("full", "hybrid"), default=None, help="quantization mode (default full)"
    )
    p.add_argument(
        "--tome-ratio", type=float, default=None, help="apply ToMe to the student before quantizing"
    )
    p.add_argument(
        "--calibration-prompts", type=int, default=8, help="captions run for calibration (default 8)"
    )
    p.add_argument(
        "--calibration-steps", type=int, default=20, help="steps per calibration prompt (default 20)"
    )
    p.add_argument("--caption-column", default="text", help="caption key in metadata.jsonl (default text)")
    p.add_argument(
        "--eval-samples", type=int, default=8, help="images scoring student vs teacher (default 8)"
    )
    p.add_argument(
        "--export-ptq", action="store_true", help="also export the PTQ starting point to OUT/ptq-ov"
    )
    p.add_argument("--no-export", action="store_true", help="skip OUT/ov (resume the finished run to export)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: the GPU if there is one, else the CPU (default); cpu: CPU processes even with a GPU; "
        "cuda: the GPU, refused at once where CUDA is not available",
    )
    p.add_argument("--cpu", action="store_true", help="the same as --device cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_device(args: argparse.Namespace) -> None:
    """``--device cuda`` only where CUDA is available (not a silent CPU run); not with ``--cpu``."""
    import torch  # with the training command: --help stays quick

    if args.device == "cuda" and args.cpu:
        raise InvalidConfigError("--device cuda and --cpu contradict each other; pass one of them.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError(
            "--device cuda: this machine has no CUDA device that torch can use (torch.cuda.is_available() "
            "is False); run on a GPU machine with a CUDA build of torch, or pass --device cpu."
        )


def _check_train_qat(args: argparse.Namespace) -> tuple[Any, Any]:
    """The QATConfig and ToMeConfig of ``train-qat``, once every argument, the run folder and the training
    data are checked (the data is read again, with the model's resolution, once the model is loaded)."""
    # torch loads with the command that runs: --help stays quick
    from sd_ovopt.quantization.config import MAX_SEED, QATConfig
    from sd_ovopt.quantization.qat_data import CaptionedImageFolder
    from sd_ovopt.tome import ToMeConfig

    _check_finite(args, *(flag for flag, kind in _QAT_FLAGS if kind is float), "--tome-ratio")
    _check_device(args)
    if args.seed is not None:
        _check_seed("--seed", args.seed, maximum=MAX_SEED)  # accelerate's set_seed also seeds numpy
    _check_side("--resolution", args.resolution)
    fields = {
        name: getattr(args, name)
        for name in QATConfig.__dataclass_fields__
        if getattr(args, name, None) is not None and name != "gradient_checkpointing"
    }
    config = QATConfig(
        **fields,
        ema_warmup=not args.no_ema_warmup,
        export=not args.no_export,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    tome = None if args.tome_ratio is None else ToMeConfig(ratio=args.tome_ratio)
    _check_reused_dir("--output", args.output, source=args.model)  # a used folder: refused by train_qat
    CaptionedImageFolder(
        args.train_data, resolution=config.resolution or 8, caption_column=config.caption_column
    )
    return config, tome


def _run_train_qat(args: argparse.Namespace) -> int:
    from sd_ovopt.recipes.qat import train_qat  # heavy: loads with the command that runs

    return _run_training(args, train_qat)


def _run_distill(args: argparse.Namespace) -> int:
    # heavy: loads with the command that runs
    from sd_ovopt.distill.model import DistillConfig
    from sd_ovopt.recipes.distill import distill_student

    _check_finite(args, "--guidance-scale", "--huber-c", "--lora-alpha")
    if args.student == "float" and args.mode is not None:
        raise InvalidConfigError("--mode quantizes the student; leave it out with --student float.")
    distillation = DistillConfig(
        guidance_scale=args.guidance_scale,
        num_ddim_timesteps=args.num_ddim_timesteps,
        loss_type=args.loss_type,
        huber_c=args.huber_c,
        student=args.student,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
    )
    return _run_training(args, distill_student, distillation=distillation, quantized=args.student == "int8")


def _run_training(args: argparse.Namespace, train: Any, *, quantized: bool = True, **settings: Any) -> int:
    """A training command (``train-qat``, ``distill``): its checked flags to ``train`` (``quantized``: a
    quantized student); the main process prints the result folder."""
    from sd_ovopt.quantization.config import QuantizationConfig  # heavy: with the command that runs

    config, tome = _check_train_qat(args)
    quantization = QuantizationConfig(mode=args.mode or "full") if quantized else None
    path = train(
        args.model,
        args.train_data,
        args.output,
        config,
        quantization=quantization,
        tome=tome,
        resume_from_checkpoint=args.resume_from_checkpoint,
        cpu=args.cpu or args.device == "cpu",
        show_progress=not args.no_progress,
        **settings,
    )
    if os.environ.get("RANK", "0") == "0":
        print(path)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end run on the shipped reference model: export, generate a grid, judge each image",
    )
    p.add_argument("--output-dir", default="demo_output", help="where to write (default demo_output/)")
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a shapes-dataset prompt; repeat for several (default: 8 held-out prompts, one per colour-shape mix)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.set_defaults(func=_run_demo)


_DEMO_PAIRS = (
    ("circle", "red"),
    ("square", "green"),
    ("triangle", "blue"),
    ("diamond", "yellow"),
    ("circle", "purple"),
    ("square", "cyan"),
    ("triangle", "red"),
    ("diamond", "green"),
)


def _demo_prompts(held_out: list[Any]) -> list[str]:
    """Eight held-out prompts: every shape twice, six colours, backgrounds and sizes varied."""
    prompts = []
    for i, (shape, colour) in enumerate(_DEMO_PAIRS):
        candidates = [s for s in held_out if s.shape == shape and s.colour == colour]
        background = ("white", "black", "gray")[i % 3]
        preferred = [s for s in candidates if s.background == background] or candidates
        prompts.append(preferred[i % len(preferred)].prompt)
    return prompts


def _judge_and_save(images: list[Any], prompts: list[str], out: Path, name: str) -> int:
    """Print the judge's verdict on each image, save the images and their grid as ``out/name*``; the hits."""
    from sd_ovopt.reference import judge_image, make_grid  # heavy: loads with the command that runs

    hits = 0
    for i, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        seen = judge_image(image)
        ok = seen.matches(prompt)
        hits += ok
        image.save(out / f"{name}-{i:02d}.png")
        print(
            f"{'ok  ' if ok else 'MISS'} {prompt!r} -> the judge sees: a {seen.colour} {seen.shape} "
            f"on a {seen.background} background, {seen.position}"
        )
    make_grid(images, columns=min(len(images), 4), scale=4).save(out / f"{name}_grid.png")
    return hits


def _run_demo(args: argparse.Namespace) -> int:
    # heavy: loads with the command that runs
    from sd_ovopt.export.pipeline import export_pipeline
    from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline
    from sd_ovopt.reference import few_step_model_dir, generate_images, held_out_prompts, parse_prompt
    from sd_ovopt.reference.model import reference_model_dir

    prompts = args.prompt or _demo_prompts(held_out_prompts())
    for prompt in prompts:
        parse_prompt(prompt)  # the judge reads only the dataset's prompts: refuse others before exporting
    check_steps(args.steps, "--steps")
    _check_seed("--seed", args.seed, maximum=SEED_MAX - len(prompts) + 1)  # prompt i is drawn with seed + i
    out = _check_reused_dir("--output-dir", args.output_dir)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # loading bars: noise in a demo
    transformers_logging.disable_progress_bar()
    # 1. The reference model, exported to OpenVINO, at the many-step call it was trained for
    model_dir = export_pipeline(reference_model_dir(), out / "shapes-ov", overwrite=True, show_progress=False)
    print(f"exported the shipped reference model to {model_dir}")
    pipe = SdOvOptPipeline.from_pretrained(model_dir, precision="f32")
    pipe.set_progress_bar_config(disable=True)
    images = generate_images(pipe, prompts, seed=args.seed, num_inference_steps=args.steps)
    hits = _judge_and_save(images, prompts, out, "demo")
    # 2. Its shipped few-step INT8 student: 4 steps, no guidance (one UNet row per image)
    print(
        f"\nthe shipped few-step INT8 student of the reference model ({few_step_model_dir().name}), 4 steps:"
    )
    student = SdOvOptPipeline.from_pretrained(few_step_model_dir(), precision="f32")
    student.set_progress_bar_config(disable=True)
    fast = generate_images(student, prompts, seed=args.seed, num_inference_steps=4, guidance_scale=1.0)
    fast_hits = _judge_and_save(fast, prompts, out, "demo_few_step")
    print(
        f"\n{hits}/{len(prompts)} images show the colour and shape asked for ({args.steps} steps; grid saved: "
        f"{out / 'demo_grid.png'})\n{fast_hits}/{len(prompts)} with the few-step INT8 student (4 steps; grid "
        f"saved: {out / 'demo_few_step_grid.png'})"
    )
    return 0


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="the compiled-model cache (OpenVINO's CACHE_DIR) that makes later loads quick: info, clear",
    )
    actions = p.add_subparsers(dest="action", required=True)
    info = actions.add_parser("info", help="where the cache lives, its entries, size and cap")
    info.set_defaults(func=_run_cache_info)
    clear = actions.add_parser("clear", help="delete every entry (models compile again on their next load)")
    clear.set_defaults(func=_run_cache_clear)
    for action in (info, clear):
        action.add_argument(
            "--dir",
            default=None,
            help=f"the cache folder (default: ${ENV_CACHE_DIR}, else ~/.cache/sd_ovopt/compiled)",
        )


def _cache_folder(args: argparse.Namespace) -> Path:
    """``--dir``, or the folder the cache uses (or would use, when it is off)."""
    if args.dir is None:
        return default_cache_dir()
    if not args.dir.strip():
        raise InvalidConfigError("--dir is empty; pass the cache folder, or leave --dir out for the default.")
    folder = Path(args.dir).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise InvalidConfigError(f"--dir {folder} is a file; pass the cache folder.")
    return folder


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def _run_cache_info(args: argparse.Namespace) -> int:
    folder = _cache_folder(args)
    cap = max_cache_bytes()
    entries, total = cache_info(folder)
    off = args.dir is None and resolve_cache_dir(None) is None
    print(f"location: {folder}{f'  (off: {ENV_CACHE_DIR}={os.environ[ENV_CACHE_DIR]})' if off else ''}")
    print(f"entries: {entries}")
    print(f"size: {_size(total)}")
    print(f"cap: {_size(cap)}  (set it with {ENV_MAX_GB}, in GiB)")
    return 0


def _run_cache_clear(args: argparse.Namespace) -> int:
    folder = _cache_folder(args)
    freed = clear_cache(folder)
    print(f"freed {_size(freed)} in {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-ovopt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_generate(sub)
    _add_quantize(sub)
    _add_bench(sub)
    _add_train_qat(sub)
    _add_distill(sub)
    _add_demo(sub)
    _add_cache(sub)
    return parser


def _quiet_library_notices() -> None:
    """Without --verbose, the import-time notices of diffusers, transformers and torch (deprecations inside
    them, duplicate distributions found) are not the user's to act on. What the user set is kept."""
    for name, value in (
        ("DIFFUSERS_VERBOSITY", "error"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("TORCH_LOGS", "-torch"),
    ):
        os.environ.setdefault(name, value)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sd-ovopt``; returns the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_library_notices()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except SdOvOptError as exc:
        print(f"sd-ovopt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
