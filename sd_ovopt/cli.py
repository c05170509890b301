"""``sd-ovopt``: the command line, thin over the Python API.

sd-ovopt export SRC OUT --height 512 --width 512
sd-ovopt generate MODEL_DIR "a photo of a cat" --seed 0 --steps 20 --output cat.png
sd-ovopt quantize SRC OUT --prompts prompts.txt --num-samples 200 [--tome-ratio 0.4]
sd-ovopt demo
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sd_ovopt.errors import SdOvOptError

__all__ = ["main"]


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a diffusers Stable Diffusion folder to OpenVINO IR")
    p.add_argument("src", help="local folder written by StableDiffusionPipeline.save_pretrained")
    p.add_argument("out", help="output folder (refused if it exists and is not empty, unless --overwrite)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's native size)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per call (default 1)")
    p.add_argument("--num-images-per-prompt", type=int, default=1)
    p.add_argument("--weights-dtype", choices=("f32", "f16"), default="f32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from sd_ovopt.export.pipeline import export_pipeline

    path = export_pipeline(
        args.src,
        args.out,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        num_images_per_prompt=args.num_images_per_prompt,
        weights_dtype=args.weights_dtype,
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
    p.add_argument("--precision", choices=("f32", "bf16", "f16", "default"), default="f32")
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
    precision: str = "f32",
) -> Path:
    """Generate one image with an exported pipeline and save it as PNG; return the path written."""
    import torch

    from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline

    pipe = SdOvOptPipeline.from_pretrained(model_dir, precision=precision)
    image = pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    out = Path(output).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial.png")
    image.save(tmp)
    tmp.replace(out)
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
    p.add_argument("--prompts", required=True, help="text file, one calibration prompt per line")
    p.add_argument("--num-samples", type=int, default=200, help="UNet calls to record (default 200)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per calibration prompt")
    p.add_argument("--mode", choices=("full", "hybrid"), default="full")
    p.add_argument("--tome-ratio", type=float, default=None, help="apply ToMe before quantizing")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument(
        "--no-compress-weights", action="store_true", help="keep text encoder and VAE weights in float"
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_quantize)


def _read_prompts(path: str) -> list[str]:
    from sd_ovopt.errors import InvalidConfigError, ModelNotFoundError

    file = Path(path)
    if not file.is_file():
        raise ModelNotFoundError(f"prompt file {file} does not exist; write one prompt per line.")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise InvalidConfigError(f"prompt file {file} has no prompts; write one prompt per line.")
    return prompts


def _run_quantize(args: argparse.Namespace) -> int:
    from sd_ovopt._fs import check_output_dir
    from sd_ovopt._loading import load_sd_pipeline
    from sd_ovopt.export.pipeline import export_pipeline
    from sd_ovopt.quantization import QuantizationConfig, collect_calibration, quantize_unet
    from sd_ovopt.tome import ToMeConfig, apply_tome

    prompts = _read_prompts(args.prompts)
    check_output_dir(args.out, overwrite=args.overwrite)  # fail before the slow part
    tome = None if args.tome_ratio is None else ToMeConfig(ratio=args.tome_ratio)
    config = QuantizationConfig(mode=args.mode, subset_size=args.num_samples)
    pipe = load_sd_pipeline(args.src)
    if tome is not None:
        apply_tome(pipe.unet, tome)  # calibrate and quantize the merged graph
    calibration = collect_calibration(
        pipe,
        prompts,
        num_inference_steps=args.steps,
        height=args.height,
        width=args.width,
        max_samples=args.num_samples,
    )
    qunet = quantize_unet(pipe, calibration, config)
    path = export_pipeline(
        pipe,
        args.out,
        unet=qunet,
        height=args.height,
        width=args.width,
        compress_weights=not args.no_compress_weights,
        overwrite=args.overwrite,
    )
    print(path)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="offline end-to-end run on the embedded model: export, generate, save PNG"
    )
    p.add_argument("--output-dir", default="demo_output", help="where to write (default demo_output/)")
    p.add_argument("--prompt", default="a red circle on a blue background")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from sd_ovopt.export.pipeline import export_pipeline
    from sd_ovopt.testing import tiny_pipeline

    out = Path(args.output_dir)
    model_dir = export_pipeline(tiny_pipeline(), out / "tiny-ov", overwrite=True)
    print(f"exported the embedded tiny pipeline to {model_dir}")
    path = generate_image(model_dir, args.prompt, out / "demo.png", seed=args.seed, steps=args.steps)
    print(f"image saved: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-ovopt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_generate(sub)
    _add_quantize(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sd-ovopt``; returns the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except SdOvOptError as exc:
        print(f"sd-ovopt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
