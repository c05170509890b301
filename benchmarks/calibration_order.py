"""Which calibration the recipe should use with ToMe: inputs recorded along the merged UNet's own sampling
(what the deployed model sees), or along the float, unmerged UNet's sampling. Measured on the reference
model as the INT8 UNet's error against the FP32 UNet on held-out inputs.

    python benchmarks/calibration_order.py [--model DIR] [--tome-ratio 0.4] [--samples 200]

Both INT8 UNets get the same ToMe ratio, the same quantization settings and the same calibration prompts
(training prompts of the reference model); only the trajectory the inputs are recorded along differs.
Held-out inputs: the float pipeline's own sampling of held-out prompts (never calibrated on), 20 DDIM
steps, guidance 4. Error: mean over inputs of ||int8(x) - fp32(x)|| / ||fp32(x)|| (PyTorch, fake-quantized).
"""

from __future__ import annotations

import argparse
import copy
import json


def main() -> None:
    import torch

    from sd_ovopt import QuantizationConfig, ToMeConfig, collect_calibration
    from sd_ovopt._hardware import cpu_summary
    from sd_ovopt._loading import load_sd_pipeline
    from sd_ovopt.recipes import prepare_unet
    from sd_ovopt.reference import held_out_prompts, reference_model_dir, train_prompts
    from sd_ovopt.tome import apply_tome

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="diffusers folder (default: the shipped reference model)"
    )
    parser.add_argument("--tome-ratio", type=float, default=0.4)
    parser.add_argument("--samples", type=int, default=200, help="calibration samples")
    parser.add_argument("--held-out", type=int, default=16, help="held-out prompts whose sampling is scored")
    args = parser.parse_args()

    pipe = load_sd_pipeline(args.model or reference_model_dir())
    pipe.set_progress_bar_config(disable=True)
    steps, guidance = 20, 4.0
    tome = ToMeConfig(ratio=args.tome_ratio)
    quantization = QuantizationConfig(subset_size=args.samples)
    prompts = [spec.prompt for spec in train_prompts()[::12]]
    record = {"num_inference_steps": steps, "guidance_scale": guidance, "show_progress": False}
    passes = -(-args.samples // (len(prompts) * steps))

    held = [spec.prompt for spec in held_out_prompts()[:: max(1, 144 // args.held_out)]][: args.held_out]
    inputs = collect_calibration(pipe, held, **record)
    with torch.no_grad():
        expected = [pipe.unet(**x).sample for x in inputs]

    float_trajectory = collect_calibration(pipe, prompts * passes, max_samples=args.samples, **record)
    students = {
        "merged UNet's own sampling (recipe)": prepare_unet(
            pipe, [tome, quantization], calibration_prompts=prompts, **record
        ),
        "float UNet's sampling": prepare_unet(pipe, [tome, quantization], calibration=float_trajectory),
    }
    merged_float = apply_tome(copy.deepcopy(pipe.unet), tome)  # ToMe alone, no INT8
    rows = {}
    for name, unet in {**students, "ToMe only (float)": merged_float}.items():
        with torch.no_grad():
            errors = [
                float((unet(**x).sample - e).norm() / e.norm()) for x, e in zip(inputs, expected, strict=True)
            ]
        rows[name] = sum(errors) / len(errors)
    result = {
        "cpu": cpu_summary(),
        "model": str(args.model or reference_model_dir()),
        "tome_ratio": args.tome_ratio,
        "calibration_samples": args.samples,
        "held_out_inputs": len(inputs),
        "unet_rel_error_vs_fp32": rows,
    }
    print(json.dumps(result, indent=2))
    print("\n| calibration recorded along | UNet rel. error vs FP32 (held-out) |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
