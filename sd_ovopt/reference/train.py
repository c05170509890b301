"""Train the reference model from scratch: dataset, then VAE, then UNet with the text encoder.

    python -m sd_ovopt.reference.train --output shapes-sd --work shapes-work

Stages, each resumable (a killed run picks up at its last checkpoint when started again with the same
``--work``):

1. ``data``: ``write_dataset`` renders the training images into ``WORK/data`` (image folder +
   ``metadata.jsonl``); training reads that folder.
2. ``vae``: AutoencoderKL, L1 + MSE reconstruction and a small KL term. The latent scaling factor is set
   to 1/std of the training latents, as SD does.
3. ``unet``: UNet2DConditionModel and CLIP text encoder together, epsilon prediction on SD-1.5's noise
   schedule, min-SNR(5) loss weights, 10 % empty captions (for classifier-free guidance), EMA of weights.
4. The EMA weights are saved as a StableDiffusionPipeline folder with a DDIM scheduler (atomically).

Runs on CPU (default when no GPU) or CUDA (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sd_ovopt._fs import atomic_output_dir, check_output_dir
from sd_ovopt.errors import SdOvOptError
from sd_ovopt.reference.model import (
    REFERENCE_TEXT_ENCODER_CONFIG,
    REFERENCE_UNET_CONFIG,
    REFERENCE_VAE_CONFIG,
    TEXT_LENGTH,
)
from sd_ovopt.reference.shapes import write_dataset

__all__ = ["main", "train_reference"]

logger = logging.getLogger(__name__)

_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_images(data_dir: Path) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

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
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train_vae(images: np.ndarray, work: Path, steps: int, batch_size: int, seed: int, device: str) -> Any:
    import torch
    from diffusers import AutoencoderKL

    ckpt = work / "vae.pt"
    torch.manual_seed(seed)
    vae = AutoencoderKL(**REFERENCE_VAE_CONFIG).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        logger.info("vae: resumed at step %d", start)
    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    t0 = time.time()
    for step in range(start, steps):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = (data[idx].float() / 127.5 - 1).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 1e-3)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info("vae step %d/%d loss %.4f (%.1f s)", step + 1, steps, loss.item(), time.time() - t0)
        if (step + 1) % 250 == 0 or step + 1 == steps:
            _save_atomic({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}, ckpt)
    return vae.eval()


def _log_reconstruction(vae: Any, images: np.ndarray, texts: list[str], device: str) -> None:
    import torch

    from sd_ovopt.reference.judge import prompt_accuracy

    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    psnr = 10 * np.log10(255.0**2 / np.mean((recon.astype(np.float64) - images) ** 2))
    logger.info("vae: reconstruction PSNR %.2f dB, judge accuracy %.3f", psnr, prompt_accuracy(recon, texts))


def _encode_latents(vae: Any, images: np.ndarray, device: str, batch_size: int = 256) -> Any:
    import torch

    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            x = (data[i : i + batch_size].float() / 127.5 - 1).to(device)
            out.append(vae.encode(x).latent_dist.mean.cpu())
    return torch.cat(out)


def _train_unet(
    latents: Any,
    input_ids: Any,
    empty_ids: Any,
    work: Path,
    steps: int,
    schedule_steps: int,
    batch_size: int,
    seed: int,
    device: str,
) -> tuple[Any, Any]:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ckpt = work / "unet.pt"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**REFERENCE_UNET_CONFIG).to(device)
    text_encoder = CLIPTextModel(CLIPTextConfig(**REFERENCE_TEXT_ENCODER_CONFIG)).to(device)
    ema_unet = UNet2DConditionModel(**REFERENCE_UNET_CONFIG).to(device)
    ema_text = CLIPTextModel(CLIPTextConfig(**REFERENCE_TEXT_ENCODER_CONFIG)).to(device)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text_encoder.state_dict())
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema_params = [*ema_unet.parameters(), *ema_text.parameters()]
    opt = torch.optim.AdamW(params, lr=6e-4, weight_decay=0.01)
    scheduler = DDPMScheduler(**_SCHEDULER)
    alphas = scheduler.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text_encoder"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        logger.info("unet: resumed at step %d", start)
    t0 = time.time()
    running = 0.0
    for step in range(start, steps):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(latents), (batch_size,), generator=gen)
        x0 = latents[idx]
        ids = input_ids[idx].clone()
        ids[torch.rand(batch_size, generator=gen) < 0.1] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        x0, ids, noise, t = x0.to(device), ids.to(device), noise.to(device), t.to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = _lr(step, schedule_steps, 6e-4)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, hidden).sample
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        running += loss.item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info("unet step %d/%d loss %.4f (%.1f s)", step + 1, steps, running / 50, time.time() - t0)
            running = 0.0
        if (step + 1) % 250 == 0 or step + 1 == steps:
            state = {
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text_encoder": ema_text.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step + 1,
            }
            _save_atomic(state, ckpt)
    return ema_unet.eval(), ema_text.eval()


def train_reference(
    output_dir: str | Path,
    work_dir: str | Path,
    *,
    num_images: int = 20000,
    vae_steps: int = 1000,
    unet_steps: int = 3000,
    lr_schedule_steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Run every stage (resuming where ``work_dir`` has progress) and write the pipeline to ``output_dir``."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from sd_ovopt.testing import tokenizer_dir

    check_output_dir(output_dir, overwrite=overwrite)  # refuse before hours of training, not after
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data_dir = work / "data"
    if not (data_dir / "metadata.jsonl").is_file():
        write_dataset(data_dir, num_images, seed=seed, split="train", overwrite=True)
    images, texts = _load_images(data_dir)
    logger.info("data: %d images from %s", len(images), data_dir)

    vae = _train_vae(images, work, vae_steps, batch_size, seed, device)
    latents = _encode_latents(vae, images, device)
    _log_reconstruction(vae, images[:256], texts[:256], device)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    logger.info("vae: latent scaling factor %.4f", scaling)

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir()), model_max_length=TEXT_LENGTH)

    def tokenize(batch: list[str]) -> Any:
        return tokenizer(
            batch, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids

    input_ids = tokenize(texts)
    empty_ids = tokenize([""])[0]
    unet, text_encoder = _train_unet(
        latents,
        input_ids,
        empty_ids,
        work,
        unet_steps,
        lr_schedule_steps or unet_steps,
        batch_size,
        seed,
        device,
    )

    scheduler = DDIMScheduler(**_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae.cpu(),
        text_encoder=text_encoder.cpu(),
        tokenizer=tokenizer,
        unet=unet.cpu(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        pipe.save_pretrained(tmp)
        record = {
            "command": " ".join(sys.argv),
            "num_images": num_images,
            "vae_steps": vae_steps,
            "unet_steps": unet_steps,
            "lr_schedule_steps": lr_schedule_steps or unet_steps,
            "batch_size": batch_size,
            "seed": seed,
            "device": device,
            "seconds_this_run": round(time.time() - started, 1),
            "torch_threads": torch.get_num_threads(),
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(output_dir).expanduser().resolve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sd_ovopt.reference.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", required=True, help="pipeline folder to write")
    parser.add_argument("--work", default="reference-work", help="dataset and checkpoints (resumable)")
    parser.add_argument("--num-images", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument(
        "--lr-schedule-steps",
        type=int,
        default=None,
        help="length of the UNet's cosine learning-rate schedule (default: --unet-steps); longer stops early",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        path = train_reference(
            args.output,
            args.work,
            num_images=args.num_images,
            vae_steps=args.vae_steps,
            unet_steps=args.unet_steps,
            lr_schedule_steps=args.lr_schedule_steps,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            overwrite=args.overwrite,
        )
    except SdOvOptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
