"""INT8 and ToMe+INT8 on the full SD-1.5-architecture pipeline: time, peak memory, size and UNet speed.

    python benchmarks/sd15_quantization.py --work /tmp/sd15-q

Random weights (same cost as the real model; no quality claim). Each stage runs in its own process so
its peak memory is its own, and writes its result into ``--work``; a stage whose result exists is
skipped, so a killed run resumes where it stopped. Stages:

1. ``fp32``: export the FP32 pipeline at 512x512 (UNet batch 2).
2. ``calibrate``: record UNet inputs from real pipeline runs (``collect_calibration``).
3. ``int8``: ``quantize_unet`` (full mode) and export with int8 weight compression of the other parts.
4. ``tome-int8``: the same with ToMe (ratio 0.4) applied before quantization, as the seed did.
5. ``peer-hybrid``: the peer users would pick instead, optimum-intel's 8-bit "hybrid" quantization of the
   same FP32 UNet IR with the same calibration inputs. It calls the two functions optimum-intel's
   ``OVQuantizer`` runs for a diffusion pipeline's UNet (``_get_hybrid_mixed_quantization_config`` and
   ``_mixed_quantization``), which skips re-exporting and re-calibrating a 3.4 GB model through optimum.
6. ``time``: one UNet call per variant, interleaved: PyTorch FP32, OV FP32 (f32 and, where supported,
   bf16 hint), OV INT8, OV ToMe+INT8, the peer; plus the text encoder and VAE decoder (PyTorch and OV
   f32), so that a 50-step pipeline latency can be extrapolated: 50 x UNet + text encoder + VAE decoder.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEIGHT = WIDTH = 512
PROMPTS = ["a photo of an astronaut riding a horse", "a red circle on a blue background"]


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _peak_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _dir_gb(
    path: Path, parts: tuple[str, ...] = ("unet", "text_encoder", "vae_decoder", "vae_encoder")
) -> dict:
    sizes = {p: sum(f.stat().st_size for f in (path / p).glob("openvino_model.*")) / 1e9 for p in parts}
    return {**{k: round(v, 3) for k, v in sizes.items()}, "total": round(sum(sizes.values()), 3)}


def stage_fp32(work: Path, args: argparse.Namespace) -> dict:
    from sd_ovopt import export_pipeline
    from sd_ovopt.testing import sd15_pipeline

    pipe = sd15_pipeline()
    t0 = time.perf_counter()
    export_pipeline(pipe, work / "fp32", height=HEIGHT, width=WIDTH, overwrite=True)
    return {
        "export_s": round(time.perf_counter() - t0, 1),
        "sizes_gb": _dir_gb(work / "fp32"),
        "peak_gib": _peak_gib(),
    }


def stage_calibrate(work: Path, args: argparse.Namespace) -> dict:
    import torch

    from sd_ovopt import collect_calibration
    from sd_ovopt.testing import sd15_pipeline

    pipe = sd15_pipeline()
    t0 = time.perf_counter()
    data = collect_calibration(pipe, PROMPTS, num_inference_steps=args.steps, height=HEIGHT, width=WIDTH)
    torch.save(data, work / "calibration.pt")
    return {"samples": len(data), "collect_s": round(time.perf_counter() - t0, 1), "peak_gib": _peak_gib()}


def _quantize_and_export(work: Path, name: str, tome_ratio: float | None) -> dict:
    import torch

    from sd_ovopt import QuantizationConfig, ToMeConfig, optimize_pipeline
    from sd_ovopt.testing import sd15_pipeline

    pipe = sd15_pipeline()
    calibration = torch.load(work / "calibration.pt", weights_only=True)
    t0 = time.perf_counter()
    optimize_pipeline(  # the recipe, with the calibration recorded once in stage_calibrate
        pipe,
        work / name,
        tome=None if tome_ratio is None else ToMeConfig(ratio=tome_ratio),
        quantization=QuantizationConfig(),
        calibration=calibration,
        height=HEIGHT,
        width=WIDTH,
        overwrite=True,
    )
    return {
        "quantize_and_export_s": round(time.perf_counter() - t0, 1),
        "sizes_gb": _dir_gb(work / name),
        "peak_gib": _peak_gib(),
    }


def stage_int8(work: Path, args: argparse.Namespace) -> dict:
    return _quantize_and_export(work, "int8", None)


def stage_tome_int8(work: Path, args: argparse.Namespace) -> dict:
    return _quantize_and_export(work, "tome-int8", args.tome_ratio)


def stage_peer_hybrid(work: Path, args: argparse.Namespace) -> dict:
    import nncf
    import openvino as ov
    import torch
    from optimum.intel import OVWeightQuantizationConfig
    from optimum.intel.openvino.quantization import (
        _get_hybrid_mixed_quantization_config,
        _mixed_quantization,
    )

    # The exported UNet takes an int64 timestep (as optimum-intel's and OpenVINO GenAI's do).
    calibration = [
        {k: v.numpy().astype("int64") if k == "timestep" else v.numpy() for k, v in item.items()}
        for item in torch.load(work / "calibration.pt", weights_only=True)
    ]
    model = ov.Core().read_model(work / "fp32" / "unet" / "openvino_model.xml")
    config = _get_hybrid_mixed_quantization_config(
        model, OVWeightQuantizationConfig(bits=8, quant_method="hybrid", num_samples=len(calibration))
    )
    t0 = time.perf_counter()
    quantized = _mixed_quantization(model, config, nncf.Dataset(calibration))
    t_quant = time.perf_counter() - t0
    out = work / "peer-hybrid" / "unet"
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, out / "openvino_model.xml", compress_to_fp16=False)
    return {
        "quantize_s": round(t_quant, 1),
        "sizes_gb": _dir_gb(work / "peer-hybrid", ("unet",)),
        "peak_gib": _peak_gib(),
    }


def _time_parts(work: Path, repeats: int) -> dict:
    """Text encoder + VAE decoder, PyTorch FP32 vs OpenVINO f32: the non-UNet share of a pipeline call."""
    import numpy as np
    import openvino as ov
    import torch

    from sd_ovopt.testing import sd15_pipeline

    pipe = sd15_pipeline()
    ids = np.zeros((2, 77), dtype=np.int64)
    latent = np.random.default_rng(0).standard_normal((1, 4, HEIGHT // 8, WIDTH // 8), dtype=np.float32)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    ov_text = core.compile_model(work / "fp32" / "text_encoder" / "openvino_model.xml", "CPU", config)
    ov_vae = core.compile_model(work / "fp32" / "vae_decoder" / "openvino_model.xml", "CPU", config)

    def torch_parts() -> None:
        with torch.no_grad():
            pipe.text_encoder(torch.from_numpy(ids))
            pipe.vae.decode(torch.from_numpy(latent))

    def ov_parts() -> None:
        ov_text(ids)
        ov_vae(latent)

    runners = {"pytorch": torch_parts, "openvino": ov_parts}
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def stage_time(work: Path, args: argparse.Namespace) -> dict:
    import numpy as np
    import openvino as ov
    import torch

    from sd_ovopt.testing import sd15_unet

    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, HEIGHT // 8, WIDTH // 8), dtype=np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32),
    }
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    parts = _time_parts(
        work, args.repeats
    )  # first, so that its PyTorch pipeline is freed before the UNets load
    unet = sd15_unet()

    def run_torch() -> None:
        with torch.no_grad():
            unet(**torch_inputs)

    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    hints = ["f32"] + (["bf16"] if "BF16" in capabilities else [])
    runners = {"pytorch-fp32": run_torch}
    used = {"pytorch-fp32": "f32"}
    for hint in hints:
        for name in ("fp32", "int8", "tome-int8", "peer-hybrid"):
            compiled = core.compile_model(
                work / name / "unet" / "openvino_model.xml",
                "CPU",
                {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"},
            )
            key = f"ov-{name}-{hint}"
            runners[key] = lambda c=compiled: c(inputs)
            used[key] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    for run in runners.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    base = statistics.median(times["pytorch-fp32"])
    ov_base = statistics.median(times["ov-fp32-f32"])
    peer = statistics.median(times["ov-peer-hybrid-f32"])
    return {
        "cpu_capabilities": capabilities,
        "cpu": _cpu_name(),
        "parts_s": parts,
        "rows": {
            k: {
                "min_s": round(min(v), 3),
                "median_s": round(statistics.median(v), 3),
                "vs_pytorch_fp32": round(base / statistics.median(v), 2),
                "vs_ov_fp32_f32": round(ov_base / statistics.median(v), 2),
                "vs_peer": round(peer / statistics.median(v), 2),
                "pipeline_50_steps_s": round(
                    50 * statistics.median(v) + parts["pytorch" if k == "pytorch-fp32" else "openvino"], 1
                ),
                "runtime_precision": used[k],
            }
            for k, v in times.items()
        },
    }


STAGES = {
    "fp32": stage_fp32,
    "calibrate": stage_calibrate,
    "int8": stage_int8,
    "tome-int8": stage_tome_int8,
    "peer-hybrid": stage_peer_hybrid,
    "time": stage_time,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--stage", choices=STAGES, default=None, help="run one stage in this process")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per calibration prompt")
    parser.add_argument("--tome-ratio", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    if args.stage is not None:
        result = STAGES[args.stage](args.work, args)
        tmp = args.work / f".{args.stage}.json.partial"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.work / f"{args.stage}.json")
        print(json.dumps({args.stage: result}), flush=True)
        return

    for stage in STAGES:
        if (args.work / f"{stage}.json").is_file():
            print(f"{stage}: done before, skipped", flush=True)
            continue
        command = [sys.executable, __file__, "--work", str(args.work), "--stage", stage]
        command += [
            "--steps",
            str(args.steps),
            "--tome-ratio",
            str(args.tome_ratio),
            "--repeats",
            str(args.repeats),
        ]
        t0 = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"{stage}: {time.perf_counter() - t0:.0f} s", flush=True)
    results = {stage: json.loads((args.work / f"{stage}.json").read_text()) for stage in STAGES}
    fp32, int8 = results["fp32"]["sizes_gb"], results["int8"]["sizes_gb"]
    ratio_unet, ratio_total = int8["unet"] / fp32["unet"], int8["total"] / fp32["total"]
    print(
        f"\nsizes (GB): FP32 unet {fp32['unet']:.3f} total {fp32['total']:.3f} | "
        f"INT8 unet {int8['unet']:.3f} ({ratio_unet:.3f}x) total {int8['total']:.3f} ({ratio_total:.3f}x)"
    )
    q = results["int8"]
    print(f"quantize and export: {q['quantize_and_export_s']:.0f} s")
    timing = results["time"]
    print(f"\nCPU: {timing['cpu']}; text encoder + VAE decoder: {timing['parts_s']} s")
    print(
        "\n| variant | runtime precision | UNet step min s | median s | 50-step pipeline s (extrapolated) "
        "| vs PyTorch FP32 | vs OV FP32 (f32) | vs optimum-intel hybrid 8-bit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key, row in timing["rows"].items():
        print(
            f"| {key} | {row['runtime_precision']} | {row['min_s']} | {row['median_s']} | "
            f"{row['pipeline_50_steps_s']} | {row['vs_pytorch_fp32']}x | {row['vs_ov_fp32_f32']}x | "
            f"{row['vs_peer']}x |"
        )


if __name__ == "__main__":
    main()
