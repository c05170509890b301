"""PSNR/SSIM summary of image pairs, shared by the fidelity scripts in this folder."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np


def fidelity_stats(scores: Sequence[Any]) -> dict[str, Any]:
    """Mean (of finite values), median and min PSNR, images under 30 dB and mean SSIM of ``Fidelity`` scores."""
    psnr = [s.psnr_db for s in scores]
    finite = [p for p in psnr if np.isfinite(p)]
    median = statistics.median(psnr)
    return {
        "psnr_db_mean": round(statistics.fmean(finite), 2) if finite else "inf",
        "psnr_db_median": round(median, 2) if np.isfinite(median) else "inf",
        "psnr_db_min": round(min(psnr), 2) if np.isfinite(min(psnr)) else "inf",
        "images_under_30_db": sum(p < 30 for p in psnr),
        "ssim_mean": round(statistics.fmean(s.ssim for s in scores), 4),
    }
