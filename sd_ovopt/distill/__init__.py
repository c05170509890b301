"""Latent consistency distillation (the LCM recipe) for few-step students of a many-step teacher.

The tensor math of one distillation step (:mod:`sd_ovopt.distill.consistency`: the consistency
parameterization and its boundary conditions, ``x0``/``eps`` from a UNet's output, the teacher's guided
DDIM step over skipping timesteps, the guidance-weight embedding, the consistency loss) and the quantized
student that trains on it (:mod:`sd_ovopt.distill.model`), whole or as LoRA adapters
(:mod:`sd_ovopt.distill.lora_student`); the run is :func:`sd_ovopt.distill_student`.
"""

from sd_ovopt.distill.consistency import (
    LOSS_TYPES,
    PREDICTION_TYPES,
    consistency_loss,
    consistency_output,
    consistency_target,
    ddim_step,
    ddim_timesteps,
    guidance_scale_embedding,
    predicted_noise,
    predicted_origin,
    scalings_for_boundary_conditions,
    skipping_timesteps,
    teacher_step,
)
from sd_ovopt.distill.lora_student import (
    LORA_STUDENT_TARGETS,
    add_lora_student,
    fuse_lora_student,
    has_lora_student,
)
from sd_ovopt.distill.model import ConsistencyDistillationModel, DistillConfig

__all__ = [
    "LORA_STUDENT_TARGETS",
    "LOSS_TYPES",
    "PREDICTION_TYPES",
    "ConsistencyDistillationModel",
    "DistillConfig",
    "add_lora_student",
    "consistency_loss",
    "consistency_output",
    "consistency_target",
    "ddim_step",
    "ddim_timesteps",
    "fuse_lora_student",
    "guidance_scale_embedding",
    "has_lora_student",
    "predicted_noise",
    "predicted_origin",
    "scalings_for_boundary_conditions",
    "skipping_timesteps",
    "teacher_step",
]
