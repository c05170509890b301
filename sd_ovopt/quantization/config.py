"""``QuantizationConfig`` and ``QATConfig``: the 8-bit and fine-tuning choices for a Stable Diffusion UNet."""

from __future__ import annotations

from dataclasses import dataclass

from sd_ovopt._config import JsonConfig
from sd_ovopt._loading import MAX_IMAGE_SIDE
from sd_ovopt._validation import check_float, check_int
from sd_ovopt.errors import InvalidConfigError

__all__ = [
    "DEFAULT_IGNORED_PATTERNS",
    "EMA_DEVICES",
    "GRADIENT_CHECKPOINTING_REFUSAL",
    "MAX_SEED",
    "QATConfig",
    "QuantizationConfig",
    "check_ema_decay",
]

#: Kept in float by default: the time embedding MLP (tiny, and its error shifts every block), the first
#: convolution (4 input channels: no int8 gain, raw latents) and the last one (its output is the noise
#: prediction itself). OpenVINO's SD notebooks report these layers "impact the accuracy dramatically".
DEFAULT_IGNORED_PATTERNS: tuple[str, ...] = (r"^time_embedding/.*", r"^conv_in/.*", r"^conv_out/.*")

_PRESETS = ("mixed", "performance")
_MODES = ("full", "hybrid")
#: Where :class:`QATConfig` keeps the EMA weights.
EMA_DEVICES = ("cpu", "accelerator")

#: The most a seed may be: accelerate's ``set_seed`` also seeds NumPy, which takes seeds below 2**32.
MAX_SEED = 2**32 - 1

_QAT_COUNTS = (  # integer settings >= 1
    "max_train_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "checkpointing_steps",
    "calibration_prompts",
    "calibration_steps",
)


def _set(config: object, name: str, value: object) -> None:
    """Store a checked value (a Python number, also when a numpy scalar was given) on a frozen dataclass."""
    object.__setattr__(config, name, value)


def _check_flags(owner: str, config: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise InvalidConfigError(
                f"{owner}.{name}={value!r} ({type(value).__name__}); it must be True or False."
            )


def _check_version(owner: str, value: object) -> None:
    if check_int(f"{owner}.version", value) != 1:
        raise InvalidConfigError(f"{owner}.version={value!r}; this sd_ovopt reads version 1.")


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
        _set(
            self,
            "subset_size",
            check_int("QuantizationConfig.subset_size", self.subset_size, minimum=1),
        )
        _check_flags("QuantizationConfig", self, ("smooth_quant", "bias_correction"))
        patterns = self.ignored_patterns
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
            raise InvalidConfigError(
                "QuantizationConfig.ignored_patterns must be a sequence of regex strings."
            )
        object.__setattr__(self, "ignored_patterns", tuple(patterns))
        _check_version("QuantizationConfig", self.version)


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
        learning_rate: AdamW learning rate (constant), for weights and quantizer parameters; ``0 < lr <= 1``.
        weight_decay: AdamW weight decay of the weights, ``0 <= weight_decay <= 1``; quantizer ranges get none.
        max_train_steps: Optimizer steps in total.
        train_batch_size: Images per process per micro-batch.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        max_grad_norm: Gradient norm clipping (a finite number > 0), or ``None`` for none.
        task_loss_weight: Weight of the loss against the noise (or velocity) target.
        distillation_loss_weight: Weight of the loss against the float teacher's prediction.
        ema_decay: EMA decay, ``0 <= ema_decay < 1``.
        ema_warmup: Ramp the decay up as ``(1 + n) / (10 + n)`` until it reaches ``ema_decay``.
        ema_device: Where the EMA weights live: ``"cpu"`` (default: the accelerator's memory holds only what
            training needs) or ``"accelerator"`` (the training device: on a GPU the update and, in
            distillation, the target network's weight swap stay on the GPU, at the cost of one more copy of
            the trained weights and, while the target network runs, a second).
        resolution: Training image size in pixels (square, a multiple of 8 up to 4096; default: the UNet's
            native size).
        checkpointing_steps: Save a checkpoint every this many optimizer steps (and at the end).
        checkpoints_total_limit: Keep at most this many checkpoints (default: keep all).
        seed: Seeds data order, noise and timesteps: they are a function of the seed and the step
            (``0 <= seed <= MAX_SEED``, 2**32 - 1).
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
    ema_device: str = "cpu"
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
        self._check_optimizer()
        self._check_counts()
        self._check_loss_and_ema()
        _check_flags("QATConfig", self, ("ema_warmup", "export_ptq", "export"))
        if not isinstance(self.caption_column, str) or not self.caption_column:
            raise InvalidConfigError(
                f"QATConfig.caption_column={self.caption_column!r}; name the caption key of metadata.jsonl "
                "(default 'text')."
            )
        if self.gradient_checkpointing is not False:
            raise InvalidConfigError(
                f"QATConfig.gradient_checkpointing={self.gradient_checkpointing!r}: {GRADIENT_CHECKPOINTING_REFUSAL}"
            )
        _check_version("QATConfig", self.version)

    def _check_optimizer(self) -> None:
        """AdamW's settings: finite, and in the range where one step cannot wreck the weights."""
        lr = check_float(
            "QATConfig.learning_rate",
            self.learning_rate,
            minimum=0,
            maximum=1,
            open_minimum=True,
            hint="AdamW moves each weight by about the learning rate per step; the recipe uses 1e-5.",
        )
        _set(self, "learning_rate", lr)
        decay = check_float(
            "QATConfig.weight_decay",
            self.weight_decay,
            minimum=0,
            maximum=1,
            hint="AdamW multiplies each weight by 1 - learning_rate * weight_decay per step (default 1e-2).",
        )
        _set(self, "weight_decay", decay)
        if self.max_grad_norm is not None:
            norm = check_float(
                "QATConfig.max_grad_norm",
                self.max_grad_norm,
                minimum=0,
                open_minimum=True,
                hint="Use None for no clipping (default 1.0).",
            )
            _set(self, "max_grad_norm", norm)

    def _check_counts(self) -> None:
        """The integer settings (numpy integers accepted, stored as Python ints)."""
        for name in _QAT_COUNTS:
            _set(self, name, check_int(f"QATConfig.{name}", getattr(self, name), minimum=1))
        if self.checkpoints_total_limit is not None:
            limit = check_int("QATConfig.checkpoints_total_limit", self.checkpoints_total_limit, minimum=1)
            _set(self, "checkpoints_total_limit", limit)
        if self.resolution is not None:
            size = check_int("QATConfig.resolution", self.resolution, minimum=8, maximum=MAX_IMAGE_SIDE)
            if size % 8:
                raise InvalidConfigError(
                    f"QATConfig.resolution={self.resolution!r}; it must be a multiple of 8, e.g. "
                    f"{max(8, round(size / 8) * 8)} (or None for the UNet's native size)."
                )
            _set(self, "resolution", size)
        _set(self, "seed", check_int("QATConfig.seed", self.seed, minimum=0, maximum=MAX_SEED))
        _set(self, "eval_samples", check_int("QATConfig.eval_samples", self.eval_samples, minimum=0))

    def _check_loss_and_ema(self) -> None:
        for name in ("task_loss_weight", "distillation_loss_weight"):
            _set(self, name, check_float(f"QATConfig.{name}", getattr(self, name), minimum=0))
        if self.task_loss_weight == 0 and self.distillation_loss_weight == 0:
            raise InvalidConfigError(
                "QATConfig.task_loss_weight and distillation_loss_weight are both 0: nothing to train on. "
                "Set at least one of them > 0 (default 1.0 each)."
            )
        _set(self, "ema_decay", check_ema_decay("QATConfig.ema_decay", self.ema_decay))
        if self.ema_device not in EMA_DEVICES:
            raise InvalidConfigError(
                f"QATConfig.ema_device={self.ema_device!r}; use one of {EMA_DEVICES} (default 'cpu')."
            )


def check_ema_decay(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number with ``0 <= value < 1``; raise InvalidConfigError."""
    decay = check_float(name, value, minimum=0, hint="It must be >= 0 and < 1 (e.g. 0.9999).")
    if decay >= 1:
        raise InvalidConfigError(f"{name}={value!r}; it must be >= 0 and < 1 (e.g. 0.9999).")
    return decay
