"""Latent consistency distillation (LCD) as pure tensor functions: no UNet, no optimizer, no state.

The LCM recipe (Luo et al. 2023, "Latent Consistency Models", Algorithm 1; diffusers'
``examples/consistency_distillation/train_lcm_distill_sd_wds.py``) trains a student ``f(x_t, w, c, t)`` so
that its outputs agree along the teacher's probability-flow ODE trajectory. One training step reads:

1. pick a solver index ``n`` and its two timesteps, ``t = t_{n+k}`` and ``s = t_n``
   (:func:`skipping_timesteps`), noise the latents to ``x_t``;
2. the student's consistency output at ``(x_t, t)``: :func:`consistency_output`;
3. the teacher's conditional and unconditional outputs at ``(x_t, t)``, combined with guidance weight ``w``
   and integrated by one DDIM step over ``k`` training steps to ``x_s``: :func:`teacher_step`;
4. the EMA target network's output at ``(x_s, s)`` turned into the regression target:
   :func:`consistency_target`;
5. :func:`consistency_loss` between the two (L2 or LCM's pseudo-Huber).

The consistency function is ``f(x, t) = c_skip(t) * x + c_out(t) * x0_pred(x, t)`` with the boundary
condition ``f(x, 0) = x`` (:func:`scalings_for_boundary_conditions`). The guidance weight ``w`` follows the
LCM paper: ``eps = eps_cond + w * (eps_cond - eps_uncond)``, so a pipeline's ``guidance_scale`` is
``w + 1`` (``LatentConsistencyModelPipeline`` embeds ``guidance_scale - 1``, :func:`guidance_scale_embedding`).

Every function takes ``alphas_cumprod`` (a scheduler's ``alphas_cumprod``, one value per training timestep)
and integer timesteps, one per sample (or one for all). Results keep the sample's dtype and device;
coefficients are computed in the wider of the sample's and ``alphas_cumprod``'s dtypes.
"""

from __future__ import annotations

import torch

from sd_ovopt._validation import check_choice, check_finite_tensor, check_float, check_int
from sd_ovopt.errors import InvalidConfigError, ShapeMismatchError

__all__ = [
    "LOSS_TYPES",
    "PREDICTION_TYPES",
    "consistency_loss",
    "consistency_output",
    "consistency_target",
    "ddim_step",
    "ddim_timesteps",
    "guidance_scale_embedding",
    "predicted_noise",
    "predicted_origin",
    "scalings_for_boundary_conditions",
    "skipping_timesteps",
    "teacher_step",
]

#: What a UNet predicts, as diffusers' schedulers name it in ``config.prediction_type``.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
#: The consistency losses: mean squared error, or LCM's pseudo-Huber ``sqrt(d**2 + c**2) - c``.
LOSS_TYPES = ("huber", "l2")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    (first, reference), *others = tensors.items()
    for name, tensor in others:
        if tensor.shape != reference.shape:
            raise ShapeMismatchError(
                f"{name} has shape {tuple(tensor.shape)} but {first} has {tuple(reference.shape)}; they must be "
                "equal (pass tensors of the same batch and latent size, not ones that merely broadcast)."
            )


def _check_integer_tensor(name: str, value: torch.Tensor | int, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(value, device=device)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise InvalidConfigError(
            f"{name} has dtype {tensor.dtype}; it must hold integers: pass a torch.long tensor or an int."
        )
    if tensor.ndim > 1:
        raise ShapeMismatchError(
            f"{name} has shape {tuple(tensor.shape)}; it must be one integer or a 1-D tensor, one per sample."
        )
    return tensor


def _per_sample(name: str, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (0-d, or 1-D with 1 or ``like.shape[0]`` entries) shaped to broadcast over ``like``."""
    if values.ndim > 1 or values.numel() not in (1, like.shape[0]):
        raise ShapeMismatchError(
            f"{name} has shape {tuple(values.shape)}; it must be one value or {like.shape[0]} (one per sample "
            f"of a batch of shape {tuple(like.shape)})."
        )
    return values.reshape(values.numel(), *([1] * (like.ndim - 1)))


def _check_alphas(alphas_cumprod: torch.Tensor) -> int:
    """The number of training timesteps, once ``alphas_cumprod`` is known to be a 1-D floating tensor."""
    if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.ndim != 1:
        raise ShapeMismatchError(
            f"alphas_cumprod must be a 1-D tensor, one value per training timestep (a scheduler's "
            f"alphas_cumprod); got {getattr(alphas_cumprod, 'shape', type(alphas_cumprod).__name__)}."
        )
    if not alphas_cumprod.is_floating_point():
        raise InvalidConfigError(
            f"alphas_cumprod has dtype {alphas_cumprod.dtype}; pass the scheduler's floating alphas_cumprod."
        )
    return alphas_cumprod.shape[0]


def _alphas(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor | int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))`` per sample, shaped and typed to broadcast over ``like``."""
    size = _check_alphas(alphas_cumprod)
    steps = _check_integer_tensor("timesteps", timesteps, alphas_cumprod.device)
    if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) >= size):
        raise InvalidConfigError(
            f"timesteps range from {int(steps.min())} to {int(steps.max())}; they must lie in [0, {size - 1}] "
            f"(alphas_cumprod has {size} training timesteps)."
        )
    compute = torch.promote_types(alphas_cumprod.dtype, like.dtype)
    alpha = _per_sample("timesteps", alphas_cumprod[steps].to(compute), like)
    return alpha.sqrt().to(like), (1 - alpha).sqrt().to(like)


def scalings_for_boundary_conditions(
    timestep: torch.Tensor | float, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The consistency parameterization's ``(c_skip, c_out)`` at ``timestep``.

    ``c_skip = sigma_data**2 / ((s*t)**2 + sigma_data**2)`` and ``c_out = s*t / sqrt((s*t)**2 + sigma_data**2)``
    with ``s = timestep_scaling``, as diffusers' ``LCMScheduler.get_scalings_for_boundary_condition_discrete``.
    At ``t = 0`` they are exactly 1 and 0, so ``f(x, 0) = x``; by ``t`` of a few tens ``c_skip`` is ~0.

    Args:
        timestep: Timesteps, any shape (integers are computed in float32, floats in their own dtype).
        sigma_data: The data's standard deviation in the parameterization (> 0).
        timestep_scaling: Multiplies the timestep; larger makes ``c_skip`` fall faster (> 0).

    Returns:
        ``(c_skip, c_out)``, each shaped like ``timestep``.

    Example:
        >>> c_skip, c_out = scalings_for_boundary_conditions(torch.tensor([0, 999]))
        >>> c_skip.tolist()[0], c_out.tolist()[0]
        (1.0, 0.0)
    """
    sigma_data = check_float("sigma_data", sigma_data, minimum=0, open_minimum=True, hint="LCM uses 0.5.")
    timestep_scaling = check_float(
        "timestep_scaling", timestep_scaling, minimum=0, open_minimum=True, hint="LCM uses 10.0."
    )
    steps = torch.as_tensor(timestep)
    if not steps.is_floating_point():
        steps = steps.to(torch.float32)
    scaled = timestep_scaling * steps
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def predicted_origin(
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The clean latent ``x0`` a model's output implies at ``(sample, timesteps)``.

    With ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)`` and ``x_t = a * x0 + s * eps``:
    ``epsilon`` → ``(x_t - s * out) / a``; ``v_prediction`` (``v = a * eps - s * x0``) → ``a * x_t - s * out``;
    ``sample`` → ``out``.

    Args:
        model_output: The UNet's output, shaped like ``sample``.
        timesteps: Integer timesteps: one, or one per sample.
        sample: The noisy latents ``x_t``, batch first.
        prediction_type: One of :data:`PREDICTION_TYPES` (the scheduler's ``config.prediction_type``).
        alphas_cumprod: The scheduler's ``alphas_cumprod``, one value per training timestep.

    Returns:
        ``x0``, shaped like ``sample``.

    Example:
        >>> alphas = torch.linspace(0.99, 0.01, 1000)
        >>> x0 = predicted_origin(torch.zeros(1, 4, 8, 8), torch.tensor([999]), torch.randn(1, 4, 8, 8),
        ...                       "epsilon", alphas)
        >>> x0.shape
        torch.Size([1, 4, 8, 8])
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    _check_same_shape(sample=sample, model_output=model_output)
    alpha, sigma = _alphas(alphas_cumprod, timesteps, sample)
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * model_output
    return model_output


def predicted_noise(
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The noise ``eps`` a model's output implies at ``(sample, timesteps)``; the twin of :func:`predicted_origin`.

    ``epsilon`` → ``out``; ``v_prediction`` → ``a * out + s * x_t``; ``sample`` → ``(x_t - a * out) / s``
    (``a``, ``s`` as in :func:`predicted_origin`; ``sample`` is unbounded where ``alpha_bar_t`` is 1).

    Args:
        model_output: The UNet's output, shaped like ``sample``.
        timesteps: Integer timesteps: one, or one per sample.
        sample: The noisy latents ``x_t``, batch first.
        prediction_type: One of :data:`PREDICTION_TYPES`.
        alphas_cumprod: The scheduler's ``alphas_cumprod``.

    Returns:
        ``eps``, shaped like ``sample``.

    Example:
        >>> out = torch.randn(2, 4, 8, 8)
        >>> alphas = torch.linspace(0.99, 0.01, 1000)
        >>> torch.equal(predicted_noise(out, torch.tensor([5, 7]), torch.randn(2, 4, 8, 8), "epsilon", alphas), out)
        True
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    _check_same_shape(sample=sample, model_output=model_output)
    alpha, sigma = _alphas(alphas_cumprod, timesteps, sample)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha * model_output + sigma * sample
    return (sample - alpha * model_output) / sigma


def consistency_output(
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
    *,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """The consistency function ``f(x_t, t) = c_skip(t) * x_t + c_out(t) * x0_pred``: the student's output.

    Args:
        model_output: The student UNet's output at ``(sample, timesteps)``.
        timesteps: Integer timesteps: one, or one per sample.
        sample: The noisy latents ``x_t``, batch first.
        prediction_type: One of :data:`PREDICTION_TYPES`.
        alphas_cumprod: The scheduler's ``alphas_cumprod``.
        sigma_data: See :func:`scalings_for_boundary_conditions`.
        timestep_scaling: See :func:`scalings_for_boundary_conditions`.

    Returns:
        The consistency output, shaped like ``sample``; equal to ``sample`` where ``timesteps`` is 0.

    Example:
        >>> x = torch.randn(2, 4, 8, 8)
        >>> alphas = torch.linspace(0.99, 0.01, 1000)
        >>> torch.equal(consistency_output(torch.randn(2, 4, 8, 8), 0, x, "epsilon", alphas), x)
        True
    """
    x0 = predicted_origin(model_output, timesteps, sample, prediction_type, alphas_cumprod)
    steps = torch.as_tensor(timesteps, device=sample.device).to(
        torch.promote_types(sample.dtype, torch.float32)
    )
    c_skip, c_out = scalings_for_boundary_conditions(steps, sigma_data, timestep_scaling)
    c_skip = _per_sample("timesteps", c_skip, sample).to(sample.dtype)
    c_out = _per_sample("timesteps", c_out, sample).to(sample.dtype)
    return c_skip * sample + c_out * x0


def consistency_target(
    target_output: torch.Tensor,
    x_prev: torch.Tensor,
    t_prev: torch.Tensor | int,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
    *,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """The regression target: the target (EMA) network's consistency output at ``(x_prev, t_prev)``, detached.

    Args:
        target_output: The target UNet's output at ``(x_prev, t_prev)`` with the same ``w`` and prompt.
        x_prev: The teacher's DDIM step, from :func:`teacher_step`.
        t_prev: The earlier solver timesteps ``t_n``, from :func:`skipping_timesteps`.
        prediction_type: One of :data:`PREDICTION_TYPES`.
        alphas_cumprod: The scheduler's ``alphas_cumprod``.
        sigma_data: See :func:`scalings_for_boundary_conditions`.
        timestep_scaling: See :func:`scalings_for_boundary_conditions`.

    Returns:
        The target, shaped like ``x_prev``, with no gradient (the stop-gradient of the LCM objective).

    Example:
        >>> alphas = torch.linspace(0.99, 0.01, 1000)
        >>> out = torch.randn(1, 4, 8, 8, requires_grad=True)
        >>> consistency_target(out, torch.randn(1, 4, 8, 8), torch.tensor([19]), "epsilon", alphas).requires_grad
        False
    """
    target = consistency_output(
        target_output,
        t_prev,
        x_prev,
        prediction_type,
        alphas_cumprod,
        sigma_data=sigma_data,
        timestep_scaling=timestep_scaling,
    )
    return target.detach()


def ddim_timesteps(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> torch.Tensor:
    """The DDIM solver's timesteps, ascending: ``(arange(1, N + 1) * (T // N)) - 1``.

    For ``T = 1000``, ``N = 50``: ``[19, 39, ..., 999]``, a skip of ``k = T // N = 20`` training steps.

    Args:
        num_train_timesteps: ``T``, the scheduler's ``config.num_train_timesteps``.
        num_ddim_timesteps: ``N``, the number of solver steps over ``[0, T)`` (1 to ``T``).

    Returns:
        An int64 tensor of ``N`` timesteps.

    Example:
        >>> ddim_timesteps(1000, 4).tolist()
        [249, 499, 749, 999]
    """
    total = check_int("num_train_timesteps", num_train_timesteps, minimum=1)
    count = check_int("num_ddim_timesteps", num_ddim_timesteps, minimum=1, maximum=total)
    return torch.arange(1, count + 1, dtype=torch.int64) * (total // count) - 1


def skipping_timesteps(
    timestep_index: torch.Tensor | int, num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two timesteps of a solver index ``n``: ``t_{n+k}`` (where the student and teacher look) and
    ``t_n`` (where the DDIM step lands and the target looks), ``t_n = max(t_{n+k} - k, 0)``.

    Args:
        timestep_index: Integer indices into :func:`ddim_timesteps`, in ``[0, N)``; one per sample.
        num_train_timesteps: ``T``.
        num_ddim_timesteps: ``N``.

    Returns:
        ``(start, previous)`` int64 timesteps, on ``timestep_index``'s device.

    Example:
        >>> start, previous = skipping_timesteps(torch.tensor([0, 1, 49]))
        >>> start.tolist(), previous.tolist()
        ([19, 39, 999], [0, 19, 979])
    """
    solver = ddim_timesteps(num_train_timesteps, num_ddim_timesteps)
    device = timestep_index.device if isinstance(timestep_index, torch.Tensor) else None
    index = _check_integer_tensor("timestep_index", timestep_index, solver.device)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= solver.numel()):
        raise InvalidConfigError(
            f"timestep_index ranges from {int(index.min())} to {int(index.max())}; it must lie in "
            f"[0, {solver.numel() - 1}] (num_ddim_timesteps={solver.numel()})."
        )
    start = solver[index]
    previous = (start - int(num_train_timesteps) // solver.numel()).clamp(min=0)
    return start.to(device), previous.to(device)


def ddim_step(
    x0_pred: torch.Tensor,
    eps_pred: torch.Tensor,
    timestep_index: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    num_ddim_timesteps: int = 50,
) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from ``t_{n+k}`` to ``t_n``: ``sqrt(ab) * x0 + sqrt(1 - ab) * eps``
    with ``ab = alpha_bar(t_n)`` (``t_n`` from :func:`skipping_timesteps`).

    Args:
        x0_pred: The predicted clean latents at ``t_{n+k}``.
        eps_pred: The predicted noise at ``t_{n+k}``, shaped like ``x0_pred``.
        timestep_index: Solver indices ``n``, in ``[0, N)``: one, or one per sample.
        alphas_cumprod: The scheduler's ``alphas_cumprod`` (its length is ``T``).
        num_ddim_timesteps: ``N``.

    Returns:
        ``x_{t_n}``, shaped like ``x0_pred``.

    Example:
        >>> alphas = torch.linspace(0.99, 0.01, 1000)
        >>> x0 = torch.randn(1, 4, 8, 8)
        >>> torch.allclose(ddim_step(x0, torch.zeros_like(x0), 0, alphas), 0.99**0.5 * x0)
        True
    """
    _check_same_shape(x0_pred=x0_pred, eps_pred=eps_pred)
    size = _check_alphas(alphas_cumprod)
    index = torch.as_tensor(timestep_index, device=alphas_cumprod.device)
    _, previous = skipping_timesteps(index, size, num_ddim_timesteps)
    alpha, sigma = _alphas(alphas_cumprod, previous, x0_pred)
    return alpha * x0_pred + sigma * eps_pred


def _guidance_weight(w: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        w = check_float("w", w, hint="It is the LCM guidance weight, guidance_scale - 1 (e.g. 3 to 15).")
    weight = torch.as_tensor(w, device=like.device)
    check_finite_tensor("w", weight, hint="Pass finite guidance weights (guidance_scale - 1).")
    return _per_sample("w", weight, like).to(like.dtype)


def teacher_step(
    cond_output: torch.Tensor,
    uncond_output: torch.Tensor,
    sample: torch.Tensor,
    timestep_index: torch.Tensor | int,
    w: torch.Tensor | float,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
    num_ddim_timesteps: int = 50,
) -> torch.Tensor:
    """The teacher's guided DDIM step from ``x_{t_{n+k}}`` to ``x_{t_n}``: the point the target looks at.

    Both outputs become ``x0`` and ``eps`` at ``t_{n+k}``, are guided the LCM way
    (``cond + w * (cond - uncond)``), and one :func:`ddim_step` moves to ``t_n``.

    Args:
        cond_output: The teacher UNet's output at ``(sample, t_{n+k})`` with the prompt.
        uncond_output: The same with the empty prompt.
        sample: ``x_{t_{n+k}}``, the noisy latents at ``skipping_timesteps(timestep_index)[0]``.
        timestep_index: Solver indices ``n``: one, or one per sample.
        w: Guidance weight, one or one per sample (``guidance_scale - 1``; 0 is the conditional teacher).
        prediction_type: The teacher's, one of :data:`PREDICTION_TYPES`.
        alphas_cumprod: The scheduler's ``alphas_cumprod``.
        num_ddim_timesteps: ``N``.

    Returns:
        ``x_prev``, shaped like ``sample``.

    Example:
        >>> alphas = torch.linspace(0.99, 0.01, 1000)
        >>> x = torch.randn(2, 4, 8, 8)
        >>> cond, uncond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        >>> teacher_step(cond, uncond, x, torch.tensor([3, 40]), 7.0, "epsilon", alphas).shape
        torch.Size([2, 4, 8, 8])
    """
    _check_same_shape(sample=sample, cond_output=cond_output, uncond_output=uncond_output)
    weight = _guidance_weight(w, sample)
    size = _check_alphas(alphas_cumprod)
    index = torch.as_tensor(timestep_index, device=alphas_cumprod.device)
    start, _ = skipping_timesteps(index, size, num_ddim_timesteps)
    guided = []
    for convert in (predicted_origin, predicted_noise):
        cond = convert(cond_output, start, sample, prediction_type, alphas_cumprod)
        uncond = convert(uncond_output, start, sample, prediction_type, alphas_cumprod)
        guided.append(cond + weight * (cond - uncond))
    return ddim_step(guided[0], guided[1], index, alphas_cumprod, num_ddim_timesteps)


def guidance_scale_embedding(
    w: torch.Tensor | float, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The sinusoidal embedding of the guidance weight that an LCM UNet takes as ``timestep_cond``.

    Equal to diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding`` (VDM's timestep
    embedding of ``1000 * w``: ``[sin(1000 w f_i), cos(1000 w f_i)]``, ``f_i = 10000 ** (-i / (d/2 - 1))``,
    zero-padded to an odd ``d``). Embed the same ``w`` the teacher is guided with (``guidance_scale - 1``).

    Args:
        w: Guidance weights, a number or a 1-D tensor (one per sample).
        embedding_dim: ``d``, the UNet's ``config.time_cond_proj_dim`` (at least 4).
        dtype: The embedding's floating dtype.

    Returns:
        A ``(len(w), embedding_dim)`` tensor on ``w``'s device.

    Example:
        >>> guidance_scale_embedding(torch.tensor([3.0, 7.5]), embedding_dim=256).shape
        torch.Size([2, 256])
    """
    embedding_dim = check_int("embedding_dim", embedding_dim, minimum=4)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidConfigError(f"dtype={dtype!r}; it must be a floating torch dtype such as torch.float32.")
    weights = torch.as_tensor(w)
    if weights.ndim > 1:
        raise ShapeMismatchError(f"w has shape {tuple(weights.shape)}; it must be a number or a 1-D tensor.")
    check_finite_tensor("w", weights, hint="Pass finite guidance weights (guidance_scale - 1).")
    scaled = weights.reshape(-1) * 1000.0
    half = embedding_dim // 2
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=dtype) * -step).to(weights.device)
    angles = scaled.to(dtype)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(embedding, (0, embedding_dim % 2))


def consistency_loss(
    pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2", huber_c: float = 0.001
) -> torch.Tensor:
    """The distance between the student's consistency output and the target, averaged over every element.

    ``l2``: ``mean((p - t)**2)``. ``huber``: LCM's pseudo-Huber ``mean(sqrt((p - t)**2 + c**2) - c)``, which
    is ``~(p - t)**2 / (2c)`` for differences much smaller than ``c`` and ``~|p - t| - c`` for larger ones.
    Computed in at least float32.

    Args:
        pred: The student's :func:`consistency_output`.
        target: The :func:`consistency_target`, shaped like ``pred``.
        loss_type: One of :data:`LOSS_TYPES`.
        huber_c: The pseudo-Huber ``c`` (> 0); LCM uses 0.001.

    Returns:
        A 0-d tensor.

    Example:
        >>> consistency_loss(torch.ones(2, 3), torch.zeros(2, 3)).item()
        1.0
    """
    check_choice("loss_type", loss_type, LOSS_TYPES)
    huber_c = check_float(
        "huber_c",
        huber_c,
        minimum=0,
        open_minimum=True,
        hint="LCM uses 0.001; 0 would be L1 with NaN gradients.",
    )
    _check_same_shape(pred=pred, target=target)
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    difference = pred.to(dtype) - target.to(dtype)
    if loss_type == "l2":
        return difference.square().mean()
    return (torch.sqrt(difference.square() + huber_c**2) - huber_c).mean()
