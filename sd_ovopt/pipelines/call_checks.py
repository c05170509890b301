"""What a pipeline call may be given: known keywords, finite numbers, and steps the scheduler can take.

diffusers accepts ``guidance_scale=inf``, ``eta=nan`` or NaN ``prompt_embeds`` and returns a black image;
it ignores a misspelt keyword (``num_inference_step=4`` runs the default 50 steps) and finds a step count
its scheduler cannot take only after the text encoder ran. :func:`check_call_arguments` refuses all of
these before any model work and turns numpy scalars into the Python numbers diffusers expects.
"""

from __future__ import annotations

from typing import Any

import torch

from sd_ovopt._loading import check_steps
from sd_ovopt._validation import check_finite_tensor, check_float, check_int, check_keywords
from sd_ovopt.errors import InvalidConfigError, ShapeMismatchError

__all__ = ["CALL_KEYWORDS", "check_call_arguments"]

#: The keywords of ``StableDiffusionPipeline.__call__`` after the prompt (and its deprecated callbacks).
CALL_KEYWORDS = (
    "height",
    "width",
    "num_inference_steps",
    "timesteps",
    "sigmas",
    "guidance_scale",
    "negative_prompt",
    "num_images_per_prompt",
    "eta",
    "generator",
    "latents",
    "prompt_embeds",
    "negative_prompt_embeds",
    "ip_adapter_image",
    "ip_adapter_image_embeds",
    "output_type",
    "return_dict",
    "cross_attention_kwargs",
    "guidance_rescale",
    "clip_skip",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
    "callback",
    "callback_steps",
)
_TENSORS = ("latents", "prompt_embeds", "negative_prompt_embeds")
#: Float knobs: (minimum, maximum) of each.
_FLOATS = {"guidance_scale": (0.0, None), "eta": (0.0, 1.0), "guidance_rescale": (0.0, 1.0)}


#: Accepted by diffusers' call but meaningless for an exported pipeline (no torch modules to hook).
_UNSUPPORTED = {
    "cross_attention_kwargs": "attention processors (a LoRA scale) act on torch modules; fuse a LoRA into the "
    "UNet before export instead",
    "ip_adapter_image": "the export has no IP-Adapter image encoder",
    "ip_adapter_image_embeds": "the export has no IP-Adapter layers",
}
_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_call_arguments(kwargs: dict[str, Any], pipe: Any) -> dict[str, Any]:
    """``kwargs`` checked and with numpy scalars as Python numbers; raise InvalidConfigError otherwise.

    ``pipe`` gives the limits: its scheduler's steps, its text encoder's layers and embedding shape.
    """
    check_keywords(kwargs, CALL_KEYWORDS, where="the pipeline call")
    for name, why in _UNSUPPORTED.items():
        if kwargs.get(name) is not None:
            raise InvalidConfigError(f"{name}= is not supported by an exported pipeline: {why}.")
    checked = dict(kwargs)
    _check_plain_arguments(checked, pipe)
    for name, (low, high) in _FLOATS.items():
        if checked.get(name) is not None:
            checked[name] = check_float(name, checked[name], minimum=low, maximum=high)
    for name in ("height", "width", "clip_skip"):
        if checked.get(name) is not None:
            checked[name] = check_int(name, checked[name], minimum=0 if name == "clip_skip" else 1)
    if checked.get("num_images_per_prompt") is not None:
        checked["num_images_per_prompt"] = check_int(
            "num_images_per_prompt", checked["num_images_per_prompt"], minimum=1
        )
    for name in _TENSORS:
        if checked.get(name) is not None:
            check_finite_tensor(
                name, checked[name], hint=f"Pass finite values, or omit {name} (generator= sets the noise)."
            )
    _check_embeddings(checked, pipe)
    _check_schedule(checked, pipe.scheduler)
    return checked


def _check_plain_arguments(checked: dict[str, Any], pipe: Any) -> None:
    """Types diffusers would trip over later: output type, flags, generators, negative prompts."""
    if checked.get("output_type", "pil") not in _OUTPUT_TYPES:
        raise InvalidConfigError(f"output_type={checked['output_type']!r}; use one of {_OUTPUT_TYPES}.")
    if not isinstance(checked.get("return_dict", True), bool):
        raise InvalidConfigError(f"return_dict={checked['return_dict']!r}; pass True or False.")
    generator = checked.get("generator")
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    if generator is not None and not all(isinstance(g, _torch_generator()) for g in generators):
        raise InvalidConfigError(
            f"generator={generator!r}; pass a torch.Generator (e.g. torch.Generator().manual_seed(0)) or a "
            "list of them, one per image."
        )
    negative = checked.get("negative_prompt")
    if negative is not None and not (
        isinstance(negative, str)
        or (isinstance(negative, (list, tuple)) and all(isinstance(n, str) for n in negative))
    ):
        raise InvalidConfigError(f"negative_prompt={negative!r}; pass a string or a list of strings.")
    layers = (getattr(pipe.text_encoder, "config", None) or {}).get("num_hidden_layers")
    if checked.get("clip_skip") is not None and isinstance(layers, int) and checked["clip_skip"] >= layers:
        raise InvalidConfigError(
            f"clip_skip={checked['clip_skip']}; the text encoder has {layers} layers, so it must be < {layers}."
        )


def _torch_generator() -> type:
    return torch.Generator


def _check_embeddings(checked: dict[str, Any], pipe: Any) -> None:
    """``prompt_embeds`` / ``negative_prompt_embeds`` must be (prompts, text length, hidden size)."""
    length = getattr(pipe.tokenizer, "model_max_length", None)
    hidden = (getattr(pipe.text_encoder, "config", None) or {}).get("hidden_size")
    for name in ("prompt_embeds", "negative_prompt_embeds"):
        value = checked.get(name)
        if value is None or length is None or hidden is None:
            continue
        shape = tuple(value.shape)
        if len(shape) != 3 or shape[1:] != (length, hidden):
            raise ShapeMismatchError(
                f"{name} has shape {shape}; this pipeline's text encoder gives (prompts, {length}, {hidden}). "
                "Pass embeddings of that shape, or a prompt instead."
            )


def _check_schedule(checked: dict[str, Any], scheduler: Any) -> None:
    """Steps, or explicit ``timesteps`` / ``sigmas``, that the scheduler can take."""
    for name in ("timesteps", "sigmas"):
        values = checked.get(name)
        if values is not None:
            if not len(values):
                raise InvalidConfigError(
                    f"{name}=[]; pass at least one value, or num_inference_steps instead."
                )
            for i, value in enumerate(values):
                check_float(f"{name}[{i}]", value, minimum=0)
    if checked.get("timesteps") is not None or checked.get("sigmas") is not None:
        return
    steps = check_steps(checked.get("num_inference_steps", 50), scheduler=scheduler)
    if "num_inference_steps" in checked:
        checked["num_inference_steps"] = steps
