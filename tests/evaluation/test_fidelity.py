"""sd_ovopt.evaluation.fidelity: PSNR/SSIM of images and the judge's prompt accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sd_ovopt.errors import ShapeMismatchError
from sd_ovopt.evaluation import image_fidelity, prompt_accuracy

# -- fidelity metrics ---------------------------------------------------------------------------------


def test_identical_images_have_infinite_psnr_and_ssim_one():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    result = image_fidelity(image, image.copy())
    assert math.isinf(result.psnr_db) and result.ssim == 1.0


def test_psnr_matches_its_formula_on_a_known_offset():
    reference = np.full((16, 16, 3), 100, np.uint8)
    image = reference + 10  # every pixel off by 10: MSE = 100
    result = image_fidelity(image, reference)
    assert result.psnr_db == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    assert result.ssim < 1.0


def test_float_uint8_and_pil_inputs_give_the_same_numbers():
    rng = np.random.default_rng(1)
    reference = rng.random((32, 32, 3))
    image = np.clip(reference + rng.normal(0, 0.05, reference.shape), 0, 1)
    as_uint8 = (image * 255).round().astype(np.uint8)
    ref_uint8 = (reference * 255).round().astype(np.uint8)
    a = image_fidelity(image, reference)
    b = image_fidelity(as_uint8, ref_uint8)
    c = image_fidelity(Image.fromarray(as_uint8), Image.fromarray(ref_uint8))
    assert a == b == c


def test_more_noise_means_lower_psnr_and_ssim():
    rng = np.random.default_rng(2)
    reference = rng.random((32, 32, 3))
    scores = [
        image_fidelity(np.clip(reference + rng.normal(0, sigma, reference.shape), 0, 1), reference)
        for sigma in (0.01, 0.05, 0.2)
    ]
    assert scores[0].psnr_db > scores[1].psnr_db > scores[2].psnr_db
    assert scores[0].ssim > scores[1].ssim > scores[2].ssim


def test_fidelity_refuses_images_of_different_sizes():
    with pytest.raises(ShapeMismatchError, match="differ in size"):
        image_fidelity(np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8))


def test_prompt_accuracy_counts_what_the_judge_accepts():
    images = [np.zeros((8, 8, 3), np.uint8)] * 4
    prompts = ["a red circle", "a blue square", "a red square", "a cat"]
    assert prompt_accuracy(images, prompts, lambda image, prompt: "red" in prompt) == 0.5
