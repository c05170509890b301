"""Step caching's fidelity on the shipped reference model: held-out prompt accuracy and PSNR/SSIM vs FP32.

    python benchmarks/deepcache_fidelity.py --work /tmp/dc-fidelity            # intervals 2, 3, 5
    python benchmarks/deepcache_fidelity.py --work /tmp/dc-fidelity --int8     # + ToMe+INT8 with and without

All 144 held-out prompts x 2 seeds (0, 1), the reference model's evaluation settings (20 steps, guidance 4,
prompt ``i`` of seed ``s`` drawing its noise from ``noise_generator(s, i)``, as
``python -m sd_ovopt.reference.evaluate`` does).
Rows: PyTorch FP32 (the reference images), OpenVINO f32 uncached, OpenVINO f32 with step caching at each
``--intervals`` value (branch 0) and at interval 3 with each ``--branches`` value, and with ``--int8`` the recipe's ToMe (0.4) + INT8 folder (calibrated on 48 training captions) without and with
caching at interval 3. Each image is compared with the PyTorch FP32 image of the same prompt and seed.
Writes ``--work/fidelity.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fidelity_stats import fidelity_stats

SEEDS = (0, 1)


def _folders(work: Path, pipe: object, args: argparse.Namespace) -> dict[str, Path | None]:
    from sd_ovopt import DeepCacheConfig, QuantizationConfig, ToMeConfig, optimize_pipeline
    from sd_ovopt.reference import train_prompts

    builds: dict[str, dict] = {"ov-f32": {}}
    for interval in args.intervals:
        builds[f"ov-f32-deepcache-{interval}"] = {"methods": [DeepCacheConfig(interval=interval)]}
    for branch in args.branches:  # deeper cuts at interval 3: more work on cached steps, closer images
        builds[f"ov-f32-deepcache-3-branch-{branch}"] = {
            "methods": [DeepCacheConfig(interval=3, branch=branch)]
        }
    if args.int8:
        # calibrated on training captions (the model's own vocabulary), never on the held-out prompts
        captions = [spec.prompt for spec in train_prompts()[::12]]
        tome_int8 = [ToMeConfig(ratio=0.4), QuantizationConfig()]
        builds["ov-tome-int8"] = {"methods": tome_int8, "calibration_prompts": captions}
        builds["ov-tome-int8-deepcache-3"] = {
            "methods": [*tome_int8, DeepCacheConfig(interval=3)],
            "calibration_prompts": captions,
        }
    folders: dict[str, Path | None] = {"pytorch-fp32": None}
    for name, kwargs in builds.items():
        if args.only and name not in args.only:
            continue
        folder = work / name
        if not (folder / "sd_ovopt.json").is_file():
            optimize_pipeline(pipe, folder, guidance_scale=4.0, overwrite=True, **kwargs)
        folders[name] = folder
    return folders


def _row(images: dict[int, list], reference: dict[int, list], prompts: list[str]) -> dict:
    from sd_ovopt.evaluation import image_fidelity
    from sd_ovopt.reference.judge import prompt_accuracy

    accuracy = {seed: prompt_accuracy(images[seed], prompts) for seed in SEEDS}
    scores = [
        image_fidelity(a, b) for seed in SEEDS for a, b in zip(images[seed], reference[seed], strict=True)
    ]
    return {
        "accuracy": statistics.mean(accuracy.values()),
        "accuracy_by_seed": accuracy,
        **fidelity_stats(scores),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument(
        "--branches", type=int, nargs="*", default=[], help="also these branches (not 0) at interval 3"
    )
    parser.add_argument("--int8", action="store_true", help="also ToMe+INT8 with and without caching")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out prompts only (smoke test)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="measure only these rows (PyTorch FP32 always runs: it is the reference); rows of an earlier "
        "fidelity.json in --work are kept",
    )
    args = parser.parse_args()

    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt._fs import atomic_file
    from sd_ovopt._loading import load_sd_pipeline
    from sd_ovopt.reference import held_out_prompts, reference_model_dir
    from sd_ovopt.reference.evaluate import generate_images

    args.work.mkdir(parents=True, exist_ok=True)
    pipe = load_sd_pipeline(reference_model_dir())
    prompts = [spec.prompt for spec in held_out_prompts()][: args.limit]
    saved = args.work / "fidelity.json"
    rows: dict[str, dict] = json.loads(saved.read_text()) if args.only and saved.is_file() else {}
    reference: dict[int, list] = {}
    for name, folder in _folders(args.work, pipe, args).items():
        runner = pipe if folder is None else SdOvOptPipeline.from_pretrained(folder, precision="f32")
        runner.set_progress_bar_config(disable=True)
        images = {seed: generate_images(runner, prompts, seed=seed) for seed in SEEDS}
        if folder is None:
            reference = images
        rows[name] = _row(images, reference, prompts)
        print(name, rows[name])
        with atomic_file(saved) as tmp:  # every row saved as it ends: a killed run keeps them
            tmp.write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| variant | held-out accuracy (seed 0 / 1) | PSNR dB vs FP32 (mean / median / min) | images < 30 dB "
        "| SSIM vs FP32 |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        by_seed = " / ".join(f"{100 * a:.1f}" for a in r["accuracy_by_seed"].values())
        psnr = " / ".join(str(r.get(k, "-")) for k in ("psnr_db_mean", "psnr_db_median", "psnr_db_min"))
        under = r.get("images_under_30_db", "-")
        ssim = r.get("ssim_mean", r.get("ssim"))
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} % ({by_seed}) | {psnr} | {under} | {ssim} |")
    (args.work / "fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
