"""sd_ovopt.evaluation.memory: the peak-memory probe."""

from __future__ import annotations

import sys


def test_peak_memory_probe_runs_in_a_process_of_its_own(tiny_saved):
    from sd_ovopt.evaluation.memory import measure_peak_memory
    from sd_ovopt.evaluation.timing import Call, Sample
    from sd_ovopt.evaluation.variants import BuiltVariant

    variant = BuiltVariant("pytorch-fp32", "torch", tiny_saved, None)
    peak = measure_peak_memory(
        variant, Call(steps=2, guidance_scale=7.5, height=32, width=32), sample=Sample("a", 0, 0)
    )
    assert peak.error is None, peak.error
    assert peak.peak_bytes >= peak.baseline_bytes > 100 * 2**20  # torch alone is more than 100 MiB
    if sys.platform == "linux":
        assert peak.method == "VmHWM"
