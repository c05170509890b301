"""Peak memory of one variant, measured in a fresh process of its own.

The probe process imports the same libraries for every variant (torch, diffusers, OpenVINO,
optimum-intel), then loads and compiles the variant and generates one image (or runs one UNet step).
On Linux it resets the kernel's resident-set high-water mark after the imports (``/proc/self/clear_refs``)
and reads it back (``VmHWM``) at the end: ``peak_bytes`` is the process's peak while loading and running
the variant, ``baseline_bytes`` its resident set before (the libraries). Elsewhere it falls back to
``ru_maxrss``, a high-water mark over the whole process life, which then also covers the imports.
Measuring in the benchmark's own process would count every other variant too, and sampling threads miss
short peaks; the kernel's high-water mark misses nothing. Needs Linux or macOS.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sd_ovopt.evaluation.timing import Call, Sample, generate, unet_step
from sd_ovopt.evaluation.variants import BuiltVariant, load_variant

__all__ = ["PeakMemory", "measure_peak_memory", "peak_rss_bytes", "reset_peak_rss"]

_MARKER = "SD_OVOPT_PEAK_MEMORY "


@dataclass(frozen=True)
class PeakMemory:
    """Resident-set high-water marks of the probe process, in bytes, or why there are none."""

    peak_bytes: int | None = None
    baseline_bytes: int | None = None
    method: str | None = None
    error: str | None = None


def _max_rss_bytes() -> int:
    import resource  # POSIX only

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)  # bytes on macOS, KiB on Linux


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError(f"/proc/self/status has no {key}")


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status("VmHWM")
    except OSError:
        return False
    return True


def reset_peak_rss() -> bool:
    """Start a new resident-set high-water mark for this process (False where Linux's ``/proc`` lacks it)."""
    return _reset_high_water_mark()


def peak_rss_bytes() -> int | None:
    """This process's resident-set high-water mark since :func:`reset_peak_rss` (None where unreadable)."""
    try:
        return _proc_status("VmHWM")
    except OSError:
        return None


def measure_peak_memory(
    variant: BuiltVariant,
    call: Call,
    *,
    sample: Sample,
    unet_only: bool = False,
    timeout: float = 3600,
) -> PeakMemory:
    """Run the probe for ``variant`` in a new Python process and return its peak memory while it loads and
    generates ``sample`` (or, with ``unet_only``, runs one UNet step)."""
    try:
        import resource  # noqa: F401  - POSIX only: is it here?
    except ImportError:
        return PeakMemory(error="peak memory needs the 'resource' module (Linux or macOS)")
    spec = {
        "variant": {**asdict(variant), "path": str(variant.path)},
        "call": asdict(call),
        "sample": list(sample),
        "unet_only": unet_only,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sd_ovopt.evaluation.memory", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return PeakMemory(error=f"the memory probe ran over {timeout:g} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARKER):
            return PeakMemory(**json.loads(line[len(_MARKER) :]))
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return PeakMemory(error=f"the memory probe exited with code {done.returncode}: {' | '.join(tail)}")


def _probe(spec: dict) -> PeakMemory:
    import diffusers  # noqa: F401  - the same imports for every variant, before the baseline
    import openvino  # noqa: F401
    import optimum.intel  # noqa: F401
    import torch  # noqa: F401

    variant = BuiltVariant(**{**spec["variant"], "path": Path(spec["variant"]["path"])})
    call = Call(**spec["call"])
    gc.collect()
    reset = _reset_high_water_mark()
    baseline = _proc_status("VmRSS") if reset else _max_rss_bytes()
    pipe = load_variant(variant, height=call.height, width=call.width, guidance_scale=call.guidance_scale)
    if spec["unet_only"]:
        unet_step(pipe, variant.runtime, call)()
    else:
        generate(pipe, Sample(*spec["sample"]), call)
    peak = _proc_status("VmHWM") if reset else _max_rss_bytes()
    return PeakMemory(peak_bytes=peak, baseline_bytes=baseline, method="VmHWM" if reset else "ru_maxrss")


if __name__ == "__main__":
    result = _probe(json.loads(sys.argv[1]))
    print(_MARKER + json.dumps(asdict(result)), flush=True)
