"""Train the reference model's tiny autoencoder: TAESD's architecture, distilled from its full VAE.

    python -m sd_ovopt.reference.tiny_vae --output shapes-taesd --work tiny-vae-work

The tiny autoencoder is ``AutoencoderTiny`` with TAESD's blocks (64 channels, three convolutions and a
skip each, ReLU, no attention, no normalization) and one up/down-sampling stage where TAESD has three,
because the reference VAE's latents are 2x smaller than its images (SD's are 8x). As TAESD is for SD, it
is trained to stand in for the full VAE: its decoder to reproduce the full decoder's image of the same
latents, its encoder to reproduce the full encoder's (scaled) latent mean, on training-split images only.
It takes and gives latents in the UNet's space (``scaling_factor`` 1.0), as TAESD does.

Runs resume from ``--work``'s checkpoint after a kill; the folder is written atomically at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from sd_ovopt._fs import atomic_output_dir
from sd_ovopt._hardware import has_native_bf16
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.reference.model import reference_model_dir
from sd_ovopt.reference.shapes import render, sample_specs
from sd_ovopt.reference.train import _autocast, _load_checkpoint, _lr, _save_atomic

__all__ = ["REFERENCE_TAESD_CONFIG", "train_tiny_vae"]

logger = logging.getLogger(__name__)

#: TAESD's block layout with one sampling stage (the reference VAE's 2x latent factor).
REFERENCE_TAESD_CONFIG: dict[str, Any] = {
    "encoder_block_out_channels": (64, 64),
    "decoder_block_out_channels": (64, 64),
    "num_encoder_blocks": (1, 3),
    "num_decoder_blocks": (3, 1),
    "latent_channels": 4,
}


def _targets(full_vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The full VAE's scaled latent means of ``images`` and its decoder's images of them."""
    scale = full_vae.config.scaling_factor
    latents, decoded = [], []
    with torch.no_grad():
        for chunk in images.split(256):
            z = full_vae.encode(chunk).latent_dist.mean
            latents.append(z * scale)
            decoded.append(full_vae.decode(z).sample.clamp(-1, 1))
    return torch.cat(latents), torch.cat(decoded)


def _training_images(count: int, seed: int) -> torch.Tensor:
    """``count`` training-split images (jittered), in [-1, 1], NCHW."""
    pixels = np.stack([np.asarray(render(spec)) for spec in sample_specs(count, seed, split="train")])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def _step_loss(tiny: AutoencoderTiny, images: torch.Tensor, latents: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Decoder: L1 + L2 to the full decoder's image; encoder: L2 to the full encoder's latent."""
    image = tiny.decode(latents).sample.float()
    latent = tiny.encode(images).latents.float()
    return (image - decoded).abs().mean() + (image - decoded).pow(2).mean() + (latent - latents).pow(2).mean()


def _resume(path: Path, tiny: AutoencoderTiny, opt: torch.optim.Optimizer) -> int:
    """Load the checkpoint at ``path`` into ``tiny`` and ``opt`` if there is one; the step to start at."""
    if not path.is_file():
        return 0
    state = _load_checkpoint(path, "cpu")  # tensors and numbers only: a file holding code is refused
    tiny.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    logger.info("tiny vae: resumed at step %d", int(state["step"]))
    return int(state["step"])


def train_tiny_vae(
    output_dir: str | Path,
    work_dir: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 32,
    num_images: int = 4096,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Distil a TAESD-shaped ``AutoencoderTiny`` from the reference model's VAE; save it to ``output_dir``.

    Args:
        output_dir: The folder ``AutoencoderTiny.save_pretrained`` writes (atomically).
        work_dir: Checkpoints (a killed run resumes from here).
        steps: Optimizer steps (AdamW, learning rate 1e-3, the reference training's warm-up then cosine).
        batch_size: Images per step.
        num_images: Training-split images rendered once (with the jitter of the dataset).
        seed: Seeds the images, the initial weights and each step's batch.
        overwrite: Replace an existing output folder.
    """
    if steps < 1 or batch_size < 1 or num_images < batch_size:
        raise InvalidConfigError(
            f"steps={steps}, batch_size={batch_size}, num_images={num_images}: "
            "pass steps >= 1 and num_images >= batch_size >= 1"
        )
    # 1. The data: images and the full VAE's latents and decoded images of them, computed once
    work = Path(work_dir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    full = AutoencoderKL.from_pretrained(str(reference_model_dir() / "vae"), local_files_only=True).eval()
    images = _training_images(num_images, seed)
    latents, decoded = _targets(full, images)
    # 2. The student, resumed where a previous run stopped
    torch.manual_seed(seed)
    tiny = AutoencoderTiny(**REFERENCE_TAESD_CONFIG)
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3, weight_decay=0.0)
    checkpoint = work / "tiny_vae.pt"
    start = _resume(checkpoint, tiny, opt)
    bf16 = has_native_bf16()
    t0 = time.perf_counter()
    # 3. Training, a checkpoint every 250 steps and at the end
    for step in range(start, steps):
        idx = torch.randint(0, num_images, (batch_size,), generator=torch.Generator().manual_seed(seed * 1_000_003 + step))  # fmt: skip
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 1e-3)
        with _autocast("cpu", bf16):
            loss = _step_loss(tiny, images[idx], latents[idx], decoded[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            logger.info("tiny vae step %d/%d loss %.5f (%.0f s)", step + 1, steps, loss.item(), time.perf_counter() - t0)  # fmt: skip
        if (step + 1) % 250 == 0 or step + 1 == steps:
            _save_atomic(
                {"model": tiny.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}, checkpoint
            )
    # 4. The folder
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        tiny.eval().save_pretrained(tmp, safe_serialization=True)
    return Path(output_dir).expanduser().resolve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sd_ovopt.reference.tiny_vae", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", required=True, help="the AutoencoderTiny folder to write")
    parser.add_argument("--work", required=True, help="checkpoint folder (resumed from after a kill)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-images", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = train_tiny_vae(
        args.output,
        args.work,
        steps=args.steps,
        batch_size=args.batch_size,
        num_images=args.num_images,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
