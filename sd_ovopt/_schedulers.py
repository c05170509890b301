"""Schedulers by name, for the CLI and the export: the few-step samplers (LCM, TCD) and the common ones,
each made from the pipeline's own scheduler config (its training betas and timesteps)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from sd_ovopt.errors import InvalidConfigError

__all__ = ["SCHEDULERS", "check_scheduler_name", "pipeline_scheduler"]

#: Scheduler names -> diffusers classes. ``lcm`` is what LCM-distilled models and LCM-LoRA sample with,
#: ``tcd`` what TCD and Hyper-SD LoRAs sample with; the others are the common many-step samplers.
SCHEDULERS = MappingProxyType(
    {
        "lcm": "LCMScheduler",
        "tcd": "TCDScheduler",
        "ddim": "DDIMScheduler",
        "pndm": "PNDMScheduler",
        "euler": "EulerDiscreteScheduler",
        "euler-a": "EulerAncestralDiscreteScheduler",
        "dpm++": "DPMSolverMultistepScheduler",
    }
)

#: Settings a name fixes whatever the config it is made from says: PNDM as Stable Diffusion ships it
#: (PLMS steps only; its Runge-Kutta warm-up cannot run a handful of steps).
_FIXED = MappingProxyType({"pndm": {"skip_prk_steps": True}})


def check_scheduler_name(scheduler: Any) -> None:
    """Refuse a string that is not a name of :data:`SCHEDULERS` (before any model loads)."""
    if isinstance(scheduler, str) and scheduler not in SCHEDULERS:
        raise InvalidConfigError(
            f"scheduler={scheduler!r} is not a scheduler name; use one of {sorted(SCHEDULERS)} or pass a "
            "diffusers scheduler."
        )


def pipeline_scheduler(scheduler: Any, pipe: Any) -> Any:
    """The scheduler to use for ``pipe``: ``scheduler`` itself (a diffusers scheduler), the one a name of
    :data:`SCHEDULERS` stands for made from ``pipe.scheduler``'s config, or ``pipe.scheduler`` for ``None``."""
    import diffusers  # the CLI imports this module for the names: diffusers loads on use

    if scheduler is None:
        return pipe.scheduler
    if isinstance(scheduler, str):
        check_scheduler_name(scheduler)
        fixed = _FIXED.get(scheduler, {})
        return getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config, **fixed)
    if not isinstance(scheduler, diffusers.SchedulerMixin):
        raise InvalidConfigError(
            f"scheduler must be a diffusers scheduler or one of {sorted(SCHEDULERS)}, got "
            f"{type(scheduler).__name__}."
        )
    return scheduler
