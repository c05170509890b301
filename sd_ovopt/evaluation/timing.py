"""Latency of variants: one interleaved loop times whole pipeline calls, UNet steps and the other parts.

Each round runs every variant once, the variant order rotating from round to round, so slow drifts of the
machine (other jobs, heat) spread over all variants instead of biasing one. A variant's turn runs every
image (warm-up excluded), one call of each UNet IR and, when asked, one call of the other parts (text
encoder and VAE decoder), so that a pipeline call can be checked against the sum of its parts. Variants
are either all loaded at once (each warmed up once) or loaded one at a time in each round (load, warm up,
time, release) when they do not fit in memory together. The images of the first round are kept for the
fidelity metrics; image ``index`` of seed ``s`` draws its noise by :func:`sd_ovopt._seeding.noise_generator`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from sd_ovopt._seeding import noise_generator

__all__ = [
    "Call",
    "Loaded",
    "Sample",
    "Timings",
    "generate",
    "ir_step",
    "other_parts",
    "time_variants",
    "unet_outputs",
    "unet_step",
]

#: Steps of the untimed call after a variant loads (compilation, allocator and cache warm-up).
WARM_UP_STEPS = 2


class Sample(NamedTuple):
    """One image of a benchmark: its prompt, seed and index (the prompt's place in the prompt list)."""

    prompt: str
    seed: int
    index: int


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
    """Seconds per timed call: ``pipeline_s`` (one image, ``steps`` steps), ``unet_step_s`` (one UNet call),
    ``unet_ir_s`` (one call of each further UNet IR, by name) and ``other_s`` (text encoder and VAE decoder,
    as one pipeline call runs them)."""

    pipeline_s: list[float] = field(default_factory=list)
    unet_step_s: list[float] = field(default_factory=list)
    unet_ir_s: dict[str, list[float]] = field(default_factory=dict)
    other_s: list[float] = field(default_factory=list)


@dataclass
class Loaded:
    """A variant loaded for timing: its pipeline, its runtime, its further compiled UNet IRs by name, and
    the call it is timed with when not the run's shared one."""

    pipe: Any
    runtime: str
    unet_irs: dict[str, Any] = field(default_factory=dict)
    call: Call | None = None


def generate(pipe: Any, sample: Sample, call: Call) -> np.ndarray:
    """One image as a float ``[H, W, 3]`` array in ``[0, 1]``, its noise drawn by the seeding rule."""
    out = pipe(
        sample.prompt,
        num_inference_steps=call.steps,
        guidance_scale=call.guidance_scale,
        height=call.height,
        width=call.width,
        generator=noise_generator(sample.seed, sample.index),
        output_type="np",
    )
    return np.asarray(out.images[0])


def _ov_runner(compiled: Any, shapes: dict[str, tuple[int, ...]]) -> Callable[[], None]:
    """One call of a compiled OpenVINO model on fixed inputs: its static shapes (else ``shapes``), timestep
    500, token ids 0, random normal floats."""
    rng = np.random.default_rng(0)
    arrays = {}
    for port in compiled.inputs:
        # a port may carry several names (optimum-intel's exports: "input_ids" and a number): use the known one
        known = sorted(set(port.get_names()) & {*shapes, "timestep"})
        name, dtype = (known or [port.get_any_name()])[0], port.get_element_type().to_dtype()
        shape = tuple(port.get_shape()) if port.get_partial_shape().is_static else shapes[name]
        if name == "timestep":
            arrays[name] = np.full(shape, 500, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            arrays[name] = np.zeros(shape, dtype=dtype)
        else:
            arrays[name] = rng.standard_normal(shape).astype(dtype)

    def run() -> None:
        compiled(arrays, share_inputs=True)

    return run


def ir_step(compiled: Any) -> Callable[[], None]:
    """One call of a compiled OpenVINO IR with static input shapes (e.g. a further UNet IR)."""
    return _ov_runner(compiled, {})


def _latent(pipe: Any, call: Call) -> tuple[int, int]:
    return call.height // pipe.vae_scale_factor, call.width // pipe.vae_scale_factor


def unet_step(pipe: Any, runtime: str, call: Call) -> Callable[[], None]:
    """A function running one UNet call of ``pipe`` on fixed random inputs of the benchmark's shape.

    OpenVINO variants call the compiled UNet directly (what the pipeline does per step, minus the
    scheduler), on its static input shapes; PyTorch calls ``unet.forward`` under ``torch.no_grad``.
    """
    config = pipe.unet.config
    shapes = {
        "sample": (call.unet_batch, config["in_channels"], *_latent(pipe, call)),
        "timestep": (1,),
        "encoder_hidden_states": (
            call.unet_batch,
            pipe.tokenizer.model_max_length,
            config["cross_attention_dim"],
        ),
    }
    if runtime != "torch":
        pipe.unet.compile()
        return _ov_runner(pipe.unet.request, shapes)

    rng = np.random.default_rng(0)
    inputs = {
        name: torch.full(shape, 500.0) if name == "timestep" else torch.from_numpy(rng.standard_normal(shape))
        for name, shape in shapes.items()
    }
    inputs = {name: value.float() for name, value in inputs.items()}
    unet = pipe.unet

    def run_torch() -> None:
        with torch.no_grad():
            unet(**inputs, return_dict=False)

    return run_torch


def other_parts(pipe: Any, runtime: str, call: Call) -> Callable[[], None]:
    """One pipeline call's text encoder and VAE decoder calls: the prompt (and, with guidance, the negative
    prompt) encoded, one latent decoded; PyTorch modules or the pipeline's compiled OpenVINO parts."""
    encodes = call.unet_batch
    ids_shape = (1, pipe.tokenizer.model_max_length)
    latent_shape = (1, pipe.unet.config["in_channels"], *_latent(pipe, call))
    if runtime != "torch":
        for part in (pipe.text_encoder, pipe.vae_decoder):
            part.compile()
        text = _ov_runner(pipe.text_encoder.request, {"input_ids": ids_shape})
        decode = _ov_runner(pipe.vae_decoder.request, {"latent_sample": latent_shape})

        def run_ov() -> None:
            for _ in range(encodes):
                text()
            decode()

        return run_ov

    ids = torch.zeros(ids_shape, dtype=torch.int64)
    latent = torch.from_numpy(np.random.default_rng(0).standard_normal(latent_shape).astype(np.float32))

    def run_torch() -> None:
        with torch.no_grad():
            for _ in range(encodes):
                pipe.text_encoder(ids)
            pipe.vae.decode(latent)

    return run_torch


def _rotated(names: Sequence[str], offset: int) -> list[str]:
    k = offset % len(names)
    return [*names[k:], *names[:k]]


@dataclass
class _Turn:
    """What one variant's turn in a round runs: its pipeline and a runner per timed part."""

    pipe: Any
    call: Call
    unet: Callable[[], None]
    irs: dict[str, Callable[[], None]]
    other: Callable[[], None] | None


def _open(loaded: Loaded, call: Call, *, unet_only: bool, time_parts: bool) -> _Turn:
    """Runners for a loaded variant (at its own call, else the shared one), each run once untimed (the
    warm-up)."""
    call = loaded.call or call
    turn = _Turn(
        loaded.pipe,
        call,
        unet_step(loaded.pipe, loaded.runtime, call),
        {name: ir_step(compiled) for name, compiled in loaded.unet_irs.items()},
        other_parts(loaded.pipe, loaded.runtime, call) if time_parts and not unet_only else None,
    )
    if not unet_only:
        generate(turn.pipe, Sample("warm-up", 0, 0), replace(call, steps=min(WARM_UP_STEPS, call.steps)))
    for run in (turn.unet, *turn.irs.values(), *([turn.other] if turn.other else [])):
        run()
    return turn


def _seconds(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _measure(
    turn: _Turn, samples: Sequence[Sample], timing: Timings, images: list[np.ndarray] | None
) -> None:
    """One turn: every sample through the pipeline, then one call of each UNet IR and of the other parts."""
    for sample in samples:
        t0 = time.perf_counter()
        image = generate(turn.pipe, sample, turn.call)
        timing.pipeline_s.append(time.perf_counter() - t0)
        if images is not None:
            images.append(image)
    timing.unet_step_s.append(_seconds(turn.unet))
    for name, run in turn.irs.items():
        timing.unet_ir_s.setdefault(name, []).append(_seconds(run))
    if turn.other is not None:
        timing.other_s.append(_seconds(turn.other))


def time_variants(
    loaders: dict[str, Callable[[], Loaded]],
    samples: Sequence[Sample],
    call: Call,
    *,
    rounds: int,
    one_at_a_time: bool = False,
    unet_only: bool = False,
    time_parts: bool = False,
    on_load: Callable[[str, Loaded], None] | None = None,
    show_progress: bool = True,
) -> tuple[dict[str, Timings], dict[str, list[np.ndarray]]]:
    """Time every variant; return the timings and the first round's images.

    Args:
        loaders: By variant name, a function loading it (called once, or once per round with
            ``one_at_a_time``).
        samples: The images of each turn (prompt, seed, index).
        call: Steps, guidance and size shared by all calls.
        rounds: Timed rounds (after the warm-up).
        one_at_a_time: Load each variant in its turn and release it after (for variants that do not fit
            in memory together); otherwise all are loaded first.
        unet_only: Time UNet steps only (no pipeline calls, no images).
        time_parts: Also time the text encoder and VAE decoder calls of one pipeline call.
        on_load: Called with each variant the first time it is loaded (before its warm-up).
        show_progress: Show a progress bar.
    """
    names = list(loaders)
    timings = {name: Timings() for name in names}
    images: dict[str, list[np.ndarray]] = {name: [] for name in names}
    seen: set[str] = set()

    def open_turn(name: str) -> _Turn:
        loaded = loaders[name]()
        if on_load is not None and name not in seen:
            on_load(name, loaded)
        seen.add(name)
        return _open(loaded, call, unet_only=unet_only, time_parts=time_parts)

    held = {} if one_at_a_time else {name: open_turn(name) for name in names}
    todo = [] if unet_only else list(samples)
    with tqdm(total=rounds * len(names), desc="Timing", unit="turn", disable=not show_progress) as bar:
        for r in range(rounds):
            for name in _rotated(names, r) if names else []:
                turn = held.get(name) or open_turn(name)
                _measure(turn, todo, timings[name], images[name] if r == 0 and todo else None)
                if one_at_a_time:
                    del turn
                    gc.collect()
                bar.update()
    return timings, images


def unet_outputs(pipe: Any, runtime: str, inputs: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """The UNet's noise prediction for each recorded input (``sample``, ``timestep``,
    ``encoder_hidden_states``), as float32 arrays; OpenVINO inputs are cast to the IR's own types."""
    if runtime == "torch":
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
