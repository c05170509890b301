"""Token merging (ToMe) for Stable Diffusion UNets that survives conversion to OpenVINO."""

from sd_ovopt.tome.config import ToMeConfig
from sd_ovopt.tome.patch import TOME_SCOPE_PATTERN, apply_tome, get_tome_config, is_tome_applied, remove_tome

__all__ = [
    "TOME_SCOPE_PATTERN",
    "ToMeConfig",
    "apply_tome",
    "get_tome_config",
    "is_tome_applied",
    "remove_tome",
]
