"""The student of latent consistency distillation, fake-quantized from its first step.

:class:`ConsistencyDistillationModel` is :class:`sd_ovopt.QATModel` with the LCM objective in place of the
noise-prediction loss: the frozen float teacher takes one guided DDIM step over skipping timesteps, the
target network (the student with its EMA weights, LCM's target network) gives its consistency output at
the step's end, and the student learns to give the same at the start. The guidance scale is fixed
(:class:`DistillConfig`), so the student needs no guidance input and runs one UNet row per image: it is
exported guidance-free, for the LCM scheduler at 1 to 4 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sd_ovopt._config import JsonConfig
from sd_ovopt._validation import check_choice, check_float, check_int
from sd_ovopt.distill.consistency import (
    LOSS_TYPES,
    consistency_loss,
    consistency_output,
    consistency_target,
    skipping_timesteps,
    teacher_step,
)
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.quantization.config import QATConfig
from sd_ovopt.quantization.qat import QATLoss, QATModel

__all__ = ["STUDENT_KINDS", "ConsistencyDistillationModel", "DistillConfig"]

#: What the student is: INT8 from the first step (the fused run), or float.
STUDENT_KINDS = ("int8", "float")


@dataclass(frozen=True)
class DistillConfig(JsonConfig):
    """What latent consistency distillation distils (the training itself is :class:`sd_ovopt.QATConfig`).

    Attributes:
        guidance_scale: The teacher's classifier-free guidance, as a pipeline takes it (> 1); the student
            learns the guided trajectory and runs without guidance (``guidance_scale=1``).
        num_ddim_timesteps: ``N``, the teacher solver's steps over the 1000 training timesteps (LCM: 50):
            each distillation step jumps ``1000 // N`` timesteps.
        loss_type: ``"huber"`` (LCM's pseudo-Huber) or ``"l2"``.
        huber_c: The pseudo-Huber constant (> 0).
        student: ``"int8"`` (fake-quantized by NNCF from the first step: distilled and quantized in one
            loop) or ``"float"`` (a float student, exported in float; quantize it afterwards with the
            recipe, e.g. to compare distil-then-quantize with the fused run).
        lora_rank: 0 (default) trains the whole UNet; ``r >= 1`` trains a LoRA student instead: rank-``r``
            adapters on LCM-LoRA's layers, the UNet's own weights frozen (LCM-LoRA's way; it needs the
            memory of two UNets, not of six). An INT8 LoRA student's weight quantizers round the fused
            ``W + BA``, and the export fuses the adapters before writing the INT8 UNet.
        lora_alpha: The adapters' alpha (their update is scaled by ``alpha / r``); default ``r``.
        version: Layout version of this config.

    Example:
        >>> DistillConfig(guidance_scale=8.0).to_dict()["num_ddim_timesteps"]
        50
    """

    guidance_scale: float = 7.5
    num_ddim_timesteps: int = 50
    loss_type: str = "huber"
    huber_c: float = 0.001
    student: str = "int8"
    lora_rank: int = 0
    lora_alpha: float | None = None
    version: int = 1

    def __post_init__(self) -> None:
        hint = "It is the teacher's guidance, e.g. 7.5."
        check_float(
            "DistillConfig.guidance_scale", self.guidance_scale, minimum=1, open_minimum=True, hint=hint
        )
        check_int("DistillConfig.num_ddim_timesteps", self.num_ddim_timesteps, minimum=1, maximum=1000)
        check_choice("DistillConfig.loss_type", self.loss_type, LOSS_TYPES)
        check_float("DistillConfig.huber_c", self.huber_c, minimum=0, open_minimum=True)
        check_choice("DistillConfig.student", self.student, STUDENT_KINDS)
        check_int("DistillConfig.lora_rank", self.lora_rank, minimum=0)
        if self.lora_alpha is not None:
            check_float("DistillConfig.lora_alpha", self.lora_alpha, minimum=0, open_minimum=True)
            if not self.lora_rank:
                raise InvalidConfigError(
                    "DistillConfig.lora_alpha is set but lora_rank is 0 (a full-UNet student, no adapters); "
                    "set lora_rank too, e.g. 64 as LCM-LoRA, or leave lora_alpha out."
                )
        if self.version != 1:
            raise InvalidConfigError(
                f"DistillConfig.version={self.version!r}; this sd_ovopt reads version 1."
            )


class ConsistencyDistillationModel(QATModel):
    """A student distilled to a few-step consistency model of its float teacher: fake-quantized from its
    first step, or float with ``DistillConfig(student="float")``.

    ``forward(latents, encoder_hidden_states, noise, timesteps)`` takes what :class:`QATModel` takes: the
    timesteps (any of the 1000) choose each sample's solver step ``n = t * N // 1000``. The returned
    :class:`~sd_ovopt.quantization.qat.QATLoss` carries the consistency loss as ``total`` and
    ``distillation`` (``task`` is 0). The target network is the student with the EMA weights, applied
    under ``no_grad`` before the student's own forward.

    Args:
        pipeline: The float pipeline (or its folder); its UNet is the teacher, its text encoder encodes the
            empty prompt for guidance.
        student: A UNet from :func:`sd_ovopt.quantize_unet` (INT8 from step 0; ToMe may be applied), or a
            float copy of the teacher with ``DistillConfig(student="float")``.
        config: Training settings (the EMA decay is the target network's).
        distillation: What to distil (default ``DistillConfig()``).
        copy_teacher: Deep-copy the pipeline's UNet as teacher (default).

    Example:
        >>> from sd_ovopt.distill import ConsistencyDistillationModel  # doctest: +SKIP
        >>> model = ConsistencyDistillationModel(pipe, qunet, QATConfig(ema_decay=0.95))  # doctest: +SKIP
    """

    def __init__(
        self,
        pipeline: Any,
        student: torch.nn.Module,
        config: QATConfig | None = None,
        distillation: DistillConfig | None = None,
        *,
        copy_teacher: bool = True,
    ) -> None:
        distillation = DistillConfig() if distillation is None else distillation
        if not isinstance(distillation, DistillConfig):
            raise InvalidConfigError(
                f"distillation must be a DistillConfig, got {type(distillation).__name__}."
            )
        quantized = distillation.student == "int8"
        super().__init__(pipeline, student, config, copy_teacher=copy_teacher, quantized_student=quantized)
        self.distillation = distillation
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.double()
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.uncond = _empty_prompt_states(self.pipeline)

    def _consistency(
        self, output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        alphas = self.alphas_cumprod.to(sample.device)
        return consistency_output(output, timesteps, sample, self.prediction_type, alphas)

    def forward(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> QATLoss:
        d, alphas = self.distillation, self.alphas_cumprod.to(latents.device)
        num_train = alphas.numel()
        # 1. The solver step of each sample, and the noisy latents where it starts
        index = timesteps.long() * d.num_ddim_timesteps // num_train
        start, previous = skipping_timesteps(index, num_train, d.num_ddim_timesteps)
        noisy = self.noise_scheduler.add_noise(latents, noise, start)
        with torch.no_grad():
            # 2. The teacher's guided DDIM step to the earlier timestep
            uncond = self.uncond.to(encoder_hidden_states).expand_as(encoder_hidden_states)
            teacher = self.loss.teacher
            cond_out = teacher(noisy, start, encoder_hidden_states, return_dict=False)[0]
            uncond_out = teacher(noisy, start, uncond, return_dict=False)[0]
            x_prev = teacher_step(
                cond_out.float(), uncond_out.float(), noisy, index, d.guidance_scale - 1,
                self.prediction_type, alphas, d.num_ddim_timesteps,
            )  # fmt: skip
            # 3. The target network (the EMA weights) at the step's end
            with self.ema.applied_to(self.student):
                target_out = self.student(x_prev, previous, encoder_hidden_states, return_dict=False)[0]
            target = consistency_target(target_out.float(), x_prev, previous, self.prediction_type, alphas)
        # 4. The student at the start, with gradients
        output = self.student(noisy, start, encoder_hidden_states, return_dict=False)[0]
        prediction = self._consistency(output.float(), start, noisy)
        loss = consistency_loss(prediction, target, d.loss_type, d.huber_c)
        return QATLoss(loss, torch.zeros((), device=loss.device), loss.detach())

    @torch.no_grad()
    def teacher_error(self, samples: list[dict[str, torch.Tensor]], *, use_ema: bool = False) -> float:
        """Mean consistency loss of the student (or its EMA weights) on fixed inputs: the distillation
        objective with the target fixed to the current weights, the number training brings down."""
        device = next(self.student.parameters()).device
        was_training = self.training
        self.eval()
        losses = []
        try:
            for item in samples:
                args = [
                    item[k].to(device) for k in ("latents", "encoder_hidden_states", "noise", "timesteps")
                ]
                if use_ema:
                    with self.ema.applied_to(self.student):
                        losses.append(float(self(*args).total))
                else:
                    losses.append(float(self(*args).total))
        finally:
            self.train(was_training)
        return sum(losses) / len(losses)


@torch.no_grad()
def _empty_prompt_states(pipe: Any) -> torch.Tensor:
    """The text encoder's states for the empty prompt, ``[1, L, D]``: the teacher's unconditional input."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        [""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(next(text_encoder.parameters()).device), return_dict=False)[0].float().cpu()
