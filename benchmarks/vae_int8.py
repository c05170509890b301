"""VAE decoder in INT8 (activations and weights, nncf.quantize) against f32 and bf16, on the reference model.

    python benchmarks/vae_int8.py --work /tmp/vae-int8 --threads 1

The shipped reference model (32x32 images) is exported once to OpenVINO at f32. Latents are recorded
from real sampling (the f32 pipeline, 20 steps, guidance 4): calibration latents along training prompts,
evaluation latents along the held-out prompts (prompt ``i`` of seed ``s`` draws its noise from
``noise_generator(s, i)``, as ``python -m sd_ovopt.reference.evaluate`` does; calibration uses seed
1000). Every decoder decodes the same evaluation latents, so the images differ only by the decoder:
PSNR and SSIM against the f32 decoder's images, and the reference judge's prompt accuracy. Decoders: f32, bf16 (where OpenVINO reports BF16), and the INT8 decoder with
NNCF's ``performance`` (symmetric) and ``mixed`` (asymmetric activations) presets, each run with the f32
and the bf16 hint (the hint decides the precision of the ops left in float).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from fidelity_stats import fidelity_stats

STEPS, GUIDANCE, BATCH = 20, 4.0, 16


def export_reference(work: Path) -> Path:
    """The reference model as an OpenVINO folder (f32 weights, batch 16), exported on first use."""
    from sd_ovopt import export_pipeline
    from sd_ovopt.reference import reference_model_dir

    folder = work / "reference-ov"
    if not (folder / "sd_ovopt.json").is_file():
        export_pipeline(str(reference_model_dir()), folder, batch_size=BATCH, overwrite=True)
    return folder


def load_pipeline(folder: Path, precision: str, threads: int | None) -> Any:
    from sd_ovopt import SdOvOptPipeline

    config = {} if threads is None else {"INFERENCE_NUM_THREADS": threads}
    pipe = SdOvOptPipeline.from_pretrained(folder, precision=precision, ov_config=config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe: Any, prompts: list[str], seed: int, output_type: str) -> list[np.ndarray]:
    """One output per prompt (latents, or float images in [0, 1]); prompt ``i`` draws its noise from
    ``noise_generator(seed, i)``. The last call is padded to the static batch with the next indices' noise;
    the padding's outputs are dropped."""
    from sd_ovopt._seeding import noise_generator

    out: list[np.ndarray] = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        n = len(chunk)
        chunk = chunk + chunk[-1:] * (BATCH - n)  # static batch: pad the last call
        generators = [noise_generator(seed, start + i) for i in range(BATCH)]
        result = pipe(
            chunk,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=generators,
            output_type=output_type,
        ).images
        out.extend(np.asarray(item) for item in result[:n])
    return out


def to_image(decoded: np.ndarray) -> np.ndarray:
    """The decoder's [-1, 1] output as 8-bit RGB, as diffusers' image processor rounds it."""
    return (np.clip(decoded / 2 + 0.5, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)


def quantize_decoder(folder: Path, latents: list[np.ndarray], preset: str, out: Path) -> Path:
    import nncf
    import openvino as ov

    if not out.is_file():
        model = ov.Core().read_model(folder / "vae_decoder" / "openvino_model.xml")
        data = nncf.Dataset([latent[None] for latent in latents])
        quantized = nncf.quantize(
            model,
            data,
            preset=getattr(nncf.QuantizationPreset, preset.upper()),
            subset_size=len(latents),
        )
        ov.save_model(quantized, out, compress_to_fp16=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--prompts", type=int, default=144, help="held-out prompts scored (of 144)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--calibration", type=int, default=64, help="calibration latents (training prompts)")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO INFERENCE_NUM_THREADS")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    import openvino as ov
    import torch
    from PIL import Image

    from sd_ovopt.evaluation import image_fidelity
    from sd_ovopt.evaluation.results import machine_info
    from sd_ovopt.reference import held_out_prompts, score_images, train_prompts

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    folder = export_reference(args.work)
    prompts = [spec.prompt for spec in held_out_prompts()[: args.prompts]]
    # the decoder inputs of one seeding rule, prompt count, seed list and calibration size
    seeds = "-".join(map(str, args.seeds))
    cache = args.work / f"latents-by-index-{args.prompts}-{seeds}-{args.calibration}.npz"
    t0 = time.perf_counter()
    if cache.is_file():  # the decoder inputs of an earlier run with the same settings
        saved = np.load(cache)
        calibration = list(saved["calibration"])
        latents = {seed: list(saved[f"seed{seed}"]) for seed in args.seeds}
    else:
        pipe = load_pipeline(folder, "f32", args.threads)
        scale = pipe.vae.config.get("scaling_factor", 0.18215)
        train = [spec.prompt for spec in train_prompts()]
        calib_prompts = train[:: max(1, len(train) // args.calibration)][: args.calibration]
        calibration = [z / scale for z in sample(pipe, calib_prompts, 1000, "latent")]
        latents = {seed: [z / scale for z in sample(pipe, prompts, seed, "latent")] for seed in args.seeds}
        del pipe
        np.savez(
            cache, calibration=np.stack(calibration), **{f"seed{s}": np.stack(z) for s, z in latents.items()}
        )
    sampling_s = time.perf_counter() - t0

    core = ov.Core()
    bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    hints = ["f32", "bf16"] if bf16 else ["f32"]
    xml = folder / "vae_decoder" / "openvino_model.xml"
    decoders: dict[str, tuple[Path, str]] = {f"{h} decoder": (xml, h) for h in hints}
    for preset in ("performance", "mixed"):
        int8 = quantize_decoder(folder, calibration, preset, args.work / f"vae_decoder_int8_{preset}.xml")
        decoders.update({f"INT8 ({preset}) decoder, {h} hint": (int8, h) for h in hints})

    images: dict[str, dict[int, list[np.ndarray]]] = {}
    decode_s: dict[str, float] = {}
    for name, (path, hint) in decoders.items():
        config = {"INFERENCE_PRECISION_HINT": hint}
        if args.threads is not None:
            config["INFERENCE_NUM_THREADS"] = args.threads
        compiled = core.compile_model(path, "CPU", config)
        t0 = time.perf_counter()
        images[name] = {seed: [to_image(compiled(z[None])[0][0]) for z in zs] for seed, zs in latents.items()}
        decode_s[name] = (time.perf_counter() - t0) / sum(len(zs) for zs in latents.values())

    reference = images["f32 decoder"]
    rows = {}
    for name, by_seed in images.items():
        scores = [
            image_fidelity(a, b)
            for seed in args.seeds
            for a, b in zip(by_seed[seed], reference[seed], strict=True)
        ]
        psnr = [s.psnr_db for s in scores]
        accuracy = {
            str(seed): score_images([Image.fromarray(im) for im in by_seed[seed]], prompts).accuracy
            for seed in args.seeds
        }
        rows[name] = {
            **fidelity_stats(scores),
            "images_under_35_db": sum(p < 35 for p in psnr),
            "identical_images": sum(not np.isfinite(p) for p in psnr),
            "accuracy": round(statistics.fmean(accuracy.values()), 4),
            "accuracy_by_seed": accuracy,
            "decode_ms_per_image": round(1000 * decode_s[name], 2),
        }
    result = {
        "settings": {
            "prompts": len(prompts),
            "seeds": args.seeds,
            "steps": STEPS,
            "guidance_scale": GUIDANCE,
            "calibration_latents": len(calibration),
            "threads": args.threads,
            "sampling_s": round(sampling_s, 1),
        },
        "machine": machine_info(),
        "rows": rows,
    }
    (args.work / "vae_int8.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU: {result['machine']['cpu']} ({', '.join(result['machine']['isa'])})")
    print(f"{len(prompts)} held-out prompts x seeds {args.seeds}, {len(calibration)} calibration latents\n")
    n = len(prompts) * len(args.seeds)
    print(
        "| decoder | PSNR vs f32 decoder, mean / median (min) dB | images < 35 dB | images < 30 dB | SSIM "
        "| prompt accuracy | decode ms/image |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['psnr_db_mean']} / {row['psnr_db_median']} ({row['psnr_db_min']}) | "
            f"{row['images_under_35_db']} of {n} | {row['images_under_30_db']} of {n} | {row['ssim_mean']} | "
            f"{100 * row['accuracy']:.1f} % | {row['decode_ms_per_image']} |"
        )


if __name__ == "__main__":
    main()
