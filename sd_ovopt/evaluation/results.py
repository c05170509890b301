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

from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.evaluation.variants import PEER, REFERENCE

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


@dataclass
class BenchmarkResult:
    """Everything one benchmark run measured; ``to_dict()`` is what ``results.json`` holds."""

    model: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    reference: str | None
    variants: list[VariantResult]
    outputs: dict[str, str] = field(default_factory=dict)

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
            rows.append(data)
        out = {
            "model": self.model,
            "settings": self.settings,
            "machine": self.machine,
            "reference": self.reference,
            "peer": PEER,
            "variants": rows,
            "outputs": self.outputs,
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
    import openvino as ov
    import torch

    from sd_ovopt.export.metadata import library_versions

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
    from sd_ovopt._hardware import cpu_isa

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
