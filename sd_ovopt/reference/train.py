"""Train the reference model: dataset, then VAE, then UNet with the text encoder.

    python -m sd_ovopt.reference.train --output shapes-sd --work shapes-work

Stages, each resumable (a killed run picks up at its last checkpoint when started again with the same
``--work``):

1. ``data``: ``write_dataset`` renders the training images into ``WORK/data`` (image folder +
   ``metadata.jsonl``).
2. ``vae``: AutoencoderKL, L1 + MSE reconstruction and a small KL term; or taken from a trained pipeline
   (``--init-vae`` / ``--init-from``). The latent scaling factor is 1/std of the training latents, as in SD.
3. ``latents``: every training image is encoded once and cached in ``WORK/latents.safetensors``.
4. ``unet``: UNet2DConditionModel and CLIP text encoder together, epsilon prediction on SD-1.5's noise
   schedule, min-SNR(5) loss weights, 10 % empty captions (for classifier-free guidance), EMA of weights.
   With ``--eval-every N`` the EMA weights are scored on the held-out prompts every N steps and the best
   so far is kept in ``WORK/best`` (a pipeline folder), so a stopped run still has its best model.
5. The EMA weights (or, with ``--keep best``, the best scored ones) are saved as a
   StableDiffusionPipeline folder with a DDIM scheduler (atomically).

Speed: every core is used (``--threads``); on CPUs with native bf16 (AVX512-BF16 or AMX) the forward
passes run under bf16 autocast (``--precision auto``), weights and optimizer stay float32. CUDA with
``--device cuda``. Checkpoints hold only tensors and numbers and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sd_ovopt._config import JsonConfig
from sd_ovopt._fs import atomic_file, atomic_output_dir, check_output_dir
from sd_ovopt._hardware import cpu_summary, has_native_bf16
from sd_ovopt.errors import InvalidConfigError, SdOvOptError
from sd_ovopt.quantization.qat import WeightEMA
from sd_ovopt.reference.evaluate import generate_images, score_images
from sd_ovopt.reference.judge import prompt_accuracy
from sd_ovopt.reference.model import (
    REFERENCE_TEXT_ENCODER_CONFIG,
    REFERENCE_UNET_CONFIG,
    REFERENCE_VAE_CONFIG,
    TEXT_LENGTH,
)
from sd_ovopt.reference.shapes import held_out_prompts, write_dataset
from sd_ovopt.testing import tokenizer_dir
from sd_ovopt.testing.models import assemble_pipeline

__all__ = ["TrainingConfig", "main", "train_reference"]

logger = logging.getLogger(__name__)

_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
_PRECISIONS = ("auto", "f32", "bf16")


@dataclass(frozen=True)
class TrainingConfig(JsonConfig):
    """Everything that decides a reference-model training run (recorded in ``training.json``)."""

    num_images: int = 20000
    vae_steps: int = 1000
    unet_steps: int = 3000
    lr_schedule_steps: int | None = None  # cosine schedule length (default: unet_steps)
    batch_size: int = 32
    learning_rate: float = 6e-4
    ema_decay: float = 0.999
    seed: int = 0
    device: str | None = None  # cuda when available, else cpu
    precision: str = "auto"  # forward passes: bf16 autocast where native ("auto"), or "f32" / "bf16"
    threads: int | None = None  # torch threads on CPU (default: every usable core)
    init_vae: str | None = None  # take the VAE from this pipeline folder (no VAE training)
    init_from: str | None = None  # start VAE, UNet and text encoder from this pipeline folder
    eval_every: int = 0  # score the EMA weights on the held-out prompts every N steps (0: never)
    keep: str = "last"  # "last" EMA weights, or the "best" scored ones
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        for name in ("num_images", "vae_steps", "unet_steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidConfigError(f"TrainingConfig.{name} must be a positive integer, got {value!r}")
        if self.eval_every < 0:
            raise InvalidConfigError(f"TrainingConfig.eval_every must be >= 0, got {self.eval_every!r}")
        if self.precision not in _PRECISIONS:
            raise InvalidConfigError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")
        if self.keep not in ("last", "best"):
            raise InvalidConfigError(f"keep must be 'last' or 'best', got {self.keep!r}")
        if self.keep == "best" and not self.eval_every:
            raise InvalidConfigError("keep='best' needs eval_every > 0 to know which weights are best")
        if not 0 <= self.ema_decay < 1:
            raise InvalidConfigError(f"ema_decay must be >= 0 and < 1, got {self.ema_decay!r}")


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint of tensors and numbers; a kill mid-write leaves the previous one intact."""

    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, device: str) -> dict[str, Any]:
    """Load a checkpoint without running code from it: only tensors, numbers and containers are accepted."""

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError for refused or foreign data, EOFError, RuntimeError, OSError
        # torch's own message advises turning weights_only off, i.e. running the file's code: not repeated.
        raise InvalidConfigError(
            f"{path} is not a checkpoint this script wrote ({exc.__class__.__name__}; it may hold code, "
            "which is never run); delete it to start that stage again, or point --work at another folder"
        ) from exc


def _autocast(device: str, enabled: bool) -> contextlib.AbstractContextManager[Any]:

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def _use_bf16(config: TrainingConfig, device: str) -> bool:

    if config.precision == "auto":
        return device.startswith("cuda") or has_native_bf16()
    return config.precision == "bf16"


def _load_images(data_dir: Path) -> tuple[np.ndarray, list[str]]:

    images, texts = [], []
    with open(data_dir / "metadata.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            images.append(np.asarray(Image.open(data_dir / row["file_name"]).convert("RGB")))
            texts.append(row["text"])
    return np.stack(images), texts


def _lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train_vae(images: np.ndarray, work: Path, config: TrainingConfig, device: str, bf16: bool) -> Any:

    ckpt = work / "vae.pt"
    steps, batch_size, seed = config.vae_steps, config.batch_size, config.seed
    torch.manual_seed(seed)
    vae = AutoencoderKL(**REFERENCE_VAE_CONFIG).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start = 0
    if ckpt.exists():
        state = _load_checkpoint(ckpt, device)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        logger.info("vae: resumed at step %d", start)
    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    t0 = time.time()
    for step in range(start, steps):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = (data[idx].float() / 127.5 - 1).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 1e-3)
        with _autocast(device, bf16):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=None)).sample.float()
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-6 * posterior.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info("vae step %d/%d loss %.4f (%.1f s)", step + 1, steps, loss.item(), time.time() - t0)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
            _save_atomic({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}, ckpt)
    vae.register_to_config(scaling_factor=1.0)  # set from the latents below
    return vae.eval()


def _get_vae(images: np.ndarray, work: Path, config: TrainingConfig, device: str, bf16: bool) -> Any:
    source = config.init_from or config.init_vae
    if source is None:
        return _train_vae(images, work, config, device, bf16)

    logger.info("vae: taken from %s (no VAE training)", source)
    return AutoencoderKL.from_pretrained(str(Path(source) / "vae")).to(device).eval()


def _log_reconstruction(vae: Any, images: np.ndarray, texts: list[str], device: str) -> None:

    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    psnr = 10 * np.log10(255.0**2 / np.mean((recon.astype(np.float64) - images) ** 2))
    logger.info("vae: reconstruction PSNR %.2f dB, judge accuracy %.3f", psnr, prompt_accuracy(recon, texts))


def _cached_latents(vae: Any, images: np.ndarray, work: Path, device: str) -> Any:
    """Unscaled latent means of every training image, encoded once and cached next to the checkpoints."""

    digest = hashlib.sha256()
    for value in vae.state_dict().values():
        digest.update(value.detach().float().cpu().numpy().tobytes())
    digest.update(images.tobytes())
    key = digest.hexdigest()[:16]
    path = work / "latents.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") == key:
                logger.info("latents: cached in %s", path)
                return load_file(str(path))["latents"]
    t0 = time.time()
    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = []
    with torch.no_grad():
        for i in range(0, len(data), 256):
            x = (data[i : i + 256].float() / 127.5 - 1).to(device)
            out.append(vae.encode(x).latent_dist.mean.float().cpu())
    latents = torch.cat(out).contiguous()
    with atomic_file(path) as tmp:
        save_file({"latents": latents}, str(tmp), metadata={"key": key})
    logger.info("latents: %d encoded in %.1f s, cached in %s", len(latents), time.time() - t0, path)
    return latents


@dataclass
class _UNetRun:
    """The UNet stage's state: models, their EMA, optimizer and where it stands."""

    unet: Any
    text_encoder: Any
    ema: Any
    optimizer: Any
    step: int = 0
    best_accuracy: float = -1.0

    def modules(self) -> Any:

        return torch.nn.ModuleDict({"unet": self.unet, "text_encoder": self.text_encoder})

    def state_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "best_accuracy": self.best_accuracy,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.best_accuracy = float(state.get("best_accuracy", -1.0))


def _new_unet_run(config: TrainingConfig, tokenizer: Any, device: str) -> _UNetRun:

    torch.manual_seed(config.seed)
    if config.init_from:
        unet = UNet2DConditionModel.from_pretrained(str(Path(config.init_from) / "unet"))
        text_encoder = CLIPTextModel.from_pretrained(str(Path(config.init_from) / "text_encoder"))
        logger.info("unet: starting from the weights in %s", config.init_from)
    else:
        unet = UNet2DConditionModel(**REFERENCE_UNET_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(tokenizer)))
    unet, text_encoder = unet.to(device).train(), text_encoder.to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    ema = WeightEMA(modules, decay=config.ema_decay, warmup=True, device=device)
    return _UNetRun(unet, text_encoder, ema, optimizer)


def text_encoder_config(tokenizer: Any) -> dict[str, Any]:
    """The reference text encoder's config for ``tokenizer`` (its vocabulary size and special ids)."""
    return {
        **REFERENCE_TEXT_ENCODER_CONFIG,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _build_pipeline(vae: Any, run: _UNetRun, tokenizer: Any, weights: str = "ema") -> Any:
    """A CPU float32 StableDiffusionPipeline of copies of the run's models (EMA or raw weights)."""

    modules = copy.deepcopy(run.modules()).cpu().float().eval()
    if weights == "ema":
        run.ema.copy_to(modules)
    scheduler = DDIMScheduler(**_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    vae = copy.deepcopy(vae).cpu().float()
    return assemble_pipeline(vae, modules["text_encoder"], tokenizer, modules["unet"], scheduler)


def _evaluate(pipe: Any, seeds: Sequence[int] = (0,)) -> float:
    """Held-out prompt accuracy of ``pipe`` (20 DDIM steps, guidance 4), averaged over ``seeds``."""

    prompts = [spec.prompt for spec in held_out_prompts()]
    scores = [
        score_images(generate_images(pipe, prompts, seed=seed, batch_size=48), prompts).accuracy
        for seed in seeds
    ]
    return float(np.mean(scores))


def _unet_step(
    run: _UNetRun, batch: tuple[Any, ...], lr: float, schedule: Any, bf16: bool, device: str
) -> float:

    x0, ids, noise, t = batch
    noisy = schedule["scheduler"].add_noise(x0, noise, t)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with _autocast(device, bf16):
        hidden = run.text_encoder(ids)[0]
        pred = run.unet(noisy, t, hidden).sample.float()
    snr = schedule["snr"][t]
    weight = torch.clamp(snr, max=5.0) / snr
    loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([*run.unet.parameters(), *run.text_encoder.parameters()], 1.0)
    run.optimizer.step()
    run.ema.update(run.modules())
    return float(loss.item())


def _batch(
    latents: Any, input_ids: Any, empty_ids: Any, step: int, config: TrainingConfig, device: str
) -> Any:
    """The batch of ``step``: a pure function of the seed and the step, so a resumed run is the same run."""

    n = config.batch_size
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    idx = torch.randint(0, len(latents), (n,), generator=gen)
    x0 = latents[idx]
    ids = input_ids[idx].clone()
    ids[torch.rand(n, generator=gen) < 0.1] = empty_ids
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, _SCHEDULER["num_train_timesteps"], (n,), generator=gen)
    return tuple(v.to(device) for v in (x0, ids, noise, t))


def _train_unet(latents: Any, texts: list[str], vae: Any, tokenizer: Any, work: Path, config: TrainingConfig, device: str, bf16: bool) -> _UNetRun:  # fmt: skip

    ckpt = work / "unet.pt"
    run = _new_unet_run(config, tokenizer, device)
    if ckpt.exists():
        run.load_state_dict(_load_checkpoint(ckpt, device))
        logger.info(
            "unet: resumed at step %d (best held-out accuracy so far %.3f)", run.step, run.best_accuracy
        )
    input_ids, empty_ids = _tokenize(tokenizer, texts), _tokenize(tokenizer, [""])[0]
    scheduler = DDPMScheduler(**_SCHEDULER)
    alphas = scheduler.alphas_cumprod.to(device)
    schedule = {"scheduler": scheduler, "snr": alphas / (1 - alphas)}
    total = config.lr_schedule_steps or config.unet_steps
    t0, running = time.time(), []
    while run.step < config.unet_steps:
        batch = _batch(latents, input_ids, empty_ids, run.step, config, device)
        running.append(
            _unet_step(run, batch, _lr(run.step, total, config.learning_rate), schedule, bf16, device)
        )
        run.step += 1
        if run.step % 50 == 0 or run.step == config.unet_steps:
            elapsed = time.time() - t0
            logger.info(
                "unet step %d/%d loss %.4f (%.1f s)", run.step, config.unet_steps, np.mean(running), elapsed
            )
            running = []
        if config.eval_every and (run.step % config.eval_every == 0 or run.step == config.unet_steps):
            _score_and_keep(run, vae, tokenizer, work)
        if run.step % config.checkpoint_every == 0 or run.step == config.unet_steps:
            _save_atomic(run.state_dict(), ckpt)
    return run


def _score_and_keep(run: _UNetRun, vae: Any, tokenizer: Any, work: Path) -> None:
    t0 = time.time()
    pipe = _build_pipeline(vae, run, tokenizer)
    accuracy = _evaluate(pipe)
    logger.info("eval step %d: held-out accuracy %.3f (seed 0, %.1f s)", run.step, accuracy, time.time() - t0)
    with open(work / "eval.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": run.step, "accuracy": accuracy, "time": time.time()}) + "\n")
    if accuracy > run.best_accuracy:
        run.best_accuracy = accuracy
        with atomic_output_dir(work / "best", overwrite=True) as tmp:
            pipe.save_pretrained(tmp)
            (tmp / "best.json").write_text(json.dumps({"step": run.step, "accuracy": accuracy}) + "\n")


def _tokenize(tokenizer: Any, texts: list[str]) -> Any:
    return tokenizer(
        texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def reference_tokenizer() -> Any:
    """The shipped CLIP tokenizer with the reference model's context length."""

    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), model_max_length=TEXT_LENGTH)


def train_reference(
    output_dir: str | Path,
    work_dir: str | Path,
    config: TrainingConfig | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Run every stage (resuming where ``work_dir`` has progress) and write the pipeline to ``output_dir``."""

    config = config or TrainingConfig()
    check_output_dir(output_dir, overwrite=overwrite)  # refuse before hours of training, not after
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
        # Tiny values (e.g. Adam's second moments) in the denormal range make x86 arithmetic 10-100x
        # slower; flushing them to zero is a standard guard for long CPU runs.
        torch.set_flush_denormal(True)
    bf16 = _use_bf16(config, device)
    logger.info("device %s, %d threads, bf16 autocast %s", device, torch.get_num_threads(), bf16)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data_dir = work / "data"
    if not (data_dir / "metadata.jsonl").is_file():
        write_dataset(data_dir, config.num_images, seed=config.seed, split="train", overwrite=True)
    images, texts = _load_images(data_dir)
    logger.info("data: %d images from %s", len(images), data_dir)

    vae = _get_vae(images, work, config, device, bf16)
    _log_reconstruction(vae, images[:256], texts[:256], device)
    latents = _cached_latents(vae, images, work, device)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    logger.info("vae: latent scaling factor %.4f", scaling)

    tokenizer = reference_tokenizer()
    run = _train_unet(latents * scaling, texts, vae, tokenizer, work, config, device, bf16)
    source = work / "best" if config.keep == "best" and (work / "best").is_dir() else None
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        if source is not None:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        else:
            _build_pipeline(vae, run, tokenizer).save_pretrained(tmp)
        record = {
            "command": " ".join(sys.argv),
            **config.to_dict(),
            "device": device,
            "bf16_autocast": bf16,
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_summary(),
            "seconds_this_run": round(time.time() - started, 1),
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(output_dir).expanduser().resolve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sd_ovopt.reference.train", description=__doc__.splitlines()[0]
    )
    defaults = TrainingConfig()
    parser.add_argument("--output", required=True, help="pipeline folder to write")
    parser.add_argument("--work", default="reference-work", help="dataset and checkpoints (resumable)")
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--lr-schedule-steps", type=int, default=None, help="cosine schedule length")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=_PRECISIONS, default="auto", help="bf16 autocast or f32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--init-vae", default=None, help="take the VAE from this pipeline folder")
    parser.add_argument("--init-from", default=None, help="start every model from this pipeline folder")
    parser.add_argument("--eval-every", type=int, default=0, help="score held-out prompts every N steps")
    parser.add_argument("--keep", choices=("last", "best"), default="last", help="which weights to save")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="steps")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = TrainingConfig(
            num_images=args.num_images,
            vae_steps=args.vae_steps,
            unet_steps=args.unet_steps,
            lr_schedule_steps=args.lr_schedule_steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            threads=args.threads,
            init_vae=args.init_vae,
            init_from=args.init_from,
            eval_every=args.eval_every,
            keep=args.keep,
            checkpoint_every=args.checkpoint_every,
        )
        path = train_reference(args.output, args.work, config, overwrite=args.overwrite)
    except SdOvOptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
