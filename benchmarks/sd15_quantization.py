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
7. ``fp32-dc``: the FP32 export again with step caching (``DeepCacheConfig(interval=3, branch=0)``): the
   full UNet IR (which also returns the cached feature) and the shallow UNet IR, f32 weights like ``fp32``.
8. ``tome-int8-dc``: ToMe (``--tome-ratio``) + INT8 + step caching through ``optimize_pipeline``; the recipe
   records its calibration along the cached sampling of the merged UNet, on the same ``PROMPTS`` and
   ``--steps`` as ``calibrate`` (``subset_size`` = that many UNet calls, so it costs about as much).
9. ``time``: one UNet call per variant, interleaved: PyTorch FP32, OV FP32 (f32 and, where supported,
   bf16 hint), OV INT8, OV ToMe+INT8, the peer; plus the text encoder and VAE decoder (PyTorch and OV
   f32), so that a 50-step pipeline latency can be extrapolated: 50 x UNet + text encoder + VAE decoder.
10. ``e2e``: the whole pipeline measured, not extrapolated (text encoder, ``--steps-e2e`` UNet steps,
   VAE decoder; one prompt and seed, guidance 7.5), interleaved rounds: PyTorch FP32, OV FP32 and
   our ToMe+INT8 folder at sd_ovopt's default precision (``"auto"``), both optimum-intel 8-bit peers
   at their own default precision, and our ToMe+INT8 folder in OpenVINO GenAI's ``Text2ImagePipeline``.
   Each variant's UNet step and text encoder + VAE decoder are timed in the same run, so the
   extrapolation (steps x UNet + text encoder + VAE decoder) is checked against the measured call.
   The step-caching rows (``ov-deepcache``: the ``fp32-dc`` folder; ``tome-int8-deepcache``: the
   ``tome-int8-dc`` folder; both at sd_ovopt's default precision) time the full and the shallow UNet IR
   per call and extrapolate with the schedule's counts (n_full x full + n_shallow x shallow + text encoder
   + VAE decoder, counted from the scheduler's timesteps), checked against the measured call; their speed-up
   vs their uncached twin and vs both optimum-intel peers is written as "N.Nx vs ...".
   ``--e2e-load``: ``all`` loads every row at once (rounds interleave whole calls), ``one`` loads one row at a
   time in each round (load, short warm-up, time, release; rounds still rotate the order), ``auto`` (the
   default) picks ``one`` when the rows' estimated resident size exceeds ``--e2e-memory-gib``. The result
   says which mode ran and the stage's peak RSS. Writes ``e2e.json`` and ``e2e.md``.

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
#: Step caching of the ``*-dc`` stages: the paper's SD-1.5 setting.
DEEPCACHE = {"interval": 3, "branch": 0}
#: The parts of a step-caching folder (``unet_shallow``: sd_ovopt.deepcache.SHALLOW_PART).
DC_PARTS = ("unet", "unet_shallow", "text_encoder", "vae_decoder", "vae_encoder")


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


def _deepcache_config():
    from sd_ovopt import DeepCacheConfig

    return DeepCacheConfig(**DEEPCACHE)


def stage_fp32_dc(work: Path, args: argparse.Namespace) -> dict:
    """``fp32`` with step caching: the full and the shallow UNet IRs, f32 weights."""
    from sd_ovopt import export_pipeline

    kit = _kit(args)
    pipe = kit.pipeline()
    config = _deepcache_config()
    t0 = time.perf_counter()
    export_pipeline(pipe, work / "fp32-dc", height=kit.size, width=kit.size, deepcache=config, overwrite=True)
    return {
        "export_s": round(time.perf_counter() - t0, 1),
        "deepcache": config.to_dict(),
        "sizes_gb": _dir_gb(work / "fp32-dc", DC_PARTS),
        "peak_gib": _peak_gib(),
    }


def stage_tome_int8_dc(work: Path, args: argparse.Namespace) -> dict:
    """ToMe + INT8 + step caching through the recipe, which records calibration along the cached sampling.

    Same prompts, steps and seeds as ``calibrate``; ``subset_size`` set to the UNet calls ``calibrate``
    records (the scheduler's timesteps per prompt: PNDM makes steps + 1 calls), so the recipe records
    about as much as ``calibrate`` does (its default, 200, would cycle the prompts 25 times at 4 steps).
    """
    import copy

    from sd_ovopt import QuantizationConfig, ToMeConfig, optimize_pipeline

    kit = _kit(args)
    pipe = kit.pipeline()
    config = _deepcache_config()
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(args.steps)
    samples = len(PROMPTS) * len(scheduler.timesteps)
    t0 = time.perf_counter()
    optimize_pipeline(
        pipe,
        work / "tome-int8-dc",
        tome=ToMeConfig(ratio=args.tome_ratio),
        quantization=QuantizationConfig(subset_size=samples),
        calibration_prompts=PROMPTS,
        calibration_steps=args.steps,
        deepcache=config,
        height=kit.size,
        width=kit.size,
        overwrite=True,
    )
    return {
        "calibrate_quantize_and_export_s": round(time.perf_counter() - t0, 1),
        "calibration_samples": samples,
        "deepcache": config.to_dict(),
        "sizes_gb": _dir_gb(work / "tome-int8-dc", DC_PARTS),
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

    times = _time_runners({"pytorch": torch_parts, "openvino": ov_parts}, repeats)
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
    times = _time_runners(runners, args.repeats)
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
    "ov-deepcache": (
        "sd_ovopt",
        "fp32-dc",
        "OpenVINO FP32 folder + step caching (interval 3), sd_ovopt default precision",
    ),
    "tome-int8-deepcache": (
        "sd_ovopt",
        "tome-int8-dc",
        "ours: ToMe + INT8 + step caching (interval 3), sd_ovopt default precision",
    ),
}
#: Step-caching rows -> their uncached twin (same folder kind, same precision).
CACHED_TWINS = {"ov-deepcache": "ov-fp32", "tome-int8-deepcache": "ov-tome-int8"}
PEER_LABELS = {
    "optimum-int8-hybrid": "optimum-intel hybrid 8-bit",
    "optimum-int8-full": "optimum-intel full INT8",
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


def _schedule(pipe: object, steps: int) -> tuple[int, int]:
    """(full, shallow) UNet calls of a ``steps``-step call of a step-caching pipeline, counted on its own
    scheduler's timesteps with the pipeline's own step tracker (PNDM repeats a timestep: steps + 1 calls)."""
    import copy

    from sd_ovopt.deepcache import StepTracker

    scheduler = copy.deepcopy(pipe.scheduler)  # type: ignore[attr-defined]
    scheduler.set_timesteps(steps)
    tracker = StepTracker(pipe.deepcache)  # type: ignore[attr-defined]
    full = sum(bool(tracker.refresh(t, scheduler.timesteps)) for t in scheduler.timesteps)
    return full, len(scheduler.timesteps) - full


def _ir_runner(compiled: object):
    """One call of a compiled static IR on fixed random inputs (timestep 500), as the pipeline calls it."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for port in compiled.inputs:  # type: ignore[attr-defined]
        name, dtype, shape = port.get_any_name(), port.get_element_type().to_dtype(), tuple(port.get_shape())
        arrays[name] = (
            np.full(shape, 500, dtype) if name == "timestep" else rng.standard_normal(shape).astype(dtype)
        )

    def run() -> None:
        compiled(arrays, share_inputs=True)  # type: ignore[operator]

    return run


def _row_info(name: str, pipe: object, runtime: str, call: object) -> dict:
    """What a loaded row runs at and, for step-caching rows, its schedule at the call's steps and at 50."""
    if runtime == "torch":
        info: dict = {"ran_at": "f32"}
    else:
        pipe.unet.compile()  # type: ignore[attr-defined]
        value = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")  # type: ignore[attr-defined]
        info = {"ran_at": value.get_type_name() if hasattr(value, "get_type_name") else str(value)}
    if name in CACHED_TWINS:
        info["calls"] = _schedule(pipe, call.steps)  # type: ignore[attr-defined]
        info["calls_50"] = _schedule(pipe, 50)
    return info


def _row_runners(name: str, pipe: object, work: Path, properties: dict, kit: SimpleNamespace) -> dict:
    """Per-call runners of a row's other parts: ``other`` (text encoder x 2 + VAE decoder) and, for
    step-caching rows, ``shallow`` (the shallow UNet IR as the pipeline compiled it)."""
    runners = {"other": _parts_runner(name, pipe, work, properties, kit)}
    if name in CACHED_TWINS:
        shallow = pipe._sd_ovopt_shallow  # type: ignore[attr-defined]  # SdOvOptPipeline's shallow UNet part
        shallow.compile()
        runners["shallow"] = _ir_runner(shallow.request)
    return runners


def _time_runners(runners: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each runner: one warm-up each, then ``repeats`` interleaved rounds."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return times


def _e2e_footprint_gib(names: list[str], work: Path) -> float:
    """Rough resident size of all rows loaded at once: 2x each OpenVINO folder's IR weights (the mapped
    file and the compiled plugin's copy), 1.25x the FP32 weights for the PyTorch pipeline."""
    parts = ("unet", "unet_shallow", "text_encoder", "vae_decoder")
    total = 0.0
    for name in names:
        runtime, folder, _ = E2E_VARIANTS[name]
        path = work / (folder or "fp32")
        size = sum(f.stat().st_size for p in parts for f in (path / p).glob("openvino_model.bin"))
        if folder == "peer-hybrid-pipeline":  # built on demand: the FP32 folder with the peer's UNet
            size = sum(f.stat().st_size for p in parts[2:] for f in (work / "fp32" / p).glob("*.bin"))
            size += sum(f.stat().st_size for f in (work / "peer-hybrid" / "unet").glob("*.bin"))
        total += (1.25 if runtime == "torch" else 2.0) * size
    return total / 2**30


def _e2e_mode(names: list[str], work: Path, args: argparse.Namespace) -> tuple[str, float]:
    estimate = _e2e_footprint_gib(names, work)
    if args.e2e_load != "auto":
        return args.e2e_load, estimate
    return ("one" if estimate > args.e2e_memory_gib else "all"), estimate


def _e2e_all(names: list[str], work: Path, kit: SimpleNamespace, call: object, args: argparse.Namespace):
    """Every row loaded at once; whole calls interleaved by ``time_variants``, then parts interleaved."""
    import gc

    from sd_ovopt.evaluation.timing import time_variants

    loaded = {name: _load_e2e(name, work, kit, args) for name in names}
    pipes = {name: (pipe, runtime) for name, (pipe, runtime, _) in loaded.items()}
    info = {name: _row_info(name, pipe, runtime, call) for name, (pipe, runtime, _) in loaded.items()}
    timings, images = time_variants(pipes, [(PROMPTS[0], 0)], call, rounds=args.repeats, show_progress=False)
    for name in CACHED_TWINS.keys() & set(names):
        info[name]["observed"] = list(loaded[name][0].last_unet_steps)
    runners = {}
    for name, (pipe, _, props) in loaded.items():
        for key, run in _row_runners(name, pipe, work, props, kit).items():
            runners[f"{name}/{key}"] = run
    del loaded, pipes
    gc.collect()
    return timings, images, info, _time_runners(runners, args.repeats)


def _e2e_one(names: list[str], work: Path, kit: SimpleNamespace, call: object, args: argparse.Namespace):
    """One row in memory at a time: each round loads each row (order rotating from round to round), warms
    it up with a 2-step call, times one whole call, one UNet step and its parts, and releases it."""
    import gc
    from dataclasses import replace

    from sd_ovopt.evaluation.timing import Timings, generate, unet_step

    warm_call = replace(call, steps=min(2, call.steps))  # type: ignore[type-var]
    timings = {name: Timings() for name in names}
    images: dict[str, list] = {name: [] for name in names}
    info: dict[str, dict] = {}
    parts: dict[str, list[float]] = {}
    for r in range(args.repeats):
        k = r % len(names)
        for name in [*names[k:], *names[:k]]:
            pipe, runtime, props = _load_e2e(name, work, kit, args)
            info.setdefault(name, _row_info(name, pipe, runtime, call))
            generate(pipe, PROMPTS[0], 0, warm_call)
            t0 = time.perf_counter()
            image = generate(pipe, PROMPTS[0], 0, call)
            timings[name].pipeline_s.append(time.perf_counter() - t0)
            if r == 0:
                images[name].append(image)
            if name in CACHED_TWINS:
                info[name]["observed"] = list(pipe.last_unet_steps)
            step = unet_step(pipe, runtime, call)
            step()
            t0 = time.perf_counter()
            step()
            timings[name].unet_step_s.append(time.perf_counter() - t0)
            for key, times in _time_runners(_row_runners(name, pipe, work, props, kit), 1).items():
                parts.setdefault(f"{name}/{key}", []).extend(times)
            del pipe, step
            gc.collect()
    return timings, images, info, parts


def _cached_fields(name: str, pipeline: float, full: float, other: float, info: dict, parts: dict) -> dict:
    """The step-caching row's per-IR times and its schedule-based extrapolation (N steps and 50 steps)."""
    med = statistics.median
    shallow = med(parts[f"{name}/shallow"])
    (n_full, n_shallow), (f50, s50) = info["calls"], info["calls_50"]
    observed = info.get("observed", [])
    extrapolated = n_full * full + n_shallow * shallow + other
    return {
        "full_ir_s": round(full, 4),
        "shallow_ir_s": round(shallow, 4),
        "full_over_shallow": round(full / shallow, 2),
        "unet_calls": {"full": n_full, "shallow": n_shallow},
        "unet_calls_observed": {"full": observed.count("full"), "shallow": observed.count("shallow")},
        "unet_calls_50_steps": {"full": f50, "shallow": s50},
        "extrapolated_s": round(extrapolated, 3),
        "measured_over_extrapolated": round(pipeline / extrapolated, 3),
        "pipeline_50_steps_extrapolated_s": round(f50 * full + s50 * shallow + other, 1),
        "pipeline_50_steps_from_measured_s": round(
            pipeline + (f50 - n_full) * full + (s50 - n_shallow) * shallow, 1
        ),
    }


def stage_e2e(work: Path, args: argparse.Namespace) -> dict:
    """Whole pipeline calls, interleaved, warm-up excluded; each row's UNet step and other parts too."""
    from sd_ovopt.evaluation import image_fidelity
    from sd_ovopt.evaluation.results import machine_info
    from sd_ovopt.evaluation.timing import Call

    kit = _kit(args)
    names = args.e2e_variants
    call = Call(steps=args.steps_e2e, guidance_scale=7.5, height=kit.size, width=kit.size)
    mode, estimate = _e2e_mode(names, work, args)
    print(
        f"e2e: loading {'one row at a time' if mode == 'one' else 'all rows at once'} "
        f"(estimated {estimate:.1f} GiB all at once, budget {args.e2e_memory_gib} GiB)",
        flush=True,
    )
    timings, images, info, parts = (_e2e_one if mode == "one" else _e2e_all)(names, work, kit, call, args)

    med = statistics.median
    base = med(timings["pytorch-fp32"].pipeline_s) if "pytorch-fp32" in timings else None
    peers = {p: med(timings[p].pipeline_s) for p in PEER_LABELS if p in timings}
    rows = {}
    for name, timing in timings.items():
        pipeline, unet, other = med(timing.pipeline_s), med(timing.unet_step_s), med(parts[f"{name}/other"])
        extrapolated = call.steps * unet + other
        twin = CACHED_TWINS.get(name)
        rows[name] = {
            "label": E2E_VARIANTS[name][2],
            "runtime_precision": info[name]["ran_at"],
            "pipeline_s": [round(t, 3) for t in timing.pipeline_s],
            "pipeline_median_s": round(pipeline, 3),
            "unet_step_median_s": round(unet, 4),  # step-caching rows: the full IR
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
        if twin is not None:
            rows[name].update(_cached_fields(name, pipeline, unet, other, info[name], parts))
            rows[name]["uncached_twin"] = twin
            if twin in timings:
                rows[name]["vs_uncached"] = round(med(timings[twin].pipeline_s) / pipeline, 2)
    return {
        "steps": call.steps,
        "size": kit.size,
        "guidance_scale": call.guidance_scale,
        "prompt": PROMPTS[0],
        "seed": 0,
        "rounds": args.repeats,
        "deepcache": DEEPCACHE,
        "load_mode": mode,
        "estimated_all_at_once_gib": round(estimate, 1),
        "peak_gib": _peak_gib(),
        "machine": machine_info(),
        "rows": rows,
    }


def _ratio(value: float | None, against: str) -> str:
    return "–" if value is None else f"{value:.1f}x vs {against}"


def e2e_markdown(result: dict) -> str:
    """The end-to-end table, with the CPU it ran on, and the step-caching rows' ratios and extrapolation."""
    machine, rows = result["machine"], result["rows"]
    peers = [p for p in PEER_LABELS if any(f"vs_{p}" in r for r in rows.values())]
    mode = result.get("load_mode", "all")
    lines = [
        f"CPU: {machine['cpu']} ({', '.join(machine['isa']) or 'no AVX2'}); OpenVINO capabilities "
        f"{'/'.join(machine['openvino_capabilities'])}; {machine['usable_cpus']} usable cores.",
        f"Whole pipeline, {result['size']}x{result['size']}, {result['steps']} steps, guidance "
        f"{result['guidance_scale']}, median of {result['rounds']} interleaved rounds (warm-up excluded).",
    ]
    if "load_mode" in result:
        lines.append(
            (
                "Loaded all rows at once"
                if mode == "all"
                else "Loaded one row at a time in each round (load, 2-step warm-up, time, release)"
            )
            + f"; peak RSS {result['peak_gib']} GiB (estimated {result['estimated_all_at_once_gib']} GiB "
            "for all rows at once)."
        )
    lines += [
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
    cached = {name: row for name, row in rows.items() if "full_ir_s" in row}
    if cached:
        dc = result.get("deepcache", DEEPCACHE)
        lines += [
            "",
            f"Step caching (DeepCache interval {dc['interval']}, branch {dc['branch']}): the full UNet IR on "
            "refresh steps, the shallow IR in between; the UNet step column above is the full IR. Extrapolated: "
            "n_full x full + n_shallow x shallow + TE + VAE, the counts from the scheduler's timesteps.",
            "",
            "| cached variant | vs uncached | "
            + "".join(f"vs {PEER_LABELS[p]} | " for p in peers)
            + "full IR s | shallow IR s | UNet calls full + shallow (ran) | extrapolated s | "
            "measured / extrapolated | 50 steps: calls | 50 steps s (extrapolated) | 50 steps s (from measured) |",
            "|---|---|" + "---|" * len(peers) + "---|---|---|---|---|---|---|---|",
        ]
        for row in cached.values():
            twin = f"{row['uncached_twin']} (uncached)"
            calls, ran, c50 = row["unet_calls"], row["unet_calls_observed"], row["unet_calls_50_steps"]
            lines.append(
                f"| {row['label']} | {_ratio(row.get('vs_uncached'), twin)} | "
                + "".join(f"{_ratio(row.get(f'vs_{p}'), PEER_LABELS[p])} | " for p in peers)
                + f"{row['full_ir_s']} | {row['shallow_ir_s']} | {calls['full']} + {calls['shallow']} "
                f"({ran['full']} + {ran['shallow']}) | {row['extrapolated_s']} | {row['measured_over_extrapolated']} | "
                f"{c50['full']} + {c50['shallow']} | {row['pipeline_50_steps_extrapolated_s']} | "
                f"{row['pipeline_50_steps_from_measured_s']} |"
            )
    return "\n".join(lines) + "\n"


STAGES = {
    "fp32": stage_fp32,
    "calibrate": stage_calibrate,
    "int8": stage_int8,
    "tome-int8": stage_tome_int8,
    "peer-hybrid": stage_peer_hybrid,
    "peer-full": stage_peer_full,
    "fp32-dc": stage_fp32_dc,
    "tome-int8-dc": stage_tome_int8_dc,
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
    parser.add_argument(
        "--e2e-load",
        choices=("auto", "all", "one"),
        default="auto",
        help="`e2e`: load all rows at once, one row at a time per round, or `one` when the estimate exceeds "
        "--e2e-memory-gib (default auto)",
    )
    parser.add_argument("--e2e-memory-gib", type=float, default=20.0, help="`e2e` auto mode's budget")
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
        command += ["--e2e-load", args.e2e_load, "--e2e-memory-gib", str(args.e2e_memory_gib)]
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
