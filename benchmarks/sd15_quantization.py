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
6. ``peer-full``: optimum-intel's full INT8 (``OVQuantizationConfig(bits=8)`` through ``OVQuantizer``,
   what ``optimum-cli export openvino --quant-mode int8`` gives) of the FP32 folder, calibrated by
   optimum-intel's own loop on the same prompts and number of UNet calls.
7. ``time``: one UNet call per variant, interleaved: PyTorch FP32, OV FP32 (f32 and, where supported,
   bf16 hint), OV INT8, OV ToMe+INT8, the peer; plus the text encoder and VAE decoder (PyTorch and OV
   f32), so that a 50-step pipeline latency can be extrapolated: 50 x UNet + text encoder + VAE decoder.
8. ``e2e``: the whole pipeline measured, not extrapolated (text encoder, ``--steps-e2e`` UNet steps,
   VAE decoder; one prompt and seed, guidance 7.5), interleaved rounds: PyTorch FP32, OV FP32 and
   our ToMe+INT8 folder at sd_ovopt's default precision (``"auto"``), both optimum-intel 8-bit peers
   at their own default precision, and our ToMe+INT8 folder in OpenVINO GenAI's ``Text2ImagePipeline``.
   Each variant's UNet step and text encoder + VAE decoder are timed in the same run, so the
   extrapolation (steps x UNet + text encoder + VAE decoder) is checked against the measured call.
   Writes ``e2e.json`` and ``e2e.md``.

``--tiny`` runs every stage on the tiny test pipeline at 32x32 (seconds; a smoke test of the script).
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
from types import SimpleNamespace

PROMPTS = ["a photo of an astronaut riding a horse", "a red circle on a blue background"]


def _kit(args: argparse.Namespace) -> SimpleNamespace:
    """The model the stages run on: SD-1.5's architecture at 512x512, or (``--tiny``) the tiny test pipeline."""
    from sd_ovopt import testing

    if args.tiny:
        return SimpleNamespace(
            pipeline=testing.tiny_pipeline,
            unet=lambda: testing.tiny_pipeline().unet.eval(),
            size=32,
            vae_scale=2,
            cross_dim=testing.TINY_UNET_CONFIG["cross_attention_dim"],
        )
    return SimpleNamespace(
        pipeline=testing.sd15_pipeline, unet=testing.sd15_unet, size=512, vae_scale=8, cross_dim=768
    )


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

    kit = _kit(args)
    pipe = kit.pipeline()
    t0 = time.perf_counter()
    export_pipeline(pipe, work / "fp32", height=kit.size, width=kit.size, overwrite=True)
    return {
        "export_s": round(time.perf_counter() - t0, 1),
        "sizes_gb": _dir_gb(work / "fp32"),
        "peak_gib": _peak_gib(),
    }


def stage_calibrate(work: Path, args: argparse.Namespace) -> dict:
    import torch

    from sd_ovopt import collect_calibration

    kit = _kit(args)
    pipe = kit.pipeline()
    t0 = time.perf_counter()
    data = collect_calibration(
        pipe, PROMPTS, num_inference_steps=args.steps, height=kit.size, width=kit.size, show_progress=False
    )
    torch.save(data, work / "calibration.pt")
    return {"samples": len(data), "collect_s": round(time.perf_counter() - t0, 1), "peak_gib": _peak_gib()}


def _quantize_and_export(work: Path, name: str, tome_ratio: float | None, args: argparse.Namespace) -> dict:
    import torch

    from sd_ovopt import QuantizationConfig, ToMeConfig, optimize_pipeline

    kit = _kit(args)
    pipe = kit.pipeline()
    calibration = torch.load(work / "calibration.pt", weights_only=True)
    t0 = time.perf_counter()
    optimize_pipeline(  # the recipe, with the calibration recorded once in stage_calibrate
        pipe,
        work / name,
        tome=None if tome_ratio is None else ToMeConfig(ratio=tome_ratio),
        quantization=QuantizationConfig(),
        calibration=calibration,
        height=kit.size,
        width=kit.size,
        overwrite=True,
    )
    return {
        "quantize_and_export_s": round(time.perf_counter() - t0, 1),
        "sizes_gb": _dir_gb(work / name),
        "peak_gib": _peak_gib(),
    }


def stage_int8(work: Path, args: argparse.Namespace) -> dict:
    return _quantize_and_export(work, "int8", None, args)


def stage_tome_int8(work: Path, args: argparse.Namespace) -> dict:
    return _quantize_and_export(work, "tome-int8", args.tome_ratio, args)


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


def stage_peer_full(work: Path, args: argparse.Namespace) -> dict:
    from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer, OVStableDiffusionPipeline

    samples = json.loads((work / "calibrate.json").read_text())["samples"]  # as many as ours
    peer = OVStableDiffusionPipeline.from_pretrained(str(work / "fp32"), compile=False, local_files_only=True)
    config = OVQuantizationConfig(bits=8, dataset=PROMPTS, num_samples=samples)
    t0 = time.perf_counter()
    OVQuantizer(peer).quantize(
        ov_config=OVConfig(quantization_config=config), save_directory=work / "peer-full"
    )
    return {
        "quantize_s": round(time.perf_counter() - t0, 1),
        "num_samples": samples,
        "sizes_gb": _dir_gb(work / "peer-full"),
        "peak_gib": _peak_gib(),
    }


def _time_parts(work: Path, args: argparse.Namespace) -> dict:
    """Text encoder + VAE decoder, PyTorch FP32 vs OpenVINO f32: the non-UNet share of a pipeline call."""
    import numpy as np
    import openvino as ov
    import torch

    kit = _kit(args)
    repeats = args.repeats
    pipe = kit.pipeline()
    ids = np.zeros((2, 77), dtype=np.int64)
    latent_side = kit.size // kit.vae_scale
    latent = np.random.default_rng(0).standard_normal((1, 4, latent_side, latent_side), dtype=np.float32)
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

    kit = _kit(args)
    rng = np.random.default_rng(0)
    latent_side = kit.size // kit.vae_scale
    inputs = {
        "sample": rng.standard_normal((2, 4, latent_side, latent_side), dtype=np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, kit.cross_dim), dtype=np.float32),
    }
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    parts = _time_parts(work, args)  # first, so that its PyTorch pipeline is freed before the UNets load
    unet = kit.unet()

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


#: The end-to-end rows: name -> (runtime, folder under --work or None for PyTorch, label).
E2E_VARIANTS = {
    "pytorch-fp32": ("torch", None, "PyTorch FP32 (diffusers)"),
    "ov-fp32": ("sd_ovopt", "fp32", "OpenVINO FP32 folder, sd_ovopt default precision"),
    "ov-tome-int8": ("sd_ovopt", "tome-int8", "ours: ToMe + INT8 UNet, sd_ovopt default precision"),
    "optimum-int8-hybrid": ("optimum", "peer-hybrid-pipeline", "optimum-intel hybrid 8-bit, its default"),
    "optimum-int8-full": ("optimum", "peer-full", "optimum-intel full INT8, its default"),
    "genai-tome-int8": ("genai", "tome-int8", "ours in OpenVINO GenAI Text2ImagePipeline, its default"),
}


def _hybrid_pipeline(work: Path) -> Path:
    """The FP32 folder with the peer's hybrid UNet (the peer-hybrid stage writes the UNet IR only)."""
    folder = work / "peer-hybrid-pipeline"
    folder.mkdir(exist_ok=True)
    for entry in (work / "fp32").iterdir():
        link = folder / entry.name
        if entry.name != "unet" and not link.exists():
            link.symlink_to(entry.resolve())
    (folder / "unet").mkdir(exist_ok=True)
    for f in [
        *(work / "peer-hybrid" / "unet").glob("openvino_model.*"),
        work / "fp32" / "unet" / "config.json",
    ]:
        if not (folder / "unet" / f.name).exists():
            (folder / "unet" / f.name).symlink_to(f.resolve())
    return folder


def _load_e2e(name: str, work: Path, kit: SimpleNamespace, args: argparse.Namespace) -> tuple:
    """(pipeline, runtime, OpenVINO properties of its parts) for one end-to-end row, progress bars off."""
    runtime, folder, _ = E2E_VARIANTS[name]
    properties = {} if args.threads is None else {"INFERENCE_NUM_THREADS": args.threads}
    if runtime == "torch":
        pipe = kit.pipeline()
    elif runtime == "sd_ovopt":
        from sd_ovopt import SdOvOptPipeline

        pipe = SdOvOptPipeline.from_pretrained(work / folder, ov_config=properties)  # precision="auto"
        properties = {**properties, "INFERENCE_PRECISION_HINT": pipe.inference_precision}
    elif runtime == "optimum":
        from optimum.intel import OVStableDiffusionPipeline

        path = _hybrid_pipeline(work) if folder == "peer-hybrid-pipeline" else work / folder
        pipe = OVStableDiffusionPipeline.from_pretrained(
            str(path), ov_config=properties, compile=False, local_files_only=True
        )
        pipe.reshape(batch_size=1, height=kit.size, width=kit.size, num_images_per_prompt=1)
        pipe.compile()
    else:
        from sd_ovopt.evaluation.genai import GenAIPipeline

        pipe = GenAIPipeline(work / folder, properties=properties)  # no hint: OpenVINO's own choice
    pipe.set_progress_bar_config(disable=True)
    return pipe, runtime, properties


def _parts_runner(name: str, pipe: object, work: Path, properties: dict, kit: SimpleNamespace):
    """Text encoder (prompt and negative prompt) + VAE decoder of one row, as its pipeline runs them."""
    import numpy as np

    latent_side = kit.size // kit.vae_scale
    latent = np.random.default_rng(0).standard_normal((1, 4, latent_side, latent_side), dtype=np.float32)
    ids = np.zeros((1, 77), dtype=np.int64)
    runtime, folder, _ = E2E_VARIANTS[name]
    if runtime == "torch":
        import torch

        def run_torch() -> None:
            with torch.no_grad():
                pipe.text_encoder(torch.from_numpy(ids))
                pipe.text_encoder(torch.from_numpy(ids))
                pipe.vae.decode(torch.from_numpy(latent))

        return run_torch
    import openvino as ov

    path = _hybrid_pipeline(work) if folder == "peer-hybrid-pipeline" else work / folder
    core = ov.Core()
    text = core.compile_model(path / "text_encoder" / "openvino_model.xml", "CPU", properties)
    vae = core.compile_model(path / "vae_decoder" / "openvino_model.xml", "CPU", properties)

    def run_ov() -> None:
        text(ids)
        text(ids)
        vae(latent)

    return run_ov


def stage_e2e(work: Path, args: argparse.Namespace) -> dict:
    """Whole pipeline calls, interleaved, warm-up excluded; each row's UNet step and other parts too."""
    import gc

    from sd_ovopt.evaluation import image_fidelity
    from sd_ovopt.evaluation.results import machine_info
    from sd_ovopt.evaluation.timing import Call, time_variants

    kit = _kit(args)
    names = args.e2e_variants
    call = Call(steps=args.steps_e2e, guidance_scale=7.5, height=kit.size, width=kit.size)
    loaded = {name: _load_e2e(name, work, kit, args) for name in names}
    pipes = {name: (pipe, runtime) for name, (pipe, runtime, _) in loaded.items()}
    ran_at = {}
    for name, (pipe, runtime, _) in loaded.items():
        if runtime == "torch":
            ran_at[name] = "f32"
            continue
        pipe.unet.compile()
        value = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")
        ran_at[name] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    timings, images = time_variants(pipes, [(PROMPTS[0], 0)], call, rounds=args.repeats, show_progress=False)
    parts = {name: _parts_runner(name, pipe, work, props, kit) for name, (pipe, _, props) in loaded.items()}
    del loaded, pipes
    gc.collect()
    parts_s: dict[str, list[float]] = {name: [] for name in parts}
    for run in parts.values():  # warm-up
        run()
    for _ in range(args.repeats):
        for name, run in parts.items():
            t0 = time.perf_counter()
            run()
            parts_s[name].append(time.perf_counter() - t0)

    med = statistics.median
    base = med(timings["pytorch-fp32"].pipeline_s) if "pytorch-fp32" in timings else None
    peers = {
        p: med(timings[p].pipeline_s) for p in ("optimum-int8-hybrid", "optimum-int8-full") if p in timings
    }
    rows = {}
    for name, timing in timings.items():
        pipeline, unet, other = med(timing.pipeline_s), med(timing.unet_step_s), med(parts_s[name])
        extrapolated = call.steps * unet + other
        rows[name] = {
            "label": E2E_VARIANTS[name][2],
            "runtime_precision": ran_at[name],
            "pipeline_s": [round(t, 3) for t in timing.pipeline_s],
            "pipeline_median_s": round(pipeline, 3),
            "unet_step_median_s": round(unet, 4),
            "text_encoder_vae_decoder_s": round(other, 4),
            "vs_pytorch_fp32": None if base is None else round(base / pipeline, 2),
            **{f"vs_{p}": round(t / pipeline, 2) for p, t in peers.items()},
            "extrapolated_s": round(extrapolated, 3),
            "measured_over_extrapolated": round(pipeline / extrapolated, 3),
            "pipeline_50_steps_extrapolated_s": round(50 * unet + other, 1),
            "pipeline_50_steps_from_measured_s": round(pipeline + (50 - call.steps) * unet, 1),
            "psnr_vs_pytorch_db": None
            if "pytorch-fp32" not in images or name == "pytorch-fp32"
            else round(image_fidelity(images[name][0], images["pytorch-fp32"][0]).psnr_db, 2),
        }
    return {
        "steps": call.steps,
        "size": kit.size,
        "guidance_scale": call.guidance_scale,
        "prompt": PROMPTS[0],
        "seed": 0,
        "rounds": args.repeats,
        "machine": machine_info(),
        "rows": rows,
    }


def e2e_markdown(result: dict) -> str:
    """The end-to-end table, with the CPU it ran on."""
    machine, rows = result["machine"], result["rows"]
    peers = [
        p for p in ("optimum-int8-hybrid", "optimum-int8-full") if any(f"vs_{p}" in r for r in rows.values())
    ]
    lines = [
        f"CPU: {machine['cpu']} ({', '.join(machine['isa']) or 'no AVX2'}); OpenVINO capabilities "
        f"{'/'.join(machine['openvino_capabilities'])}; {machine['usable_cpus']} usable cores.",
        f"Whole pipeline, {result['size']}x{result['size']}, {result['steps']} steps, guidance "
        f"{result['guidance_scale']}, median of {result['rounds']} interleaved rounds (warm-up excluded).",
        "",
        "| variant | runs at | pipeline s (median) | vs PyTorch FP32 | "
        + "".join(f"vs {p} | " for p in peers)
        + "UNet step s | TE + VAE s | extrapolated s | measured / extrapolated | 50 steps s (extrapolated) |",
        "|---|---|---|---|" + "---|" * len(peers) + "---|---|---|---|---|",
    ]
    for row in rows.values():
        ratio = "–" if row["vs_pytorch_fp32"] is None else f"{row['vs_pytorch_fp32']}x"
        lines.append(
            f"| {row['label']} | {row['runtime_precision']} | {row['pipeline_median_s']} | {ratio} | "
            + "".join(f"{row[f'vs_{p}']}x | " for p in peers)
            + f"{row['unet_step_median_s']} | {row['text_encoder_vae_decoder_s']} | {row['extrapolated_s']} | "
            f"{row['measured_over_extrapolated']} | {row['pipeline_50_steps_extrapolated_s']} |"
        )
    return "\n".join(lines) + "\n"


STAGES = {
    "fp32": stage_fp32,
    "calibrate": stage_calibrate,
    "int8": stage_int8,
    "tome-int8": stage_tome_int8,
    "peer-hybrid": stage_peer_hybrid,
    "peer-full": stage_peer_full,
    "time": stage_time,
    "e2e": stage_e2e,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--stage", choices=STAGES, default=None, help="run one stage in this process")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per calibration prompt")
    parser.add_argument("--tome-ratio", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of `time` and `e2e`")
    parser.add_argument("--steps-e2e", type=int, default=10, help="denoising steps of each `e2e` call")
    parser.add_argument(
        "--e2e-variants", nargs="+", choices=E2E_VARIANTS, default=list(E2E_VARIANTS), help="rows of `e2e`"
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO INFERENCE_NUM_THREADS in `e2e`")
    parser.add_argument("--tiny", action="store_true", help="the tiny test pipeline at 32x32 (smoke test)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    if args.stage is not None:
        result = STAGES[args.stage](args.work, args)
        tmp = args.work / f".{args.stage}.json.partial"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.work / f"{args.stage}.json")
        if args.stage == "e2e":
            (args.work / "e2e.md").write_text(e2e_markdown(result))
        print(json.dumps({args.stage: result}), flush=True)
        return

    for stage in args.stages:
        if (args.work / f"{stage}.json").is_file():
            print(f"{stage}: done before, skipped", flush=True)
            continue
        command = [sys.executable, __file__, "--work", str(args.work), "--stage", stage]
        command += ["--steps", str(args.steps), "--tome-ratio", str(args.tome_ratio)]
        command += ["--repeats", str(args.repeats), "--steps-e2e", str(args.steps_e2e)]
        command += ["--e2e-variants", *args.e2e_variants, *(["--tiny"] if args.tiny else [])]
        command += [] if args.threads is None else ["--threads", str(args.threads)]
        t0 = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"{stage}: {time.perf_counter() - t0:.0f} s", flush=True)
    results = {
        s: json.loads((args.work / f"{s}.json").read_text())
        for s in STAGES
        if (args.work / f"{s}.json").is_file()
    }
    if "e2e" in results:
        print("\n" + e2e_markdown(results["e2e"]))
    if not {"fp32", "int8", "time"} <= set(results):
        return
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
