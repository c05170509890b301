"""The UNet step of guidance-free INT8 folders, one per token method, timed alone in OpenVINO.

    python benchmarks/few_step_unet.py --model bench-lcm4/sd15-lcm-lora-random-weights \\
        --work /tmp/few-step-unet --repeats 5 --counters

``--model`` is a diffusers folder of a few-step model, e.g. the one ``sd-ovopt bench --preset
sd15-512-lcm4`` writes (SD-1.5's architecture with random weights and a LoRA of LCM-LoRA's layers fused).

Phase 1 builds, into ``--work``, one INT8 folder per variant with the recipe as the few-step harness rows
do: guidance-free (UNet batch 1), 512x512, calibrated along 4-step LCM calls of the harness' two prompts
(8 UNet calls). A folder whose ``build.json`` records the same settings is reused. Phase 2 compiles each
folder's UNet IR at sd_ovopt's default precision (bf16 where the CPU has it, f32 elsewhere) and times one
call per variant, round-robin (variants interleaved, warm-up excluded). ``--counters`` then compiles each
IR again with OpenVINO's per-op counters on (apart, so counting stays out of the timed calls) and gives
each op type's time in a call, the median of 3 calls. Prints markdown tables and
writes ``results.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PROMPTS = ("a photo of an astronaut riding a horse", "a red circle on a blue background")
STEPS = 4
#: Profiled calls per IR with ``--counters``; each op type's time is their median.
PROFILED_CALLS = 3


def variants() -> dict[str, list[Any]]:
    """Each row's method configs: a token method (or none), then INT8."""
    from sd_ovopt import QuantizationConfig, ToMeConfig
    from sd_ovopt.evaluation.variants import TOKEN_DOWNSAMPLING  # the harness' downsampling row

    int8 = QuantizationConfig(subset_size=len(PROMPTS) * STEPS)
    return {
        "int8": [int8],
        "tome-0.4": [ToMeConfig(ratio=0.4), int8],
        "tome-0.5-two-levels": [ToMeConfig(ratio=0.5, max_downsample=2), int8],
        "tome-0.5-two-levels-mlp": [ToMeConfig(ratio=0.5, max_downsample=2, merge_mlp=True), int8],
        "downsample-top": [ToMeConfig(method="downsample"), int8],
        "downsample-two-levels": [TOKEN_DOWNSAMPLING, int8],
        "downsample-4-two-levels": [
            ToMeConfig(method="downsample", downsample_factor=4, max_downsample=2),
            int8,
        ],
    }


def build(model: Path, work: Path, names: list[str], size: int) -> dict[str, Path]:
    """Phase 1: the INT8 folder of each variant in ``names`` (built unless its record matches)."""
    from sd_ovopt import optimize_pipeline
    from sd_ovopt._loading import load_sd_pipeline

    configs, pipe, folders = variants(), None, {}
    for name in names:
        folder, record_file = work / name, work / f"{name}.build.json"
        record = {
            "model": str(model.resolve()),
            "size": size,
            "methods": [{type(c).__name__: c.to_dict()} for c in configs[name]],
        }
        folders[name] = folder
        if folder.is_dir() and record_file.is_file() and json.loads(record_file.read_text()) == record:
            continue
        pipe = pipe or load_sd_pipeline(model)
        t0 = time.perf_counter()
        optimize_pipeline(
            pipe,
            folder,
            methods=configs[name],
            calibration_prompts=PROMPTS,
            calibration_steps=STEPS,
            guidance_scale=1.0,
            height=size,
            width=size,
            overwrite=True,
        )
        record_file.write_text(json.dumps(record, indent=2) + "\n")
        print(f"built {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        gc.collect()
    return folders


def unet_inputs(model: Any, size: int) -> dict[str, Any]:
    """Reshape the UNet IR to batch 1 at ``size`` as the pipeline does; random inputs of that shape
    (timestep 500)."""
    from types import SimpleNamespace

    import numpy as np

    from sd_ovopt.pipelines.ov_pipeline import unet_ir_shapes

    shape = SimpleNamespace(unet_batch=1, latent_height=size // 8, latent_width=size // 8)
    model.reshape(unet_ir_shapes(model, shape))
    rng = np.random.default_rng(0)
    inputs = {}
    for port in model.inputs:
        name, shape = port.get_any_name(), list(port.get_shape())
        if name == "timestep":
            inputs[name] = np.full(shape, 500.0, dtype=np.float32)
        else:
            inputs[name] = rng.standard_normal(shape, dtype=np.float32)
    return inputs


def op_times(request: Any) -> dict[str, float]:
    """Milliseconds of the request's last call per op type (``exec_type`` names the kernel: an INT8
    convolution and a bf16 one are separate rows)."""
    totals: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        if info.status.name == "EXECUTED":
            totals[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e3
    return dict(totals)


def _loaded(core: Any, folder: Path, size: int, config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The folder's UNet IR compiled with ``config``, an infer request after one warm-up call, and its inputs."""
    model = core.read_model(folder / "unet" / "openvino_model.xml")
    inputs = unet_inputs(model, size)
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.infer(inputs)  # warm-up
    return request, inputs


def time_unets(folders: dict[str, Path], size: int, repeats: int, counters: bool) -> dict[str, Any]:
    """Phase 2: interleaved UNet calls of every folder at the default precision; then, one folder at a
    time and compiled apart (counting stays out of the timed calls), the op counters (median of
    :data:`PROFILED_CALLS` calls per op type)."""
    import openvino as ov

    from sd_ovopt._precision import precision_hint, resolve_precision

    core, precision = ov.Core(), resolve_precision("auto")
    config = {**precision_hint(precision), "PERFORMANCE_HINT": "LATENCY"}
    loaded = {name: _loaded(core, folder, size, config) for name, folder in folders.items()}
    times: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(repeats):
        for name, (request, inputs) in loaded.items():
            t0 = time.perf_counter()
            request.infer(inputs)
            times[name].append(time.perf_counter() - t0)
    del loaded
    results = {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts}
        for name, ts in times.items()
    }
    if counters:
        for name, folder in folders.items():
            request, inputs = _loaded(core, folder, size, {**config, "PERF_COUNT": True})
            calls = []
            for _ in range(PROFILED_CALLS):
                request.infer(inputs)
                calls.append(op_times(request))
            results[name]["op_ms"] = {op: statistics.median(c.get(op, 0.0) for c in calls) for op in calls[0]}
    return {"precision": precision, "rows": results}


def print_tables(results: dict[str, Any], repeats: int, size: int, top: int) -> None:
    from sd_ovopt._hardware import cpu_summary

    rows = results["rows"]
    print(
        f"\n{cpu_summary()}; UNet IR alone, {size}x{size}, batch 1, precision {results['precision']}, "
        f"{repeats} interleaved calls after a warm-up"
    )
    print("\n| UNet IR | median s | min s |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} |")
    if not all("op_ms" in row for row in rows.values()):
        return
    totals: dict[str, float] = defaultdict(float)
    for row in rows.values():
        for op, ms in row["op_ms"].items():
            totals[op] += ms
    ops = sorted(totals, key=totals.get, reverse=True)[:top]
    print(f"\nPer-op counters, ms of a call, median of {PROFILED_CALLS} (the rest in 'other'):\n")
    print("| UNet IR | " + " | ".join(ops) + " | other | sum |")
    print("|---|" + "---|" * (len(ops) + 2))
    for name, row in rows.items():
        counted = [row["op_ms"].get(op, 0.0) for op in ops]
        total = sum(row["op_ms"].values())
        cells = " | ".join(f"{ms:.0f}" for ms in counted)
        print(f"| {name} | {cells} | {total - sum(counted):.0f} | {total:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--variants", nargs="+", choices=list(variants()), default=list(variants()))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--counters", action="store_true", help="also sum OpenVINO's per-op counters")
    parser.add_argument("--top", type=int, default=5, help="op types shown with --counters")
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    folders = build(args.model, args.work, args.variants, args.size)
    if args.build_only:
        return
    results = time_unets(folders, args.size, args.repeats, args.counters)
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results, args.repeats, args.size, args.top)


if __name__ == "__main__":
    main()
