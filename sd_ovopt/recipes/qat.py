"""``train_qat``: the quantization-aware training loop on accelerate, with atomic checkpoints and resume.

One function runs everywhere ``accelerate`` does: in-process, ``accelerate launch`` on one GPU, several
GPUs, or several CPU processes (gloo). ``_QATRun`` holds one call's state; its ``__call__`` reads as
numbered stages (run folder, data, student, model and optimizer, training loop, report and export).
The output folder::

    OUT/checkpoints/checkpoint-<step>/   training_state.pt (student, optimizer, EMA) + checkpoint.json
    OUT/train_log.jsonl                  one line of losses per optimizer step
    OUT/qat_report.json                  student-vs-teacher error after PTQ and after QAT, rank agreement
    OUT/ptq-ov/                          the post-training-quantized pipeline (with export_ptq=True)
    OUT/ov/                              the trained pipeline (EMA weights), for SdOvOptPipeline
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, set_seed
from diffusers import StableDiffusionPipeline
from tqdm.auto import tqdm

from sd_ovopt._fs import atomic_file, check_safe_output_path
from sd_ovopt._loading import check_image_size, load_sd_pipeline, refuse_guidance_embedded
from sd_ovopt.errors import CorruptModelError, InvalidConfigError, NonFiniteLossError, OutputExistsError
from sd_ovopt.export.pipeline import export_pipeline
from sd_ovopt.quantization.checkpoints import (
    CHECKPOINTS_DIR,
    checkpoint_info,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint_info,
    remove_partial_checkpoints,
    save_checkpoint,
)
from sd_ovopt.quantization.config import QATConfig, QuantizationConfig
from sd_ovopt.quantization.qat import QATModel, check_finite_weights, check_no_gradient_checkpointing
from sd_ovopt.quantization.qat_data import CaptionedImageFolder, encode_batch, sample_indices, step_generator
from sd_ovopt.recipes.optimize import prepare_unet
from sd_ovopt.tome.config import ToMeConfig

__all__ = ["EXPORT_DIR", "LOG_FILE", "PTQ_EXPORT_DIR", "REPORT_FILE", "export_student", "train_qat"]

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
REPORT_FILE = "qat_report.json"
EXPORT_DIR = "ov"
PTQ_EXPORT_DIR = "ptq-ov"
_EVAL_STREAM = 2**31  # a generator key that no training step uses
# Settings that may change on resume without changing what the remaining steps compute (calibration
# and the PTQ export happen only before the first checkpoint).
_RESUMABLE_CHANGES = {
    "max_train_steps",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "calibration_prompts",
    "calibration_steps",
    "eval_samples",
    "export_ptq",
    "export",
}


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


def _warn_config_changes(saved: dict[str, Any], config: QATConfig, world_size: int) -> None:
    before = saved["qat_config"]
    # A setting the checkpoint does not record (written before the setting existed) had its default.
    defaults = QATConfig().to_dict()
    changed = [
        k
        for k, v in config.to_dict().items()
        if before.get(k, defaults[k]) != v and k not in _RESUMABLE_CHANGES
    ]
    if saved["world_size"] != world_size:
        changed.append(f"number of processes {saved['world_size']} -> {world_size}")
    if changed:
        warnings.warn(
            f"resuming with other settings than the checkpoint was trained with ({', '.join(changed)}); the "
            "run will not end where an uninterrupted run would.",
            stacklevel=6,  # the caller of train_qat
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


@torch.no_grad()
def _weight_signature(model: torch.nn.Module) -> torch.Tensor:
    """Per-parameter sum and sum of squares in float64: equal on every process when they agree."""
    return torch.cat([torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()])


def _log_step(line: str) -> int | None:
    """The step of one log line; ``None`` for a line that is not a log record (cut short by a kill)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _start_log(path: Path, start: int) -> None:
    """Keep the log lines of steps up to ``start`` (a resumed run writes what comes after again); drop
    lines that are not log records, such as the half line a killed run may leave."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    records = [(line, _log_step(line)) for line in lines if line.strip()]
    kept = [line for line, step in records if step is not None and step <= start]
    if any(step is None for _, step in records):
        logger.warning("dropped the lines of %s that are not log records", path)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _difference(given: Any, saved: Any) -> str:
    """The settings of two configs that differ, as ``field=given (checkpoint: saved)``."""
    if saved is None:
        return f"{given!r} (checkpoint: None)"
    new, old = given.to_dict(), saved.to_dict()
    return ", ".join(f"{k}={new[k]!r} (checkpoint: {old.get(k)!r})" for k in new if new[k] != old.get(k))


def _check_resumable(path: Path, config: QATConfig, quantization: Any, tome: Any) -> dict[str, Any]:
    """The checkpoint's checked info, if this call can resume it: its step is within ``max_train_steps``,
    and the quantization and ToMe given (``None``: the checkpoint's) are those it was trained with."""
    info = read_checkpoint_info(path)
    if info["step"] > config.max_train_steps:
        raise InvalidConfigError(
            f"QATConfig.max_train_steps={config.max_train_steps} is below the step of the checkpoint to "
            f"resume, {path} (step {info['step']}). Pass max_train_steps >= {info['step']}, or start a new "
            "run in a new output folder."
        )
    saved = info["quantization"]  # None: a float student
    recorded = (
        (
            "quantization",
            quantization,
            None if saved is None else QuantizationConfig.from_dict(saved),
            "--mode",
        ),
        ("tome", tome, None if info["tome"] is None else ToMeConfig.from_dict(info["tome"]), "--tome-ratio"),
    )
    for name, given, saved, flag in recorded:
        if given is not None and given != saved:
            raise InvalidConfigError(
                f"{name} differs from what the checkpoint {path} was trained with: {_difference(given, saved)}. "
                f"Resume with the same {name} (CLI: the same {flag}), leave it out (None) to take the "
                "checkpoint's, or start a new run in a new output folder."
            )
    return info


class _QATRun:
    """One :func:`train_qat` call. ``__call__`` runs the stages in order; each stage sets what later ones use.

    Every process runs every stage; what only the main process does (writing the log, checkpoints, the
    report and the export) is marked where it happens.
    """

    out: Path  # the run folder
    resume: Path | None  # the checkpoint resumed from
    last_checkpoint: Path | None  # the newest checkpoint written or resumed from (named on a NaN stop)
    pipe: Any  # the float pipeline: its UNet is the teacher, its VAE and text encoder encode the data
    data: CaptionedImageFolder
    resolution: int
    qat: QATModel  # student, teacher, loss and EMA
    model: Any  # ``qat`` as accelerate prepared it (DDP-wrapped with several processes)
    optimizer: Any
    eval_set: list[dict]  # fixed inputs scoring student vs teacher (main process only)
    encoders: dict[torch.nn.Module, torch.device]  # VAE and text encoder, with the device they came on
    info: dict[str, Any]  # what every checkpoint records besides the step
    quantizes_student = True  # the student is fake-quantized (a subclass may train a float one)
    report_file = REPORT_FILE

    def __init__(
        self,
        config: QATConfig,
        quantization: QuantizationConfig | None,
        tome: ToMeConfig | None,
        *,
        cpu: bool,
        show_progress: bool,
    ) -> None:
        self.config, self.quantization, self.tome = config, quantization, tome
        self.show_progress = show_progress
        # The plugin, not gradient_accumulation_steps=: the environment must not change the micro-batch count.
        plugin = GradientAccumulationPlugin(num_steps=config.gradient_accumulation_steps)
        self.accelerator = Accelerator(
            cpu=cpu or not torch.accelerator.is_available(), gradient_accumulation_plugin=plugin
        )
        self.main = self.accelerator.is_main_process
        self.start, self.ptq_error = 0, None

    def __call__(
        self, model: Any, train_data: str | Path, output_dir: str | Path, resume_from: str | Path | None
    ) -> Path:

        # 1. Check the run folder: a new one, or a run to resume
        self.open_output(model, output_dir, resume_from)
        # 2. Load the float pipeline (the teacher) and the training data
        self.prepare_data(model, train_data)
        # 3. The student: the recipe's INT8 UNet (post-training quantization), or the checkpoint's
        if self.resume is None:
            student, state = self.quantize_student()
            student = self.adapt_student(student)
        else:
            student, state = self.resume_student()
        # 4. Teacher and student in one QATModel; model and optimizer through accelerate
        self.prepare_training(student, state, copy_teacher=not isinstance(model, StableDiffusionPipeline))
        # 5. Training loop: accumulate micro-batches, optimizer step, EMA, log, checkpoint
        self.train()
        # 6. Check the processes agree, score the student, export, write the report
        return self.finish()

    def open_output(self, model: Any, output_dir: str | Path, resume_from: str | Path | None) -> None:
        """A safe run folder: new or unused, or holding the checkpoint to resume (``latest`` may find none)."""
        self.out = _check_output_path(output_dir, model)
        self.resume = None if resume_from is None else find_checkpoint(self.out, resume_from)
        if resume_from is None:
            _check_fresh_output(self.out)
        elif self.resume is None:
            logger.info("no checkpoint in %s yet: starting a new run", self.out / CHECKPOINTS_DIR)
        else:  # before any model loads: a checkpoint this call cannot continue fails at once
            _check_resumable(self.resume, self.config, self.quantization, self.tome)
        self.last_checkpoint = self.resume

    def prepare_data(self, model: Any, train_data: str | Path) -> None:
        """The pipeline, the resolution, the checked data folder; seeds set, stale partial checkpoints gone."""

        self.pipe = pipe = load_sd_pipeline(model)
        check_no_gradient_checkpointing(pipe.unet)
        refuse_guidance_embedded(pipe.unet, "quantization-aware training")
        for name in ("unet", "vae", "text_encoder"):
            check_finite_weights(getattr(pipe, name), f"the pipeline's {name}")
        self.resolution = self.config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        check_image_size(self.resolution, self.resolution, vae_scale_factor=pipe.vae_scale_factor)
        self.data = CaptionedImageFolder(
            train_data, resolution=self.resolution, caption_column=self.config.caption_column
        )
        set_seed(self.config.seed)
        if self.main:
            (self.out / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(self.out / CHECKPOINTS_DIR)
        self.accelerator.wait_for_everyone()

    def quantize_student(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The recipe's INT8 UNet, calibrated on the first distinct captions (exported to ``ptq-ov`` with
        ``export_ptq``); the pipeline's UNet stays the float, unmerged teacher. No state to load. Without
        ``quantizes_student``: a float copy of the UNet (ToMe applied if asked)."""
        config, size = self.config, self.resolution
        quantization = (self.quantization or QuantizationConfig()) if self.quantizes_student else None
        methods = [m for m in (self.tome, quantization) if m is not None]
        if not methods:
            return copy.deepcopy(self.pipe.unet), {}
        student = prepare_unet(
            self.pipe,
            methods,
            calibration_prompts=list(dict.fromkeys(self.data.captions))[: config.calibration_prompts],
            num_inference_steps=config.calibration_steps,
            height=size,
            width=size,
            show_progress=False,
        )
        if config.export_ptq and self.main:
            export_pipeline(
                self.pipe,
                self.out / PTQ_EXPORT_DIR,
                unet=student,
                height=size,
                width=size,
                compress_weights=True,
                overwrite=True,
                show_progress=False,
            )
        return student, {}

    def resume_student(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The checkpoint's student (rebuilt without calibration), its ToMe, step and PTQ error; its state."""
        saved, state, student = load_checkpoint(self.resume, self.pipe.unet, self.adapt_student)
        _warn_config_changes(saved, self.config, self.accelerator.num_processes)
        self.tome = None if saved["tome"] is None else ToMeConfig.from_dict(saved["tome"])
        self.start, self.ptq_error = saved["step"], saved["ptq_error"]
        logger.info("resuming from %s (step %d)", self.resume, self.start)
        return student, state

    def adapt_student(self, student: torch.nn.Module) -> torch.nn.Module:
        """What the student gets after quantization, also when rebuilt from a checkpoint (here: nothing)."""
        return student

    def prepare_training(
        self, student: torch.nn.Module, state: dict[str, Any], *, copy_teacher: bool
    ) -> None:
        """QATModel, encoders frozen on the device, AdamW; both prepared by accelerate, ``state`` loaded."""
        config, accelerator = self.config, self.accelerator
        self.qat = qat = self.make_model(student, copy_teacher=copy_teacher)
        self.score_ptq()
        self.encoders = {
            module: next(module.parameters()).device for module in (self.pipe.vae, self.pipe.text_encoder)
        }
        for module in self.encoders:
            module.to(accelerator.device).requires_grad_(False)
        optimizer = torch.optim.AdamW(qat.parameter_groups(), lr=config.learning_rate)
        self.model, self.optimizer = accelerator.prepare(qat, optimizer)
        qat.place_ema(accelerator.device)
        if state:
            self.load_state(state)
        self.info = checkpoint_info(
            qat.student,
            qat_config=config.to_dict(),
            tome=None if self.tome is None else self.tome.to_dict(),
            world_size=accelerator.num_processes,
            ptq_error=self.ptq_error,
            **self.extra_info(),
        )
        if self.main:
            _start_log(self.out / LOG_FILE, self.start)

    def make_model(self, student: torch.nn.Module, *, copy_teacher: bool) -> QATModel:
        """The training model: student, teacher, loss and EMA (here :class:`QATModel`)."""
        return QATModel(self.pipe, student, self.config, copy_teacher=copy_teacher)

    def extra_info(self) -> dict[str, Any]:
        """What every checkpoint records besides the QAT settings (here: nothing)."""
        return {}

    def export_student(self) -> None:
        """Export the trained student (EMA weights) to ``OUT/ov`` (main process)."""
        size = self.resolution
        export_student(
            self.qat,
            self.out / EXPORT_DIR,
            height=size,
            width=size,
            overwrite=True,
            show_progress=self.show_progress,
        )

    def load_state(self, state: dict[str, Any]) -> None:
        """The checkpoint's optimizer moments and EMA (checked by ``load_checkpoint``), with this call's
        settings: the learning rate, weight decay and EMA decay given now, not the ones saved."""
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CorruptModelError(
                f"cannot load the optimizer state of {self.resume} ({type(exc).__name__}: {exc}). Resume from "
                "another checkpoint, or start a new run in a new output folder."
            ) from exc
        for group, setting in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(setting)
        ema = self.qat.ema
        ema.load_state_dict(state["ema"])
        ema.decay, ema.warmup = self.config.ema_decay, self.config.ema_warmup

    def score_ptq(self) -> None:
        """Fix the evaluation inputs (main process) and score the post-training-quantized student once."""
        config, num_timesteps = self.config, self.qat.noise_scheduler.config.num_train_timesteps
        wanted = self.main and config.eval_samples
        self.eval_set = (
            _eval_set(self.pipe, self.data, config.eval_samples, config.seed, num_timesteps) if wanted else []
        )
        if self.eval_set and self.ptq_error is None:
            self.ptq_error = self.qat.teacher_error(self.eval_set)
            logger.info("student-vs-teacher error after PTQ: %.4f", self.ptq_error)

    def train(self) -> None:
        """Optimizer steps ``start`` .. ``config.max_train_steps``, logging losses and saving checkpoints."""
        total = self.config.max_train_steps
        bar = tqdm(
            total=total,
            initial=self.start,
            desc="QAT",
            unit="step",
            disable=not self.show_progress or not self.main,
        )
        self.model.train()
        with bar:
            for step in range(self.start, total):
                losses = self.accumulate_gradients(step)
                ema_decay = self.optimizer_step(step, losses)
                self.log(step + 1, losses, ema_decay, bar)
                self.checkpoint(step + 1)

    def accumulate_gradients(self, step: int) -> torch.Tensor:
        """Forward and backward over one step's micro-batches; the mean losses of every process, ``[P, 3]``."""
        accelerator, accumulation = self.accelerator, self.config.gradient_accumulation_steps
        losses = torch.zeros(3)
        for micro in range(accumulation):
            with accelerator.accumulate(self.model):  # DDP syncs gradients on the last micro-batch only
                loss = self.model(*self.micro_batch(step, micro))
                accelerator.backward(loss.total)  # accelerate divides by the accumulation steps
            losses += (
                torch.stack([loss.total.detach(), loss.task, loss.distillation]).float().cpu() / accumulation
            )
        return accelerator.gather(losses.to(accelerator.device)[None]).cpu()  # the same on every process

    def micro_batch(self, step: int, micro: int) -> tuple[torch.Tensor, ...]:
        """Latents, text states, noise and timesteps of one micro-batch: a function of seed, step and rank."""
        config, accelerator, device = self.config, self.accelerator, self.accelerator.device
        world, rank, batch = accelerator.num_processes, accelerator.process_index, config.train_batch_size
        generator = step_generator(config.seed, step, micro, rank)
        first = ((step * config.gradient_accumulation_steps + micro) * world + rank) * batch
        images, captions = self.data.batch(sample_indices(len(self.data), config.seed, first, batch))
        latents, states = encode_batch(self.pipe, images, captions, generator=generator)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        num_timesteps = self.qat.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_timesteps, (batch,), generator=generator).to(device)
        return latents, states, noise, timesteps

    def optimizer_step(self, step: int, losses: torch.Tensor) -> float:
        """Clip, step and fold into the EMA (return its decay); refuse a non-finite loss before applying it,
        and weights that the step made non-finite before they reach the EMA or a checkpoint."""
        if not torch.isfinite(losses).all():
            self.stop(
                f"the training loss is not finite at step {step + 1} (total, task, distillation per "
                f"process: {losses.tolist()}); training stopped before applying or saving that step"
            )
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.config.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.stack([torch.isfinite(p).all() for p in trainable]).all():
            names = {p: n for n, p in self.qat.student.named_parameters()}
            bad = next(names.get(p, "?") for p in trainable if not torch.isfinite(p).all())
            self.stop(
                f"the weights are not finite after the optimizer step of step {step + 1} (first: {bad!r}), "
                "although the loss was; training stopped before saving that step"
            )
        return self.qat.update_ema()

    def stop(self, what: str) -> NoReturn:
        """Raise NonFiniteLossError: ``what`` happened, the last good checkpoint, and how to go on."""
        kept = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was saved yet"
        )
        raise NonFiniteLossError(
            f"{what}, and {kept}. Lower the learning rate (or max_grad_norm) or check the data, then resume "
            "with --resume-from-checkpoint latest."
        )

    def log(self, done: int, losses: torch.Tensor, ema_decay: float, bar: Any) -> None:
        """The mean losses of all processes: on the progress bar, and (main process) in the log file."""
        loss, task, distillation = losses.mean(0).tolist()
        bar.update()
        bar.set_postfix(loss=f"{loss:.4g}", task=f"{task:.4g}", distill=f"{distillation:.4g}")
        if self.main:
            record = {"step": done, "loss": loss, "task": task, "distillation": distillation}
            with (self.out / LOG_FILE).open("a", encoding="utf-8") as log:
                log.write(json.dumps({**record, "ema_decay": ema_decay}) + "\n")

    def checkpoint(self, done: int) -> None:
        """Every ``checkpointing_steps`` and at the end: the main process saves, all wait for it."""
        if done % self.config.checkpointing_steps and done != self.config.max_train_steps:
            return
        if self.main:
            self.last_checkpoint = save_checkpoint(
                self.out / CHECKPOINTS_DIR,
                done,
                self.qat,
                self.optimizer,
                self.info,
                keep=self.config.checkpoints_total_limit,
            )
        self.accelerator.wait_for_everyone()

    def finish(self) -> Path:
        """Compare the processes' weights, score the student (raw and EMA), export ``ov/``, write the report."""
        accelerator = self.accelerator
        rank_difference = self.rank_weight_difference()
        for module, module_device in self.encoders.items():
            module.to(module_device)
        if self.main:
            report = self.report(rank_difference)
            if self.config.export:
                self.export_student()
            with atomic_file(self.out / self.report_file) as tmp:
                tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
            logger.info("QAT report: %s", report)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.out / EXPORT_DIR if self.config.export else find_checkpoint(self.out)

    def rank_weight_difference(self) -> float:
        """The largest difference between the processes' weight signatures (0.0: they agree); warns if any."""
        signatures = self.accelerator.gather(
            _weight_signature(self.qat.student).to(self.accelerator.device)[None]
        )
        difference = float((signatures - signatures[0]).abs().max())
        if difference:
            warnings.warn(
                f"the processes ended with different weights (max difference {difference}).",
                stacklevel=6,  # the caller of train_qat
            )
        return difference

    def report(self, rank_difference: float) -> dict[str, Any]:
        """What ``qat_report.json`` holds: the student-vs-teacher error after PTQ and after QAT, and more."""
        qat, eval_set = self.qat, self.eval_set
        return {
            "steps": self.config.max_train_steps,
            "world_size": self.accelerator.num_processes,
            "eval_samples": len(eval_set),
            "ptq_error": self.ptq_error,
            "qat_error": qat.teacher_error(eval_set) if eval_set else None,
            "qat_ema_error": qat.teacher_error(eval_set, use_ema=True) if eval_set else None,
            "rank_weight_difference": rank_difference,
        }


def _check_arguments(config: Any, quantization: Any, tome: Any, resume_from_checkpoint: Any) -> None:
    """The types of train_qat's settings, before anything is read or written."""
    for name, value, kind in (
        ("config", config, QATConfig),
        ("quantization", quantization, QuantizationConfig),
        ("tome", tome, ToMeConfig),
    ):
        if value is not None and not isinstance(value, kind):
            raise InvalidConfigError(
                f"{name} must be a {kind.__name__} (or None), got {type(value).__name__}."
            )
    if resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint, (str, os.PathLike)):
        raise InvalidConfigError(
            f"resume_from_checkpoint={resume_from_checkpoint!r}; pass 'latest' or a checkpoint folder."
        )


@_discard_run_without_checkpoint
def train_qat(
    model: Any,
    train_data: str | Path,
    output_dir: str | Path,
    config: QATConfig | None = None,
    *,
    quantization: QuantizationConfig | None = None,
    tome: ToMeConfig | None = None,
    resume_from_checkpoint: str | Path | None = None,
    cpu: bool = False,
    show_progress: bool = True,
) -> Path:
    """Quantize a Stable Diffusion UNet, fine-tune it with distillation from the float UNet, export it.

    Post-training quantization (the recipe's :func:`sd_ovopt.recipes.prepare_unet`, calibrated on
    pipeline runs over the first captions) starts the student; :class:`sd_ovopt.QATModel` supplies the loss
    and the EMA; the end is an OpenVINO pipeline folder ``OUT/ov`` with the EMA weights. Run it as is, or
    under ``accelerate launch`` for several processes (each process draws its own images; DDP averages the
    gradients). Checkpoints are written atomically every ``config.checkpointing_steps``; a run resumed from
    one ends with the same weights as an uninterrupted run (with the same settings and number of processes).

    Args:
        model: A ``StableDiffusionPipeline`` or its local folder. Its UNet becomes the frozen teacher.
        train_data: Folder of images with ``metadata.jsonl`` captions (diffusers' text-to-image layout).
        output_dir: The run folder (see the module docstring); must be new or empty unless resuming.
        config: Training, calibration, evaluation and export settings (default ``QATConfig()``).
        quantization: Quantization settings (default ``QuantizationConfig()``; on resume, the checkpoint's,
            and one that differs is refused).
        tome: Token merging applied to the student before quantization (the teacher stays unmerged; on
            resume, ``None`` takes the checkpoint's, and one that differs is refused).
        resume_from_checkpoint: ``"latest"`` (start fresh if there is none yet) or a checkpoint folder.
        cpu: Train on the CPU even if an accelerator is present (always on the CPU if none is).
        show_progress: Show a progress bar with the losses (main process only).

    Returns:
        The exported OpenVINO pipeline folder, ``OUT/ov`` (without ``config.export``: the last checkpoint).

    Raises:
        NonFiniteLossError: The loss or the weights became NaN or infinite; nothing of that step is saved.
        CorruptModelError: The checkpoint to resume is damaged, edited, or of another model.

    Example:
        >>> from sd_ovopt import QATConfig, train_qat
        >>> train_qat("sd15", "pokemon", "sd15-qat", QATConfig(max_train_steps=4096))  # doctest: +SKIP
    """
    config = QATConfig() if config is None else config
    _check_arguments(config, quantization, tome, resume_from_checkpoint)
    run = _QATRun(config, quantization, tome, cpu=cpu, show_progress=show_progress)
    return run(model, train_data, output_dir, resume_from_checkpoint)


def export_student(
    qat: QATModel,
    output_dir: str | Path,
    *,
    use_ema: bool = True,
    height: int | None = None,
    width: int | None = None,
    compress_weights: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
    **export: Any,
) -> Path:
    """Export ``qat``'s pipeline with its trained student as an OpenVINO folder (int8 UNet IR); ``export``
    is passed to :func:`sd_ovopt.export_pipeline` (e.g. ``classifier_free_guidance=False, scheduler="lcm"``).

    The same path as post-training quantization: :func:`sd_ovopt.export_pipeline` with ``unet=student``.
    With ``use_ema`` the EMA weights are exported; the student keeps its own.

    Example:
        >>> from sd_ovopt.recipes.qat import export_student  # doctest: +SKIP
        >>> export_student(qat, "qat-ov")  # doctest: +SKIP
    """
    student = qat.student
    parts = [student, qat.pipeline.text_encoder, qat.pipeline.vae]  # converted on the CPU
    devices = [next(part.parameters()).device for part in parts]
    context = qat.ema.applied_to(student) if use_ema else contextlib.nullcontext()
    for part in parts:
        part.to("cpu")
    try:
        with context:
            return export_pipeline(
                qat.pipeline,
                output_dir,
                unet=student,
                height=height,
                width=width,
                compress_weights=compress_weights,
                overwrite=overwrite,
                show_progress=show_progress,
                **export,
            )
    finally:
        for part, device in zip(parts, devices, strict=True):
            part.to(device)
