"""Apply and remove token merging on a diffusers UNet, with module hooks only.

Nothing of diffusers is copied or subclassed. ``apply_tome`` adds:

* a forward pre-hook on the UNet's ``conv_in`` that records the latent size of each call (``conv_in``
  rather than the UNet itself, because wrappers such as NNCF call ``unet.forward`` directly);
* to each ``BasicTransformerBlock`` a ``sd_ovopt_tome`` submodule (no parameters) and a pre-hook that
  plans the merge from the block input, as tomesd does;
* pre/post hooks on the block's ``attn1`` (and ``attn2``/``ff`` when asked) that merge their input and
  unmerge their output.

All ToMe ops run inside ``sd_ovopt_tome`` submodules, so quantization can find and skip them
(:data:`TOME_SCOPE_PATTERN`). Hooks are module-level functions that find their state through the module
they are called on, so a ``copy.deepcopy`` (NNCF, EMA, teachers) copies a working patch.
``remove_tome`` removes exactly what was added and restores outputs bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from sd_ovopt._loading import find_unet
from sd_ovopt.errors import AlreadyAppliedError, UnsupportedModelError
from sd_ovopt.tome import merge as tome_ops
from sd_ovopt.tome.config import ToMeConfig

__all__ = ["TOME_SCOPE_PATTERN", "apply_tome", "get_tome_config", "is_tome_applied", "remove_tome"]

#: Regular expression matching the names of every op ToMe adds (for NNCF's ``IgnoredScope(patterns=...)``).
TOME_SCOPE_PATTERN = r".*sd_ovopt_tome.*"

_STATE = "_sd_ovopt_tome"  # on the UNet: _UNetState; on attn1/attn2/ff: the block's TokenMerging module
_SUBMODULE = "sd_ovopt_tome"


class _UNetState:
    """Per-UNet state: the config and the latent size of the current call."""

    def __init__(self, config: ToMeConfig) -> None:
        self.config = config
        self.latent_hw: tuple[int, int] | None = None
        # The handles of every hook the patch registered (a deepcopy of the UNet copies them along with
        # the hook dictionaries they point into, so a copy removes its own hooks).
        self.handles: list[Any] = []


class _Op(nn.Module):
    """Runs one pure function of :mod:`sd_ovopt.tome.merge` under a module scope of its own."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


class TokenMerging(nn.Module):
    """The ToMe state of one transformer block: plans a merge from the block input, merges, unmerges."""

    def __init__(self, unet_state: _UNetState) -> None:
        super().__init__()
        self.unet_state = unet_state
        self.plan_op = _Op(tome_ops.plan_merge)
        self.merge_op = _Op(tome_ops.merge)
        self.unmerge_op = _Op(tome_ops.unmerge)
        self.downsample_op = _Op(tome_ops.downsample_tokens)
        self.plan: tome_ops.MergePlan | tome_ops.DownsamplePlan | None = None

    def _partition(self, h: Any, w: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Rebuilt on every call (integer ops on the grid size) rather than cached: a tracer then records
        # them as functions of the run-time size, so the exported IR merges at any resolution.
        cfg = self.unet_state.config
        src, dst = tome_ops.partition_2d(h, w, cfg.sx, cfg.sy, cfg.seed)
        return src.to(device), dst.to(device)

    def forward(self, hidden_states: torch.Tensor) -> None:
        """Plan the merge for this block input (or none, if the block is downsampled too much)."""
        self.plan = None
        cfg = self.unet_state.config
        if self.unet_state.latent_hw is None or hidden_states.ndim != 3:
            return
        num_tokens = hidden_states.shape[1]
        grid = tome_ops.active_grid(self.unet_state.latent_hw, num_tokens, cfg.max_downsample)
        if grid is None:
            return
        if cfg.method == "downsample":
            if grid[0] * grid[1] == num_tokens:
                self.plan = tome_ops.DownsamplePlan(grid[0], grid[1], cfg.downsample_factor)
            return
        src, dst = self._partition(*grid, hidden_states.device)
        r = tome_ops.num_merged(num_tokens, cfg.ratio)
        if int(r) > 0:  # zero only for grids of a few tokens, whatever the image size
            self.plan = self.plan_op(hidden_states, src, dst, r)

    def __deepcopy__(self, memo: dict) -> TokenMerging:
        # The plan lives only during a forward: it is not copied.
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = None if key == "plan" else copy.deepcopy(value, memo)
        return clone


# -- hooks (module-level functions: they survive deepcopy) --------------------------------------------
def _record_latent_size(conv_in: nn.Module, args: tuple, kwargs: dict) -> None:
    sample = args[0] if args else kwargs["input"]
    # kept as they come: ints when eager, the run-time size while tracing
    conv_in.__dict__[_STATE].latent_hw = (sample.shape[-2], sample.shape[-1])


def _plan_block(block: nn.Module, args: tuple, kwargs: dict) -> None:
    hidden_states = args[0] if args else kwargs["hidden_states"]
    getattr(block, _SUBMODULE)(hidden_states)


def _clear_block(block: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    getattr(block, _SUBMODULE).plan = None


def _merge_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    tome = module.__dict__[_STATE]
    if tome.plan is None:
        return None
    if isinstance(tome.plan, tome_ops.DownsamplePlan):  # keys and values from the strided grid
        hidden_states = args[0] if args else kwargs["hidden_states"]
        return args, {**kwargs, "encoder_hidden_states": tome.downsample_op(hidden_states, tome.plan)}
    if args:
        return (tome.merge_op(args[0], tome.plan), *args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = tome.merge_op(kwargs["hidden_states"], tome.plan)
    return args, kwargs


def _unmerge_output(
    module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor
) -> torch.Tensor | None:
    tome = module.__dict__[_STATE]
    if not isinstance(tome.plan, tome_ops.MergePlan):
        return None
    return tome.unmerge_op(output, tome.plan)


# -- public API --------------------------------------------------------------------------------------
def _find_unet(target: Any) -> nn.Module:
    return find_unet(
        target,
        user="ToMe",
        hint=" (An OpenVINO pipeline's UNet is compiled: apply ToMe before export, "
        "with export_pipeline(..., methods=[ToMeConfig(...)]).)",
    )


def _blocks(unet: nn.Module) -> list[nn.Module]:
    from diffusers.models.attention import BasicTransformerBlock  # on use: `sd-ovopt --help` imports ToMe

    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


def _wrapped_layers(block: nn.Module, config: ToMeConfig) -> list[nn.Module]:
    layers = []
    if config.merge_attn:
        layers.append(block.attn1)
    if config.merge_crossattn and block.attn2 is not None:
        layers.append(block.attn2)
    if config.merge_mlp:
        if getattr(block, "_chunk_size", None) is not None:
            raise UnsupportedModelError(
                "ToMe with merge_mlp=True cannot wrap a chunked feed-forward; turn chunking off "
                "(block.set_chunk_feed_forward(None)) first, or set merge_mlp=False."
            )
        layers.append(block.ff)
    return layers


def is_tome_applied(target: Any) -> bool:
    """Whether ToMe is applied to the UNet of ``target`` (a UNet or a pipeline holding one)."""
    return hasattr(_find_unet(target), _STATE)


def get_tome_config(target: Any) -> ToMeConfig | None:
    """The ToMe config applied to ``target``'s UNet, or ``None``."""
    state = getattr(_find_unet(target), _STATE, None)
    return None if state is None else state.config


def apply_tome(target: Any, config: ToMeConfig, *, replace: bool = False) -> Any:
    """Apply token merging to a diffusers UNet (or a pipeline's ``.unet``), in place; return ``target``.

    Applying the same config again does nothing; a different config raises
    :class:`~sd_ovopt.errors.AlreadyAppliedError` unless ``replace=True``.

    Example:
        >>> from sd_ovopt import ToMeConfig, apply_tome, remove_tome
        >>> from sd_ovopt.testing import tiny_pipeline
        >>> pipe = apply_tome(tiny_pipeline(), ToMeConfig(ratio=0.5))
        >>> pipe = remove_tome(pipe)
    """
    if not isinstance(config, ToMeConfig):
        raise UnsupportedModelError(f"config must be a ToMeConfig, got {type(config).__name__}.")
    unet = _find_unet(target)
    current = getattr(unet, _STATE, None)
    if current is not None:
        if current.config == config:
            return target
        if not replace:
            raise AlreadyAppliedError(
                f"ToMe is already applied with {current.config}; pass replace=True to switch to {config}, "
                "or call remove_tome first."
            )
        remove_tome(unet)
    blocks = _blocks(unet)
    if not blocks:
        raise UnsupportedModelError("this UNet has no BasicTransformerBlock, so ToMe has nothing to merge.")
    layer_lists = [_wrapped_layers(block, config) for block in blocks]  # validate before changing anything
    state = _UNetState(config)
    setattr(unet, _STATE, state)
    object.__setattr__(unet.conv_in, _STATE, state)
    hooks = state.handles
    hooks.append(unet.conv_in.register_forward_pre_hook(_record_latent_size, with_kwargs=True))
    for block, layers in zip(blocks, layer_lists, strict=True):
        tome = TokenMerging(state)
        block.add_module(_SUBMODULE, tome)
        hooks.append(block.register_forward_pre_hook(_plan_block, with_kwargs=True))
        hooks.append(block.register_forward_hook(_clear_block, with_kwargs=True))
        for layer in layers:
            object.__setattr__(layer, _STATE, tome)  # a reference, not a registered submodule
            hooks.append(layer.register_forward_pre_hook(_merge_input, with_kwargs=True))
            hooks.append(layer.register_forward_hook(_unmerge_output, with_kwargs=True))
    return target


def remove_tome(target: Any) -> Any:
    """Remove token merging from ``target``'s UNet (no-op if not applied); return ``target``."""
    unet = _find_unet(target)
    state = getattr(unet, _STATE, None)
    for handle in state.handles if state is not None else ():
        handle.remove()
    for module in list(unet.modules()):
        if _STATE in module.__dict__:
            del module.__dict__[_STATE]
        if _SUBMODULE in module._modules:
            del module._modules[_SUBMODULE]
    return target
