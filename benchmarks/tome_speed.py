"""UNet-step latency of the full SD-1.5-architecture UNet with ToMe at several ratios, in OpenVINO.

    python benchmarks/tome_speed.py --work /tmp/tome-bench --ratios 0.3 0.4 0.5 --repeats 5

Phase 1 converts the UNet (random weights: same cost as the real one) at 512x512, batch 2, once without
and once per ratio, into ``--work`` (skipped for IRs already there). Phase 2 compiles them at each
precision and times one UNet call per variant, round-robin (variants interleaved, warm-up excluded), and
reports min and median and the speed-up against the no-ToMe IR at the same precision. The precision the
CPU plugin actually used is read back from the compiled model and printed: on CPUs without bf16 support
a ``bf16`` hint runs f32. Prints a markdown table and writes ``results.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def convert_variants(work: Path, ratios: list[float], height: int, width: int) -> dict[str, Path]:
    import gc

    import openvino as ov

    from sd_ovopt._convert import convert_unet
    from sd_ovopt.testing import sd15_unet
    from sd_ovopt.tome import ToMeConfig, apply_tome, remove_tome

    variants = {"none": None, **{f"tome-{r:g}": ToMeConfig(ratio=r) for r in ratios}}
    variants["todo-2"] = ToMeConfig(method="downsample", downsample_factor=2)
    paths = {name: work / name / "openvino_model.xml" for name in variants}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        unet = sd15_unet()
        for name in missing:
            config = variants[name]
            if config is not None:
                apply_tome(unet, config)
            t0 = time.perf_counter()
            model = convert_unet(
                unet, batch=2, latent_height=height // 8, latent_width=width // 8, text_length=77
            )
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, paths[name], compress_to_fp16=False)
            print(f"converted {name} in {time.perf_counter() - t0:.0f} s", flush=True)
            del model
            gc.collect()
            remove_tome(unet)
    return paths


def time_variants(paths: dict[str, Path], precision: str, repeats: int, height: int, width: int) -> dict:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, height // 8, width // 8), dtype=np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32),
    }
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    compiled = {name: core.compile_model(path, "CPU", config) for name, path in paths.items()}
    used = {name: c.get_property("INFERENCE_PRECISION_HINT").get_type_name() for name, c in compiled.items()}
    for c in compiled.values():  # warm-up
        c(inputs)
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, c in compiled.items():
            t0 = time.perf_counter()
            c(inputs)
            times[name].append(time.perf_counter() - t0)
    del compiled
    base = statistics.median(times["none"])
    return {
        name: {
            "min_s": min(ts),
            "median_s": statistics.median(ts),
            "speedup_vs_none": base / statistics.median(ts),
            "runtime_precision": used[name],
        }
        for name, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    parser.add_argument("--precisions", nargs="+", default=["f32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--convert-only", action="store_true")
    args = parser.parse_args()

    paths = convert_variants(args.work, args.ratios, args.height, args.width)
    if args.convert_only:
        return
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    precisions = [p for p in args.precisions if p != "bf16" or "BF16" in capabilities]
    for skipped in sorted(set(args.precisions) - set(precisions)):
        print(f"skipping {skipped}: this CPU does not support it (capabilities {capabilities})")
    results = {p: time_variants(paths, p, args.repeats, args.height, args.width) for p in precisions}
    (args.work / "results.json").write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "results": results}, indent=2)
    )
    print(
        f"\nSD-1.5 UNet, {args.height}x{args.width}, batch 2, one UNet call, {args.repeats} interleaved repeats"
    )
    print("| precision hint (runtime) | variant | min s | median s | speed-up vs no ToMe |")
    print("|---|---|---|---|---|")
    for precision, rows in results.items():
        for name, row in rows.items():
            print(
                f"| {precision} ({row['runtime_precision']}) | {name} | {row['min_s']:.2f} | "
                f"{row['median_s']:.2f} | {row['speedup_vs_none']:.2f}x |"
            )


if __name__ == "__main__":
    main()
