"""Step caching (DeepCache) for Stable Diffusion UNets, in PyTorch and as two static OpenVINO IRs."""

from sd_ovopt.deepcache.calibration import collect_deepcache_calibration, quantize_deepcache_unet
from sd_ovopt.deepcache.config import SCHEDULES, DeepCacheConfig, StepTracker
from sd_ovopt.deepcache.export import FEATURE_NAME, SHALLOW_PART, convert_deepcache_unets
from sd_ovopt.deepcache.patch import (
    apply_deepcache,
    get_deepcache_config,
    is_deepcache_applied,
    plan_skips,
    remove_deepcache,
)

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
