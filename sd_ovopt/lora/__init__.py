"""LoRA adapters (LCM-LoRA, Hyper-SD, TCD, styles) fused into the UNet's weights before ToMe, INT8 and
the export, so the exported IR holds plain weights that every runtime runs."""

from sd_ovopt.lora.config import LoRAConfig, file_sha256
from sd_ovopt.lora.example import EXAMPLE_TARGETS, write_example_lora
from sd_ovopt.lora.fuse import apply_lora, delta_weight, get_lora_config, remove_lora
from sd_ovopt.lora.load import LoRALayer, read_lora_layers

__all__ = [
    "EXAMPLE_TARGETS",
    "LoRAConfig",
    "LoRALayer",
    "apply_lora",
    "delta_weight",
    "file_sha256",
    "get_lora_config",
    "read_lora_layers",
    "remove_lora",
    "write_example_lora",
]
