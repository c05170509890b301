"""Does the tiny autoencoder keep the reference model's images, in float and with its decoder in INT8?

    python benchmarks/tiny_vae_fidelity.py --work /tmp/tiny-vae-fidelity

The reference model's tiny autoencoder (TAESD's architecture, ``python -m sd_ovopt.reference.tiny_vae``;
shipped in ``sd_ovopt/reference/data/shapes-taesd``) replaces the full VAE of two folders, in float with
:func:`sd_ovopt.replace_vae` and with an INT8 decoder with :func:`sd_ovopt.replace_vae_int8` (calibrated
on each folder's own latents of 8 training-split prompts, at the steps and guidance scored below):

- ``teacher``: the reference model exported as it is (20 DDIM steps, guidance 4);
- ``student``: its shipped few-step INT8 student (4 LCM steps, no guidance).

Each is scored by the judge on the 144 held-out prompts per seed (colour and shape both right), at
sd_ovopt's default precision, and the INT8 decoder's images are compared with the float one's, and the
tiny decoder's with the full VAE's (PSNR and SSIM per image, summarized as the other fidelity scripts do).
Prints one JSON object; ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from fidelity_stats import fidelity_stats

# (folder, steps, guidance) of each model
_CALLS = {"teacher": (20, 4.0), "student": (4, 1.0)}


def _folders(work: Path, tiny_vae: str) -> dict[str, Path]:
    """The two models, each with its full VAE, the tiny one and the tiny one with an INT8 decoder."""
    from sd_ovopt import export_pipeline, replace_vae, replace_vae_int8
    from sd_ovopt.reference import few_step_model_dir, reference_model_dir, sample_specs

    teacher = work / "teacher-full"
    if not teacher.is_dir():
        export_pipeline(reference_model_dir(), teacher, show_progress=False)
    folders = {"teacher full": teacher, "student full": few_step_model_dir()}
    for model, (steps, guidance) in _CALLS.items():
        source = folders[f"{model} full"]
        folders[f"{model} tiny"] = work / f"{model}-tiny"
        folders[f"{model} tiny-int8"] = work / f"{model}-tiny-int8"
        if not folders[f"{model} tiny"].is_dir():
            replace_vae(source, tiny_vae, folders[f"{model} tiny"])
        if not folders[f"{model} tiny-int8"].is_dir():
            # calibrated on the folder's own sampling, as it is called below
            replace_vae_int8(
                source,
                tiny_vae,
                folders[f"{model} tiny-int8"],
                calibration_prompts=[spec.prompt for spec in sample_specs(8, seed=1000)],
                calibration_steps=steps,
                guidance_scale=guidance,
            )
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for the exported variants (reused)")
    parser.add_argument("--tiny-vae", default=None, help="tiny autoencoder folder (default: the shipped one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.evaluation import image_fidelity
    from sd_ovopt.reference import generate_images, held_out_prompts, score_images, tiny_vae_dir

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folders = _folders(work, args.tiny_vae or str(tiny_vae_dir()))
    prompts = [spec.prompt for spec in held_out_prompts()]
    rows: dict[str, dict] = {}
    images: dict[str, dict[int, list]] = {}
    for name, folder in folders.items():
        steps, guidance = _CALLS[name.split()[0]]
        pipe = SdOvOptPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        images[name] = {
            seed: generate_images(
                pipe, prompts, seed=seed, num_inference_steps=steps, guidance_scale=guidance
            )
            for seed in args.seeds
        }
        accuracy = {seed: score_images(images[name][seed], prompts).accuracy for seed in args.seeds}
        rows[name] = {
            "steps": steps,
            "accuracy": float(np.mean(list(accuracy.values()))),
            "per_seed": {str(s): a for s, a in accuracy.items()},
            "spread": max(accuracy.values()) - min(accuracy.values()),
            "precision": pipe.inference_precision,
        }
        print(name, json.dumps(rows[name]), flush=True)
    for model in _CALLS:
        for a, b in (("tiny-int8", "tiny"), ("tiny", "full")):
            scores = [
                image_fidelity(x, y)
                for s in args.seeds
                for x, y in zip(images[f"{model} {a}"][s], images[f"{model} {b}"][s], strict=True)
            ]
            rows[f"{model} {a} vs {b}"] = fidelity_stats(scores)
    text = json.dumps(rows, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
