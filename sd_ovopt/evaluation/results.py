"""What a benchmark measured: one :class:`VariantResult` per variant in a :class:`BenchmarkResult`."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import torch

from sd_ovopt._hardware import cpu_isa
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.evaluation.variants import PEER, PEERS, REFERENCE
from sd_ovopt.export.metadata import library_versions

__all__ = ["BenchmarkResult", "VariantResult", "machine_info"]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class VariantResult:
    """One row of the table. Times in seconds, sizes and memory in bytes, PSNR in dB.

    ``psnr_db`` and ``ssim`` are means over the (prompt, seed) pairs against the reference variant's
    image; ``psnr_db`` averages the pairs whose images differ (``inf`` when every pair is identical),
    ``psnr_min_db`` is the worst pair. ``prompt_accuracy_by_seed`` holds the accuracy of each seed's images
    (its spread is the seed-to-seed noise of the accuracy). ``unet_rel_error`` is the mean relative L2
    error of the variant's UNet against the PyTorch FP32 UNet on inputs recorded along the reference's
    sampling trajectories of the benchmark prompts. ``status`` is ``"ok"``, ``"skipped"`` or ``"failed"`` (see ``reason``).

    With the extrapolation check on, ``unet_ir_s`` holds the times of the variant's further UNet IRs (e.g.
    the shallow IR of step caching), ``other_s`` those of one call's text encoder and VAE decoder, and
    ``unet_calls`` / ``unet_calls_50`` how many calls of each IR (``"unet"`` and the further ones) a call of
    the benchmark's steps and of 50 steps makes: the pipeline call extrapolated from its parts is
    :attr:`extrapolated_s`. ``baseline`` names the variant this one is compared with (e.g. its uncached twin).
    """

    name: str
    label: str
    status: str = "ok"
    reason: str | None = None
    runtime: str | None = None
    path: str | None = None
    precision: str | None = None
    runtime_precision: str | None = None
    build_s: float | None = None
    reused: bool = False
    pipeline_s: list[float] = field(default_factory=list)
    unet_step_s: list[float] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None
    memory_method: str | None = None
    memory_error: str | None = None
    unet_bytes: int | None = None
    total_bytes: int | None = None
    psnr_db: float | None = None
    psnr_min_db: float | None = None
    ssim: float | None = None
    prompt_accuracy: float | None = None
    prompt_accuracy_by_seed: dict[str, float] = field(default_factory=dict)
    unet_rel_error: float | None = None
    baseline: str | None = None
    unet_ir_s: dict[str, list[float]] = field(default_factory=dict)
    other_s: list[float] = field(default_factory=list)
    unet_calls: dict[str, int] = field(default_factory=dict)
    unet_calls_50: dict[str, int] = field(default_factory=dict)

    @property
    def pipeline_median_s(self) -> float | None:
        return _median(self.pipeline_s)

    @property
    def pipeline_min_s(self) -> float | None:
        return min(self.pipeline_s) if self.pipeline_s else None

    @property
    def unet_step_median_s(self) -> float | None:
        return _median(self.unet_step_s)

    @property
    def unet_step_min_s(self) -> float | None:
        return min(self.unet_step_s) if self.unet_step_s else None

    def _from_parts(self, calls: dict[str, int]) -> float | None:
        """Seconds of a pipeline call summed from its parts: each UNet IR's median times its calls, plus
        the text encoder and VAE decoder (None when a part was not timed)."""
        medians = {"unet": _median(self.unet_step_s), **{k: _median(v) for k, v in self.unet_ir_s.items()}}
        other = _median(self.other_s)
        if not calls or other is None or any(medians.get(k) is None for k in calls):
            return None
        return sum(n * medians[k] for k, n in calls.items()) + other  # type: ignore[operator]

    @property
    def extrapolated_s(self) -> float | None:
        """The pipeline call of the benchmark's steps, summed from its parts."""
        return self._from_parts(self.unet_calls)

    @property
    def measured_over_extrapolated(self) -> float | None:
        """Measured pipeline median over :attr:`extrapolated_s` (above 1: time between the parts)."""
        measured, parts = self.pipeline_median_s, self.extrapolated_s
        return None if measured is None or not parts else measured / parts

    @property
    def pipeline_50_steps_s(self) -> float | None:
        """A 50-step pipeline call, summed from its parts."""
        return self._from_parts(self.unet_calls_50)


@dataclass
class BenchmarkResult:
    """Everything one benchmark run measured; ``to_dict()`` is what ``results.json`` holds."""

    model: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    reference: str | None
    variants: list[VariantResult]
    outputs: dict[str, str] = field(default_factory=dict)
    #: The timing process's resident-set high-water mark while it timed (None where not readable).
    timing_peak_rss_bytes: int | None = None

    def variant(self, name: str) -> VariantResult:
        for row in self.variants:
            if row.name == name:
                return row
        raise InvalidConfigError(
            f"no variant {name!r} in this result; it has {[r.name for r in self.variants]}"
        )

    def speedup(self, name: str, against: str, metric: str = "pipeline") -> float | None:
        """Median latency of ``against`` divided by that of ``name`` (``metric``: pipeline or unet_step)."""
        if metric not in ("pipeline", "unet_step"):
            raise InvalidConfigError(f"metric={metric!r}; use 'pipeline' or 'unet_step'.")
        rows = {r.name: r for r in self.variants}
        if name not in rows or against not in rows:
            return None
        mine = getattr(rows[name], f"{metric}_median_s")
        theirs = getattr(rows[against], f"{metric}_median_s")
        return None if not mine or not theirs else theirs / mine

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.variants:
            data = asdict(row)
            for metric in ("pipeline", "unet_step"):
                data[f"{metric}_median_s"] = getattr(row, f"{metric}_median_s")
                data[f"{metric}_min_s"] = getattr(row, f"{metric}_min_s")
                data[f"{metric}_speedup_vs_{REFERENCE}"] = self.speedup(row.name, REFERENCE, metric)
                data[f"{metric}_speedup_vs_peer"] = self.speedup(row.name, PEER, metric)
                for peer in PEERS:
                    data[f"{metric}_speedup_vs_{peer}"] = self.speedup(row.name, peer, metric)
                if row.baseline is not None:
                    data[f"{metric}_speedup_vs_baseline"] = self.speedup(row.name, row.baseline, metric)
            for name in ("extrapolated_s", "measured_over_extrapolated", "pipeline_50_steps_s"):
                data[name] = getattr(row, name)
            rows.append(data)
        out = {
            "model": self.model,
            "settings": self.settings,
            "machine": self.machine,
            "reference": self.reference,
            "peer": PEER,
            "variants": rows,
            "outputs": self.outputs,
            "timing_peak_rss_bytes": self.timing_peak_rss_bytes,
        }
        return _finite(out)


def _finite(value: Any) -> Any:
    """JSON has no infinity: write non-finite floats (PSNR of identical images) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def machine_info() -> dict[str, Any]:
    """What produced the numbers: CPU, cores, memory, library versions, OpenVINO's CPU capabilities."""

    cpu = platform.processor() or platform.machine()
    meminfo: dict[str, str] = {}
    for path, key in (("/proc/cpuinfo", "model name"), ("/proc/meminfo", "MemTotal")):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    meminfo[key] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    core = ov.Core()
    memory = meminfo.get("MemTotal", "")
    if memory.endswith(" kB"):
        memory = f"{int(memory[:-3]) / 2**20:.1f} GiB RAM"

    return {
        "cpu": meminfo.get("model name", cpu),
        "isa": cpu_isa(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": memory or None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "openvino_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "versions": library_versions(),
    }
