"""Latency of loaded variants: full pipeline calls and single UNet steps, interleaved, warm-up excluded.

Every variant runs once untimed first (compilation, allocator and cache warm-up). Then each round runs
every variant once per (prompt, seed) pair, the variant order rotating from round to round, so slow
drifts of the machine (other jobs, heat) spread over all variants instead of biasing one. The images of
the first timed round are kept for the fidelity metrics; the same seed gives the same image every round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = ["Call", "Timings", "time_variants", "unet_step"]


@dataclass(frozen=True)
class Call:
    """The arguments every pipeline call of a benchmark shares."""

    steps: int
    guidance_scale: float
    height: int
    width: int

    @property
    def unet_batch(self) -> int:
        return 2 if self.guidance_scale > 1 else 1


@dataclass
class Timings:
    """Seconds per timed call: ``pipeline_s`` (one image, ``steps`` steps) and ``unet_step_s`` (one UNet call)."""

    pipeline_s: list[float] = field(default_factory=list)
    unet_step_s: list[float] = field(default_factory=list)


def generate(pipe: Any, prompt: str, seed: int, call: Call) -> np.ndarray:
    """One image as a float ``[H, W, 3]`` array in ``[0, 1]``; the noise comes from ``seed`` on the CPU."""
    import torch

    out = pipe(
        prompt,
        num_inference_steps=call.steps,
        guidance_scale=call.guidance_scale,
        height=call.height,
        width=call.width,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return np.asarray(out.images[0])


def unet_step(pipe: Any, runtime: str, call: Call) -> Callable[[], None]:
    """A function running one UNet call of ``pipe`` on fixed random inputs of the benchmark's shape.

    OpenVINO variants call the compiled UNet directly (what the pipeline does per step, minus the
    scheduler), on its static input shapes; PyTorch calls ``unet.forward`` under ``torch.no_grad``.
    """
    rng = np.random.default_rng(0)
    config = pipe.unet.config
    latent = (call.height // pipe.vae_scale_factor, call.width // pipe.vae_scale_factor)
    shapes = {
        "sample": (call.unet_batch, config["in_channels"], *latent),
        "timestep": (1,),
        "encoder_hidden_states": (
            call.unet_batch,
            pipe.tokenizer.model_max_length,
            config["cross_attention_dim"],
        ),
    }

    def values(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if name == "timestep":
            return np.full(shape, 500, dtype=dtype)
        return rng.standard_normal(shape).astype(dtype)

    if runtime == "torch":
        import torch

        unet = pipe.unet
        inputs = {name: torch.from_numpy(values(name, shape, np.float32)) for name, shape in shapes.items()}

        def run_torch() -> None:
            with torch.no_grad():
                unet(**inputs, return_dict=False)

        return run_torch

    pipe.unet.compile()
    compiled = pipe.unet.request
    arrays = {}
    for port in compiled.inputs:
        name = port.get_any_name()
        static = port.get_partial_shape().is_static
        shape = tuple(port.get_shape()) if static else shapes[name]
        arrays[name] = values(name, shape, port.get_element_type().to_dtype())

    def run_ov() -> None:
        compiled(arrays, share_inputs=True)

    return run_ov


def _rotated(names: Sequence[str], offset: int) -> list[str]:
    k = offset % len(names)
    return [*names[k:], *names[:k]]


def time_variants(
    pipes: dict[str, tuple[Any, str]],
    pairs: Sequence[tuple[str, int]],
    call: Call,
    *,
    rounds: int,
    unet_only: bool = False,
    show_progress: bool = True,
) -> tuple[dict[str, Timings], dict[str, list[np.ndarray]]]:
    """Time every variant in ``pipes`` (name -> (pipeline, runtime)); return timings and first-round images.

    Args:
        pipes: Loaded pipelines by variant name, with their runtime (``"torch"``, ``"sd_ovopt"``, ``"optimum"``).
        pairs: (prompt, seed) pairs; each round runs each pair through each variant.
        call: Steps, guidance and size shared by all calls.
        rounds: Timed rounds (after one untimed warm-up call per variant).
        unet_only: Time UNet steps only (no pipeline calls, no images).
        show_progress: Show a progress bar.
    """
    names = list(pipes)
    if not names:
        return {}, {}
    steps_of = {name: unet_step(pipe, runtime, call) for name, (pipe, runtime) in pipes.items()}
    timings = {name: Timings() for name in names}
    images: dict[str, list[np.ndarray]] = {name: [] for name in names}
    pipeline_calls = 0 if unet_only else (1 + rounds * len(pairs)) * len(names)
    total = pipeline_calls + (1 + rounds) * len(names)
    with tqdm(total=total, desc="Timing", unit="call", disable=not show_progress) as bar:
        if not unet_only:
            for name in names:  # warm-up
                generate(pipes[name][0], *pairs[0], call)
                bar.update()
            for r in range(rounds):
                for prompt, seed in pairs:
                    for name in _rotated(names, r):
                        t0 = time.perf_counter()
                        image = generate(pipes[name][0], prompt, seed, call)
                        timings[name].pipeline_s.append(time.perf_counter() - t0)
                        if r == 0:
                            images[name].append(image)
                        bar.update()
        for name in names:  # warm-up
            steps_of[name]()
            bar.update()
        for r in range(rounds):
            for name in _rotated(names, r):
                t0 = time.perf_counter()
                steps_of[name]()
                timings[name].unet_step_s.append(time.perf_counter() - t0)
                bar.update()
    return timings, images


def unet_outputs(pipe: Any, runtime: str, inputs: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """The UNet's noise prediction for each recorded input (``sample``, ``timestep``,
    ``encoder_hidden_states``), as float32 arrays; OpenVINO inputs are cast to the IR's own types."""
    if runtime == "torch":
        import torch

        with torch.no_grad():
            return [
                pipe.unet(**{k: torch.as_tensor(v) for k, v in item.items()}, return_dict=False)[0]
                .float()
                .numpy()
                for item in inputs
            ]
    pipe.unet.compile()
    compiled = pipe.unet.request
    types = {port.get_any_name(): port.get_element_type().to_dtype() for port in compiled.inputs}
    outputs = []
    for item in inputs:
        arrays = {k: np.asarray(v, dtype=types[k]) for k, v in item.items() if k in types}
        outputs.append(np.asarray(compiled(arrays)[0], dtype=np.float32))
    return outputs
