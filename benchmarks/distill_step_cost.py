"""One consistency-distillation step on the SD-1.5 architecture: its time and the process's peak memory.

    python benchmarks/distill_step_cost.py --student lora-int8 --steps 3 --output distill-step.json
    python benchmarks/distill_step_cost.py --student int8 --device cuda --steps 5   # on a GPU

Random weights of SD-1.5's real shapes (:func:`sd_ovopt.testing.sd15_pipeline`; a step costs the same as
with the real weights), 512x512 images (64x64 latents), batch 1, float32, on the CPU or
(``--device cuda``) a GPU: the models are built and the INT8 student calibrated on the CPU, then moved;
the EMA weights stay in CPU memory, as :func:`sd_ovopt.distill_student` keeps them by default, or
live on the GPU with ``--ema-device accelerator`` (``QATConfig.ema_device``). Each ``--student``
runs in its own process, so the peak resident memory (``ru_maxrss``) and, on a GPU, the peak of torch's
allocations are that student's alone:

- ``lora-int8``: the fused run's LoRA student (rank ``--rank`` on LCM-LoRA's layers), fake-quantized by
  NNCF (calibrated on one guided pipeline step of one prompt: the step's cost does not depend on it);
- ``lora-float``: the same adapters on a float student;
- ``int8`` / ``float``: full-UNet students. They hold teacher, student, EMA, gradients and two AdamW
  moments (6 x 3.44 GB of float32 before activations) and need more memory than a 24 GiB machine has.

A step is what :func:`sd_ovopt.distill_student` does per optimizer step: the teacher's two UNet calls (with
and without the prompt), the target network's call (EMA weights), the student's forward and backward,
AdamW, the EMA update. The first step is a warm-up and not counted; the median of the others is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("lora-int8", "lora-float", "int8", "float")


def _gib_peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _student(pipe, kind: str, rank: int):
    from sd_ovopt import QuantizationConfig, collect_calibration, quantize_unet
    from sd_ovopt.distill import add_lora_student

    if kind.endswith("int8"):
        calibration = collect_calibration(
            pipe, ["a photo of a cat"], num_inference_steps=1, guidance_scale=7.5, show_progress=False
        )
        student = quantize_unet(pipe, calibration, QuantizationConfig(subset_size=len(calibration)))
    else:
        student = copy.deepcopy(pipe.unet)
    return add_lora_student(student, rank) if kind.startswith("lora") else student


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def measure(kind: str, steps: int, rank: int, device: str = "cpu", ema_device: str = "cpu") -> dict:
    """Build the pipeline and the student, run ``steps`` distillation steps; their times and the peaks."""
    import torch

    from sd_ovopt import DistillConfig, QATConfig
    from sd_ovopt.distill import ConsistencyDistillationModel
    from sd_ovopt.testing import sd15_pipeline

    torch.manual_seed(0)
    pipe = sd15_pipeline()
    student = _student(pipe, kind, rank)
    config = QATConfig(ema_decay=0.95, learning_rate=1e-6, ema_device=ema_device)
    distillation = DistillConfig(guidance_scale=8.0, student="int8" if kind.endswith("int8") else "float")
    model = ConsistencyDistillationModel(pipe, student, config, distillation, copy_teacher=False).to(device)
    model.place_ema(device)  # as distill_student does
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=config.learning_rate)
    trained = sum(p.numel() for group in model.parameter_groups() for p in group["params"])
    built_peak = _gib_peak()
    generator = torch.Generator().manual_seed(0)
    size, width = pipe.unet.config.sample_size, pipe.unet.config.cross_attention_dim  # SD-1.5: 64, 768
    times = []
    for _ in range(steps):
        batch = tuple(
            tensor.to(device)
            for tensor in (
                torch.randn(1, 4, size, size, generator=generator),
                torch.randn(1, 77, width, generator=generator),
                torch.randn(1, 4, size, size, generator=generator),
                torch.randint(0, 1000, (1,), generator=generator),
            )
        )
        _synchronize(device)
        start = time.perf_counter()
        loss = model(*batch)
        loss.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_ema()
        _synchronize(device)
        times.append(time.perf_counter() - start)
        if not torch.isfinite(loss.total):
            raise SystemExit(f"{kind}: the loss is not finite")
    return {
        "student": kind,
        "rank": rank if kind.startswith("lora") else None,
        "trained_parameters": trained,
        "step_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
        "step_times_s": times,
        "peak_rss_gib_after_building": built_peak,
        "peak_rss_gib": _gib_peak(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "ema_device": ema_device,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", choices=KINDS, action="append", help="repeatable; default lora-int8")
    parser.add_argument("--steps", type=int, default=3, help="steps per student, the first a warm-up")
    parser.add_argument("--rank", type=int, default=64, help="the LoRA rank (LCM-LoRA: 64)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the steps run")
    parser.add_argument(
        "--ema-device",
        choices=("cpu", "accelerator"),
        default="cpu",
        help="QATConfig.ema_device (default cpu)",
    )
    parser.add_argument("--output", type=Path, help="JSON file for the rows")
    parser.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)  # a child process: one student
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.rank, args.device, args.ema_device)))
        return 0
    rows = []
    for kind in args.student or ["lora-int8"]:
        command = [
            sys.executable,
            __file__,
            "--one",
            kind,
            "--steps",
            str(args.steps),
            "--rank",
            str(args.rank),
            "--device",
            args.device,
            "--ema-device",
            args.ema_device,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            rows.append(
                {"student": kind, "error": done.stderr.strip().splitlines()[-1:] or [done.returncode]}
            )
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"machine": platform.processor(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
