"""Calibration data for UNet quantization: the UNet's real inputs along the denoising trajectory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sd_ovopt._loading import check_steps, guidance_embedding_dim
from sd_ovopt._validation import check_finite_tensor
from sd_ovopt.errors import InvalidConfigError, ShapeMismatchError, UnsupportedModelError

__all__ = ["UNET_INPUTS", "collect_calibration", "validate_calibration"]

UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
#: The input of UNets that take their guidance as an embedding (``time_cond_proj_dim``: LCM-distilled).
GUIDANCE_INPUT = "timestep_cond"


class _Full(Exception):
    """Raised inside the UNet hook to stop a pipeline run once enough samples are recorded."""


def collect_calibration(
    pipeline: Any,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Run ``pipeline`` on ``prompts`` and record every UNet input (one sample per UNet call).

    The inputs are what the UNet really sees while sampling (noisy latents at every timestep, with the
    classifier-free-guidance batch), which matches inference better than training-noise inputs. The
    pipeline is restored afterwards, also on error.

    Args:
        pipeline: A diffusers ``StableDiffusionPipeline`` (PyTorch).
        prompts: Text prompts; one pipeline run each.
        num_inference_steps: Denoising steps per prompt (each gives one sample).
        guidance_scale: As in the pipeline call (> 1 doubles the UNet batch).
        height: Image height (default: the pipeline's).
        width: Image width (default: the pipeline's).
        max_samples: Stop once this many samples are recorded.
        seed: Seed of the first prompt's noise; prompt ``i`` uses ``seed + i``.
        show_progress: Show a progress bar over prompts.

    Returns:
        A list of dicts with ``sample``, ``timestep`` (shape ``[1]``) and ``encoder_hidden_states``.

    Example:
        >>> from sd_ovopt import collect_calibration
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> data = collect_calibration(tiny_pipeline(), ["a red circle"], num_inference_steps=2)
        >>> len(data), sorted(data[0])
        (2, ['encoder_hidden_states', 'sample', 'timestep'])
    """
    check_collect_request(pipeline, prompts, max_samples, num_inference_steps)
    return run_prompts(
        pipeline,
        prompts,
        InputRecorder(max_samples),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        seed=seed,
        show_progress=show_progress,
    )


def check_collect_request(
    pipeline: Any, prompts: Sequence[str], max_samples: int | None, num_inference_steps: int
) -> torch.nn.Module:
    """The pipeline's UNet, once the request is checked."""
    unet = getattr(pipeline, "unet", None)
    if not isinstance(unet, torch.nn.Module) or not callable(pipeline):
        raise UnsupportedModelError(
            f"collect_calibration needs a PyTorch diffusers pipeline with a .unet; got {type(pipeline).__name__}."
        )
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidConfigError("prompts must be a non-empty list of strings.")
    if max_samples is not None and max_samples < 1:
        raise InvalidConfigError(f"max_samples={max_samples!r}; it must be >= 1 or None.")
    check_steps(num_inference_steps, scheduler=getattr(pipeline, "scheduler", None))
    return unet


class InputRecorder:
    """A UNet forward pre-hook (``with_kwargs=True``) keeping each call's inputs on the CPU in float32;
    raises :class:`_Full` once ``max_samples`` are kept."""

    def __init__(self, max_samples: int | None) -> None:
        self.max_samples = max_samples
        self.samples: list[dict[str, torch.Tensor]] = []

    def attach(self, unet: torch.nn.Module) -> Any:
        """Hook this recorder before every call of ``unet``; returns the hook's handle."""
        return unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.add(args, kwargs)

    def add(self, args: tuple, kwargs: dict, **extra: torch.Tensor) -> None:
        """Keep the inputs of one UNet call (``extra`` is kept with them as given)."""
        values = dict(zip(UNET_INPUTS, args, strict=False))
        values.update({k: kwargs[k] for k in UNET_INPUTS if k in kwargs})
        timestep = torch.as_tensor(values["timestep"], dtype=torch.float32).reshape(-1)[:1]
        sample = {
            "sample": values["sample"].detach().float().cpu().clone(),
            "timestep": timestep.detach().cpu().clone(),
            "encoder_hidden_states": values["encoder_hidden_states"].detach().float().cpu().clone(),
            **extra,
        }
        if kwargs.get(GUIDANCE_INPUT) is not None:
            sample[GUIDANCE_INPUT] = kwargs[GUIDANCE_INPUT].detach().float().cpu().clone()
        self.samples.append(sample)
        if self.max_samples is not None and len(self.samples) >= self.max_samples:
            raise _Full


def run_prompts(
    pipeline: Any,
    prompts: Sequence[str],
    recorder: InputRecorder,
    *,
    seed: int,
    show_progress: bool,
    **call: Any,
) -> list[dict[str, torch.Tensor]]:
    """One pipeline run per prompt (prompt ``i`` seeded ``seed + i``), up to the latents, with ``recorder``
    on the UNet (removed after, also on error); stops when it is full. Returns what it recorded."""
    handle = recorder.attach(pipeline.unet)
    try:
        for i, prompt in enumerate(
            tqdm(prompts, desc="Calibration", unit="prompt", disable=not show_progress)
        ):
            try:
                pipeline(
                    prompt, generator=torch.Generator().manual_seed(seed + i), output_type="latent", **call
                )
            except _Full:
                break
    finally:
        handle.remove()
    return recorder.samples


def _as_tensor(value: Any) -> Any:
    """numpy arrays and numbers become tensors; anything else is left for the type check to name."""

    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.asarray(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor([value])
    return value


def _as_input_dict(i: int, item: Any) -> dict[str, Any]:
    """One calibration item as ``{sample, timestep, encoder_hidden_states}``: a dict, or a positional
    ``(sample, timestep, encoder_hidden_states)`` tuple as the UNet is called; numpy arrays become tensors,
    and the timestep (int or float: tensor, numpy or Python number) becomes float32 of shape [1], what
    the traced UNet takes."""
    if isinstance(item, (tuple, list)) and len(item) == len(UNET_INPUTS):
        item = dict(zip(UNET_INPUTS, item, strict=True))
    if not isinstance(item, dict) or set(UNET_INPUTS) - set(item):
        raise InvalidConfigError(
            f"calibration[{i}] must be a dict with keys {UNET_INPUTS} or a (sample, timestep, "
            f"encoder_hidden_states) tuple; got {sorted(item) if isinstance(item, dict) else type(item).__name__}."
        )
    out = {key: _as_tensor(item[key]) for key in UNET_INPUTS}
    if item.get(GUIDANCE_INPUT) is not None:
        out[GUIDANCE_INPUT] = _as_tensor(item[GUIDANCE_INPUT])
    timestep = out["timestep"]
    if isinstance(timestep, torch.Tensor) and not timestep.is_floating_point() and not timestep.is_complex():
        if timestep.dtype == torch.bool:
            raise InvalidConfigError(f"calibration[{i}]['timestep'] is a bool tensor; pass the step number.")
        timestep = timestep.float()
    if isinstance(timestep, torch.Tensor) and timestep.is_floating_point():
        flat = timestep.reshape(-1)
        if flat.numel() == 0 or not bool((flat == flat[0]).all()):
            raise ShapeMismatchError(
                f"calibration[{i}]['timestep'] has {flat.numel()} different values; one UNet call has one "
                "timestep (pass a number or a tensor of equal values)."
            )
        timestep = flat[:1].to(torch.float32)
    out["timestep"] = timestep
    return out


def validate_calibration(calibration: Iterable[Any], unet: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Check calibration items against ``unet`` and return them as a list of input dicts.

    Items are dicts or positional ``(sample, timestep, encoder_hidden_states)`` tuples; tensors or numpy
    arrays; the timestep may be an integer (what diffusers schedulers give) or a float, a tensor, a numpy
    value or a Python number.
    """
    items = list(calibration)
    if not items:
        raise InvalidConfigError(
            "calibration is empty. Pass UNet inputs, e.g. sd_ovopt.collect_calibration(pipeline, prompts)."
        )
    config = unet.config
    items = [_as_input_dict(i, item) for i, item in enumerate(items)]
    for i, item in enumerate(items):
        for key in UNET_INPUTS:
            value = item[key]
            if not isinstance(value, torch.Tensor):
                kind = type(value)
                raise InvalidConfigError(
                    f"calibration[{i}]['{key}'] must be a floating-point torch.Tensor, got "
                    f"{kind.__module__}.{kind.__qualname__}"
                    + (f" of {value.dtype}" if hasattr(value, "dtype") else "")
                    + ". Convert it, e.g. torch.from_numpy(array)."
                )
            if not value.is_floating_point():
                raise InvalidConfigError(
                    f"calibration[{i}]['{key}'] must be a floating-point torch.Tensor, got a tensor of "
                    f"{value.dtype}. Convert it with .float()."
                )
            if not torch.isfinite(value).all():
                raise InvalidConfigError(
                    f"calibration[{i}]['{key}'] holds NaN or infinite values; quantizer ranges set from it "
                    "would make every output NaN. Remove that item or record the calibration again."
                )
        sample, ehs = item["sample"], item["encoder_hidden_states"]
        if sample.ndim != 4 or sample.shape[1] != config.in_channels:
            raise ShapeMismatchError(
                f"calibration[{i}]['sample'] has shape {tuple(sample.shape)}; the UNet expects "
                f"[batch, {config.in_channels}, height, width]."
            )
        if ehs.ndim != 3 or ehs.shape[-1] != config.cross_attention_dim or ehs.shape[0] != sample.shape[0]:
            raise ShapeMismatchError(
                f"calibration[{i}]['encoder_hidden_states'] has shape {tuple(ehs.shape)}; the UNet expects "
                f"[{sample.shape[0]}, tokens, {config.cross_attention_dim}]."
            )
        _check_guidance_input(i, item, sample.shape[0], guidance_embedding_dim(unet))
    return items


def _check_guidance_input(i: int, item: dict[str, Any], batch: int, dim: int | None) -> None:
    """A guidance-embedded UNet (``time_cond_proj_dim``) needs its ``timestep_cond`` in every item;
    another UNet takes none."""
    value = item.get(GUIDANCE_INPUT)
    if dim is None:
        if value is not None:
            raise InvalidConfigError(
                f"calibration[{i}] has '{GUIDANCE_INPUT}', but this UNet takes no guidance input "
                "(time_cond_proj_dim is not set). Record the calibration with this UNet's pipeline."
            )
        return
    if (
        not isinstance(value, torch.Tensor)
        or not value.is_floating_point()
        or tuple(value.shape) != (batch, dim)
    ):
        raise ShapeMismatchError(
            f"calibration[{i}]['{GUIDANCE_INPUT}'] is {getattr(value, 'shape', value)!r}; this UNet takes its "
            f"guidance as an input and needs a float tensor of shape [{batch}, {dim}] in every item "
            "(collect_calibration records it)."
        )
    check_finite_tensor(f"calibration[{i}]['{GUIDANCE_INPUT}']", value)
