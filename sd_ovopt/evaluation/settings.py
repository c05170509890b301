"""What one benchmark run compares and how: :class:`BenchmarkSettings` (frozen, validated)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sd_ovopt._precision import PRECISIONS, resolve_precision
from sd_ovopt._validation import check_float, check_int
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.evaluation.variants import BuildSettings
from sd_ovopt.recipes import DEFAULT_CALIBRATION_PROMPTS as _RECIPE_PROMPTS
from sd_ovopt.tome.config import ToMeConfig

__all__ = ["DEFAULT_CALIBRATION_PROMPTS", "DEFAULT_PROMPTS", "LOAD_MODES", "BenchmarkSettings"]

DEFAULT_PROMPTS: tuple[str, ...] = (
    "a red circle on a blue background",
    "a photo of an astronaut riding a horse",
)
#: Calibration prompts (the recipe's default set) differ from the evaluation prompts, so PTQ is not scored
#: on what it saw.
DEFAULT_CALIBRATION_PROMPTS: tuple[str, ...] = _RECIPE_PROMPTS
#: How the timing loads the variants: all at once, one at a time in each round, or ``"auto"``: one at a
#: time when their estimated resident size exceeds ``memory_budget_gib``.
LOAD_MODES = ("auto", "all", "one")


@dataclass(frozen=True)
class BenchmarkSettings:
    """What one benchmark run compares and how (frozen, validated; ``run_benchmark`` takes it).

    Attributes:
        variants: Names from :data:`sd_ovopt.evaluation.VARIANTS` (default: all but ``ov-int8-qat``,
            which joins when ``qat_model`` is given).
        prompts: Evaluation prompts; every prompt runs with every seed.
        seeds: Seeds of the initial noise (a CPU ``torch.Generator``).
        steps: Denoising steps per image.
        rounds: Timed rounds (each runs every (prompt, seed) pair and one UNet step per variant).
        guidance_scale: Classifier-free guidance (> 1 doubles the UNet batch).
        height: Image height (default: the model's native size).
        width: Image width (default: the model's native size).
        tome_ratio: ToMe ratio of ``ov-tome-int8``.
        tiny_vae: Folder of a tiny autoencoder (``AutoencoderTiny``, TAESD) for the ``-taesd`` variants,
            which export it instead of the model's VAE.
        qat_model: A folder exported from a quantization-aware-trained UNet (``ov-int8-qat``).
        calibration_prompts: PTQ calibration prompts (ours and the peers').
        num_samples: UNet calls recorded for calibration (ours and the peers').
        calibration_steps: Steps per calibration prompt (default: ``steps``).
        precision: OpenVINO precision of the INT8 variants and the peers (``"f32"``: the non-quantized ops
            match PyTorch; ``"default"``: the CPU's choice, bf16 where supported).
        unet_only: Time UNet steps only: no pipeline calls, images, fidelity or grid.
        unet_error_samples: With ``pytorch-fp32`` among the variants, compare every variant's UNet with
            it on this many inputs recorded along its sampling of the first prompts (0: not measured;
            each costs PyTorch UNet calls, so keep it 0 for full-size models on small machines).
        measure_memory: Measure peak memory (one extra process per variant).
        check_extrapolation: Also time each variant's text encoder and VAE decoder and every UNet IR, so
            that the measured pipeline call is compared with the sum of its parts (and a 50-step call
            extrapolated from them).
        load: ``"all"`` (every variant loaded at once), ``"one"`` (one at a time in each round: load,
            warm up, time, release) or ``"auto"``: ``"one"`` when the variants' estimated resident size
            exceeds ``memory_budget_gib``.
        memory_budget_gib: The resident size ``load="auto"`` allows for all variants at once.
        rebuild: Build every model again even if an equal build exists.
        show_progress: Show progress bars.

    Example:
        >>> BenchmarkSettings(steps=2, precision="f32").steps
        2
    """

    variants: tuple[str, ...] | None = None
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0,)
    steps: int = 20
    rounds: int = 3
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    tome_ratio: float = 0.4
    tiny_vae: str | Path | None = None
    qat_model: str | Path | None = None
    calibration_prompts: tuple[str, ...] = DEFAULT_CALIBRATION_PROMPTS
    num_samples: int = 200
    calibration_steps: int | None = None
    precision: str = "f32"
    unet_only: bool = False
    unet_error_samples: int = 0
    measure_memory: bool = True
    check_extrapolation: bool = False
    load: str = "all"
    memory_budget_gib: float = 20.0
    rebuild: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in ("prompts", "calibration_prompts"):
            value = getattr(self, name)
            if isinstance(value, str) or not value or not all(isinstance(p, str) and p for p in value):
                raise InvalidConfigError(f"{name}={value!r}; pass a non-empty list of non-empty strings.")
            object.__setattr__(self, name, tuple(value))
        seeds = self.seeds
        if isinstance(seeds, int) or not seeds or not all(isinstance(v, int) and v >= 0 for v in seeds):
            raise InvalidConfigError(f"seeds={seeds!r}; pass a non-empty list of integers >= 0.")
        object.__setattr__(self, "seeds", tuple(seeds))
        if self.variants is not None and not isinstance(self.variants, str):
            object.__setattr__(self, "variants", tuple(self.variants))
        for name in ("steps", "rounds", "num_samples"):
            check_int(name, getattr(self, name), minimum=1)
        if self.calibration_steps is not None:
            check_int("calibration_steps", self.calibration_steps, minimum=1)
        check_int("unet_error_samples", self.unet_error_samples, minimum=0)
        if self.precision not in PRECISIONS:
            raise InvalidConfigError(f"precision={self.precision!r}; use one of {PRECISIONS}.")
        # "auto" (sd_ovopt's default) resolves here, so our variants and the peers get the same hint
        object.__setattr__(self, "precision", resolve_precision(self.precision))
        ToMeConfig(ratio=self.tome_ratio)  # raises for a ratio out of range
        if self.load not in LOAD_MODES:
            raise InvalidConfigError(f"load={self.load!r}; use one of {LOAD_MODES}.")
        check_float("memory_budget_gib", self.memory_budget_gib, minimum=0)

    def build_settings(self, height: int, width: int) -> BuildSettings:
        """What the built variants depend on, at the benchmark's image size."""
        return BuildSettings(
            height=height,
            width=width,
            guidance_scale=float(self.guidance_scale),
            tome_ratio=float(self.tome_ratio),
            calibration_prompts=self.calibration_prompts,
            num_samples=self.num_samples,
            calibration_steps=self.steps if self.calibration_steps is None else self.calibration_steps,
            precision=self.precision,
            tiny_vae=None if self.tiny_vae is None else str(Path(self.tiny_vae).expanduser().resolve()),
        )
