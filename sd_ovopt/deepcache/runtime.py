"""Step caching at run time in OpenVINO: the full IR on refresh steps, the shallow IR in between.

:class:`CachedOVUNet` stands in for an optimum-intel pipeline's UNet for the duration of one call, so the
denoising loop stays diffusers' own; each call decides its step with the same
:class:`~sd_ovopt.deepcache.config.StepTracker` as the PyTorch patch, so both take the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sd_ovopt.deepcache.config import DeepCacheConfig, StepTracker
from sd_ovopt.deepcache.export import FEATURE_NAME

__all__ = ["CachedOVUNet"]


class CachedOVUNet:
    """An optimum-intel UNet part that runs ``full`` (which also returns the cached feature) on refresh
    steps and ``shallow`` (which takes it) on the others; other attributes are the full part's.

    Attributes:
        steps: ``"full"`` or ``"shallow"`` for every call so far, in order.
    """

    def __init__(
        self, full: Any, shallow: Any, config: DeepCacheConfig, scheduler: Callable[[], Any]
    ) -> None:
        self._full = full
        self._shallow = shallow
        self._scheduler = scheduler
        self._tracker = StepTracker(config)
        self._feature: Any = None
        self.steps: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._full, name)

    def __call__(self, sample: Any, timestep: Any, encoder_hidden_states: Any, **kwargs: Any) -> Any:
        return_dict = kwargs.pop("return_dict", False)
        timesteps = getattr(self._scheduler(), "timesteps", None)
        if self._tracker.refresh(timestep, timesteps) or self._feature is None:
            out = self._full(sample, timestep, encoder_hidden_states, return_dict=True, **kwargs)
            self._feature = out[FEATURE_NAME]
            self.steps.append("full")
        else:
            added = {**(kwargs.pop("added_cond_kwargs", None) or {}), FEATURE_NAME: self._feature}
            out = self._shallow(
                sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=True, **kwargs
            )
            self.steps.append("shallow")
        noise = out["out_sample"]
        return {"out_sample": noise} if return_dict else (noise,)
