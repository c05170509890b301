"""Quantization-aware training of a UNet from ``quantize_unet``: distillation loss, weight EMA, export.

:class:`QATModel` holds what one training step needs: the quantized student, a frozen float teacher
inside :class:`DistillationLoss`, the noise schedule of the pipeline, and a :class:`WeightEMA` of the
student's weights that leaves NNCF's quantizer parameters out. Its ``forward`` returns the loss, so the
whole module can go through ``accelerate``'s ``prepare`` (DDP syncs the student's gradients; the teacher
has none). :func:`sd_ovopt.train_qat` runs the loop; this module is the part a custom loop reuses.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sd_ovopt._loading import find_unet, load_sd_pipeline
from sd_ovopt._validation import check_finite_tensor, check_float
from sd_ovopt.errors import CorruptModelError, InvalidConfigError, UnsupportedModelError
from sd_ovopt.quantization.config import GRADIENT_CHECKPOINTING_REFUSAL, QATConfig, check_ema_decay
from sd_ovopt.quantization.ptq import is_quantized
from sd_ovopt.tome.patch import is_tome_applied

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = [
    "QUANTIZER_SCOPE",
    "DistillationLoss",
    "QATLoss",
    "QATModel",
    "WeightEMA",
    "check_finite_weights",
    "check_no_gradient_checkpointing",
    "ema_state_mismatch",
    "is_quantizer_parameter",
    "noise_target",
    "state_mismatch",
    "trainable_parameters",
]

logger = logging.getLogger(__name__)

#: The submodule under which NNCF 3 keeps every hook module: quantizers (and SmoothQuant scales).
QUANTIZER_SCOPE = "__nncf_hooks"


def is_quantizer_parameter(name: str) -> bool:
    """Whether a parameter name (from ``named_parameters``) belongs to an NNCF quantizer."""
    return QUANTIZER_SCOPE in name.split(".")


def check_no_gradient_checkpointing(unet: nn.Module) -> None:
    """Raise UnsupportedModelError if gradient checkpointing is enabled on ``unet`` (it corrupts QAT)."""
    if getattr(unet, "is_gradient_checkpointing", False):
        raise UnsupportedModelError(
            f"the UNet has gradient checkpointing enabled; {GRADIENT_CHECKPOINTING_REFUSAL} "
            "Call unet.disable_gradient_checkpointing() first."
        )


@torch.no_grad()
def check_finite_weights(module: nn.Module, what: str) -> None:
    """Raise CorruptModelError naming the first parameter or buffer of ``module`` that holds NaN or infinity.

    Such a model predicts NaN everywhere: training from it (or towards it) can only produce NaN losses.
    """
    tensors = [*module.named_parameters(), *module.named_buffers()]
    floating = [(n, t) for n, t in tensors if t.is_floating_point()]
    if not floating or torch.stack([torch.isfinite(t).all() for _, t in floating]).all():
        return
    name = next(n for n, t in floating if not torch.isfinite(t).all())
    raise CorruptModelError(
        f"{what} holds NaN or infinite values (first in {name!r}), so every prediction would be NaN. "
        "Load the model again from its original files (a damaged download or an earlier failed run "
        "may have written it)."
    )


def _prediction_type(scheduler: Any) -> str:
    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise UnsupportedModelError(
            f"scheduler prediction_type={kind!r}; quantization-aware training supports 'epsilon', "
            "'v_prediction' and 'sample'."
        )
    return kind


def noise_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict, per the scheduler's ``prediction_type``: noise, velocity or sample."""
    kind = _prediction_type(scheduler)
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise if kind == "epsilon" else latents


class QATLoss(NamedTuple):
    """The weighted total (to backpropagate) and its two unweighted terms (to log)."""

    total: torch.Tensor
    task: torch.Tensor
    distillation: torch.Tensor


class DistillationLoss(nn.Module):
    """Task loss on the noise target plus a student-vs-teacher term, with a frozen float teacher.

    ``total = task_weight * mse(student, target) + distillation_weight * mse(student, teacher)``, in float32.
    The teacher runs without gradients and stays in eval mode; its weights never change.

    Args:
        teacher: The float UNet (or a pipeline holding it), not quantized and without ToMe.
        task_weight: Weight of the task term.
        distillation_weight: Weight of the distillation term.
        copy_teacher: Deep-copy the teacher (default) rather than freeze the module passed in.

    Example:
        >>> import torch
        >>> from sd_ovopt.quantization.qat import DistillationLoss
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> loss = DistillationLoss(tiny_pipeline().unet)
        >>> x, ehs = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
        >>> loss(torch.zeros_like(x), x, torch.tensor([10]), ehs, torch.randn_like(x)).total.ndim
        0
    """

    def __init__(
        self,
        teacher: Any,
        *,
        task_weight: float = 1.0,
        distillation_weight: float = 1.0,
        copy_teacher: bool = True,
    ) -> None:
        super().__init__()

        unet = find_unet(teacher, user="DistillationLoss")
        if is_quantized(unet):
            raise UnsupportedModelError("the teacher must be the float UNet, not a quantized one.")
        if is_tome_applied(unet):
            raise UnsupportedModelError(
                "the teacher has ToMe applied; distil from the unmerged float UNet (apply ToMe to the "
                "student before quantize_unet instead)."
            )
        check_no_gradient_checkpointing(unet)
        self.task_weight = check_float("DistillationLoss task_weight", task_weight, minimum=0)
        self.distillation_weight = check_float(
            "DistillationLoss distillation_weight", distillation_weight, minimum=0
        )
        if self.task_weight == 0 and self.distillation_weight == 0:
            raise InvalidConfigError(
                "DistillationLoss task_weight and distillation_weight are both 0: nothing to train on. "
                "Set at least one of them > 0 (default 1.0 each)."
            )
        check_finite_weights(unet, "the teacher UNet")
        self.teacher = (copy.deepcopy(unet) if copy_teacher else unet).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> DistillationLoss:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self,
        student_prediction: torch.Tensor,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        target: torch.Tensor,
    ) -> QATLoss:
        with torch.no_grad():
            teacher_prediction = self.teacher(
                noisy_latents, timesteps, encoder_hidden_states, return_dict=False
            )[0]
        prediction = student_prediction.float()
        task = F.mse_loss(prediction, target.float())
        distillation = F.mse_loss(prediction, teacher_prediction.float())
        total = self.task_weight * task + self.distillation_weight * distillation
        return QATLoss(total, task.detach(), distillation.detach())


def trainable_parameters(student: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The student's trainable weights and its trainable quantizer parameters: the two AdamW groups."""
    weights, quantizers = [], []
    for name, param in student.named_parameters():
        if param.requires_grad:
            (quantizers if is_quantizer_parameter(name) else weights).append(param)
    return weights, quantizers


_SAMPLE_KEYS = ("latents", "encoder_hidden_states", "noise", "timesteps")


def _check_samples(samples: Any) -> None:
    """Refuse evaluation samples that are missing, lack a key, or hold NaN (the error would be NaN)."""
    if not isinstance(samples, (list, tuple)) or not samples:
        raise InvalidConfigError(
            f"teacher_error needs a non-empty list of samples, got {type(samples).__name__}."
        )
    for i, item in enumerate(samples):
        missing = [k for k in _SAMPLE_KEYS if not isinstance(item, dict) or k not in item]
        if missing:
            raise InvalidConfigError(
                f"teacher_error samples[{i}] lacks {missing}; each sample is a dict of {list(_SAMPLE_KEYS)}."
            )
        for key in _SAMPLE_KEYS:
            check_finite_tensor(f"teacher_error samples[{i}][{key!r}]", item[key])


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained weights: trainable parameters outside the quantizers (a LoRA student's adapters only)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not is_quantizer_parameter(n)}


def state_mismatch(saved: Any, expected: dict[str, torch.Tensor], what: str) -> str | None:
    """Why the tensors ``saved`` cannot replace ``expected`` (other names or shapes, not tensors, NaN or
    infinity), as a sentence naming ``what`` and the first offending entry; ``None`` if they can."""
    if not isinstance(saved, dict):
        return f"{what} is a {type(saved).__name__}, not a dict of tensors"
    missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys(), key=str)
    if missing or extra:
        return (
            f"{what} holds other tensors than the model has ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(extra)} unexpected, e.g. {extra[:3]}): it belongs to another model"
        )
    for name, tensor in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor):
            return f"{what}[{name!r}] is a {type(value).__name__}, not a tensor"
        if value.shape != tensor.shape:
            return (
                f"{what}[{name!r}] has shape {tuple(value.shape)}, the model {tuple(tensor.shape)}: it "
                "belongs to another model"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"{what}[{name!r}] holds NaN or infinite values"
    return None


def ema_state_mismatch(state: Any, model: nn.Module) -> str | None:
    """Why ``state`` is not a :meth:`WeightEMA.state_dict` of ``model``'s weights; ``None`` if it is."""
    return _ema_state_mismatch(state, _weights(model))


def _ema_state_mismatch(state: Any, shadow: dict[str, torch.Tensor]) -> str | None:
    keys = {"decay", "warmup", "num_updates", "shadow"}
    if not isinstance(state, dict) or not keys <= state.keys():
        found = sorted(state, key=str) if isinstance(state, dict) else type(state).__name__
        return f"the EMA state must be a dict with {sorted(keys)}, got {found}"
    decay, warmup, updates = state["decay"], state["warmup"], state["num_updates"]
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        return f"the EMA decay is {decay!r}, not a number >= 0 and < 1"
    if not isinstance(warmup, bool):
        return f"the EMA warmup is {warmup!r}, not True or False"
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        return f"the EMA num_updates is {updates!r}, not an integer >= 0"
    return state_mismatch(state["shadow"], shadow, "the EMA shadow")


class WeightEMA:
    """Exponential moving average of a model's weights, quantizer parameters excluded, kept on ``device``.

    Each :meth:`update` does ``shadow = d * shadow + (1 - d) * weight`` for every trainable parameter
    whose name is outside ``__nncf_hooks`` (frozen weights do not change, so they need no average), in
    float32 on ``device``. ``d`` is ``decay``, or with ``warmup`` ``min(decay, (1 + n) / (10 + n))``
    where ``n`` is the number of updates done before this one: it rises from 0.1 towards ``decay`` and
    never falls back. Quantizer ranges are not averaged: an average
    of ranges is not the range of the averaged weights, so they keep their trained values.

    Args:
        model: The (quantized) model whose weights to track.
        decay: Target decay, ``0 <= decay < 1``.
        warmup: Ramp the decay up as above.
        device: Where the shadow weights live (CPU by default, to spare accelerator memory); :meth:`to`
            moves them.

    Example:
        >>> import torch
        >>> from sd_ovopt.quantization.qat import WeightEMA
        >>> ema = WeightEMA(torch.nn.Linear(2, 2), decay=0.9, warmup=False)
        >>> sorted(ema.shadow)
        ['bias', 'weight']
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        *,
        warmup: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        self.decay = check_ema_decay("WeightEMA decay", decay)
        self.warmup = bool(warmup)
        self.device = torch.device(device)
        self.num_updates = 0
        self.shadow = {
            n: p.detach().to(self.device, torch.float32, copy=True) for n, p in _weights(model).items()
        }

    def to(self, device: str | torch.device) -> WeightEMA:
        """Keep the shadow weights (and :meth:`applied_to`'s backup) on ``device`` from now on."""
        self.device = torch.device(device)
        self.shadow = {n: t.to(self.device) for n, t in self.shadow.items()}
        return self

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    def _match(self, model: nn.Module) -> dict[str, torch.Tensor]:
        weights = _weights(model)
        if weights.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - weights.keys())[:3]
            extra = sorted(weights.keys() - self.shadow.keys())[:3]
            raise UnsupportedModelError(
                f"the model's weights do not match the EMA (missing {missing}, unexpected {extra}); "
                "pass the unwrapped model the EMA was made from."
            )
        return weights

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the model's current weights into the average; return the decay used."""
        decay = self.current_decay()
        for name, weight in self._match(model).items():
            shadow = self.shadow[name]
            shadow.mul_(decay).add_(weight.detach().to(self.device, torch.float32), alpha=1 - decay)
        self.num_updates += 1
        return decay

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights with the averages (quantizer parameters are left as they are)."""
        for name, weight in self._match(model).items():
            weight.copy_(self.shadow[name].to(weight.device, weight.dtype))

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block the model has the averaged weights; its own are restored afterwards (kept meanwhile
        on the EMA's device)."""
        backup = {n: w.detach().to(self.device, copy=True) for n, w in self._match(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, weight in _weights(model).items():
                    weight.copy_(backup[name].to(weight.device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {n: t.to("cpu") for n, t in self.shadow.items()},  # no copy where they are on CPU
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuse one of another model, or with NaN, before changing anything."""
        problem = _ema_state_mismatch(state, self.shadow)
        if problem:
            raise UnsupportedModelError(f"{problem}; load the EMA state saved for this model.")
        shadow = state["shadow"]
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {n: t.to(self.device, torch.float32, copy=True) for n, t in shadow.items()}


class QATModel(nn.Module):
    """A quantized UNet (the student) with a frozen float teacher, the distillation loss and a weight EMA.

    ``forward(latents, encoder_hidden_states, noise, timesteps)`` noises the latents with the pipeline's
    schedule, runs the student, and returns a :class:`QATLoss`. Train the student's parameters
    (:meth:`parameter_groups`), call :meth:`update_ema` after each optimizer step, then
    :func:`sd_ovopt.recipes.qat.export_student`.

    Args:
        pipeline: The float Stable Diffusion pipeline (or its folder); its UNet is the teacher.
        student: The UNet returned by :func:`sd_ovopt.quantize_unet` (ToMe may be applied before that).
        config: Loss weights, EMA and optimizer settings (default ``QATConfig()``).
        copy_teacher: Deep-copy the pipeline's UNet as teacher (default) rather than freeze it in place.
        quantized_student: Require a quantized student (default). ``False`` takes a float UNet too (a
            float distillation run with the same loop; it must not be the teacher itself).

    Example:
        >>> from sd_ovopt import QATModel, collect_calibration, quantize_unet
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline()
        >>> qunet = quantize_unet(pipe, collect_calibration(pipe, ["a red square"], num_inference_steps=2))  # doctest: +SKIP
        >>> qat = QATModel(pipe, qunet)  # doctest: +SKIP
    """

    def __init__(
        self,
        pipeline: StableDiffusionPipeline | str | Path,
        student: nn.Module,
        config: QATConfig | None = None,
        *,
        copy_teacher: bool = True,
        quantized_student: bool = True,
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler  # on use: `sd-ovopt --help` imports this package

        config = config or QATConfig()
        if not isinstance(config, QATConfig):
            raise InvalidConfigError(f"config must be a QATConfig, got {type(config).__name__}.")
        pipe = load_sd_pipeline(pipeline)
        student = find_unet(student, user="QATModel")
        if student is pipe.unet and not copy_teacher:
            raise InvalidConfigError(
                "the student is the pipeline's own UNet, which copy_teacher=False freezes as the teacher; "
                "pass a copy of it (copy.deepcopy(pipe.unet))."
            )
        if quantized_student and not is_quantized(student):
            raise UnsupportedModelError(
                "the student must be a UNet returned by sd_ovopt.quantize_unet (it trains the quantizers)."
            )
        check_no_gradient_checkpointing(student)
        check_finite_weights(student, "the student UNet")
        self.config = config
        self.student = student
        self.loss = DistillationLoss(
            pipe.unet,
            task_weight=config.task_loss_weight,
            distillation_weight=config.distillation_loss_weight,
            copy_teacher=copy_teacher,
        )
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        _prediction_type(self.noise_scheduler)
        self.ema = WeightEMA(student, config.ema_decay, warmup=config.ema_warmup)
        self._pipeline = [pipe]  # in a list: not a submodule, so .to() and DDP leave it alone

    @property
    def pipeline(self) -> StableDiffusionPipeline:
        """The float pipeline: text encoder, VAE, tokenizer and scheduler of the export."""
        return self._pipeline[0]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: the weights (with weight decay) and the quantizer parameters (without)."""
        weights, quantizers = trainable_parameters(self.student)
        return [
            {"params": weights, "weight_decay": self.config.weight_decay},
            {"params": quantizers, "weight_decay": 0.0},
        ]

    def forward(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> QATLoss:
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise_target(self.noise_scheduler, latents, noise, timesteps)
        prediction = self.student(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
        return self.loss(prediction, noisy, timesteps, encoder_hidden_states, target)

    def update_ema(self) -> float:
        """Fold the student's weights into the EMA (after each optimizer step); return the decay used."""
        return self.ema.update(self.student)

    def place_ema(self, device: str | torch.device) -> None:
        """Move the EMA to the training ``device`` if ``QATConfig.ema_device`` asks for it; else leave it on
        the CPU."""
        if self.config.ema_device == "accelerator":
            self.ema.to(device)

    @torch.no_grad()
    def teacher_error(self, samples: list[dict[str, torch.Tensor]], *, use_ema: bool = False) -> float:
        """Mean relative L2 error of the student's prediction against the teacher's on fixed inputs.

        ``samples`` are dicts of ``latents``, ``encoder_hidden_states``, ``noise`` and ``timesteps``. This
        is the number quantization-aware training should bring down from its post-training value.
        """
        _check_samples(samples)
        device = next(self.student.parameters()).device
        context = self.ema.applied_to(self.student) if use_ema else contextlib.nullcontext()
        was_training = self.training
        self.eval()
        errors = []
        try:
            with context:
                for item in samples:
                    latents, ehs, noise, t = (
                        item[k].to(device) for k in ("latents", "encoder_hidden_states", "noise", "timesteps")
                    )
                    noisy = self.noise_scheduler.add_noise(latents, noise, t)
                    student = self.student(noisy, t, ehs, return_dict=False)[0].float()
                    teacher = self.loss.teacher(noisy, t, ehs, return_dict=False)[0].float()
                    error = torch.linalg.vector_norm(student - teacher) / torch.linalg.vector_norm(teacher)
                    errors.append(error.item())
        finally:
            self.train(was_training)
        return sum(errors) / len(errors)
