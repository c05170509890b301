"""``train_qat``: the quantization-aware training loop on accelerate, with atomic checkpoints and resume.

One function runs everywhere ``accelerate`` does: in-process, ``accelerate launch`` on one GPU, several
GPUs, or several CPU processes (gloo). The output folder::

    OUT/checkpoints/checkpoint-<step>/   training_state.pt (student, optimizer, EMA) + checkpoint.json
    OUT/train_log.jsonl                  one line of losses per optimizer step
    OUT/qat_report.json                  student-vs-teacher error after PTQ and after QAT, rank agreement
    OUT/ptq-ov/                          the post-training-quantized pipeline (with export_ptq=True)
    OUT/ov/                              the trained pipeline (EMA weights), for SdOvOptPipeline
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sd_ovopt._fs import atomic_file, check_safe_output_path
from sd_ovopt._loading import check_image_size, load_sd_pipeline
from sd_ovopt.errors import InvalidConfigError, NonFiniteLossError, OutputExistsError
from sd_ovopt.quantization.checkpoints import (
    CHECKPOINTS_DIR,
    checkpoint_info,
    find_checkpoint,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from sd_ovopt.quantization.config import QATConfig, QuantizationConfig
from sd_ovopt.quantization.qat import QATModel, check_no_gradient_checkpointing
from sd_ovopt.quantization.qat_data import CaptionedImageFolder, encode_batch, sample_indices, step_generator
from sd_ovopt.tome.config import ToMeConfig

__all__ = ["EXPORT_DIR", "LOG_FILE", "PTQ_EXPORT_DIR", "REPORT_FILE", "train_qat"]

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
REPORT_FILE = "qat_report.json"
EXPORT_DIR = "ov"
PTQ_EXPORT_DIR = "ptq-ov"
_EVAL_STREAM = 2**31  # a generator key that no training step uses
# Settings that may change on resume without changing what the remaining steps compute.
_RESUMABLE_CHANGES = {"max_train_steps", "checkpointing_steps", "checkpoints_total_limit"}


_RUN_ENTRIES = (CHECKPOINTS_DIR, LOG_FILE, PTQ_EXPORT_DIR)  # what a run writes before its first checkpoint


def _check_output_path(output_dir: str | Path, model: Any) -> Path:
    source = model if isinstance(model, (str, Path)) else getattr(model, "name_or_path", None)
    out = check_safe_output_path(output_dir, source=source)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(
            f"output path {out} is a file; train-qat writes a run folder (checkpoints/, ov/, ...) there. "
            "Pass the path of a new folder."
        )
    return out


def _is_unused(out: Path) -> bool:
    """Empty, or holding only what a run killed before its first checkpoint leaves (nothing to resume)."""
    for entry in out.iterdir():
        hidden_partial = entry.name.startswith(".") and (".partial" in entry.name or ".old-" in entry.name)
        if entry.name not in _RUN_ENTRIES and not hidden_partial:
            return False
    return find_checkpoint(out) is None


def _check_fresh_output(out: Path) -> None:
    if out.is_dir() and not _is_unused(out):
        raise OutputExistsError(
            f"output folder {out} already exists and is not empty. Resume the run in it with "
            "resume_from_checkpoint='latest' (CLI: --resume-from-checkpoint latest), or choose another folder."
        )


def _discard_run_without_checkpoint(function: Any) -> Any:
    """On any failure before the first checkpoint, remove what the run created, so that the corrected
    command can simply run again (a run with a checkpoint is kept: it resumes)."""

    @functools.wraps(function)
    def wrapper(model: Any, train_data: Any, output_dir: Any, *args: Any, **kwargs: Any) -> Any:
        out = Path(output_dir).expanduser().resolve() if str(output_dir).strip() else None
        existed = out is not None and out.exists()
        before = {name for name in _RUN_ENTRIES if out is not None and os.path.lexists(out / name)}
        try:
            return function(model, train_data, output_dir, *args, **kwargs)
        except BaseException:
            main = os.environ.get("RANK", "0") == "0"
            if main and out is not None and out.is_dir() and find_checkpoint(out) is None:
                if not existed:
                    shutil.rmtree(out, ignore_errors=True)
                for name in set(_RUN_ENTRIES) - before:
                    if (out / name).is_dir():
                        shutil.rmtree(out / name, ignore_errors=True)
                    else:
                        (out / name).unlink(missing_ok=True)
            raise

    return wrapper


def _quantize_student(
    pipe: Any,
    data: CaptionedImageFolder,
    quantization: QuantizationConfig,
    tome: ToMeConfig | None,
    **calib: Any,
) -> torch.nn.Module:
    """The recipe's INT8 UNet, calibrated on the first distinct captions; the pipeline's UNet stays the
    float, unmerged teacher."""
    from sd_ovopt.recipe import quantize_pipeline_unet

    captions = list(dict.fromkeys(data.captions))[: calib.pop("prompts")]
    return quantize_pipeline_unet(
        pipe, tome=tome, quantization=quantization, calibration_prompts=captions, show_progress=False, **calib
    )


def _warn_config_changes(saved: dict[str, Any], config: QATConfig, world_size: int) -> None:
    before = saved["qat_config"]
    changed = [k for k, v in config.to_dict().items() if before.get(k) != v and k not in _RESUMABLE_CHANGES]
    if saved["world_size"] != world_size:
        changed.append(f"number of processes {saved['world_size']} -> {world_size}")
    if changed:
        warnings.warn(
            f"resuming with other settings than the checkpoint was trained with ({', '.join(changed)}); the "
            "run will not end where an uninterrupted run would.",
            stacklevel=3,
        )


def _eval_set(pipe: Any, data: CaptionedImageFolder, count: int, seed: int, timesteps: int) -> list[dict]:
    """Fixed inputs (first images, VAE means, timesteps spread over the schedule) to score the student."""
    count = min(count, len(data))
    steps = torch.linspace(0, timesteps - 1, count).round().long()
    samples = []
    for i in range(count):
        latents, states = encode_batch(pipe, *data.batch([i]))
        noise = torch.randn(latents.shape, generator=step_generator(seed, _EVAL_STREAM, i))
        samples.append(
            {
                "latents": latents,
                "encoder_hidden_states": states,
                "noise": noise,
                "timesteps": steps[i : i + 1],
            }
        )
    return samples


def _micro_batch(
    pipe: Any, data: CaptionedImageFolder, config: QATConfig, step: int, micro: int, world: int, rank: int,
    num_timesteps: int, device: torch.device,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Latents, text states, noise and timesteps of one micro-batch: a function of seed, step and rank."""
    batch = config.train_batch_size
    generator = step_generator(config.seed, step, micro, rank)
    first = ((step * config.gradient_accumulation_steps + micro) * world + rank) * batch
    images, captions = data.batch(sample_indices(len(data), config.seed, first, batch))
    latents, states = encode_batch(pipe, images, captions, generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, num_timesteps, (batch,), generator=generator).to(device)
    return latents, states, noise, timesteps


@torch.no_grad()
def _weight_signature(model: torch.nn.Module) -> torch.Tensor:
    """Per-parameter sum and sum of squares in float64: equal on every process when they agree."""
    return torch.cat([torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()])


def _start_log(path: Path, start: int) -> None:
    """Keep the log lines of steps up to ``start`` (a resumed run writes what comes after again)."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= start]
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _accumulate(
    accelerator: Any, qat_model: Any, pipe: Any, data: CaptionedImageFolder, config: QATConfig, step: int,
    num_timesteps: int,
) -> torch.Tensor:  # fmt: skip
    """Forward and backward over one step's micro-batches; the mean losses of every process, ``[P, 3]``."""
    accumulation = config.gradient_accumulation_steps
    world, rank = accelerator.num_processes, accelerator.process_index
    losses = torch.zeros(3)
    for micro in range(accumulation):
        inputs = _micro_batch(pipe, data, config, step, micro, world, rank, num_timesteps, accelerator.device)
        last = micro == accumulation - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(qat_model):  # DDP syncs once per step
            loss = qat_model(*inputs)
            accelerator.backward(loss.total / accumulation)
        losses += (
            torch.stack([loss.total.detach(), loss.task, loss.distillation]).float().cpu() / accumulation
        )
    return accelerator.gather(losses.to(accelerator.device)[None]).cpu()  # the same on every process


def _train_steps(
    accelerator: Any, qat_model: Any, qat: QATModel, optimizer: Any, pipe: Any, data: CaptionedImageFolder,
    config: QATConfig, start: int, out: Path, info: dict[str, Any], last: Path | None, show_progress: bool,
) -> None:  # fmt: skip
    """Optimizer steps ``start`` .. ``config.max_train_steps``, logging losses and saving checkpoints."""
    main = accelerator.is_main_process
    num_timesteps = qat.noise_scheduler.config.num_train_timesteps
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    bar = tqdm(
        total=config.max_train_steps,
        initial=start,
        desc="QAT",
        unit="step",
        disable=not show_progress or not main,
    )
    qat_model.train()
    with bar:
        for step in range(start, config.max_train_steps):
            every = _accumulate(accelerator, qat_model, pipe, data, config, step, num_timesteps)
            if not torch.isfinite(every).all():
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
                raise NonFiniteLossError(
                    f"the training loss is not finite at step {step + 1} (total, task, distillation per "
                    f"process: {every.tolist()}); training stopped before applying or saving that step, and "
                    f"{kept}. Lower the learning rate or check the data, then resume with "
                    "--resume-from-checkpoint latest."
                )
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            decay = qat.update_ema()
            done, (total, task, distillation) = step + 1, every.mean(0).tolist()
            bar.update()
            bar.set_postfix(loss=f"{total:.4g}", task=f"{task:.4g}", distill=f"{distillation:.4g}")
            if main:
                record = {
                    "step": done,
                    "loss": total,
                    "task": task,
                    "distillation": distillation,
                    "ema_decay": decay,
                }
                with (out / LOG_FILE).open("a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")
            if done % config.checkpointing_steps == 0 or done == config.max_train_steps:
                if main:
                    keep = config.checkpoints_total_limit
                    last = save_checkpoint(out / CHECKPOINTS_DIR, done, qat, optimizer, info, keep=keep)
                accelerator.wait_for_everyone()


@_discard_run_without_checkpoint
def train_qat(
    model: Any,
    train_data: str | Path,
    output_dir: str | Path,
    config: QATConfig | None = None,
    *,
    quantization: QuantizationConfig | None = None,
    tome: ToMeConfig | None = None,
    calibration_prompts: int = 8,
    calibration_steps: int = 20,
    caption_column: str = "text",
    resume_from_checkpoint: str | Path | None = None,
    eval_samples: int = 8,
    export_ptq: bool = False,
    export: bool = True,
    cpu: bool = False,
    show_progress: bool = True,
) -> Path:
    """Quantize a Stable Diffusion UNet, fine-tune it with distillation from the float UNet, export it.

    Post-training quantization (:func:`sd_ovopt.quantize_unet`, calibrated on pipeline runs over the first
    captions) starts the student; :class:`sd_ovopt.QATModel` supplies the loss and the EMA; the end is an
    OpenVINO pipeline folder ``OUT/ov`` with the EMA weights. Run it as is, or under ``accelerate launch``
    for several processes (each process draws its own images; DDP averages the gradients).
    Checkpoints are written atomically every ``config.checkpointing_steps``; a run resumed from one ends
    with the same weights as an uninterrupted run (with the same settings and number of processes).

    Args:
        model: A ``StableDiffusionPipeline`` or its local folder. Its UNet becomes the frozen teacher.
        train_data: Folder of images with ``metadata.jsonl`` captions (diffusers' text-to-image layout).
        output_dir: The run folder (see the module docstring); must be new or empty unless resuming.
        config: Training settings (default ``QATConfig()``).
        quantization: Quantization settings (default ``QuantizationConfig()``).
        tome: Token merging applied to the student before quantization (the teacher stays unmerged).
        calibration_prompts: Distinct captions whose pipeline runs calibrate the quantizers.
        calibration_steps: Denoising steps per calibration prompt (one calibration sample each).
        caption_column: The caption key in ``metadata.jsonl``.
        resume_from_checkpoint: ``"latest"`` (start fresh if there is none yet) or a checkpoint folder.
        eval_samples: Training images (the first ones) on which the student-vs-teacher error is reported.
        export_ptq: Also export the post-training-quantized pipeline to ``OUT/ptq-ov``, for comparison.
        export: Export ``OUT/ov`` at the end. Without it, resuming the finished run later exports only.
        cpu: Train on the CPU even if an accelerator is present (always on the CPU if none is).
        show_progress: Show a progress bar with the losses (main process only).

    Returns:
        The exported OpenVINO pipeline folder, ``OUT/ov`` (without ``export``: the last checkpoint).

    Raises:
        NonFiniteLossError: The loss became NaN or infinite; nothing of that step is applied or saved.

    Example:
        >>> from sd_ovopt import QATConfig, train_qat
        >>> train_qat("sd15", "pokemon", "sd15-qat", QATConfig(max_train_steps=4096))  # doctest: +SKIP
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import StableDiffusionPipeline

    config = config or QATConfig()
    quantization = quantization or QuantizationConfig()
    if not isinstance(config, QATConfig) or not isinstance(quantization, QuantizationConfig):
        raise InvalidConfigError("config must be a QATConfig and quantization a QuantizationConfig.")
    for name, value, least in (
        ("calibration_prompts", calibration_prompts, 1),
        ("calibration_steps", calibration_steps, 1),
        ("eval_samples", eval_samples, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise InvalidConfigError(f"{name}={value!r}; it must be an integer >= {least}.")
    accelerator = Accelerator(cpu=cpu or not torch.accelerator.is_available())
    main, device = accelerator.is_main_process, accelerator.device
    out = _check_output_path(output_dir, model)
    checkpoints = out / CHECKPOINTS_DIR
    resume = None if resume_from_checkpoint is None else find_checkpoint(out, resume_from_checkpoint)
    if resume_from_checkpoint is None:
        _check_fresh_output(out)
    elif resume is None:
        logger.info("no checkpoint in %s yet: starting a new run", checkpoints)

    pipe = load_sd_pipeline(model)
    check_no_gradient_checkpointing(pipe.unet)
    resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    check_image_size(resolution, resolution, vae_scale_factor=pipe.vae_scale_factor)
    data = CaptionedImageFolder(train_data, resolution=resolution, caption_column=caption_column)
    set_seed(config.seed)
    if main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(checkpoints)
    accelerator.wait_for_everyone()

    state: dict[str, Any] = {}
    start, ptq_error = 0, None
    if resume is not None:
        saved, state, student = load_checkpoint(resume, pipe.unet)
        _warn_config_changes(saved, config, accelerator.num_processes)
        tome = None if saved["tome"] is None else ToMeConfig.from_dict(saved["tome"])
        start, ptq_error = int(saved["step"]), saved["ptq_error"]
        logger.info("resuming from %s (step %d)", resume, start)
    else:
        student = _quantize_student(
            pipe, data, quantization, tome, prompts=calibration_prompts, num_inference_steps=calibration_steps,
            height=resolution, width=resolution,
        )  # fmt: skip
        if export_ptq and main:
            from sd_ovopt.export.pipeline import export_pipeline

            export_pipeline(
                pipe, out / PTQ_EXPORT_DIR, unet=student, height=resolution, width=resolution,
                compress_weights=True, overwrite=True, show_progress=False,
            )  # fmt: skip

    qat = QATModel(pipe, student, config, copy_teacher=not isinstance(model, StableDiffusionPipeline))
    num_timesteps = qat.noise_scheduler.config.num_train_timesteps
    eval_set = (
        _eval_set(pipe, data, eval_samples, config.seed, num_timesteps) if main and eval_samples else []
    )
    if eval_set and ptq_error is None:
        ptq_error = qat.teacher_error(eval_set)
        logger.info("student-vs-teacher error after PTQ: %.4f", ptq_error)
    encoders = {module: next(module.parameters()).device for module in (pipe.vae, pipe.text_encoder)}
    for module in encoders:
        module.to(device).requires_grad_(False)
    optimizer = torch.optim.AdamW(qat.parameter_groups(), lr=config.learning_rate)
    qat_model, optimizer = accelerator.prepare(qat, optimizer)
    if resume is not None:
        optimizer.load_state_dict(state["optimizer"])
        qat.ema.load_state_dict(state["ema"])
    del state
    info = checkpoint_info(
        qat.student,
        qat_config=config.to_dict(),
        tome=None if tome is None else tome.to_dict(),
        world_size=accelerator.num_processes,
        ptq_error=ptq_error,
    )
    if main:
        _start_log(out / LOG_FILE, start)

    _train_steps(
        accelerator, qat_model, qat, optimizer, pipe, data, config, start, out, info, resume, show_progress
    )

    signatures = accelerator.gather(_weight_signature(qat.student).to(device)[None])
    rank_difference = float((signatures - signatures[0]).abs().max())
    if rank_difference:
        warnings.warn(
            f"the processes ended with different weights (max difference {rank_difference}).", stacklevel=2
        )
    for module, module_device in encoders.items():
        module.to(module_device)
    if main:
        report = {
            "steps": config.max_train_steps,
            "world_size": accelerator.num_processes,
            "eval_samples": len(eval_set),
            "ptq_error": ptq_error,
            "qat_error": qat.teacher_error(eval_set) if eval_set else None,
            "qat_ema_error": qat.teacher_error(eval_set, use_ema=True) if eval_set else None,
            "rank_weight_difference": rank_difference,
        }
        if export:
            qat.export(
                out / EXPORT_DIR,
                height=resolution,
                width=resolution,
                overwrite=True,
                show_progress=show_progress,
            )
        with atomic_file(out / REPORT_FILE) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        logger.info("QAT report: %s", report)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out / EXPORT_DIR if export else find_checkpoint(out)
