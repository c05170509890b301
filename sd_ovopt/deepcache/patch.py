"""Apply and remove step caching (DeepCache) on a diffusers UNet.

What is added, and why it is more than hooks: PyTorch hooks can change a module's inputs and outputs but
cannot skip its computation, and skipping is the point. So the modules that a cached step leaves out get
a stand-in ``forward`` in their instance ``__dict__`` (as accelerate's ``add_hook_to_module`` does; NNCF
wraps the UNet's own ``forward`` the same way): it calls the class's ``forward`` on refresh steps and
keeps the output, and on cached steps returns the kept output without computing. Nothing of diffusers
is copied. The stand-ins are ``functools.partial`` objects of a module-level function, so a
``copy.deepcopy`` of the UNet (NNCF, EMA) copies a working patch bound to the copy.

Besides, a forward pre-hook on ``time_proj`` (the first module of every UNet call) decides the call's
mode, and a forward pre-hook on the UNet takes the cached feature when a caller passes it
(``sd_ovopt_deepcache_feature=``: calibration and the shallow IR's trace). ``remove_deepcache`` removes
exactly what was added and restores outputs bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sd_ovopt._loading import find_unet
from sd_ovopt.deepcache.config import DeepCacheConfig, StepTracker
from sd_ovopt.errors import AlreadyAppliedError, InvalidConfigError, UnsupportedModelError

__all__ = [
    "FEATURE_KWARG",
    "SkipPlan",
    "apply_deepcache",
    "get_deepcache_config",
    "is_deepcache_applied",
    "plan_skips",
    "remove_deepcache",
]

#: Keyword argument of a UNet call that carries the cached feature (the call then runs the shallow branch).
FEATURE_KWARG = "sd_ovopt_deepcache_feature"
_STATE = "_sd_ovopt_deepcache"


@dataclass(frozen=True)
class SkipPlan:
    """Where the UNet is cut: the modules a cached step leaves out, and the one whose output is cached.

    Attributes:
        skipped: Qualified names of the modules not run on cached steps, in call order.
        feature: The skipped module whose output is the cached feature (the hidden state entering the
            first up-path layer that still runs).
        block: Down block of the branch.
        layer: Layer of the branch within that block.
    """

    skipped: tuple[str, ...]
    feature: str
    block: int
    layer: int


def plan_skips(unet: nn.Module, branch: int) -> SkipPlan:
    """The modules skipped at ``branch`` (DeepCache's numbering: ``block * (layers_per_block + 1) + layer``).

    On a cached step the UNet runs its time embedding, ``conv_in``, the down path before the branch
    (blocks before ``block``, and layers ``< layer`` of that block), the up-path layers paired with them
    (layers ``<= layer``, counted from the end, of the matching up block, and every later up block) and
    the output layers; the rest is skipped.
    """
    downs, ups = list(unet.down_blocks), list(unet.up_blocks)
    stride = len(ups[-1].resnets)
    if any(len(up.resnets) != stride for up in ups):
        raise UnsupportedModelError(
            "DeepCache needs up blocks of equal depth (diffusers' layers_per_block as one integer)."
        )
    block, layer = divmod(branch, stride)
    if block >= len(downs) or layer > len(downs[block].resnets):
        raise InvalidConfigError(
            f"DeepCacheConfig.branch={branch}; this UNet has branches 0 to {len(downs) * stride - 1} "
            f"({len(downs)} blocks of {stride} layers). 0 is the shallowest and fastest."
        )
    skipped: list[str] = []
    for i, down in enumerate(downs):
        if i > block or (i == block and layer == 0):
            skipped.append(f"down_blocks.{i}")
        elif i == block:
            n = len(down.resnets)
            for j in range(layer, n):
                skipped.append(f"down_blocks.{i}.resnets.{j}")
                if getattr(down, "attentions", None):
                    skipped.append(f"down_blocks.{i}.attentions.{j}")
            skipped.extend(f"down_blocks.{i}.downsamplers.{k}" for k in range(len(down.downsamplers or [])))
    skipped.append("mid_block")
    up_index = len(ups) - 1 - block  # the up block paired with down block `block`
    skipped.extend(f"up_blocks.{i}" for i in range(up_index))
    first = stride - 1 - layer  # the first layer of that up block that still runs
    has_attention = bool(getattr(ups[up_index], "attentions", None))
    for j in range(first):
        skipped.append(f"up_blocks.{up_index}.resnets.{j}")
        if has_attention:
            skipped.append(f"up_blocks.{up_index}.attentions.{j}")
    if first > 0:
        feature = f"up_blocks.{up_index}.{'attentions' if has_attention else 'resnets'}.{first - 1}"
    else:
        feature = f"up_blocks.{up_index - 1}" if up_index > 0 else "mid_block"
    return SkipPlan(tuple(skipped), feature, block, layer)


class _State:
    """Per-UNet state: the plan, the kept outputs, and the mode of the current call."""

    def __init__(self, config: DeepCacheConfig, plan: SkipPlan, pipeline: Any = None) -> None:
        self.config = config
        self.plan = plan
        self.tracker = StepTracker(config)
        self.pipeline = None if pipeline is None else weakref.ref(pipeline)
        self.cache: dict[str, Any] = {}
        self.feature: torch.Tensor | None = None  # the cached feature of the last refresh
        self.given: torch.Tensor | None = None  # a feature passed in with the current call
        self.forced: str | None = None  # "full" while the full IR is traced
        self.shallow = False  # the mode of the current call
        self.replay: dict[int, torch.Tensor] = {}  # id(sample) -> feature of recorded cached steps
        self.replay_hits = 0
        self.handles: list[Any] = []  # of the hooks registered by ``attach`` (copied with a deepcopy)
        # Skip the left-out modules (True), or run them and only substitute the cached feature (False):
        # NNCF names a quantized UNet's ops by call order, so there every op must still run (the results
        # are the same; in an exported IR the unused ops are removed).
        self.skip_compute = True

    def __deepcopy__(self, memo: dict) -> _State:
        # The copy follows the copied pipeline when the pipeline itself is being copied (it is then in
        # ``memo``); a UNet copied alone follows none (full UNet unless given the feature) until
        # ``apply_deepcache`` puts it in a pipeline.
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        pipe = None if self.pipeline is None else self.pipeline()
        for key, value in self.__dict__.items():
            if key != "pipeline":
                clone.__dict__[key] = copy.deepcopy(value, memo)
        new_pipe = None if pipe is None else memo.get(id(pipe))
        clone.pipeline = None if new_pipe is None else weakref.ref(new_pipe)
        return clone

    def resolve(self, timestep: torch.Tensor) -> None:
        """Decide whether the current call runs the shallow branch."""
        given, self.given = self.given, None
        if self.forced == "full":
            self.shallow = False
        elif given is not None:
            self.shallow, self.feature = True, given
        else:
            pipe = None if self.pipeline is None else self.pipeline()
            scheduler = getattr(pipe, "scheduler", None)
            refresh = self.tracker.refresh(timestep, getattr(scheduler, "timesteps", None))
            self.shallow = not refresh and self.feature is not None


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_first(output: Any, tensor: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    return tensor


def _skippable_forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    state, name = module.__dict__[_STATE]
    if state.shallow and state.skip_compute and name in state.cache:
        kept = state.cache[name]
        return _with_first(kept, state.feature) if name == state.plan.feature else kept
    output = type(module).forward(module, *args, **kwargs)
    if state.shallow:  # computed anyway: only the cached feature replaces what it computed
        return _with_first(output, state.feature) if name == state.plan.feature else output
    state.cache[name] = output
    if name == state.plan.feature:
        state.feature = _first(output)
    return output


# -- hooks (module-level functions: they survive deepcopy) --------------------------------------------
def _take_feature(unet: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    state = unet.__dict__[_STATE]
    state.skip_compute = "forward" not in unet.__dict__  # no wrapper (NNCF) around the UNet's forward
    if FEATURE_KWARG not in kwargs:
        if state.replay:  # calibration: a recorded cached step is known by its sample tensor
            sample = args[0] if args else kwargs.get("sample")
            state.given = state.replay.get(id(sample))
            state.replay_hits += state.given is not None
        return None
    kwargs = dict(kwargs)
    state.given = kwargs.pop(FEATURE_KWARG)
    return args, kwargs


def _resolve_mode(time_proj: nn.Module, args: tuple, kwargs: dict) -> None:
    timesteps = args[0] if args else next(iter(kwargs.values()))
    time_proj.__dict__[_STATE].resolve(timesteps.reshape(-1)[:1])


# -- public API --------------------------------------------------------------------------------------
def _find_unet(target: Any) -> nn.Module:
    return find_unet(
        target,
        user="DeepCache",
        hint=" (An OpenVINO pipeline's UNet is compiled: export with "
        "export_pipeline(..., methods=[DeepCacheConfig(...)]) instead.)",
    )


def _replaced_forward(module: nn.Module) -> bool:
    """Whether ``module`` has a ``forward`` of its own (a bound copy of its class's forward does not count)."""
    forward = module.__dict__.get("forward")
    if forward is None:
        return False
    return getattr(forward, "__func__", None) is not type(module).forward or forward.__self__ is not module


def attach(unet: nn.Module, config: DeepCacheConfig, pipeline: Any = None) -> nn.Module:
    """Add the patch to ``unet``; without ``pipeline`` every call runs the full UNet unless it passes
    the cached feature (``FEATURE_KWARG``): the mode export and quantization use."""
    plan = plan_skips(unet, config.branch)
    modules = dict(unet.named_modules())
    for name in plan.skipped:
        if _replaced_forward(modules[name]):
            raise UnsupportedModelError(
                f"{name} already has a replaced forward (another patch or an offloading hook); "
                "remove it before applying DeepCache."
            )
    state = _State(config, plan, pipeline)
    setattr(unet, _STATE, state)
    object.__setattr__(unet.time_proj, _STATE, state)
    state.handles = [
        unet.register_forward_pre_hook(_take_feature, with_kwargs=True),
        unet.time_proj.register_forward_pre_hook(_resolve_mode, with_kwargs=True),
    ]
    for name in plan.skipped:
        module = modules[name]
        object.__setattr__(module, _STATE, (state, name))
        module.__dict__["forward"] = functools.partial(_skippable_forward, module)
    return unet


def state_of(unet: nn.Module) -> _State | None:
    """The patch's state on ``unet``, or ``None`` (for export and calibration)."""
    return getattr(unet, _STATE, None)


def is_deepcache_applied(target: Any) -> bool:
    """Whether DeepCache is applied to the UNet of ``target`` (a UNet or a pipeline holding one)."""
    return state_of(_find_unet(target)) is not None


def get_deepcache_config(target: Any) -> DeepCacheConfig | None:
    """The DeepCache config applied to ``target``'s UNet, or ``None``."""
    state = state_of(_find_unet(target))
    return None if state is None else state.config


def apply_deepcache(pipeline: Any, config: DeepCacheConfig, *, replace: bool = False) -> Any:
    """Apply step caching to a diffusers Stable Diffusion pipeline's UNet, in place; return ``pipeline``.

    Each UNet call finds its step from the timestep's position in ``pipeline.scheduler.timesteps``: refresh
    steps (``config.is_refresh``) run the full UNet and keep the cached feature, the others run only the
    shallow branch. Applying the same config again does nothing; another config raises
    :class:`~sd_ovopt.errors.AlreadyAppliedError` unless ``replace=True``.

    Example:
        >>> from sd_ovopt import DeepCacheConfig, apply_deepcache, remove_deepcache
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> pipe = apply_deepcache(tiny_pipeline(), DeepCacheConfig(interval=3))
        >>> image = pipe("a red circle", num_inference_steps=6).images[0]
        >>> pipe = remove_deepcache(pipe)
    """
    if not isinstance(config, DeepCacheConfig):
        raise UnsupportedModelError(f"config must be a DeepCacheConfig, got {type(config).__name__}.")
    if not hasattr(pipeline, "scheduler") or not hasattr(pipeline, "unet"):
        raise UnsupportedModelError(
            f"apply_deepcache needs a diffusers pipeline (with .unet and .scheduler), got "
            f"{type(pipeline).__name__}: the cache follows the pipeline's denoising steps."
        )
    unet = _find_unet(pipeline)
    current = state_of(unet)
    if current is not None:
        if current.config == config and current.pipeline is not None and current.pipeline() is pipeline:
            return pipeline
        if current.config != config and not replace:
            raise AlreadyAppliedError(
                f"DeepCache is already applied with {current.config}; pass replace=True to switch to "
                f"{config}, or call remove_deepcache first."
            )
        remove_deepcache(unet)
    attach(unet, config, pipeline)
    return pipeline


def remove_deepcache(target: Any) -> Any:
    """Remove step caching from ``target``'s UNet (no-op if not applied); return ``target``."""
    unet = _find_unet(target)
    state = state_of(unet)
    for handle in state.handles if state is not None else ():
        handle.remove()
    for module in unet.modules():
        if _STATE not in module.__dict__:
            continue
        del module.__dict__[_STATE]
        if isinstance(module.__dict__.get("forward"), functools.partial):
            del module.__dict__["forward"]
    return target


@contextlib.contextmanager
def full_mode(unet: nn.Module) -> Iterator[Any]:
    """Every call inside runs the full UNet and keeps its feature (``state.feature``); yields the state."""
    state = state_of(unet)
    if state is None:
        raise UnsupportedModelError("DeepCache is not applied to this UNet.")
    state.forced = "full"
    try:
        yield state
    finally:
        state.forced = None
