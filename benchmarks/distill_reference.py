"""Few-step students of the shipped reference model: the INT8 student distilled and quantized in one loop
against a float student distilled the same way and then post-training-quantized by the recipe, both
against their FP32 teacher, judged on the held-out prompts.

    python benchmarks/distill_reference.py --work /tmp/distill-ref --steps 600
    python benchmarks/distill_reference.py --work /tmp/distill-ref --combine /tmp/distill-ref /tmp/ref-seed1

Stages (a stage whose output exists is skipped, so a killed run resumes where it stopped):

1. ``data``: 2000 training images of the shapes dataset (train prompts only; ``--data`` reuses a folder).
2. ``int8``: ``distill_student`` with ``DistillConfig(student="int8")``: the student is fake-quantized
   from step 0 (calibrated on 32 training captions along the teacher's sampling); ``int8/ov``.
3. ``float``: the same loop, settings and data order with ``student="float"``; ``float/ov`` (float) and
   ``float/diffusers`` (PyTorch). ``lora-int8`` (only with ``--kinds``): the fused run with a LoRA
   student instead (``DistillConfig(lora_rank=--lora-rank)``, learning rate ``--lora-lr``); ``lora-int8/ov``.
4. ``ptq``: ``optimize_pipeline(float/diffusers, methods=[QuantizationConfig()])`` calibrated on the same
   32 captions along the student's own guidance-free 4-step LCM sampling; ``float-ptq``. The same with
   step caching (interval 2: full, shallow, full, shallow at 4 steps) before INT8: ``float-ptq-cached``.
   Only when the ``float`` run is among ``--kinds``. With ``--tome-ratio R`` both INT8 arms merge tokens:
   the fused student trains with ``ToMeConfig(ratio=R)`` applied, and ``float-ptq`` is the recipe's
   ToMe + INT8 (``methods=[ToMeConfig(ratio=R), QuantizationConfig()]``); no step-caching arm then.
5. ``fp32``: ``export_pipeline`` of the teacher, and a guidance-free export of it with the LCM scheduler
   (what the students start from).
6. ``eval``: every folder at ``precision="f32"`` generates the 144 held-out prompts with each ``--seeds``
   value (prompt ``i`` of seed ``s`` draws its noise from ``noise_generator(s, i)``): the teacher at 20
   DDIM steps with guidance 4, the undistilled teacher and each student at 1, 2 and 4 LCM steps without
   guidance; the judge scores colour, shape and position (the students of ``--kinds`` only). ``curve``:
   each run's mean loss per tenth of its steps.

Both runs train on one thread each by default (``--threads``), so the two can run side by side on two
cores (``--only int8`` and ``--only float`` in two processes, then one process without ``--only``).
The LoRA student against the full one: ``--kinds int8 lora-int8`` (``--only`` each, then together).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STUDENT_STEPS = (1, 2, 4)
KINDS = ("int8", "float", "lora-int8")
CALIBRATION_PROMPTS = 32


def _stage_data(data: Path) -> None:
    from sd_ovopt.reference import write_dataset

    write_dataset(data, 2000, seed=1, split="train")


def _stage_train(work: Path, data: Path, kind: str, args: argparse.Namespace) -> None:
    from sd_ovopt import DistillConfig, QATConfig, ToMeConfig, distill_student

    config = QATConfig(
        learning_rate=args.lora_lr if kind == "lora-int8" else args.lr,
        max_train_steps=args.steps,
        train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        checkpointing_steps=max(args.steps // 12, 1),
        checkpoints_total_limit=2,
        ema_decay=args.ema_decay,
        calibration_prompts=CALIBRATION_PROMPTS,
        calibration_steps=args.teacher_steps,
        eval_samples=32,
        seed=args.train_seed,
    )
    lora = kind == "lora-int8"
    tome = ToMeConfig(ratio=args.tome_ratio) if args.tome_ratio and kind != "float" else None
    distillation = DistillConfig(
        guidance_scale=args.guidance_scale,
        num_ddim_timesteps=args.num_ddim_timesteps,
        student="float" if kind == "float" else "int8",
        lora_rank=args.lora_rank if lora else 0,
    )
    t0 = time.perf_counter()
    distill_student(
        args.model, data, work / kind, config, distillation=distillation, tome=tome,
        resume_from_checkpoint="latest", cpu=True, show_progress=False,
    )  # fmt: skip
    (work / kind / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")


def _stage_ptq(work: Path, data: Path, name: str, methods: list) -> None:
    """The recipe's INT8 of the float student (``methods`` before it), calibrated along its 4-step sampling."""
    from sd_ovopt import QuantizationConfig, optimize_pipeline

    lines = (data / "metadata.jsonl").read_text().splitlines()
    captions = list(dict.fromkeys(json.loads(line)["text"] for line in lines if line.strip()))
    captions = captions[:CALIBRATION_PROMPTS]  # the captions the fused run calibrates on
    optimize_pipeline(
        work / "float" / "diffusers", work / name, methods=[*methods, QuantizationConfig()],
        calibration_prompts=captions, calibration_steps=4, guidance_scale=1.0, show_progress=False,
    )  # fmt: skip


def _scores(pipe: object, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> dict:
    from sd_ovopt.reference import generate_images, score_images

    by_seed = {
        seed: score_images(
            generate_images(pipe, prompts, seed=seed, num_inference_steps=steps, guidance_scale=guidance),
            prompts,
        )
        for seed in seeds
    }
    keys = ("accuracy", "colour_accuracy", "shape_accuracy", "position_accuracy")
    row = {k: round(sum(getattr(s, k) for s in by_seed.values()) / len(by_seed), 4) for k in keys}
    row["accuracy_by_seed"] = {str(seed): score.accuracy for seed, score in by_seed.items()}
    return row


def _stage_eval(work: Path, seeds: list[int], kinds: list[str], cached: bool) -> dict:
    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.reference import held_out_prompts

    prompts = [s.prompt for s in held_out_prompts()]
    few = [(n, 1.0) for n in STUDENT_STEPS]
    runs = {
        "fp32-teacher": (work / "fp32", [(20, 4.0)]),
        "fp32-teacher-lcm": (work / "fp32-lcm", few),
        "int8-fused": (work / "int8" / "ov", few),
        "int8-fused-lora": (work / "lora-int8" / "ov", few),
        "float-student": (work / "float" / "ov", few),
        "float-then-ptq": (work / "float-ptq", few),
        "float-then-ptq + step caching": (work / "float-ptq-cached", [(2, 1.0), (4, 1.0)]),
    }
    of_kind = {"int8-fused": "int8", "int8-fused-lora": "lora-int8"}
    runs = {
        name: run
        for name, run in runs.items()
        if of_kind.get(name, "float" if "float" in name else "teacher") in [*kinds, "teacher"]
        and (cached or "caching" not in name)
    }
    rows = {}
    for name, (folder, calls) in runs.items():
        pipe = SdOvOptPipeline.from_pretrained(folder, precision="f32")
        pipe.set_progress_bar_config(disable=True)
        for steps, guidance in calls:
            rows[f"{name} {steps} steps"] = _scores(pipe, prompts, seeds, steps, guidance)
    return rows


def _curve(run: Path, parts: int = 10) -> list[float]:
    """Mean loss per tenth of the run's steps, from its training log."""
    losses = [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    size = max(len(losses) // parts, 1)
    return [
        round(sum(losses[i : i + size]) / len(losses[i : i + size]), 6) for i in range(0, len(losses), size)
    ]


def _print_table(rows: dict, seeds: list[int]) -> None:
    names = " / ".join(map(str, seeds))
    print(f"\n| variant | prompt accuracy (seed {names}) | colour | shape | position |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        by_seed = " / ".join(f"{100 * a:.1f}" for a in row["accuracy_by_seed"].values())
        print(
            f"| {name} | {100 * row['accuracy']:.1f} % ({by_seed}) | {100 * row['colour_accuracy']:.1f} % | "
            f"{100 * row['shape_accuracy']:.1f} % | {100 * row['position_accuracy']:.1f} % |"
        )


def _combine(works: list[Path]) -> None:
    """One table over several runs' ``result.json`` (e.g. one per ``--train-seed``): each row's accuracy
    per run (mean over the noise seeds), their mean, and the largest noise-seed spread of a run."""
    results = [json.loads((work / "result.json").read_text()) for work in works]
    seeds = " / ".join(str(r["settings"].get("train_seed", 0)) for r in results)
    print(f"\n| variant | accuracy per training run ({seeds}) | mean | noise-seed spread (largest) |")
    print("|---|---|---|---|")
    for name in results[0]["rows"]:
        rows = [r["rows"][name] for r in results]
        spread = max(
            max(row["accuracy_by_seed"].values()) - min(row["accuracy_by_seed"].values()) for row in rows
        )
        mean = sum(row["accuracy"] for row in rows) / len(rows)
        runs = " / ".join(f"{100 * row['accuracy']:.1f}" for row in rows)
        print(f"| {name} | {runs} | {100 * mean:.1f} % | {100 * spread:.1f} |")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument(
        "--model", default=None, help="diffusers folder (default: the shipped reference model)"
    )
    parser.add_argument("--data", type=Path, default=None, help="training images (default WORK/data)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of each run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--ema-decay", type=float, default=0.95, help="the target network's decay")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="the teacher's guidance")
    parser.add_argument("--num-ddim-timesteps", type=int, default=50)
    parser.add_argument("--teacher-steps", type=int, default=20, help="steps of the calibration sampling")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds of the scores")
    parser.add_argument("--train-seed", type=int, default=0, help="QATConfig.seed: data order and noise")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--only", choices=KINDS, default=None, help="train one run, then stop")
    parser.add_argument(
        "--kinds", choices=KINDS, nargs="+", default=["int8", "float"], help="the students to train and score"
    )
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the lora-int8 student")
    parser.add_argument("--lora-lr", type=float, default=1e-4, help="learning rate of the lora-int8 student")
    parser.add_argument(
        "--tome-ratio",
        type=float,
        default=None,
        help="ToMe on both INT8 arms: on the fused student while it trains, before the float student's PTQ",
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="print one table of these finished --work folders",
    )
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    if args.combine:
        _combine(args.combine)
        return
    import torch

    torch.set_num_threads(args.threads)
    if args.model is None:
        from sd_ovopt.reference import reference_model_dir

        args.model = str(reference_model_dir())
    work, data = args.work, args.data or args.work / "data"
    work.mkdir(parents=True, exist_ok=True)
    if not (data / "metadata.jsonl").is_file():
        _stage_data(data)
    for kind in (args.only,) if args.only else args.kinds:
        if not (work / kind / "ov" / "sd_ovopt.json").is_file():
            _stage_train(work, data, kind, args)
    if args.only:
        return
    from sd_ovopt import DeepCacheConfig, ToMeConfig

    arms = [("float-ptq", [ToMeConfig(ratio=args.tome_ratio)] if args.tome_ratio else [])]
    if not args.tome_ratio:
        arms.append(("float-ptq-cached", [DeepCacheConfig(interval=2)]))
    for name, methods in arms:
        if "float" in args.kinds and not (work / name / "sd_ovopt.json").is_file():
            _stage_ptq(work, data, name, methods)
    from sd_ovopt import export_pipeline

    if not (work / "fp32" / "sd_ovopt.json").is_file():
        export_pipeline(args.model, work / "fp32", show_progress=False)
    if not (work / "fp32-lcm" / "sd_ovopt.json").is_file():
        export_pipeline(
            args.model,
            work / "fp32-lcm",
            classifier_free_guidance=False,
            scheduler="lcm",
            show_progress=False,
        )
    rows = _stage_eval(work, args.seeds, args.kinds, cached=not args.tome_ratio)
    curves = {kind: _curve(work / kind) for kind in args.kinds}
    seconds = {kind: float((work / kind / "train_seconds.txt").read_text()) for kind in args.kinds}
    result = {
        "settings": vars(args) | {"work": str(work)},
        "rows": rows,
        "curves": curves,
        "seconds": seconds,
    }
    (work / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({"curves": curves, "seconds": seconds}, indent=1))
    _print_table(rows, args.seeds)


if __name__ == "__main__":
    main()
