"""The VAE decoder of one 512x512 image: SD-1.5's full decoder against TAESD's tiny one, each at f32, bf16
(where OpenVINO reports BF16) and INT8 (activations and weights, ``nncf.quantize``, ``performance`` preset).

    python benchmarks/taesd_decoder.py --work /tmp/taesd --rounds 5

Both decoders have their real architecture with random weights (``sd_ovopt.testing``), so times are what
the real ones cost. Every decoder decodes the same latents (standard normal, like the scaled latents the
UNet leaves); INT8 is calibrated on 16 other such latents. Timing is interleaved: each round calls every
decoder once, in rotating order, after one warm-up call each; the table gives the medians. PSNR compares
each decoder's image with the f32 image of the same decoder (random weights: a measure of the numerics,
not of image quality).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

LATENT = 64  # 512 / 8


def convert(work: Path, full_vae_ir: Path | None) -> dict[str, Path]:
    """Both decoders as f32 IRs (converted on first use; the full one may come from an f32 export)."""
    import openvino as ov

    from sd_ovopt._convert import convert_vae_decoder
    from sd_ovopt.testing import sd15_pipeline, taesd

    paths = {"full VAE": full_vae_ir or work / "vae_decoder.xml", "TAESD": work / "taesd_decoder.xml"}
    if not paths["full VAE"].is_file():
        ov.save_model(
            convert_vae_decoder(sd15_pipeline().vae, latent_height=LATENT, latent_width=LATENT),
            paths["full VAE"],
            compress_to_fp16=False,
        )
    if not paths["TAESD"].is_file():
        model = convert_vae_decoder(taesd(), latent_height=LATENT, latent_width=LATENT)
        ov.save_model(model, paths["TAESD"], compress_to_fp16=False)
    return paths


def quantize(path: Path, name: str, work: Path, calibration: list[np.ndarray]) -> Path:
    import nncf
    import openvino as ov

    out = work / f"{name}_int8.xml"
    if not out.is_file():
        model = ov.Core().read_model(path)
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            subset_size=len(calibration),
            preset=nncf.QuantizationPreset.PERFORMANCE,
        )
        ov.save_model(quantized, out, compress_to_fp16=False)
    return out


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    a, b = (np.clip(x / 2 + 0.5, 0, 1) for x in (image, reference))
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def main() -> None:
    import openvino as ov

    from sd_ovopt._precision import precision_hint
    from sd_ovopt.evaluation.results import machine_info

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="folder for the IRs (reused)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--full-vae-ir",
        type=Path,
        default=None,
        help="the f32 vae_decoder/openvino_model.xml of an SD-1.5-architecture export at 512x512 (else converted)",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, 4, LATENT, LATENT)).astype(np.float32) for _ in range(16)]
    latents = rng.standard_normal((1, 4, LATENT, LATENT)).astype(np.float32)
    core = ov.Core()
    bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    decoders: dict[str, Any] = {}
    for name, path in convert(args.work, args.full_vae_ir).items():
        int8 = quantize(path, name.replace(" ", "_"), args.work, calibration)
        for label, ir, hint in [
            ("f32", path, "f32"),
            *([("bf16", path, "bf16")] if bf16 else []),
            ("INT8", int8, "bf16" if bf16 else "f32"),
        ]:
            decoders[f"{name} {label}"] = core.compile_model(ir, "CPU", precision_hint(hint))
    images = {name: compiled(latents)[0] for name, compiled in decoders.items()}  # the warm-up call
    times: dict[str, list[float]] = {name: [] for name in decoders}
    names = list(decoders)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            decoders[name](latents)
            times[name].append(time.perf_counter() - t0)
    machine = machine_info()
    print(f"CPU: {machine['cpu']} ({machine['isa']}); {args.rounds} rounds, interleaved; medians\n")
    full = statistics.median(times[names[0]])
    print("| decoder | s | vs full VAE f32 | PSNR vs its f32 (dB) |\n|---|---|---|---|")
    for name in names:
        reference = images[name.rsplit(" ", 1)[0] + " f32"]
        seconds = statistics.median(times[name])
        print(f"| {name} | {seconds:.3f} | {full / seconds:.1f}x | {psnr(images[name], reference):.1f} |")


if __name__ == "__main__":
    main()
