"""``distill_student``: an INT8 few-step student of a Stable Diffusion pipeline, distilled and quantized in one loop.

The run is :func:`sd_ovopt.train_qat`'s (accelerate, the student fake-quantized by NNCF from step 0 and
calibrated on the teacher's own sampling, EMA, atomic checkpoints, bit-identical resume, NaN stop) with the
latent consistency distillation objective of :class:`sd_ovopt.distill.ConsistencyDistillationModel`. The
result, ``OUT/ov``, is a guidance-free INT8 folder with the LCM scheduler for 1 to 4 steps. With
``DistillConfig(student="float")`` the same loop trains a float student: ``OUT/ov`` is then a float folder
and ``OUT/diffusers`` the student as a PyTorch pipeline, for the recipe to quantize afterwards. The report
is ``OUT/distill_report.json``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from sd_ovopt._fs import atomic_output_dir
from sd_ovopt._schedulers import pipeline_scheduler
from sd_ovopt.distill.lora_student import add_lora_student, fuse_lora_student, has_lora_student
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

__all__ = ["FLOAT_DIR", "REPORT_FILE", "distill_student"]

logger = logging.getLogger(__name__)

REPORT_FILE = "distill_report.json"
FLOAT_DIR = "diffusers"  # a float student as a PyTorch pipeline


class _DistillRun(_QATRun):
    """A :func:`train_qat` run whose model is the consistency-distillation student, recorded and exported
    as such."""

    report_file = REPORT_FILE

    def __init__(self, distillation: DistillConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distillation = distillation

    @property
    def quantizes_student(self) -> bool:  # type: ignore[override]
        """Whether the student is fake-quantized: ``DistillConfig.student`` decides."""
        return self.distillation.student == "int8"

    def open_output(self, model: Any, output_dir: str | Path, resume_from: str | Path | None) -> None:
        """As for QAT; a checkpoint distilled with other settings (or by QAT) is refused before loading."""
        super().open_output(model, output_dir, resume_from)
        if self.resume is None:
            return
        saved = read_checkpoint_info(self.resume).get("distillation")
        if _as_distill_config(saved) != self.distillation:
            raise InvalidConfigError(
                f"the checkpoint {self.resume} was trained with distillation settings {saved}, this call asks "
                f"for {self.distillation.to_dict()}. Resume with the same DistillConfig, or start a new run in "
                "a new output folder."
            )

    def adapt_student(self, student: torch.nn.Module) -> torch.nn.Module:
        """A LoRA student's adapters (``DistillConfig.lora_rank``), on the quantized or float UNet."""
        d = self.distillation
        return add_lora_student(student, d.lora_rank, d.lora_alpha) if d.lora_rank else student

    def make_model(self, student: torch.nn.Module, *, copy_teacher: bool) -> ConsistencyDistillationModel:
        return ConsistencyDistillationModel(
            self.pipe, student, self.config, self.distillation, copy_teacher=copy_teacher
        )

    def extra_info(self) -> dict[str, Any]:
        return {"distillation": self.distillation.to_dict()}

    def export_student(self) -> None:
        """The student (EMA weights) guidance-free, with the LCM scheduler, to ``OUT/ov``; a float student
        also as a PyTorch pipeline to ``OUT/diffusers``. A LoRA student takes its EMA weights for good and
        is fused first (the run is over), so the export quantizes ``W + BA``."""
        size, student, use_ema = self.resolution, self.qat.student, True
        if has_lora_student(student):
            self.qat.ema.copy_to(student)
            fuse_lora_student(student)
            use_ema = False
        export_student(
            self.qat,
            self.out / EXPORT_DIR,
            use_ema=use_ema,
            height=size,
            width=size,
            compress_weights=self.quantizes_student,
            overwrite=True,
            show_progress=self.show_progress,
            classifier_free_guidance=False,
            scheduler="lcm",
        )
        if not self.quantizes_student:
            self.save_float_student(use_ema=use_ema)

    def save_float_student(self, *, use_ema: bool) -> None:
        """``OUT/diffusers``: the teacher's pipeline with the student's EMA weights and the LCM scheduler,
        written whole or not at all (ToMe, a run-time patch, is not saved with it)."""
        pipe, student = self.qat.pipeline, self.qat.student
        unet = type(pipe.unet).from_config(pipe.unet.config)  # ToMe adds no weights: a plain UNet takes them
        with self.qat.ema.applied_to(student) if use_ema else contextlib.nullcontext():
            unet.load_state_dict({name: t.detach().cpu() for name, t in student.state_dict().items()})
        parts = {**pipe.components, "unet": unet, "scheduler": pipeline_scheduler("lcm", pipe)}
        with atomic_output_dir(self.out / FLOAT_DIR, overwrite=True) as tmp:
            StableDiffusionPipeline(**parts).save_pretrained(tmp)
        logger.info("float student (PyTorch pipeline) written to %s", self.out / FLOAT_DIR)


def _as_distill_config(saved: Any) -> DistillConfig | None:
    """The checkpoint's distillation settings (fields it predates take their defaults); ``None`` if they
    are not a valid DistillConfig."""
    try:
        return DistillConfig.from_dict(saved) if isinstance(saved, dict) else None
    except (InvalidConfigError, TypeError):
        return None


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
        quantization: Quantization settings (default ``QuantizationConfig()``; none for a float student).
        tome: Token merging applied to the student before quantization.
        resume_from_checkpoint: ``"latest"`` or a checkpoint folder.
        cpu: Train on the CPU even if an accelerator is present.
        show_progress: Show a progress bar with the loss.

    Returns:
        ``OUT/ov``: a guidance-free INT8 folder with the LCM scheduler (float with
        ``DistillConfig(student="float")``, which also writes ``OUT/diffusers``; without ``config.export``:
        the last checkpoint). Call it with ``guidance_scale=1`` and 1 to 4 steps.

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
    if distillation.student == "float" and (quantization is not None or config.export_ptq):
        raise InvalidConfigError(
            'DistillConfig(student="float") trains a float student: leave quantization out and '
            "export_ptq off (quantize the exported OUT/diffusers afterwards with sd_ovopt.optimize_pipeline)."
        )
    run = _DistillRun(distillation, config, quantization, tome, cpu=cpu, show_progress=show_progress)
    return run(model, train_data, output_dir, resume_from_checkpoint)
