"""``DeepCacheConfig``: which denoising steps run the full UNet, and where the UNet is cut.

DeepCache (Ma et al., CVPR 2024) reuses the deep features of the UNet's up path for several steps: on a
*refresh* step the full UNet runs and the input of one shallow up-path layer (the *cached feature*) is
kept; on the steps in between only the shallow branch runs (the down path to the branch, then the
matching up-path layers), fed with the cached feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sd_ovopt._config import JsonConfig
from sd_ovopt._validation import check_choice, check_int
from sd_ovopt.errors import InvalidConfigError

__all__ = ["SCHEDULES", "DeepCacheConfig", "StepTracker"]

#: ``"uniform"``: refresh every ``interval`` steps (the paper's default). ``"quadratic"``: the same number
#: of refreshes, placed at ``floor(n * (k / m) ** 2)``, so dense early (where the image's layout forms)
#: and sparse late.
SCHEDULES = ("uniform", "quadratic")


@dataclass(frozen=True)
class DeepCacheConfig(JsonConfig):
    """Step caching (DeepCache) settings.

    Attributes:
        interval: Run the full UNet once every ``interval`` steps (1: every step, no caching). The
            paper's SD-1.5 setting is 3 to 5.
        branch: The skip branch the UNet is cut at, as in the ``deepcache`` package: block
            ``branch // (layers_per_block + 1)``, layer ``branch % (layers_per_block + 1)`` of the down path
            (0: the shallowest branch, fastest; SD-1.x has branches 0 to 11).
        schedule: ``"uniform"`` or ``"quadratic"`` (see :data:`SCHEDULES`).
        version: Layout version of this config, for serialized copies.

    Example:
        >>> from sd_ovopt import DeepCacheConfig
        >>> DeepCacheConfig(interval=3).refresh_steps(10)
        (0, 3, 6, 9)
    """

    interval: int = 3
    branch: int = 0
    schedule: str = "uniform"
    version: int = 1

    def __post_init__(self) -> None:
        check_int("DeepCacheConfig.interval", self.interval, minimum=1, maximum=1000)
        check_int("DeepCacheConfig.branch", self.branch, minimum=0)
        check_choice("DeepCacheConfig.schedule", self.schedule, SCHEDULES)
        if self.version != 1:
            raise InvalidConfigError(
                f"DeepCacheConfig.version={self.version!r}; this sd_ovopt reads version 1."
            )

    def refresh_steps(self, num_steps: int) -> tuple[int, ...]:
        """The steps (0-based) of an ``num_steps``-step run that run the full UNet; step 0 always does."""
        check_int("num_steps", num_steps, minimum=1)
        if self.schedule == "uniform":
            return tuple(range(0, num_steps, self.interval))
        refreshes = math.ceil(num_steps / self.interval)
        steps: list[int] = []
        for k in range(refreshes):
            step = math.floor(num_steps * (k / refreshes) ** 2)
            steps.append(max(step, steps[-1] + 1) if steps else 0)
        return tuple(steps)

    def is_refresh(self, step: int, num_steps: int) -> bool:
        """Whether step ``step`` of an ``num_steps``-step run runs the full UNet."""
        if self.schedule == "uniform":
            return step % self.interval == 0
        return step in self.refresh_steps(num_steps)


def _step_index(timestep: Any, timesteps: Any) -> int | None:
    """Position of ``timestep`` in the scheduler's ``timesteps`` (the first, as ``deepcache`` does)."""

    if timesteps is None:
        return None
    values = torch.as_tensor(timesteps).reshape(-1)
    t = torch.as_tensor(timestep).reshape(-1)[:1].to(values.dtype)
    if values.numel() == 0 or t.numel() == 0:
        return None
    hits = (values == t).nonzero()
    return int(hits[0, 0]) if hits.numel() else None


class StepTracker:
    """Follows one denoising run call by call and says which calls refresh the cache.

    A call's step is the position of its timestep in the scheduler's ``timesteps`` (what the
    ``deepcache`` package does); a step lower than the previous one starts a new run, whose first call
    always refreshes. A timestep that is not in ``timesteps`` (a direct UNet call) runs the full UNet.
    The PyTorch patch and the OpenVINO pipeline share this class, so both take the same path.
    """

    def __init__(self, config: DeepCacheConfig) -> None:
        self.config = config
        self.start: int | None = None
        self.last: int | None = None

    def reset(self) -> None:
        self.start = self.last = None

    def refresh(self, timestep: Any, timesteps: Any) -> bool:
        """Whether the call at ``timestep`` runs the full UNet; advances the run."""
        index = _step_index(timestep, timesteps)
        if index is None:
            self.reset()
            return True
        if self.last is None or index < self.last:
            self.start = index
        self.last = index
        assert self.start is not None
        return self.config.is_refresh(index - self.start, len(timesteps) - self.start)
