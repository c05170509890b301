"""Export a Stable Diffusion pipeline to OpenVINO, then ToMe + INT8, and compare with PyTorch.

    python examples/quickstart.py                      # the embedded tiny pipeline (random weights)
    python examples/quickstart.py path/to/sd15 --height 512 --width 512 --steps 20

Writes ``quickstart_output/`` with the exported folders and one PNG per variant, and prints how far
each variant's image is from the PyTorch one (same prompt, same seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from sd_ovopt import QuantizationConfig, SdOvOptPipeline, ToMeConfig, export_pipeline, optimize_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="local diffusers SD folder (default: tiny)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompt", default="a red circle on a blue background")
    parser.add_argument("--out", type=Path, default=Path("quickstart_output"))
    args = parser.parse_args()

    if args.model is None:
        from sd_ovopt.testing import tiny_pipeline

        pipe = tiny_pipeline()
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.model, local_files_only=True, safety_checker=None)
    size = {"height": args.height, "width": args.width}
    call = {"num_inference_steps": args.steps, "output_type": "np"}

    def generate(p):
        return p(args.prompt, generator=torch.Generator().manual_seed(0), **call).images[0]

    reference = generate(pipe)
    fp32 = export_pipeline(pipe, args.out / "fp32", overwrite=True, **size)
    int8 = optimize_pipeline(  # ToMe, calibration along the merged UNet's sampling, INT8, export
        pipe,
        args.out / "tome-int8",
        methods=[ToMeConfig(ratio=0.4), QuantizationConfig(subset_size=32)],
        calibration_prompts=[args.prompt, "a green square"],
        calibration_steps=args.steps,
        overwrite=True,
        **size,
    )

    for name, path in (("fp32", fp32), ("tome-int8", int8)):
        image = generate(SdOvOptPipeline.from_pretrained(path, precision="f32"))
        diff = np.abs(image - reference).mean() * 255
        SdOvOptPipeline.numpy_to_pil(image)[0].save(args.out / f"{name}.png")
        print(f"{name}: mean |OpenVINO - PyTorch| = {diff:.2f} / 255, image {args.out / (name + '.png')}")


if __name__ == "__main__":
    main()
