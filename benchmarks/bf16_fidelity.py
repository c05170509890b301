"""Does bf16 keep fidelity? The whole OpenVINO pipeline at bf16 against f32, on the reference model.

    python benchmarks/bf16_fidelity.py --work /tmp/bf16-fidelity --threads 1

The shipped reference model (32x32 images) is exported once to OpenVINO at f32 weights, then generates
every held-out prompt with each seed (prompt ``i`` of seed ``s`` draws its noise from
``noise_generator(s, i)``, 20 steps, guidance 4, as ``python -m sd_ovopt.reference.evaluate`` does) at ``precision="f32"`` and ``precision="bf16"`` (text
encoder, UNet and VAE decoder all in the precision). Reported: PSNR and SSIM of each bf16 image against
the f32 image of the same prompt and seed, and the reference judge's prompt accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fidelity_stats import fidelity_stats

STEPS, GUIDANCE, BATCH = 20, 4.0, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--prompts", type=int, default=144, help="held-out prompts scored (of 144)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO INFERENCE_NUM_THREADS")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    import torch

    from sd_ovopt import SdOvOptPipeline, export_pipeline
    from sd_ovopt.evaluation import image_fidelity
    from sd_ovopt.evaluation.results import machine_info
    from sd_ovopt.reference import generate_images, held_out_prompts, reference_model_dir, score_images

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    folder = args.work / "reference-ov"
    if not (folder / "sd_ovopt.json").is_file():
        export_pipeline(str(reference_model_dir()), folder, batch_size=BATCH, overwrite=True)
    prompts = [spec.prompt for spec in held_out_prompts()[: args.prompts]]
    config = {} if args.threads is None else {"INFERENCE_NUM_THREADS": args.threads}
    images, seconds, ran = {}, {}, {}
    for precision in ("f32", "bf16"):
        pipe = SdOvOptPipeline.from_pretrained(folder, precision=precision, ov_config=config)
        pipe.set_progress_bar_config(disable=True)
        ran[precision] = pipe.inference_precision
        t0 = time.perf_counter()
        images[precision] = {
            seed: generate_images(
                pipe, prompts, seed=seed, num_inference_steps=STEPS, guidance_scale=GUIDANCE
            )
            for seed in args.seeds
        }
        seconds[precision] = time.perf_counter() - t0
        del pipe

    rows = {}
    for precision, by_seed in images.items():
        scores = [
            image_fidelity(a, b)
            for seed in args.seeds
            for a, b in zip(by_seed[seed], images["f32"][seed], strict=True)
        ]
        accuracy = {str(seed): score_images(by_seed[seed], prompts).accuracy for seed in args.seeds}
        rows[precision] = {
            "runtime_precision": ran[precision],
            **fidelity_stats(scores),
            "accuracy": round(statistics.fmean(accuracy.values()), 4),
            "accuracy_by_seed": accuracy,
            "generate_s": round(seconds[precision], 1),
        }
    result = {
        "settings": {
            "prompts": len(prompts),
            "seeds": args.seeds,
            "steps": STEPS,
            "guidance_scale": GUIDANCE,
            "threads": args.threads,
        },
        "machine": machine_info(),
        "rows": rows,
    }
    (args.work / "bf16_fidelity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU: {result['machine']['cpu']} ({', '.join(result['machine']['isa'])})")
    print(f"{len(prompts)} held-out prompts x seeds {args.seeds}, {STEPS} steps, guidance {GUIDANCE}\n")
    print(
        "| precision | ran as | PSNR vs f32, mean / median (min) dB | images < 30 dB | SSIM | prompt accuracy |"
    )
    print("|---|---|---|---|---|---|")
    n = len(prompts) * len(args.seeds)
    for precision, row in rows.items():
        print(
            f"| {precision} | {row['runtime_precision']} | {row['psnr_db_mean']} / {row['psnr_db_median']} "
            f"({row['psnr_db_min']}) | {row['images_under_30_db']} of {n} | {row['ssim_mean']} | "
            f"{100 * row['accuracy']:.1f} % |"
        )


if __name__ == "__main__":
    main()
