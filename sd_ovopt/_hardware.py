"""What the CPU can do: its model name and the instruction sets that decide which precision is fast.

The ranking of variants changes with the ISA (INT8 is ~1.07x f32 on AVX2 and ~3x on AMX; bf16 is native
only with AVX512-BF16 or AMX), so every measured number is reported next to :func:`cpu_summary`.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_isa", "cpu_model", "cpu_summary", "has_native_bf16"]

# /proc/cpuinfo flag -> the name users know, in increasing order of capability.
_ISA_FLAGS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_bf16", "AMX-BF16"),
    ("amx_int8", "AMX-INT8"),
)


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is not readable)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, e.g. ``"Intel(R) Xeon(R) Platinum 8480+"``."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """The vector and matrix instruction sets relevant to inference speed, e.g. ``["AVX2", ..., "AMX-INT8"]``."""
    flags = cpu_flags()
    return [label for flag, label in _ISA_FLAGS if flag in flags]


def has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 is faster than f32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_summary() -> str:
    """One line for a results table: model name and ISA, e.g. ``"Intel Xeon ... (AVX2, AVX-512, AMX-INT8)"``."""
    isa = cpu_isa()
    return f"{cpu_model()} ({', '.join(isa) if isa else 'no AVX2'})"
