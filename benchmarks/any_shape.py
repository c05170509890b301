"""One export, many sizes: a ToMe 0.4 + INT8 folder of SD-1.5's architecture (random weights, guidance on)
exported once at 512x512 and compiled at 768x512 and 640x640, against fresh exports at those sizes; the
load time without and with the compiled-model cache; peak memory of a load against the folder's size.

    python benchmarks/any_shape.py --work /tmp/any-shape --rounds 5

The UNet is quantized once (ToMe applied, calibrated on 3 UNet calls at 512x512) and the same quantized UNet
is exported at each size, so the folders differ only by the size they were traced at. Speed: one UNet call
(batch 2: guidance) of each pipeline's compiled UNet, timed interleaved (each round calls every pipeline
of a size once, in rotating order, after one warm-up call each); medians. Loads run in fresh processes:
``from_pretrained`` with compiling, first with an empty cache folder, then again with the entries the first
load wrote; peak RSS is the process's high-water mark over the load (libraries imported before).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = ((512, 512), (768, 512), (640, 640))
_MARKER = "ANY_SHAPE_LOAD "


def build(work: Path) -> dict[tuple[int, int], Path]:
    """The same quantized ToMe UNet exported at each size (exports already in ``work`` are reused)."""
    folders = {size: work / f"{size[0]}x{size[1]}" for size in SIZES}
    if all((folder / "sd_ovopt.json").is_file() for folder in folders.values()):
        return folders
    from sd_ovopt import (
        QuantizationConfig,
        ToMeConfig,
        apply_tome,
        collect_calibration,
        export_pipeline,
        quantize_unet,
    )
    from sd_ovopt.testing import sd15_pipeline

    pipe = apply_tome(sd15_pipeline(), ToMeConfig(ratio=0.4))
    prompts = ["a photo of an astronaut riding a horse"]
    calibration = collect_calibration(pipe, prompts, num_inference_steps=2, height=512, width=512)
    qunet = quantize_unet(pipe, calibration, QuantizationConfig(subset_size=len(calibration)))
    for (height, width), folder in folders.items():
        if not (folder / "sd_ovopt.json").is_file():
            export_pipeline(pipe, folder, unet=qunet, height=height, width=width, overwrite=True)
    return folders


def time_unets(folders: dict, size: tuple[int, int], rounds: int) -> dict[str, float]:
    """Median seconds of one UNet call: the 512x512 export compiled at ``size`` and the export at ``size``."""
    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.evaluation.timing import Call, unet_step

    height, width = size
    call = Call(steps=1, guidance_scale=7.5, height=height, width=width)
    runners = {}
    for name, folder in (
        ("export at 512x512, compiled here", folders[SIZES[0]]),
        ("fresh export", folders[size]),
    ):
        pipe = SdOvOptPipeline.from_pretrained(folder, height=height, width=width, cache_dir=False)
        runners[name] = unet_step(pipe, "openvino", call)
        runners[name]()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            start = time.perf_counter()
            runners[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def load_probe(folder: Path, cache: Path, precision: str | None) -> None:
    """In this (fresh) process: load and compile ``folder``; print seconds and peak RSS."""
    import diffusers  # noqa: F401  - imported before the baseline, as by any user
    import openvino  # noqa: F401
    import optimum.intel  # noqa: F401

    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.evaluation.memory import peak_rss_bytes, reset_peak_rss

    reset_peak_rss()
    start = time.perf_counter()
    SdOvOptPipeline.from_pretrained(folder, cache_dir=cache, precision=precision)
    seconds = time.perf_counter() - start
    print(_MARKER + json.dumps({"seconds": seconds, "peak_bytes": peak_rss_bytes()}), flush=True)


def load(folder: Path, cache: Path, precision: str | None) -> dict[str, float]:
    extra = [] if precision is None else ["--precision", precision]
    done = subprocess.run(
        [sys.executable, __file__, "--load-probe", str(folder), "--cache", str(cache), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith(_MARKER))
    return json.loads(line[len(_MARKER) :])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, help="folder for the exports (reused) and the cache")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--load-probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help="of the loads (default: sd_ovopt's own)")
    parser.add_argument("--loads-only", action="store_true", help="skip the UNet timing")
    args = parser.parse_args()
    if args.load_probe is not None:
        load_probe(args.load_probe, args.cache, args.precision)
        return
    from sd_ovopt._hardware import cpu_summary

    folders = build(args.work)
    print(f"CPU: {cpu_summary()}\n")
    print("| size | UNet call s: export at 512x512 | UNet call s: fresh export | ratio |\n|---|---|---|---|")
    for size in SIZES[1:] if not args.loads_only else ():
        medians = list(time_unets(folders, size, args.rounds).values())
        print(
            f"| {size[0]}x{size[1]} | {medians[0]:.3f} | {medians[1]:.3f} | {medians[0] / medians[1]:.3f} |"
        )
    cache = args.work / "cache"
    if cache.exists():
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    first, second = (load(folders[SIZES[0]], cache, args.precision) for _ in range(2))
    size = sum(f.stat().st_size for f in folders[SIZES[0]].rglob("*.bin"))
    blobs = sum(f.stat().st_size for f in cache.glob("*.blob"))
    print("\n| load of the 512x512 folder | s | peak RSS GiB |\n|---|---|---|")
    print(
        f"| first (compiles; writes {_gib(blobs)} GiB of cache) | {first['seconds']:.1f} | {_gib(first['peak_bytes'])} |"
    )
    print(f"| second (from the cache) | {second['seconds']:.1f} | {_gib(second['peak_bytes'])} |")
    print(f"\nweights on disk (*.bin): {_gib(size)} GiB")


if __name__ == "__main__":
    main()
