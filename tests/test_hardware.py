"""sd_ovopt._hardware reads the CPU's model and ISA; tests mock /proc/cpuinfo so they pass on any CPU."""

from __future__ import annotations

import pytest

from sd_ovopt import _hardware

AMX = "fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
AVX2 = "fpu sse avx2 fma"


@pytest.fixture
def cpuinfo(monkeypatch):
    def fake(flags: str, model: str = "Test CPU"):
        monkeypatch.setattr(
            _hardware, "_cpuinfo_field", lambda name: {"flags": flags, "model name": model}[name]
        )
        _hardware.cpu_flags.cache_clear()
        _hardware.cpu_model.cache_clear()

    yield fake
    _hardware.cpu_flags.cache_clear()
    _hardware.cpu_model.cache_clear()


def test_amx_cpu_has_native_bf16_and_lists_its_isa(cpuinfo):
    cpuinfo(AMX, "Intel(R) Xeon(R) Platinum 8480+")
    assert _hardware.has_native_bf16()
    assert _hardware.cpu_isa() == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX512-BF16", "AMX-BF16", "AMX-INT8"]
    assert _hardware.cpu_summary().startswith("Intel(R) Xeon(R) Platinum 8480+ (AVX2, AVX-512")


def test_avx2_only_cpu_has_no_native_bf16(cpuinfo):
    cpuinfo(AVX2, "AMD EPYC 7B13")
    assert not _hardware.has_native_bf16()
    assert _hardware.cpu_summary() == "AMD EPYC 7B13 (AVX2)"


def test_unreadable_cpuinfo_gives_empty_flags(cpuinfo):
    cpuinfo("")
    assert _hardware.cpu_isa() == [] and not _hardware.has_native_bf16()
    assert _hardware.cpu_summary().endswith("(no AVX2)")
