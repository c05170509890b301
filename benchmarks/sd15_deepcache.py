"""Step caching (DeepCache) on the SD-1.5-architecture pipeline at 512x512: cached vs uncached, and our best
stack (ToMe + INT8 + cache) vs optimum-intel's hybrid 8-bit and full INT8, side by side in one run.

    python benchmarks/sd15_deepcache.py --work /tmp/sd15-dc            # 50 steps, interval 3
    python benchmarks/sd15_deepcache.py --work /tmp/sd15-dc --tiny     # smoke test (tiny pipeline, 32x32)

Random weights (the cost of the real model; no quality claim). It is thin over the bench harness
(``sd_ovopt.evaluation.run_benchmark``): the SD-1.5 pipeline is saved once under ``--work``, every variant is
built by the recipe (and reused on a rerun), and all pipelines are timed in one process, interleaved,
warm-up excluded, ``--steps`` steps per image:

* ``ov-f32`` vs ``ov-deepcache``: uncached vs cached, both f32 pinned (same precision);
* ``ov-tome-int8`` vs ``ov-tome-int8-deepcache``: uncached vs cached at ``--precision``;
* ``optimum-int8-hybrid`` and ``optimum-int8-full``: optimum-intel's 8-bit paths at the same precision hint.

``--precision default`` (the default here) lets OpenVINO's CPU plugin choose, which is what each peer gets
when loaded plainly (bf16 on AMX / AVX512-BF16 CPUs, f32 elsewhere); our INT8 variants get the same.
Writes ``--work/bench/results.{json,md}`` (the harness's table) and ``--work/deepcache.{json,md}``: the
ratios, with the CPU model and its ISA (AVX2 / AVX-512 VNNI / AMX). The DeepCache interval of the
bench variants is 3 (branch 0), the paper's setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS = ("a photo of an astronaut riding a horse",)
VARIANTS = (
    "ov-f32",
    "ov-deepcache",
    "ov-tome-int8",
    "ov-tome-int8-deepcache",
    "optimum-int8-hybrid",
    "optimum-int8-full",
)
#: (name, against, what it shows)
RATIOS = (
    ("ov-deepcache", "ov-f32", "cached vs uncached, f32"),
    ("ov-tome-int8-deepcache", "ov-tome-int8", "cached vs uncached, ToMe + INT8"),
    ("ov-tome-int8-deepcache", "optimum-int8-hybrid", "best stack vs optimum-intel hybrid 8-bit"),
    ("ov-tome-int8-deepcache", "optimum-int8-full", "best stack vs optimum-intel full INT8"),
)


def _model(work: Path, tiny: bool) -> Path:
    """The pipeline saved once as a local diffusers folder (what the harness and the peers load)."""
    from sd_ovopt import testing

    folder = work / ("tiny-sd" if tiny else "sd15")
    if not (folder / "model_index.json").is_file():
        (testing.tiny_pipeline() if tiny else testing.sd15_pipeline()).save_pretrained(folder)
    return folder


def _ratios(result: object) -> list[dict]:
    rows = []
    for name, against, what in RATIOS:
        rows.append(
            {
                "variant": name,
                "against": against,
                "what": what,
                "pipeline_speedup": result.speedup(name, against, "pipeline"),  # type: ignore[attr-defined]
                "seconds": result.variant(name).pipeline_median_s,  # type: ignore[attr-defined]
                "against_seconds": result.variant(against).pipeline_median_s,  # type: ignore[attr-defined]
            }
        )
    return rows


def _markdown(rows: list[dict], machine: dict, steps: int, size: int) -> str:
    lines = [
        f"Step caching, {size}x{size}, {steps} steps, guidance 7.5, interval 3, branch 0 "
        f"({machine.get('cpu')}; ISA {', '.join(machine.get('isa') or []) or 'unknown'})",
        "",
        "| variant | against | what | pipeline s | against s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r["pipeline_speedup"] is None else f"{r['pipeline_speedup']:.2f}x"
        seconds = [("n/a" if v is None else f"{v:.2f}") for v in (r["seconds"], r["against_seconds"])]
        lines.append(
            f"| {r['variant']} | {r['against']} | {r['what']} | {seconds[0]} | {seconds[1]} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per image (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--num-samples", type=int, default=200, help="calibration UNet calls (default 200)")
    parser.add_argument("--calibration-steps", type=int, default=20)
    parser.add_argument("--precision", default="default", choices=("default", "f32", "bf16", "f16"))
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (a process each)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test pipeline at 32x32 (smoke test)")
    args = parser.parse_args()

    from sd_ovopt.evaluation import run_benchmark
    from sd_ovopt.evaluation.results import machine_info

    args.work.mkdir(parents=True, exist_ok=True)
    size = 32 if args.tiny else 512
    result = run_benchmark(
        _model(args.work, args.tiny),
        args.work / "bench",
        variants=list(VARIANTS),
        prompts=PROMPTS,
        seeds=(0,),
        steps=args.steps,
        rounds=args.rounds,
        height=size,
        width=size,
        num_samples=args.num_samples,
        calibration_steps=args.calibration_steps,
        precision=args.precision,
        measure_memory=args.memory,
    )
    machine = machine_info()
    rows = _ratios(result)
    (args.work / "deepcache.json").write_text(
        json.dumps({"machine": machine, "steps": args.steps, "size": size, "ratios": rows}, indent=2) + "\n"
    )
    table = _markdown(rows, machine, args.steps, size)
    (args.work / "deepcache.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
