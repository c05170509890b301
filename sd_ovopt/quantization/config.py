"""``QuantizationConfig`` and ``QATConfig``: the 8-bit and fine-tuning choices for a Stable Diffusion UNet."""

from __future__ import annotations

from dataclasses import dataclass

from sd_ovopt._config import JsonConfig
from sd_ovopt.errors import InvalidConfigError

__all__ = ["DEFAULT_IGNORED_PATTERNS", "GRADIENT_CHECKPOINTING_REFUSAL", "QATConfig", "QuantizationConfig"]

#: Kept in float by default: the time embedding MLP (tiny, and its error shifts every block), the first
#: convolution (4 input channels: no int8 gain, raw latents) and the last one (its output is the noise
#: prediction itself). OpenVINO's SD notebooks report these layers "impact the accuracy dramatically".
DEFAULT_IGNORED_PATTERNS: tuple[str, ...] = (r"^time_embedding/.*", r"^conv_in/.*", r"^conv_out/.*")

_PRESETS = ("mixed", "performance")
_MODES = ("full", "hybrid")


@dataclass(frozen=True)
class QuantizationConfig(JsonConfig):
    """How :func:`sd_ovopt.quantize_unet` quantizes a UNet with NNCF.

    Defaults (chosen for SD-1.x/2.x UNets):

    * ``preset="mixed"``: symmetric int8 weights, asymmetric int8 activations, which suits the one-sided
      outputs of SiLU/GELU (the preset of the 2023 QAT recipe and of optimum-intel).
    * ``mode="full"``: weights and activations of convolutions and linear layers in int8, which is the
      fastest IR on CPU and what quantization-aware training restores the quality of. ``"hybrid"``
      quantizes activations of convolutions only and stores matmul weights in int8 without activation
      quantizers (optimum-intel's post-training recipe for SD): safer without fine-tuning, a bit slower.
    * ``subset_size=200``: calibration samples used for ranges (optimum-intel's default for SD).
    * ``smooth_quant=False``: SmoothQuant is reported to hurt diffusion UNets and adds trainable scales
      that ignore the ignored scope.
    * ``bias_correction=False``: little gain on SD (OpenVINO's SD notebooks turn it off) and slow.
    * ``ignored_patterns``: see :data:`DEFAULT_IGNORED_PATTERNS`. ToMe's ops are always ignored on top.

    Attributes:
        preset: ``"mixed"`` or ``"performance"`` (symmetric activations too).
        mode: ``"full"`` or ``"hybrid"``.
        subset_size: Calibration samples NNCF uses (at most the number given).
        smooth_quant: Apply SmoothQuant to matmuls.
        bias_correction: Apply NNCF's fast bias correction.
        ignored_patterns: Regular expressions of NNCF node names to keep in float.
        version: Layout version of this config, for serialized copies.

    Example:
        >>> from sd_ovopt import QuantizationConfig
        >>> QuantizationConfig(mode="hybrid").to_dict()["mode"]
        'hybrid'
    """

    preset: str = "mixed"
    mode: str = "full"
    subset_size: int = 200
    smooth_quant: bool = False
    bias_correction: bool = False
    ignored_patterns: tuple[str, ...] = DEFAULT_IGNORED_PATTERNS
    version: int = 1

    def __post_init__(self) -> None:
        if self.preset not in _PRESETS:
            raise InvalidConfigError(f"QuantizationConfig.preset={self.preset!r}; use one of {_PRESETS}.")
        if self.mode not in _MODES:
            raise InvalidConfigError(f"QuantizationConfig.mode={self.mode!r}; use one of {_MODES}.")
        if (
            not isinstance(self.subset_size, int)
            or isinstance(self.subset_size, bool)
            or self.subset_size < 1
        ):
            raise InvalidConfigError(
                f"QuantizationConfig.subset_size={self.subset_size!r}; it must be an integer >= 1 (default 200)."
            )
        for name in ("smooth_quant", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidConfigError(f"QuantizationConfig.{name} must be a boolean.")
        patterns = self.ignored_patterns
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
            raise InvalidConfigError(
                "QuantizationConfig.ignored_patterns must be a sequence of regex strings."
            )
        object.__setattr__(self, "ignored_patterns", tuple(patterns))
        if self.version != 1:
            raise InvalidConfigError(
                f"QuantizationConfig.version={self.version!r}; this sd_ovopt reads version 1."
            )


#: Why quantization-aware training refuses gradient checkpointing (the message of the error it raises).
GRADIENT_CHECKPOINTING_REFUSAL = (
    "gradient checkpointing cannot be used for quantization-aware training with NNCF 3: NNCF inserts its "
    "quantizers through function hooks that are active only during the original forward pass, and the "
    "forward that checkpointing recomputes during backward runs without them. Non-reentrant checkpointing "
    "then fails ('A different number of tensors was saved'), and reentrant checkpointing silently computes "
    "wrong gradients (most quantizer parameters get none). Train without it: lower train_batch_size and "
    "raise gradient_accumulation_steps, lower the resolution, use bf16 mixed precision "
    "(accelerate launch --mixed_precision bf16), or a device with more memory."
)


def _check_number(
    owner: str, name: str, value: object, *, integer: bool, minimum: float, strict: bool
) -> None:
    kind = int if integer else (int, float)
    bad_type = not isinstance(value, kind) or isinstance(value, bool)
    if bad_type or value < minimum or (strict and value == minimum) or value != value:  # type: ignore[operator]
        rule = f"{'>' if strict else '>='} {minimum}"
        raise InvalidConfigError(
            f"{owner}.{name}={value!r}; it must be {'an integer' if integer else 'a number'} {rule}."
        )


@dataclass(frozen=True)
class QATConfig(JsonConfig):
    """How quantization-aware training fine-tunes a UNet from :func:`sd_ovopt.quantize_unet`.

    Defaults follow the 2023 QAT recipe for SD-1.x (``train_text_to_image_qat.py``): AdamW at a constant
    1e-5, batch 1 with 4 accumulation steps, gradient clipping at 1.0, equal task and distillation weights,
    an EMA with decay 0.9999 and warm-up.

    The loss is ``task_loss_weight * mse(student, target) + distillation_loss_weight * mse(student, teacher)``,
    where the target is the noise (``epsilon``) or the velocity (``v_prediction``), as the pipeline's
    scheduler predicts, and the teacher is the frozen float UNet. After each optimizer step the EMA does
    ``shadow = d * shadow + (1 - d) * weight`` over every weight except the quantizer parameters, with
    ``d = ema_decay``, or with warm-up ``d = min(ema_decay, (1 + n) / (10 + n))``, ``n`` = updates done before.

    Attributes:
        learning_rate: AdamW learning rate (constant), for weights and quantizer parameters.
        weight_decay: AdamW weight decay of the weights; quantizer ranges get none.
        max_train_steps: Optimizer steps in total.
        train_batch_size: Images per process per micro-batch.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        max_grad_norm: Gradient norm clipping, or ``None`` for none.
        task_loss_weight: Weight of the loss against the noise (or velocity) target.
        distillation_loss_weight: Weight of the loss against the float teacher's prediction.
        ema_decay: EMA decay, ``0 <= ema_decay < 1``.
        ema_warmup: Ramp the decay up as ``(1 + n) / (10 + n)`` until it reaches ``ema_decay``.
        resolution: Training image size in pixels (square; default: the UNet's native size).
        checkpointing_steps: Save a checkpoint every this many optimizer steps (and at the end).
        checkpoints_total_limit: Keep at most this many checkpoints (default: keep all).
        seed: Seeds data order, noise and timesteps: they are a function of the seed and the step.
        gradient_checkpointing: Always refused: see :data:`GRADIENT_CHECKPOINTING_REFUSAL`.
        calibration_prompts: Distinct captions (the first ones) whose pipeline runs calibrate the quantizers.
        calibration_steps: Denoising steps per calibration prompt (one calibration sample each).
        caption_column: The caption key in the training data's ``metadata.jsonl``.
        eval_samples: Training images (the first ones) on which the student-vs-teacher error is reported.
        export_ptq: Also export the post-training-quantized pipeline to ``OUT/ptq-ov``, for comparison.
        export: Export ``OUT/ov`` at the end. Without it, resuming the finished run later exports only.
        version: Layout version of this config, for serialized copies.

    Example:
        >>> from sd_ovopt import QATConfig
        >>> QATConfig(max_train_steps=100).to_dict()["ema_decay"]
        0.9999
    """

    learning_rate: float = 1e-5
    weight_decay: float = 1e-2
    max_train_steps: int = 4096
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    max_grad_norm: float | None = 1.0
    task_loss_weight: float = 1.0
    distillation_loss_weight: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    resolution: int | None = None
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    seed: int = 0
    gradient_checkpointing: bool = False
    calibration_prompts: int = 8
    calibration_steps: int = 20
    caption_column: str = "text"
    eval_samples: int = 8
    export_ptq: bool = False
    export: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        check = _check_number
        name = "QATConfig"
        check(name, "learning_rate", self.learning_rate, integer=False, minimum=0, strict=True)
        check(name, "weight_decay", self.weight_decay, integer=False, minimum=0, strict=False)
        for field in (
            "max_train_steps",
            "train_batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "calibration_prompts",
            "calibration_steps",
        ):
            check(name, field, getattr(self, field), integer=True, minimum=1, strict=False)
        for field in ("checkpoints_total_limit", "resolution"):
            if getattr(self, field) is not None:
                check(name, field, getattr(self, field), integer=True, minimum=1, strict=False)
        if self.max_grad_norm is not None:
            check(name, "max_grad_norm", self.max_grad_norm, integer=False, minimum=0, strict=True)
        check(name, "task_loss_weight", self.task_loss_weight, integer=False, minimum=0, strict=False)
        check(
            name,
            "distillation_loss_weight",
            self.distillation_loss_weight,
            integer=False,
            minimum=0,
            strict=False,
        )
        if self.task_loss_weight == 0 and self.distillation_loss_weight == 0:
            raise InvalidConfigError(
                "QATConfig.task_loss_weight and distillation_loss_weight are both 0: nothing to train on. "
                "Set at least one of them > 0 (default 1.0 each)."
            )
        check(name, "ema_decay", self.ema_decay, integer=False, minimum=0, strict=False)
        if self.ema_decay >= 1:
            raise InvalidConfigError(f"QATConfig.ema_decay={self.ema_decay!r}; it must be < 1 (e.g. 0.9999).")
        check(name, "seed", self.seed, integer=True, minimum=0, strict=False)
        check(name, "eval_samples", self.eval_samples, integer=True, minimum=0, strict=False)
        for field in ("ema_warmup", "export_ptq", "export"):
            if not isinstance(getattr(self, field), bool):
                raise InvalidConfigError(f"QATConfig.{field} must be a boolean.")
        if not isinstance(self.caption_column, str) or not self.caption_column:
            raise InvalidConfigError(
                f"QATConfig.caption_column={self.caption_column!r}; name the caption key of metadata.jsonl "
                "(default 'text')."
            )
        if self.gradient_checkpointing is not False:
            raise InvalidConfigError(
                f"QATConfig.gradient_checkpointing={self.gradient_checkpointing!r}: {GRADIENT_CHECKPOINTING_REFUSAL}"
            )
        if self.version != 1:
            raise InvalidConfigError(f"QATConfig.version={self.version!r}; this sd_ovopt reads version 1.")
