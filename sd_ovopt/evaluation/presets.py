"""Named benchmarks: a model built offline from a config plus the settings and rows to run on it.

``sd-ovopt bench --preset sd15-512`` (or :func:`run_preset`) writes the preset's model as a local diffusers
folder under the output folder (once; later runs reuse it) and runs :func:`run_benchmark` on it with the
preset's settings; any :class:`BenchmarkSettings` field can still be overridden.

Example:
    >>> from sd_ovopt.evaluation.presets import preset_names
    >>> preset_names()
    ('sd15-512', 'sd15-512-deepcache', 'sd15-512-lcm4', 'tiny-32', 'tiny-32-lcm4')
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sd_ovopt._fs import atomic_output_dir
from sd_ovopt._schedulers import pipeline_scheduler
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.evaluation.benchmark import run_benchmark
from sd_ovopt.evaluation.fidelity import Judge
from sd_ovopt.evaluation.results import BenchmarkResult
from sd_ovopt.evaluation.settings import BenchmarkSettings
from sd_ovopt.lora import LoRAConfig, apply_lora, write_example_lora
from sd_ovopt.testing import sd15_pipeline, taesd, tiny_pipeline, tiny_taesd

__all__ = ["CACHING_ROWS", "PRESET_ROWS", "Preset", "preset_names", "register_preset", "run_preset"]

#: The rows of the pipeline presets: the PyTorch FP32 baseline, our folders at sd_ovopt's default
#: precision, both optimum-intel peers, our best folder under OpenVINO GenAI, and step caching.
PRESET_ROWS = (
    "pytorch-fp32",
    "ov-fp32-auto",
    "ov-int8-ptq",
    "ov-tome-int8",
    "optimum-int8-hybrid",
    "optimum-int8-full",
    "genai-tome-int8",
    "ov-deepcache-auto",
    "ov-tome-int8-deepcache",
)

#: The rows of the step-caching presets: each cached folder beside its uncached twin and both peers.
CACHING_ROWS = (
    "ov-fp32-auto",
    "ov-deepcache-auto",
    "ov-tome-int8",
    "ov-tome-int8-deepcache",
    "optimum-int8-hybrid",
    "optimum-int8-full",
)

#: The rows of the few-step presets (LCM-LoRA fused, LCM scheduler, no guidance): PyTorch FP32 at the same
#: steps and as the many-step workflow runs (PNDM, guidance 7.5), both optimum-intel peers, and our folders
#: with the full and the tiny decoder (and the tiny decoder in INT8, after ToMe or token downsampling).
FEW_STEP_ROWS = (
    "pytorch-fp32",
    "pytorch-fp32-cfg",
    "optimum-int8-hybrid",
    "optimum-int8-full",
    "ov-fp32-auto",
    "ov-fp32-auto-taesd",
    "ov-int8-ptq",
    "ov-int8-ptq-taesd",
    "ov-tome-int8",
    "ov-tome-int8-taesd",
    "ov-tome-int8-taesd-int8",
    "ov-todo-int8-taesd-int8",
)

#: Calibration and evaluation prompts of the pipeline presets: the first is the timed image.
PRESET_PROMPTS = ("a photo of an astronaut riding a horse", "a red circle on a blue background")


@dataclass(frozen=True)
class Preset:
    """A named benchmark.

    Attributes:
        name: What ``--preset`` takes.
        description: One line for ``--help`` and the docs.
        model: Builds the diffusers pipeline to benchmark, offline (random weights of a real architecture).
        model_folder: The folder under the output folder the model is saved in (presets of one model
            share it, and then the variants built from it).
        settings: :class:`BenchmarkSettings` fields the preset sets.
        tiny_vae: Builds the tiny autoencoder the ``-taesd`` rows export (saved beside the model), or None.
    """

    name: str
    description: str
    model: Callable[[], Any]
    model_folder: str
    settings: Mapping[str, Any]
    tiny_vae: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add a preset (a name registered twice raises)."""
    if preset.name in _PRESETS:
        raise InvalidConfigError(f"a benchmark preset named {preset.name!r} is registered already.")
    _PRESETS[preset.name] = preset
    return preset


def preset_names() -> tuple[str, ...]:
    """The registered presets, sorted."""
    return tuple(sorted(_PRESETS))


def _save_model(build: Callable[[], Any], folder: Path, marker: str = "model_index.json") -> Path:
    """What ``build`` makes, saved as a local diffusers folder (built once; an existing one is reused)."""

    if not (folder / marker).is_file():
        with atomic_output_dir(folder, overwrite=True) as tmp:
            build().save_pretrained(tmp)
    return folder


def run_preset(
    name: str, output_dir: str | Path, *, judge: Judge | None = None, **overrides: Any
) -> BenchmarkResult:
    """Run preset ``name`` into ``output_dir``: its model (saved under ``output_dir`` on the first run), its
    settings, then ``overrides`` (fields of :class:`BenchmarkSettings`).

    Example:
        >>> from sd_ovopt.evaluation.presets import run_preset
        >>> result = run_preset("tiny-32", "bench-tiny", variants=["pytorch-fp32", "ov-fp32-auto"])  # doctest: +SKIP
        >>> print(open("bench-tiny/results.md").read())  # doctest: +SKIP
    """

    if name not in _PRESETS:
        raise InvalidConfigError(f"unknown preset {name!r}; choose from {list(preset_names())}.")
    preset = _PRESETS[name]
    out = Path(output_dir).expanduser().resolve()
    settings = BenchmarkSettings(**preset.settings)
    out.mkdir(parents=True, exist_ok=True)
    model = _save_model(preset.model, out / preset.model_folder)
    if preset.tiny_vae is not None and "tiny_vae" not in overrides:
        overrides["tiny_vae"] = _save_model(preset.tiny_vae, out / "taesd-random-weights", "config.json")
    return run_benchmark(model, out, settings, judge=judge, **overrides)


def _sd15() -> Any:
    return sd15_pipeline()


def _tiny() -> Any:
    return tiny_pipeline()


def _with_lcm_lora(pipe: Any) -> Any:
    """``pipe`` as FastSD CPU runs LCM-LoRA: a LoRA of LCM-LoRA's layers and rank (64) fused into the UNet
    (random weights), and the LCM scheduler."""
    with tempfile.TemporaryDirectory() as folder:
        lora = write_example_lora(Path(folder) / "lcm-lora.safetensors", pipe.unet, rank=64, std=0.01)
        apply_lora(pipe.unet, LoRAConfig(lora))
    pipe.scheduler = pipeline_scheduler("lcm", pipe)
    return pipe


def _sd15_lcm() -> Any:
    return _with_lcm_lora(sd15_pipeline())


def _tiny_lcm() -> Any:
    return _with_lcm_lora(tiny_pipeline())


def _pipeline_settings(
    size: int,
    steps: int,
    calibration_steps: int,
    rows: tuple[str, ...] = PRESET_ROWS,
    *,
    guidance_scale: float = 7.5,
    unet_calls_per_prompt: int | None = None,
) -> dict[str, Any]:
    """One image (the first prompt, seed 0) per round, every row at sd_ovopt's default precision, the
    call checked against its parts, rows loaded one at a time when they do not fit together; PTQ and the
    peers calibrated on both prompts with the same number of UNet calls."""
    return {
        "variants": rows,
        "prompts": PRESET_PROMPTS[:1],
        "seeds": (0,),
        "steps": steps,
        "rounds": 1,
        "height": size,
        "width": size,
        "calibration_prompts": PRESET_PROMPTS,
        "calibration_steps": calibration_steps,
        "guidance_scale": guidance_scale,
        # SD-1.5's PNDM scheduler makes steps + 1 UNet calls per prompt
        "num_samples": len(PRESET_PROMPTS) * (unet_calls_per_prompt or calibration_steps + 1),
        "precision": "auto",
        "check_extrapolation": True,
        "load": "auto",
        "measure_memory": False,
    }


register_preset(
    Preset(
        "sd15-512",
        "SD-1.5's architecture with random weights (no download), 512x512, 10 steps, every row",
        _sd15,
        "sd15-random-weights",
        _pipeline_settings(512, steps=10, calibration_steps=4),
    )
)
register_preset(
    Preset(
        "sd15-512-deepcache",
        "SD-1.5's architecture with random weights, 512x512, 50 steps: step caching vs uncached and the peers",
        _sd15,
        "sd15-random-weights",
        _pipeline_settings(512, steps=50, calibration_steps=4, rows=CACHING_ROWS),
    )
)
register_preset(
    Preset(
        "tiny-32",
        "the tiny test pipeline, 32x32, 2 steps, every row (a quick run of the same rows)",
        _tiny,
        "tiny-random-weights",
        _pipeline_settings(32, steps=2, calibration_steps=2),
    )
)
register_preset(
    Preset(
        "sd15-512-lcm4",
        "SD-1.5's architecture with an LCM-LoRA-shaped LoRA fused (random weights), LCM scheduler, no "
        "guidance, 512x512, 4 steps: our folders with the full and the tiny decoder vs the peers",
        _sd15_lcm,
        "sd15-lcm-lora-random-weights",
        _pipeline_settings(512, 4, 4, FEW_STEP_ROWS, guidance_scale=1.0, unet_calls_per_prompt=4),
        tiny_vae=taesd,
    )
)
register_preset(
    Preset(
        "tiny-32-lcm4",
        "the tiny test pipeline with an LCM-LoRA-shaped LoRA, no guidance, 32x32, 4 steps, every few-step row",
        _tiny_lcm,
        "tiny-lcm-lora-random-weights",
        _pipeline_settings(32, 4, 4, FEW_STEP_ROWS, guidance_scale=1.0, unet_calls_per_prompt=4),
        tiny_vae=tiny_taesd,
    )
)
