"""Convert the parts of a Stable Diffusion pipeline from PyTorch to OpenVINO models.

Each part gets the input and output names that optimum-intel's ``OVStableDiffusionPipeline`` reads
(``sample``/``timestep``/``encoder_hidden_states`` → ``out_sample`` for the UNet, and so on), so an
exported folder loads there too. Each part is traced at one example shape; with ``any_shape=True`` its
batch and spatial input dimensions are left dynamic in the IR, which then runs at any batch and any
multiple-of-8 size once reshaped and compiled static (whatever the graph computes from shapes, such as
ToMe's partition, is traced as a function of the run-time shape).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sd_ovopt._loading import guidance_embedding_dim
from sd_ovopt.errors import UnsupportedModelError

if TYPE_CHECKING:
    import openvino as ov

__all__ = [
    "any_shape_dims",
    "convert_text_encoder",
    "convert_tokenizer",
    "convert_unet",
    "convert_vae_decoder",
    "convert_vae_encoder",
    "unet_example_inputs",
]

logger = logging.getLogger(__name__)


class UNetForExport(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _GuidanceEmbeddedUNetForExport(UNetForExport):
    """A UNet distilled with its guidance as an input (``time_cond_proj_dim``: LCM and its kin), which takes
    the guidance embedding as ``timestep_cond`` (optimum-intel's name)."""

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor,
    ) -> torch.Tensor:
        return self.unet(
            sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False
        )[0]


class _TextEncoderForExport(nn.Module):
    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class _VaeDecoderForExport(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class _VaeEncoderForExport(nn.Module):
    """The latent distribution's parameters (mean and log-variance) of a KL VAE, or the latents themselves
    of a tiny autoencoder (``AutoencoderTiny``, which has no distribution)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.tiny = _is_tiny_vae(vae)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        encoded = self.vae.encode(sample, return_dict=True)
        return encoded.latents if self.tiny else encoded.latent_dist.parameters


def _is_tiny_vae(vae: nn.Module) -> bool:
    """Whether ``vae`` is diffusers' ``AutoencoderTiny`` (TAESD), whose encoder returns latents."""
    return type(vae).__name__ == "AutoencoderTiny"


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """No grad, and the trace-time warnings that static-shape tracing makes harmless kept quiet."""
    with torch.no_grad(), _quiet_library_notices():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


@contextlib.contextmanager
def _quiet_library_notices() -> Iterator[None]:
    """Notices about library internals, not about anything the user did, kept quiet while we import or
    trace: OpenVINO's converter uses torch.jit, which torch marks deprecated, and transformers' and
    diffusers' deprecation notices; their errors still show."""
    libraries = [logging.getLogger(name) for name in ("transformers", "diffusers")]
    levels = [library.level for library in libraries]
    for library in libraries:
        library.setLevel(max(library.level, logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
            )
            yield
    finally:
        for library, level in zip(libraries, levels, strict=True):
            library.setLevel(level)


def convert_module(
    module: nn.Module, example: dict[str, torch.Tensor], input_spec: list, output_names: list[str]
) -> ov.Model:
    """Trace ``module`` on ``example`` into an OpenVINO model whose inputs are ``input_spec`` (name, shape,
    type) and whose outputs are named ``output_names``, each port carrying exactly its own name."""
    # OpenVINO loads on use: the method registry (so `sd-ovopt --help`) imports this module
    import openvino as ov
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    was_training = module.training
    module.eval()
    try:
        with quiet_tracing():
            # torch.jit.trace's check re-traces and re-runs the module to compare: as much time again as
            # the trace itself, on a model whose ops are all static at trace time (optimum-intel skips it
            # for diffusers models too).
            decoder = TorchScriptPythonDecoder(
                module, example_input=example, trace_kwargs={"check_trace": False}
            )
            model = ov.convert_model(decoder, example_input=example, input=input_spec)
    finally:
        module.train(was_training)
    if len(model.outputs) != len(output_names):
        raise UnsupportedModelError(
            f"expected {len(output_names)} outputs, the converted model has {len(model.outputs)}; "
            "export a module whose forward returns exactly those tensors"
        )
    # An input can carry the names of internal tensors too (at UNet batch 1, ``timestep`` is also the
    # broadcast's output): optimum-intel and OpenVINO GenAI find inputs by their first name, so each
    # input and output gets exactly its own.
    for port, (name, _, _) in zip(model.inputs, input_spec, strict=True):
        port.get_tensor().set_names({name})
    for output, name in zip(model.outputs, output_names, strict=True):
        output.get_tensor().set_names({name})
    return model


def unet_example_inputs(
    unet: nn.Module, *, batch: int, latent_height: int, latent_width: int, text_length: int
) -> dict[str, torch.Tensor]:
    """Example UNet inputs of the given static shape (used for tracing and for calibration checks)."""
    config = unet.config
    generator = torch.Generator().manual_seed(0)
    example = {
        "sample": torch.randn(batch, config.in_channels, latent_height, latent_width, generator=generator),
        "timestep": torch.tensor([500], dtype=torch.int64),
        "encoder_hidden_states": torch.randn(
            batch, text_length, config.cross_attention_dim, generator=generator
        ),
    }
    dim = guidance_embedding_dim(unet)
    if dim is not None:
        example["timestep_cond"] = torch.randn(batch, dim, generator=generator)
    return example


def convert_unet(
    unet: nn.Module,
    *,
    batch: int,
    latent_height: int,
    latent_width: int,
    text_length: int,
    any_shape: bool = False,
) -> ov.Model:
    """Trace ``unet`` at a shape into an OpenVINO model with optimum-intel's input/output names.

    ``batch`` is the UNet batch: twice the number of images when classifier-free guidance is used. With
    ``any_shape`` the IR's batch and latent size are dynamic (the trace's shape is only the example).
    ``timestep`` is a rank-1 i64 input of size 1, the signature optimum-intel exports (and reshapes to)
    and OpenVINO GenAI feeds; fractional timesteps (Euler, DPM) are truncated to integers, as there.
    """

    example = unet_example_inputs(
        unet, batch=batch, latent_height=latent_height, latent_width=latent_width, text_length=text_length
    )
    wrapper = UNetForExport if "timestep_cond" not in example else _GuidanceEmbeddedUNetForExport
    return convert_module(
        wrapper(unet), example, unet_input_spec(example, any_shape=any_shape), ["out_sample"]
    )


def any_shape_dims(shape: Any, *, any_shape: bool, spatial: bool = True) -> list[int]:
    """``shape`` as an input spec: as it is, or (``any_shape``) with the batch and, for a 4-d image-like
    input with ``spatial``, its height and width dynamic (-1)."""
    dims = [int(d) for d in shape]
    if any_shape:
        dims[0] = -1
        if spatial and len(dims) == 4:
            dims[2] = dims[3] = -1
    return dims


def unet_input_spec(
    example: dict[str, torch.Tensor], *, any_shape: bool = False
) -> list[tuple[str, list[int], ov.Type]]:
    """The input spec of a UNet IR (optimum-intel's names; ``timestep`` a rank-1 i64 of size 1): static at
    the example's shape, or with the batch and latent size dynamic (``any_shape``)."""
    import openvino as ov  # on use: the method registry (sd-ovopt --help) imports this module

    spec = [
        ("sample", any_shape_dims(example["sample"].shape, any_shape=any_shape), ov.Type.f32),
        ("timestep", [1], ov.Type.i64),
        (
            "encoder_hidden_states",
            any_shape_dims(example["encoder_hidden_states"].shape, any_shape=any_shape),
            ov.Type.f32,
        ),
    ]
    if "timestep_cond" in example:  # a guidance-embedded UNet
        dims = any_shape_dims(example["timestep_cond"].shape, any_shape=any_shape)
        spec.append(("timestep_cond", dims, ov.Type.f32))
    return spec


@contextlib.contextmanager
def _traceable_attention_masks() -> Iterator[None]:
    """Swap transformers' mask builders (vmap-based, not traceable) for optimum-intel's traceable ones."""
    with _quiet_library_notices():  # their import-time notices are not the user's
        from optimum.exporters.openvino.patching_utils import eager_mask_without_vmap, sdpa_mask_without_vmap
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    saved = {name: ALL_MASK_ATTENTION_FUNCTIONS[name] for name in ("sdpa", "eager")}
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa", sdpa_mask_without_vmap)
    ALL_MASK_ATTENTION_FUNCTIONS.register("eager", eager_mask_without_vmap)
    try:
        yield
    finally:
        for name, function in saved.items():
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, function)


def convert_text_encoder(text_encoder: nn.Module, *, text_length: int) -> ov.Model:
    """Convert a CLIP text encoder; its batch stays dynamic, its sequence length is ``text_length``."""
    import openvino as ov  # on use: the method registry (sd-ovopt --help) imports this module

    example = {"input_ids": torch.ones(1, text_length, dtype=torch.int64)}
    spec = [("input_ids", [-1, text_length], ov.Type.i64)]
    with _traceable_attention_masks():
        return convert_module(
            _TextEncoderForExport(text_encoder), example, spec, ["last_hidden_state", "pooler_output"]
        )


def convert_vae_decoder(
    vae: nn.Module, *, latent_height: int, latent_width: int, any_shape: bool = False
) -> ov.Model:
    """Convert the VAE decoder (``post_quant_conv`` included); its batch stays dynamic, and its latent size
    too with ``any_shape``."""
    import openvino as ov  # on use: the method registry (sd-ovopt --help) imports this module

    channels = vae.config.latent_channels
    example = {"latent_sample": torch.zeros(1, channels, latent_height, latent_width)}
    dims = any_shape_dims(example["latent_sample"].shape, any_shape=True, spatial=any_shape)
    spec = [("latent_sample", dims, ov.Type.f32)]
    return convert_module(_VaeDecoderForExport(vae), example, spec, ["sample"])


def convert_vae_encoder(vae: nn.Module, *, height: int, width: int, any_shape: bool = False) -> ov.Model:
    """Convert the VAE encoder (batch dynamic; image size too with ``any_shape``). A KL VAE's returns the
    latent distribution's parameters (mean and log-variance, output ``latent_parameters``); a tiny
    autoencoder's returns the latents (``latent_sample``). These are the names optimum-intel's VAE encoder
    reads."""
    import openvino as ov  # on use: the method registry (sd-ovopt --help) imports this module

    channels = vae.config.in_channels
    example = {"sample": torch.zeros(1, channels, height, width)}
    dims = any_shape_dims(example["sample"].shape, any_shape=True, spatial=any_shape)
    spec = [("sample", dims, ov.Type.f32)]
    output = "latent_sample" if _is_tiny_vae(vae) else "latent_parameters"
    return convert_module(_VaeEncoderForExport(vae), example, spec, [output])


def convert_tokenizer(tokenizer: object) -> tuple[ov.Model, ov.Model | None]:
    """Convert a Hugging Face tokenizer with ``openvino_tokenizers``: (tokenizer, detokenizer or ``None``).

    These are the ``tokenizer/openvino_tokenizer.xml`` and ``openvino_detokenizer.xml`` that OpenVINO GenAI's
    ``Text2ImagePipeline`` reads (torch-free deployment), as optimum-intel's own export writes them.
    """
    # importing openvino_tokenizers adds its extension to every OpenVINO Core: only when a tokenizer is converted
    from openvino_tokenizers import convert_tokenizer as ov_convert_tokenizer

    try:
        encoder, decoder = ov_convert_tokenizer(tokenizer, with_detokenizer=True)
    except NotImplementedError:  # no detokenizer for this tokenizer type; GenAI only needs the encoder
        return ov_convert_tokenizer(tokenizer, with_detokenizer=False), None
    return encoder, decoder
