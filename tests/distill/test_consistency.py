"""Unit tests of the latent consistency distillation math, on tiny tensors and SD-1.5's noise schedule."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sd_ovopt.distill import consistency as lcd
from sd_ovopt.errors import InvalidConfigError, ShapeMismatchError

SHAPE = (3, 4, 5, 6)


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDPMScheduler

    # SD-1.5's training schedule (its scheduler_config.json)
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )


@pytest.fixture(scope="module")
def alphas(scheduler):
    return scheduler.alphas_cumprod


def _latents(seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=generator, dtype=dtype), torch.randn(
        SHAPE, generator=generator, dtype=dtype
    )


def _target_output(scheduler, kind, x0, eps, timesteps):
    """What a perfect model outputs for ``prediction_type=kind``."""
    return {"epsilon": eps, "sample": x0, "v_prediction": scheduler.get_velocity(x0, eps, timesteps)}[kind]


# --- boundary conditions ---------------------------------------------------------------------------------


def test_scalings_are_exactly_one_and_zero_at_timestep_zero():
    c_skip, c_out = lcd.scalings_for_boundary_conditions(torch.tensor([0]))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    c_skip, c_out = lcd.scalings_for_boundary_conditions(0, sigma_data=0.3, timestep_scaling=2.0)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0


def test_scalings_match_a_hand_computed_value_and_the_lcm_scheduler():
    from diffusers import LCMScheduler

    c_skip, c_out = lcd.scalings_for_boundary_conditions(torch.tensor([1], dtype=torch.float64))
    # scaled timestep 10 * 1 = 10, sigma_data 0.5
    assert c_skip.item() == pytest.approx(0.25 / 100.25, rel=1e-12)
    assert c_out.item() == pytest.approx(10 / math.sqrt(100.25), rel=1e-12)
    timesteps = torch.tensor([0, 1, 19, 500, 999])
    reference = LCMScheduler().get_scalings_for_boundary_condition_discrete(timesteps)
    for ours, theirs in zip(lcd.scalings_for_boundary_conditions(timesteps), reference, strict=True):
        torch.testing.assert_close(ours, theirs.to(torch.float32))


@pytest.mark.parametrize("kind", lcd.PREDICTION_TYPES)
def test_consistency_output_is_the_sample_itself_at_timestep_zero(alphas, kind):
    x, output = _latents(1, torch.float32)
    assert torch.equal(lcd.consistency_output(output, 0, x, kind, alphas), x)
    mixed = lcd.consistency_output(output, torch.tensor([0, 500, 999]), x, kind, alphas)
    assert torch.equal(mixed[0], x[0])
    assert not torch.equal(mixed[1], x[1])


def test_consistency_output_matches_a_hand_computed_value(alphas):
    x, x0 = _latents(2)
    out = lcd.consistency_output(x0, torch.tensor([3, 3, 3]), x, "sample", alphas)
    scaled = 30.0
    expected = 0.25 / (scaled**2 + 0.25) * x + scaled / math.sqrt(scaled**2 + 0.25) * x0
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_consistency_target_is_the_consistency_output_without_gradient(alphas):
    x, output = _latents(3, torch.float32)
    output.requires_grad_(True)
    timesteps = torch.tensor([19, 39, 59])
    student = lcd.consistency_output(output, timesteps, x, "epsilon", alphas)
    target = lcd.consistency_target(output, x, timesteps, "epsilon", alphas)
    assert student.requires_grad and not target.requires_grad
    assert torch.equal(student.detach(), target)
    student.sum().backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()


# --- x0 and eps from a model's output --------------------------------------------------------------------


@pytest.mark.parametrize("kind", lcd.PREDICTION_TYPES)
def test_predicted_origin_and_noise_invert_the_forward_noising(scheduler, alphas, kind):
    x0, eps = _latents(4)
    timesteps = torch.tensor([0, 421, 999])
    noisy = scheduler.add_noise(x0, eps, timesteps)
    output = _target_output(scheduler, kind, x0, eps, timesteps)
    torch.testing.assert_close(
        lcd.predicted_origin(output, timesteps, noisy, kind, alphas), x0, rtol=0, atol=1e-9
    )
    torch.testing.assert_close(
        lcd.predicted_noise(output, timesteps, noisy, kind, alphas), eps, rtol=0, atol=1e-9
    )


def test_one_timestep_for_the_whole_batch_broadcasts(scheduler, alphas):
    x0, eps = _latents(5)
    noisy = scheduler.add_noise(x0, eps, torch.tensor([250] * SHAPE[0]))
    for timesteps in (250, torch.tensor(250), torch.tensor([250])):
        torch.testing.assert_close(lcd.predicted_origin(eps, timesteps, noisy, "epsilon", alphas), x0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_results_keep_the_sample_dtype(alphas, dtype):
    x, output = _latents(6, dtype)
    timesteps = torch.tensor([5, 50, 500])
    assert lcd.predicted_origin(output, timesteps, x, "v_prediction", alphas).dtype == dtype
    assert lcd.consistency_output(output, timesteps, x, "epsilon", alphas).dtype == dtype
    assert lcd.teacher_step(output, output, x, torch.tensor([1, 2, 3]), 4.0, "epsilon", alphas).dtype == dtype


# --- the DDIM solver over skipping steps -----------------------------------------------------------------


def test_ddim_timesteps_match_the_lcm_example():
    # examples/consistency_distillation/train_lcm_distill_sd_wds.py, DDIMSolver.__init__
    expected = (np.arange(1, 50 + 1) * (1000 // 50)).round().astype(np.int64) - 1
    timesteps = lcd.ddim_timesteps(1000, 50)
    assert timesteps.dtype == torch.int64
    assert timesteps.tolist() == expected.tolist() == list(range(19, 1000, 20))
    assert lcd.ddim_timesteps(1000, 3).tolist() == [332, 665, 998]


def test_skipping_timesteps_step_back_k_and_stop_at_zero():
    index = torch.tensor([0, 1, 25, 49])
    start, previous = lcd.skipping_timesteps(index, 1000, 50)
    assert start.tolist() == [19, 39, 519, 999]
    assert previous.tolist() == [0, 19, 499, 979]
    solver = lcd.ddim_timesteps(1000, 50)
    assert torch.equal(previous[1:], solver[index[1:] - 1])


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_ddim_step_with_the_true_prediction_lands_on_the_noised_latents(scheduler, alphas, kind):
    x0, eps = _latents(7)
    index = torch.tensor([0, 17, 49])
    start, previous = lcd.skipping_timesteps(index)
    expected = scheduler.add_noise(x0, eps, previous)
    torch.testing.assert_close(lcd.ddim_step(x0, eps, index, alphas), expected, rtol=0, atol=1e-12)
    noisy = scheduler.add_noise(x0, eps, start)
    true = _target_output(scheduler, kind, x0, eps, start)
    # cond and uncond chosen so that cond + w * (cond - uncond) is the true output: LCM's guidance
    w = torch.tensor([0.0, 3.0, 14.5], dtype=torch.float64)
    delta = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    uncond = true + delta
    cond = true + delta * (w / (1 + w)).reshape(-1, 1, 1, 1)
    x_prev = lcd.teacher_step(cond, uncond, noisy, index, w, kind, alphas)
    torch.testing.assert_close(x_prev, expected, rtol=0, atol=1e-9)


def test_teacher_step_guides_the_lcm_way(alphas):
    x, cond = _latents(9)
    uncond = torch.zeros_like(cond)
    index = torch.tensor([10, 20, 30])
    start, _ = lcd.skipping_timesteps(index)
    guided = lcd.teacher_step(cond, uncond, x, index, 2.0, "epsilon", alphas)
    eps = 3.0 * cond  # cond + 2 * (cond - 0)
    x0 = lcd.predicted_origin(eps, start, x, "epsilon", alphas)
    torch.testing.assert_close(guided, lcd.ddim_step(x0, eps, index, alphas))
    assert torch.equal(
        lcd.teacher_step(cond, uncond, x, index, 0.0, "epsilon", alphas),
        lcd.teacher_step(cond, cond * 7, x, index, 0.0, "epsilon", alphas),
    )


# --- guidance embedding and loss -------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "dtype"), [(512, torch.float32), (256, torch.float32), (255, torch.float64)])
def test_guidance_scale_embedding_equals_the_lcm_pipeline(dim, dtype):
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 2.0, 7.5, 14.0])
    theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, w, embedding_dim=dim, dtype=dtype
    )
    ours = lcd.guidance_scale_embedding(w, embedding_dim=dim, dtype=dtype)
    assert ours.shape == (4, dim) and ours.dtype == dtype
    assert torch.equal(ours, theirs)
    single = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, torch.tensor(7.5 - 1).repeat(1)
    )
    assert torch.equal(lcd.guidance_scale_embedding(6.5), single)


def test_pseudo_huber_matches_a_hand_computed_case():
    pred = torch.tensor([[0.003, -0.003], [0.0, 0.0]], dtype=torch.float64)
    loss = lcd.consistency_loss(pred, torch.zeros_like(pred), "huber", huber_c=0.004)
    # sqrt(0.003**2 + 0.004**2) - 0.004 = 0.001 for two of four elements
    assert loss.item() == pytest.approx(0.0005, rel=1e-9)


def test_pseudo_huber_is_l2_over_2c_for_small_and_l1_for_large_differences():
    pred = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    small, large, c = pred * 1e-6, pred * 10, 1e-3
    zeros = torch.zeros_like(pred)
    l2 = lcd.consistency_loss(small, zeros, "l2")
    assert lcd.consistency_loss(small, zeros, "huber", c).item() == pytest.approx(
        l2.item() / (2 * c), rel=1e-4
    )
    l1 = large.abs().mean().item()
    assert lcd.consistency_loss(large, zeros, "huber", c).item() == pytest.approx(l1 - c, rel=1e-6)


def test_l2_is_the_mean_squared_error_in_float32():
    pred, target = _latents(11, torch.bfloat16)
    loss = lcd.consistency_loss(pred, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.mse_loss(pred.float(), target.float()))


# --- typed errors ----------------------------------------------------------------------------------------


def test_bad_names_and_numbers_raise_invalid_config_naming_the_field(alphas):
    x, out = _latents(12, torch.float32)
    cases = [
        ("prediction_type", lambda: lcd.predicted_origin(out, 1, x, "flow", alphas)),
        ("prediction_type", lambda: lcd.teacher_step(out, out, x, 1, 1.0, "eps", alphas)),
        ("loss_type", lambda: lcd.consistency_loss(x, out, "l1")),
        ("huber_c", lambda: lcd.consistency_loss(x, out, "huber", huber_c=-0.1)),
        ("huber_c", lambda: lcd.consistency_loss(x, out, "huber", huber_c=0)),
        ("sigma_data", lambda: lcd.scalings_for_boundary_conditions(1, sigma_data=0)),
        ("timestep_scaling", lambda: lcd.scalings_for_boundary_conditions(1, timestep_scaling=-1)),
        ("timesteps", lambda: lcd.predicted_origin(out, torch.tensor([1.0, 2.0, 3.0]), x, "epsilon", alphas)),
        ("timesteps", lambda: lcd.predicted_origin(out, 1000, x, "epsilon", alphas)),
        ("timesteps", lambda: lcd.consistency_output(out, -1, x, "epsilon", alphas)),
        ("timestep_index", lambda: lcd.skipping_timesteps(torch.tensor([50]), 1000, 50)),
        ("timestep_index", lambda: lcd.ddim_step(x, out, 0.5, alphas)),
        ("num_ddim_timesteps", lambda: lcd.ddim_timesteps(1000, 1001)),
        ("num_ddim_timesteps", lambda: lcd.ddim_timesteps(1000, 0)),
        ("w", lambda: lcd.teacher_step(out, out, x, 1, float("nan"), "epsilon", alphas)),
        ("w", lambda: lcd.teacher_step(out, out, x, 1, "7", "epsilon", alphas)),
        ("embedding_dim", lambda: lcd.guidance_scale_embedding(torch.tensor([1.0]), embedding_dim=2)),
        ("dtype", lambda: lcd.guidance_scale_embedding(torch.tensor([1.0]), dtype=torch.int64)),
        ("alphas_cumprod", lambda: lcd.predicted_origin(out, 1, x, "epsilon", alphas.long())),
    ]
    for field, call in cases:
        with pytest.raises(InvalidConfigError, match=field):
            call()


def test_shapes_that_do_not_match_raise_shape_mismatch(alphas):
    x, out = _latents(13, torch.float32)
    cases = [
        ("model_output", lambda: lcd.predicted_origin(out[:2], 1, x, "epsilon", alphas)),
        ("model_output", lambda: lcd.consistency_output(out[:, :1], 1, x, "sample", alphas)),
        ("target", lambda: lcd.consistency_loss(x, out[:1])),
        ("eps_pred", lambda: lcd.ddim_step(x, out[..., :2], 0, alphas)),
        ("uncond_output", lambda: lcd.teacher_step(out, out[:1], x, 0, 1.0, "epsilon", alphas)),
        ("timesteps", lambda: lcd.predicted_origin(out, torch.tensor([1, 2]), x, "epsilon", alphas)),
        (
            "timesteps",
            lambda: lcd.predicted_origin(out, torch.ones(3, 1, dtype=torch.long), x, "epsilon", alphas),
        ),
        ("w", lambda: lcd.teacher_step(out, out, x, 0, torch.tensor([1.0, 2.0]), "epsilon", alphas)),
        ("w", lambda: lcd.guidance_scale_embedding(torch.ones(2, 2))),
        ("alphas_cumprod", lambda: lcd.predicted_origin(out, 1, x, "epsilon", alphas[None])),
        ("alphas_cumprod", lambda: lcd.ddim_step(x, out, 0, alphas.tolist())),
    ]
    for field, call in cases:
        with pytest.raises(ShapeMismatchError, match=field):
            call()
