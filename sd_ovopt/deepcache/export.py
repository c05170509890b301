"""The two static UNet IRs of step caching: the full UNet that also returns the cached feature, and the
shallow UNet that takes it.

The full IR keeps optimum-intel's signature (``sample``, ``timestep``, ``encoder_hidden_states`` →
``out_sample`` first), with :data:`FEATURE_NAME` as a second output, so plain optimum-intel loads the folder
and runs it at every step. The shallow IR adds :data:`FEATURE_NAME` as a fourth input. Both are traced with
the same patch (:mod:`sd_ovopt.deepcache.patch`): on the shallow trace the skipped modules are not run, so
they are not in the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sd_ovopt._convert import (
    UNetForExport,
    any_shape_dims,
    convert_module,
    unet_example_inputs,
    unet_input_spec,
)
from sd_ovopt.deepcache.config import DeepCacheConfig
from sd_ovopt.deepcache.patch import FEATURE_KWARG, attach, full_mode, remove_deepcache, state_of
from sd_ovopt.errors import AlreadyAppliedError

if TYPE_CHECKING:
    import openvino as ov

__all__ = ["FEATURE_NAME", "SHALLOW_PART", "convert_deepcache_unets", "feature_shape"]

#: Name of the cached feature: the full IR's second output and the shallow IR's fourth input.
FEATURE_NAME = "deepcache_feature"
#: Folder of the shallow IR in an exported pipeline (beside ``unet/``, which holds the full IR).
SHALLOW_PART = "unet_shallow"


class _FullForExport(UNetForExport):
    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(sample, timestep, encoder_hidden_states)
        return out, state_of(self.unet).feature  # type: ignore[union-attr]


class _ShallowForExport(UNetForExport):
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        deepcache_feature: torch.Tensor,
    ) -> torch.Tensor:
        kwargs = {FEATURE_KWARG: deepcache_feature, "return_dict": False}
        return self.unet(sample, timestep, encoder_hidden_states, **kwargs)[0]


def feature_shape(unet: nn.Module, example: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Run the full UNet once on ``example`` (the patch applied) and return the cached feature's shape."""
    with torch.no_grad(), full_mode(unet) as state:
        unet(**example, return_dict=False)
        return tuple(state.feature.shape)


def convert_deepcache_unets(
    unet: nn.Module,
    config: DeepCacheConfig,
    *,
    batch: int,
    latent_height: int,
    latent_width: int,
    text_length: int,
    any_shape: bool = False,
) -> tuple[ov.Model, ov.Model, tuple[int, ...]]:
    """Trace the full (feature-returning) and the shallow UNet IRs at a shape (static, or an example of
    any batch and latent size with ``any_shape``).

    The patch is added for the conversion and removed again unless ``unet`` already has it with ``config``
    (a quantized UNet carries it from calibration).

    Returns:
        ``(full, shallow, feature_shape)``.
    """
    import openvino as ov  # on use: the method registry (so `sd-ovopt --help`) imports this module

    current = state_of(unet)
    if current is not None and current.config != config:
        raise AlreadyAppliedError(
            f"the UNet carries DeepCache {current.config}, the export asks for {config}; export with the "
            "config the UNet was calibrated with."
        )
    added = current is None
    if added:
        attach(unet, config)
    try:
        example = unet_example_inputs(
            unet, batch=batch, latent_height=latent_height, latent_width=latent_width, text_length=text_length
        )
        shape = feature_shape(unet, example)
        base = unet_input_spec(example, any_shape=any_shape)
        with full_mode(unet):
            full = convert_module(_FullForExport(unet), example, base, ["out_sample", FEATURE_NAME])
        with torch.no_grad():  # the kept outputs of the skipped modules are the example's
            unet(**example, return_dict=False)
        state_of(unet).feature = None  # type: ignore[union-attr]
        shallow_example = {**example, FEATURE_NAME: torch.zeros(shape)}
        spec = [*base, (FEATURE_NAME, any_shape_dims(shape, any_shape=any_shape), ov.Type.f32)]
        shallow = convert_module(_ShallowForExport(unet), shallow_example, spec, ["out_sample"])
        return full, shallow, shape
    finally:
        if added:
            remove_deepcache(unet)
        else:
            state = state_of(unet)
            if state is not None:
                state.cache.clear()
                state.feature = None
