"""QAT against PTQ on the shipped reference model: UNet error against FP32 on held-out inputs, and prompt
accuracy of generated images, for FP32, PTQ INT8 and QAT INT8 (all three as OpenVINO pipelines).

    python benchmarks/qat_vs_ptq.py --work /tmp/qat-ref --steps 300

Stages (a stage whose output exists is skipped, so a killed run resumes):

1. ``data``: 2000 training images of the shapes dataset (train prompts only).
2. ``train``: ``train_qat`` from the reference model: PTQ (calibrated on 32 training captions) is exported
   to ``run/ptq-ov``, then the same student is fine-tuned (distillation + task loss, EMA) and exported
   to ``run/ov``. ``--tome-ratio`` applies ToMe to the student first.
3. ``fp32``: ``export_pipeline`` of the reference model.
4. ``eval``: held-out inputs are the 144 held-out prompts (never trained on nor calibrated with), encoded
   by the text encoder, with seeded noisy latents at seeded timesteps (one generator seeded 0, drawn
   input after input). Each INT8 UNet IR is compared with the FP32 UNet IR on them (mean
   relative L2 error); each pipeline generates the 144 held-out prompts with each ``--seeds`` value
   (20 DDIM steps, guidance 4; prompt ``i`` of seed ``s`` draws its noise from ``noise_generator(s, i)``,
   as ``python -m sd_ovopt.reference.evaluate`` does) and the judge scores colour and shape.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _stage_data(work: Path) -> None:
    from sd_ovopt.reference import write_dataset

    write_dataset(work / "data", 2000, seed=1, split="train")


def _stage_train(work: Path, args: argparse.Namespace) -> None:
    from sd_ovopt import QATConfig, ToMeConfig, train_qat

    config = QATConfig(
        learning_rate=args.lr,
        max_train_steps=args.steps,
        train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        checkpointing_steps=max(args.steps // 4, 1),
        ema_decay=0.99,
        task_loss_weight=args.task_weight,
        distillation_loss_weight=args.distillation_weight,
        calibration_prompts=32,
        export_ptq=True,
    )
    t0 = time.perf_counter()
    train_qat(
        args.model,
        work / "data",
        work / "run",
        config,
        tome=ToMeConfig(ratio=args.tome_ratio) if args.tome_ratio else None,
        resume_from_checkpoint="latest",
        cpu=True,
    )
    (work / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")


def _stage_fp32(work: Path, model: str) -> None:
    from sd_ovopt import export_pipeline

    export_pipeline(model, work / "fp32")


def _held_out_inputs(model: str, count: int) -> list[dict]:
    """Held-out prompts' drawn images, VAE-encoded and noised with the DDPM schedule at seeded timesteps."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    from sd_ovopt._loading import load_sd_pipeline
    from sd_ovopt.reference import held_out_prompts, render

    pipe = load_sd_pipeline(model)
    specs = held_out_prompts()[:count]
    tok = pipe.tokenizer
    ids = tok(
        [s.prompt for s in specs],
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    pixels = torch.from_numpy(np.stack([np.asarray(render(s)) for s in specs])).permute(0, 3, 1, 2)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        states = pipe.text_encoder(ids)[0]
        empty = pipe.text_encoder(
            tok(
                [""] * 1, padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
            ).input_ids
        )[0]
        latents = (
            pipe.vae.encode(pixels.float() / 127.5 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        )
    inputs = []
    for i in range(count):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=gen)
        noise = torch.randn(latents[i : i + 1].shape, generator=gen)
        noisy = scheduler.add_noise(latents[i : i + 1], noise, t)
        # Static batch 2 (classifier-free guidance): unconditional and conditional, as the pipeline calls it.
        inputs.append(
            {
                "sample": noisy.repeat(2, 1, 1, 1).numpy(),
                "timestep": t.float().numpy(),
                "encoder_hidden_states": torch.cat([empty, states[i : i + 1]]).numpy(),
            }
        )
    return inputs


def _prompt_scores(pipe: object, prompts: list[str], seeds: list[int]) -> tuple[dict, list]:
    """Judge scores of ``pipe``'s images of ``prompts`` (means over ``seeds``), and the first seed's images."""
    from sd_ovopt.reference import generate_images, score_images

    by_seed = {
        seed: generate_images(pipe, prompts, seed=seed, num_inference_steps=20, guidance_scale=4.0)
        for seed in seeds
    }
    scores = {seed: score_images(images, prompts) for seed, images in by_seed.items()}
    row = {
        key: round(sum(getattr(score, key) for score in scores.values()) / len(scores), 4)
        for key in ("accuracy", "colour_accuracy", "shape_accuracy")
    }
    row["accuracy_by_seed"] = {str(seed): score.accuracy for seed, score in scores.items()}
    return row, by_seed[seeds[0]]


def _stage_eval(work: Path, model: str, seeds: list[int]) -> dict:
    import numpy as np
    import openvino as ov

    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.reference import held_out_prompts, make_grid

    folders = {"fp32": work / "fp32", "ptq-int8": work / "run" / "ptq-ov", "qat-int8": work / "run" / "ov"}
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    unets = {
        k: core.compile_model(v / "unet" / "openvino_model.xml", "CPU", config) for k, v in folders.items()
    }
    inputs = _held_out_inputs(model, 144)
    reference = [unets["fp32"](x)[0] for x in inputs]
    prompts = [s.prompt for s in held_out_prompts()]
    rows: dict[str, dict] = {}
    grids = []
    for name, folder in folders.items():
        outputs = [unets[name](x)[0] for x in inputs]
        rel = [
            float(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(outputs, reference, strict=True)
        ]
        pipe = SdOvOptPipeline.from_pretrained(folder, precision="f32")
        pipe.set_progress_bar_config(disable=True)
        scores, images = _prompt_scores(pipe, prompts, seeds)
        grids.append(make_grid(images[:24], columns=24))
        rows[name] = {"unet_rel_error_vs_fp32": round(float(np.mean(rel)), 5), **scores}
    make_grid(grids, columns=1, scale=1).save(work / "grid.png")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument(
        "--model", default=None, help="diffusers folder (default: the shipped reference model)"
    )
    parser.add_argument("--steps", type=int, default=300, help="QAT optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--tome-ratio", type=float, default=None)
    parser.add_argument("--task-weight", type=float, default=1.0, help="loss weight on the noise target")
    parser.add_argument("--distillation-weight", type=float, default=1.0, help="loss weight on the teacher")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds of the prompt scores"
    )
    args = parser.parse_args()
    if args.model is None:
        from sd_ovopt.reference import reference_model_dir

        args.model = str(reference_model_dir())
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data" / "metadata.jsonl").is_file():
        _stage_data(work)
    if not (work / "run" / "ov" / "sd_ovopt.json").is_file():
        _stage_train(work, args)
    if not (work / "fp32" / "sd_ovopt.json").is_file():
        _stage_fp32(work, args.model)
    rows = _stage_eval(work, args.model, args.seeds)
    report = json.loads((work / "run" / "qat_report.json").read_text())
    result = {"settings": vars(args) | {"work": str(work)}, "qat_report": report, "rows": rows}
    (work / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    seeds = " / ".join(map(str, args.seeds))
    print(
        f"\n| variant | UNet rel. error vs FP32 (held-out) | prompt accuracy (seed {seeds}) | colour | shape |"
    )
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        by_seed = " / ".join(f"{100 * a:.1f}" for a in row["accuracy_by_seed"].values())
        print(
            f"| {name} | {row['unet_rel_error_vs_fp32']:.4f} | {100 * row['accuracy']:.1f} % ({by_seed}) | "
            f"{100 * row['colour_accuracy']:.1f} % | {100 * row['shape_accuracy']:.1f} % |"
        )


if __name__ == "__main__":
    main()
