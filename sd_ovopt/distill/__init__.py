"""Latent consistency distillation (the LCM recipe) for few-step students of a many-step teacher.

The tensor math of one distillation step (:mod:`sd_ovopt.distill.consistency`: the consistency
parameterization and its boundary conditions, ``x0``/``eps`` from a UNet's output, the teacher's guided
DDIM step over skipping timesteps, the guidance-weight embedding, the consistency loss) and the quantized
student that trains on it (:mod:`sd_ovopt.distill.model`); the run is :func:`sd_ovopt.distill_student`.
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
from sd_ovopt.distill.model import ConsistencyDistillationModel, DistillConfig

__all__ = [
    "LOSS_TYPES",
    "PREDICTION_TYPES",
    "ConsistencyDistillationModel",
    "DistillConfig",
    "consistency_loss",
    "consistency_output",
    "consistency_target",
    "ddim_step",
    "ddim_timesteps",
    "guidance_scale_embedding",
    "predicted_noise",
    "predicted_origin",
    "scalings_for_boundary_conditions",
    "skipping_timesteps",
    "teacher_step",
]
