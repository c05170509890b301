"""Step caching (DeepCache) for Stable Diffusion UNets, in PyTorch and as two static OpenVINO IRs.

Heavy modules (torch, OpenVINO) load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sd_ovopt.deepcache.config import SCHEDULES, DeepCacheConfig, StepTracker

_LAZY = {
    "FEATURE_NAME": "sd_ovopt.deepcache.export",
    "SHALLOW_PART": "sd_ovopt.deepcache.export",
    "apply_deepcache": "sd_ovopt.deepcache.patch",
    "collect_deepcache_calibration": "sd_ovopt.deepcache.calibration",
    "convert_deepcache_unets": "sd_ovopt.deepcache.export",
    "get_deepcache_config": "sd_ovopt.deepcache.patch",
    "is_deepcache_applied": "sd_ovopt.deepcache.patch",
    "plan_skips": "sd_ovopt.deepcache.patch",
    "quantize_deepcache_unet": "sd_ovopt.deepcache.calibration",
    "remove_deepcache": "sd_ovopt.deepcache.patch",
}

__all__ = [
    "FEATURE_NAME",
    "SCHEDULES",
    "SHALLOW_PART",
    "DeepCacheConfig",
    "StepTracker",
    "apply_deepcache",
    "collect_deepcache_calibration",
    "convert_deepcache_unets",
    "get_deepcache_config",
    "is_deepcache_applied",
    "plan_skips",
    "quantize_deepcache_unet",
    "remove_deepcache",
]

if TYPE_CHECKING:
    from sd_ovopt.deepcache.calibration import collect_deepcache_calibration, quantize_deepcache_unet
    from sd_ovopt.deepcache.export import FEATURE_NAME, SHALLOW_PART, convert_deepcache_unets
    from sd_ovopt.deepcache.patch import (
        apply_deepcache,
        get_deepcache_config,
        is_deepcache_applied,
        plan_skips,
        remove_deepcache,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sd_ovopt.deepcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
