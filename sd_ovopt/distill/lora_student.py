"""A LoRA student: the UNet's weights frozen, low-rank adapters trained, fake-quantized as one weight.

:func:`add_lora_student` puts an adapter on each layer LCM-LoRA trains (:data:`LORA_STUDENT_TARGETS`) as a
``torch.nn.utils.parametrize`` parametrization, so the layer's ``weight`` is ``W + (B @ A) * alpha / r``.
NNCF quantizes a weight where the convolution or linear op takes it (a pre-hook on the op's weight
input), so on an INT8 student the weight quantizer rounds that sum, not ``W``: what training sees is what
the export gives. :func:`fuse_lora_student` writes ``W + BA`` into the weight and drops the adapter; the
UNet is then an ordinary NNCF-quantized UNet whose weight quantizers round the fused weights.

``B`` starts at zero (PEFT's initialisation), so a new student computes exactly what the UNet computed:
the teacher, or its post-training quantization. Only the adapters (and an INT8 student's quantizer
ranges) are trainable; the base weights keep ``requires_grad=False``, so the optimizer, the EMA and the
checkpoint's optimizer state hold the adapters only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from sd_ovopt._loading import find_unet
from sd_ovopt._validation import check_float, check_int
from sd_ovopt.errors import AlreadyAppliedError, UnsupportedModelError
from sd_ovopt.quantization.qat import is_quantizer_parameter

__all__ = [
    "LORA_STUDENT_TARGETS",
    "add_lora_student",
    "fuse_lora_student",
    "has_lora_student",
]

#: The layers LCM-LoRA trains (diffusers' LCM-LoRA distillation script): attention, feed-forward,
#: the transformer's projections, the ResNet convolutions and time projections, down- and up-samplers.
LORA_STUDENT_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)  # fmt: skip


class LoRAWeight(nn.Module):
    """The parametrization ``W -> W + (B @ A) * alpha / r`` of one linear or convolution weight.

    Args:
        weight: The layer's weight (its shape sets the adapter's).
        rank: ``r``, the adapter's rank.
        alpha: The LoRA alpha; the update is scaled by ``alpha / rank``.
    """

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features, *kernel = weight.shape
        down = torch.empty(rank, in_features, *kernel, dtype=weight.dtype, device=weight.device)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # PEFT's initialisation of A
        self.lora_A = nn.Parameter(down)
        self.lora_B = nn.Parameter(
            torch.zeros(out_features, rank, *[1] * len(kernel), dtype=weight.dtype, device=weight.device)
        )
        self.scale = alpha / rank

    def delta(self) -> torch.Tensor:
        """``(B @ A) * alpha / r`` in the weight's shape."""
        shape = (self.lora_B.shape[0], *self.lora_A.shape[1:])
        return (self.lora_B.flatten(1) @ self.lora_A.flatten(1)).reshape(shape) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta()


def _check_quantizers_see_the_op_input(unet: nn.Module, targets: dict[str, nn.Module]) -> None:
    """Refuse a quantized UNet whose weight quantizer sits on the weight parameter itself (a post-hook on
    the constant): the parametrized weight is a computed tensor, which such a quantizer would never round."""
    from sd_ovopt.quantization.ptq import is_quantized  # NNCF is imported only for a quantized student

    if not is_quantized(unet):
        return
    from nncf.torch.function_hook.wrapper import get_hook_storage

    post_hooks = get_hook_storage(unet).post_hooks
    on_constants = [name for name in targets if f"{name}.weight__0".replace(".", ":") in post_hooks]
    if on_constants:
        raise UnsupportedModelError(
            f"NNCF quantizes the weight of {on_constants[0]!r} (and {len(on_constants) - 1} more) on the "
            "parameter itself, where a LoRA student's fused weight never passes; use the NNCF version "
            "sd_ovopt pins, or distil a full-UNet student (lora_rank=0)."
        )


def _targets(unet: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name.endswith(LORA_STUDENT_TARGETS)
    }


def has_lora_student(unet: nn.Module) -> bool:
    """Whether ``unet`` carries the adapters of :func:`add_lora_student`."""
    return any(isinstance(m, LoRAWeight) for m in unet.modules())


def _adapter(module: nn.Module) -> LoRAWeight | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    adapter = module.parametrizations.weight[0]
    return adapter if isinstance(adapter, LoRAWeight) else None


def add_lora_student(unet: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """Put a rank-``rank`` adapter on every layer of :data:`LORA_STUDENT_TARGETS` of ``unet`` (float or
    quantized by :func:`sd_ovopt.quantize_unet`), freeze everything else but the quantizers; return it.

    Args:
        unet: The student UNet, changed in place.
        rank: The adapters' rank (>= 1).
        alpha: The LoRA alpha (default: ``rank``, a scale of 1).

    Example:
        >>> from sd_ovopt.distill.lora_student import add_lora_student
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> unet = add_lora_student(tiny_pipeline().unet, rank=4)
        >>> sum(p.numel() for p in unet.parameters() if p.requires_grad) > 0
        True
    """
    unet = find_unet(unet, user="add_lora_student")
    rank = check_int("the LoRA student's rank", rank, minimum=1)
    if alpha is not None:
        check_float("the LoRA student's alpha", alpha, minimum=0, open_minimum=True)
    if has_lora_student(unet):
        raise AlreadyAppliedError("the UNet already carries LoRA student adapters; fuse them first.")
    targets = _targets(unet)
    if not targets:
        raise UnsupportedModelError(
            f"the UNet has no layer named like {list(LORA_STUDENT_TARGETS)}: it is not a diffusers "
            "UNet2DConditionModel; distil a full-UNet student instead (lora_rank=0)."
        )
    taken = [name for name, module in targets.items() if parametrize.is_parametrized(module)]
    if taken:
        raise UnsupportedModelError(
            f"{taken[0]!r} (and {len(taken) - 1} more) is parametrized already (torch.nn.utils.parametrize); "
            "remove its parametrization before adding a LoRA student."
        )
    _check_quantizers_see_the_op_input(unet, targets)
    for name, param in unet.named_parameters():
        if param.is_floating_point():  # NNCF keeps some integer settings as parameters
            param.requires_grad_(is_quantizer_parameter(name))
    for module in targets.values():
        module.weight.requires_grad_(False)
        adapter = LoRAWeight(module.weight, rank, rank if alpha is None else alpha)
        parametrize.register_parametrization(module, "weight", adapter)
    return unet


@torch.no_grad()
def fuse_lora_student(unet: nn.Module) -> nn.Module:
    """Write each adapter's ``W + BA`` into its layer's weight and remove the adapters; return ``unet``.

    An INT8 student is then an ordinary NNCF-quantized UNet (its weight quantizers on the fused weights),
    ready for :func:`sd_ovopt.export_pipeline`; the weights stay frozen.
    """
    unet = find_unet(unet, user="fuse_lora_student")
    for module in list(unet.modules()):
        adapter = _adapter(module)
        if adapter is None:
            continue
        original = module.parametrizations.weight.original
        fused = nn.Parameter(original + adapter.delta(), requires_grad=original.requires_grad)
        # Not parametrize.remove_parametrizations: it deletes the property from the parametrized class,
        # which a deep copy of the student shares, and would break the copy.
        module.__class__ = parametrize.type_before_parametrizations(module)
        del module.parametrizations
        module.weight = fused
    return unet
