"""``distill_student``: an INT8 few-step student of a Stable Diffusion pipeline, distilled and quantized in one loop.

The run is :func:`sd_ovopt.train_qat`'s (accelerate, the student fake-quantized by NNCF from step 0 and
calibrated on the teacher's own sampling, EMA, atomic checkpoints, bit-identical resume, NaN stop) with the
latent consistency distillation objective of :class:`sd_ovopt.distill.ConsistencyDistillationModel`. The
result, ``OUT/ov``, is a guidance-free INT8 folder with the LCM scheduler for 1 to 4 steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sd_ovopt.distill.model import ConsistencyDistillationModel, DistillConfig
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.quantization.checkpoints import read_checkpoint_info
from sd_ovopt.quantization.config import QATConfig, QuantizationConfig
from sd_ovopt.recipes.qat import (
    EXPORT_DIR,
    _check_arguments,
    _discard_run_without_checkpoint,
    _QATRun,
    export_student,
)
from sd_ovopt.tome.config import ToMeConfig

__all__ = ["distill_student"]


class _DistillRun(_QATRun):
    """A :func:`train_qat` run whose model is the consistency-distillation student, recorded and exported
    as such."""

    def __init__(self, distillation: DistillConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distillation = distillation

    def open_output(self, model: Any, output_dir: str | Path, resume_from: str | Path | None) -> None:
        """As for QAT; a checkpoint distilled with other settings (or by QAT) is refused before loading."""
        super().open_output(model, output_dir, resume_from)
        if self.resume is None:
            return
        saved = read_checkpoint_info(self.resume).get("distillation")
        if saved != self.distillation.to_dict():
            raise InvalidConfigError(
                f"the checkpoint {self.resume} was trained with distillation settings {saved}, this call asks "
                f"for {self.distillation.to_dict()}. Resume with the same DistillConfig, or start a new run in "
                "a new output folder."
            )

    def make_model(self, student: torch.nn.Module, *, copy_teacher: bool) -> ConsistencyDistillationModel:
        return ConsistencyDistillationModel(
            self.pipe, student, self.config, self.distillation, copy_teacher=copy_teacher
        )

    def extra_info(self) -> dict[str, Any]:
        return {"distillation": self.distillation.to_dict()}

    def export_student(self) -> None:
        """The student (EMA weights) guidance-free, with the LCM scheduler, to ``OUT/ov``."""
        size = self.resolution
        export_student(
            self.qat,
            self.out / EXPORT_DIR,
            height=size,
            width=size,
            overwrite=True,
            show_progress=self.show_progress,
            classifier_free_guidance=False,
            scheduler="lcm",
        )


@_discard_run_without_checkpoint
def distill_student(
    model: Any,
    train_data: str | Path,
    output_dir: str | Path,
    config: QATConfig | None = None,
    *,
    distillation: DistillConfig | None = None,
    quantization: QuantizationConfig | None = None,
    tome: ToMeConfig | None = None,
    resume_from_checkpoint: str | Path | None = None,
    cpu: bool = False,
    show_progress: bool = True,
) -> Path:
    """Distil a Stable Diffusion pipeline into an INT8 few-step student and export it.

    Latent consistency distillation (the LCM recipe) with the student quantized from the first step: the
    float UNet is the teacher (guided DDIM steps over skipping timesteps, ``distillation.guidance_scale``),
    the student with its EMA weights is the target network, and the loss is
    ``distillation.loss_type``. Everything else is :func:`sd_ovopt.train_qat`'s: data layout, accelerate,
    checkpoints, resume, the NaN stop and ``config`` (set ``ema_decay`` to the target network's decay,
    e.g. 0.95 as LCM).

    Args:
        model: A ``StableDiffusionPipeline`` or its local folder (the teacher).
        train_data: Folder of images with ``metadata.jsonl`` captions (diffusers' text-to-image layout).
        output_dir: The run folder; must be new or empty unless resuming.
        config: Training, calibration, evaluation and export settings (default ``QATConfig()``).
        distillation: The teacher's guidance, the solver's steps and the loss (default ``DistillConfig()``).
        quantization: Quantization settings (default ``QuantizationConfig()``).
        tome: Token merging applied to the student before quantization.
        resume_from_checkpoint: ``"latest"`` or a checkpoint folder.
        cpu: Train on the CPU even if an accelerator is present.
        show_progress: Show a progress bar with the loss.

    Returns:
        ``OUT/ov``: a guidance-free INT8 folder with the LCM scheduler (without ``config.export``: the last
        checkpoint). Call it with ``guidance_scale=1`` and 1 to 4 steps.

    Example:
        >>> from sd_ovopt import QATConfig
        >>> from sd_ovopt import distill_student
        >>> distill_student("sd15", "laion-subset", "sd15-lcm-int8", QATConfig(ema_decay=0.95))  # doctest: +SKIP
    """
    config = QATConfig() if config is None else config
    distillation = DistillConfig() if distillation is None else distillation
    _check_arguments(config, quantization, tome, resume_from_checkpoint)
    if not isinstance(distillation, DistillConfig):
        raise InvalidConfigError(f"distillation must be a DistillConfig, got {type(distillation).__name__}.")
    run = _DistillRun(distillation, config, quantization, tome, cpu=cpu, show_progress=show_progress)
    return run(model, train_data, output_dir, resume_from_checkpoint)
