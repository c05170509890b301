"""The reference model's tiny autoencoder: TAESD's architecture distilled from the reference VAE. The shipped
one stands in for the full decoder (the judge reads its images as it reads the full decoder's), and the
training script resumes and writes a folder that loads as a tiny autoencoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from sd_ovopt import load_tiny_vae
from sd_ovopt.reference import held_out_prompts, reference_model_dir, render, score_images, tiny_vae_dir
from sd_ovopt.reference.tiny_vae import REFERENCE_TAESD_CONFIG, train_tiny_vae
from sd_ovopt.vae import check_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(tensor):
    pixels = ((tensor.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]


def test_the_shipped_tiny_decoder_draws_what_the_full_decoder_draws():
    tiny = load_tiny_vae(tiny_vae_dir())
    assert tiny.config.decoder_block_out_channels == list(
        REFERENCE_TAESD_CONFIG["decoder_block_out_channels"]
    )
    full = AutoencoderKL.from_pretrained(str(reference_model_dir() / "vae"), local_files_only=True).eval()
    check_vae(tiny, latent_channels=4, factor=2)
    specs = held_out_prompts()
    x = (
        torch.from_numpy(np.stack([np.asarray(render(s)) for s in specs])).permute(0, 3, 1, 2).float() / 127.5
        - 1
    )
    with torch.no_grad():
        z = full.encode(x).latent_dist.mean
        by_full = full.decode(z).sample
        by_tiny = tiny.decode(
            z * full.config.scaling_factor
        ).sample  # the UNet's latents, as TAESD takes them
        by_tiny_encoder = full.decode(tiny.encode(x).latents / full.config.scaling_factor).sample
    prompts = [s.prompt for s in specs]
    full_accuracy = score_images(_images(by_full), prompts).accuracy
    assert score_images(_images(by_tiny), prompts).accuracy >= full_accuracy - 0.02
    assert score_images(_images(by_tiny_encoder), prompts).accuracy >= full_accuracy - 0.02
    psnr = 10 * np.log10(4 / float(((by_tiny - by_full) ** 2).mean()))
    assert psnr > 25, psnr


def test_training_resumes_and_writes_a_tiny_autoencoder_folder(tmp_path):
    args = {"steps": 3, "batch_size": 4, "num_images": 8}
    first = train_tiny_vae(tmp_path / "out", tmp_path / "work", **args)
    vae = load_tiny_vae(first)
    assert vae.config.latent_channels == 4
    state = torch.load(tmp_path / "work" / "tiny_vae.pt", weights_only=True)
    assert state["step"] == 3
    # a longer run resumes at step 3 from the checkpoint
    again = train_tiny_vae(tmp_path / "out2", tmp_path / "work", **{**args, "steps": 5})
    assert torch.load(tmp_path / "work" / "tiny_vae.pt", weights_only=True)["step"] == 5
    assert load_tiny_vae(again).config.latent_channels == 4
