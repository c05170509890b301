"""An exported folder run by OpenVINO GenAI's ``Text2ImagePipeline`` (C++, no torch), called like diffusers.

The harness times and scores every variant through a diffusers-style call (``pipe(prompt, ...)``), so
:class:`GenAIPipeline` wraps ``openvino_genai.Text2ImagePipeline`` in that call: the same prompt,
steps, guidance, size and ``torch.Generator`` noise give the same image as :class:`sd_ovopt.SdOvOptPipeline`
on the same folder, up to 8-bit rounding. The whole generation (tokenizer, text encoder, denoising
loop, scheduler, VAE decoder) runs inside GenAI.

For the harness's timing of single parts and its runtime-precision column, ``unet``, ``text_encoder`` and
``vae_decoder`` compile the folder's IRs on their own with the same properties (GenAI does not expose its
compiled models); each is compiled only when asked.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import diffusers
import numpy as np
import openvino as ov
import torch
from PIL import Image

from sd_ovopt._fs import read_json_object
from sd_ovopt._precision import precision_hint
from sd_ovopt.errors import InvalidConfigError, MissingDependencyError

__all__ = ["GenAIPipeline", "genai_missing"]


def genai_missing() -> str | None:
    """Why OpenVINO GenAI cannot run here (None when it can)."""
    try:
        import openvino_genai  # noqa: F401  - an optional dependency: is it here?
    except ImportError as exc:
        return f"openvino-genai is not importable ({exc}); install it with `pip install openvino-genai`"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, fix="Export the folder again with sd_ovopt.export_pipeline.")


def _torch_noise(generator: Any) -> Any:
    """A GenAI generator that draws its noise from ``generator`` (a ``torch.Generator``), as diffusers does."""
    import openvino_genai  # an optional dependency

    class TorchNoise(openvino_genai.Generator):
        def __init__(self) -> None:
            openvino_genai.Generator.__init__(self)

        def next(self) -> float:
            return torch.randn(1, generator=generator).item()

        def randn_tensor(self, shape: Any) -> Any:
            return ov.Tensor(torch.randn(list(shape), generator=generator).numpy())

    return TorchNoise()


class _Part:
    """One IR of the folder (``unet``, ``text_encoder``, ``vae_decoder``), compiled on demand with the
    pipeline's properties, static at ``batch`` rows of ``latent`` size when given (timing and precision
    only)."""

    def __init__(
        self,
        folder: Path,
        part: str,
        properties: dict[str, Any],
        batch: int | None = None,
        latent: tuple[int, int] | None = None,
    ) -> None:
        config = folder / part / "config.json"
        self.config = _read_json(config) if config.is_file() else {}
        self._xml, self._properties = folder / part / "openvino_model.xml", properties
        self._batch, self._latent = batch, latent
        self.request: Any = None

    def compile(self) -> None:
        if self.request is None:
            model = ov.Core().read_model(self._xml)
            if self._batch is not None:
                model.reshape(self._static_shapes(model))
            self.request = ov.Core().compile_model(model, "CPU", self._properties)

    def _static_shapes(self, model: Any) -> dict[Any, Any]:
        """Every input's batch; a 4-d input's spatial size is the latent's (``sample``, ``latent_sample``)."""
        shapes = {}
        for port in model.inputs:
            dims = port.get_partial_shape()
            if port.get_any_name() != "timestep":
                dims[0] = self._batch
            if dims.rank.get_length() == 4 and self._latent is not None:
                dims[2], dims[3] = self._latent
            shapes[port] = dims
        return shapes


class GenAIPipeline:
    """``openvino_genai.Text2ImagePipeline`` on an exported folder, with diffusers' call signature.

    Args:
        folder: A folder written by :func:`sd_ovopt.export_pipeline` or ``optimize_pipeline``.
        precision: OpenVINO inference precision hint (``"f32"``, ``"bf16"``, ``"f16"``), or ``None`` /
            ``"default"`` for none: OpenVINO's own choice (bf16 where the CPU has it), as GenAI's users get.
        properties: Extra OpenVINO properties, e.g. ``{"INFERENCE_NUM_THREADS": 1}``.

    Example:
        >>> import torch
        >>> from sd_ovopt.evaluation.genai import GenAIPipeline
        >>> pipe = GenAIPipeline("tiny-ov")  # doctest: +SKIP
        >>> image = pipe("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    """

    def __init__(
        self,
        folder: str | Path,
        precision: str | None = None,
        properties: dict[str, Any] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = 7.5,
    ) -> None:
        reason = genai_missing()
        if reason is not None:
            raise MissingDependencyError(reason)
        import openvino_genai  # an optional dependency

        self.folder = Path(folder)
        self.properties = {**(properties or {}), **precision_hint(precision)}
        vae = _read_json(self.folder / "vae_decoder" / "config.json")
        self.vae_scale_factor = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
        static = height is not None and width is not None
        if static:  # what GenAI's users do for speed: reshape to one image of this size, then compile
            self.pipe = openvino_genai.Text2ImagePipeline(str(self.folder))
            self.pipe.reshape(1, height, width, guidance_scale)
            self.pipe.compile("CPU", **self.properties)
        else:
            self.pipe = openvino_genai.Text2ImagePipeline(str(self.folder), "CPU", **self.properties)
        unet = _read_json(self.folder / "unet" / "config.json")
        rows = 2 if guidance_scale > 1 and not unet.get("time_cond_proj_dim") else 1
        latent = (height // self.vae_scale_factor, width // self.vae_scale_factor) if static else None
        self.unet = _Part(self.folder, "unet", self.properties, rows if static else None, latent)
        self.text_encoder = _Part(self.folder, "text_encoder", self.properties, 1 if static else None)
        self.vae_decoder = _Part(self.folder, "vae_decoder", self.properties, 1 if static else None, latent)
        tokenizer = _read_json(self.folder / "tokenizer" / "tokenizer_config.json")
        self.tokenizer = SimpleNamespace(model_max_length=int(tokenizer.get("model_max_length", 77)))

    @property
    def scheduler(self) -> Any:
        """The folder's scheduler as diffusers builds it (GenAI runs its own copy of the same schedule)."""

        config = _read_json(self.folder / "scheduler" / "scheduler_config.json")
        return getattr(diffusers, str(config.get("_class_name"))).from_config(config)

    def set_progress_bar_config(self, **_: Any) -> None:
        """GenAI shows no progress bar (kept so the harness treats every pipeline alike)."""

    def __call__(
        self,
        prompt: str,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        generator: Any = None,
        negative_prompt: str | None = None,
        output_type: str = "pil",
    ) -> SimpleNamespace:
        """Generate one image; ``generator`` is a ``torch.Generator`` (the same noise as diffusers) or a seed.

        Returns an object whose ``images`` holds the image: PIL (``output_type="pil"``), a float
        ``[H, W, 3]`` array in ``[0, 1]`` (``"np"``) or the uint8 array GenAI produced (``"uint8"``).
        """
        import openvino_genai  # an optional dependency

        if not isinstance(prompt, str):
            raise InvalidConfigError(
                f"prompt={prompt!r}; the OpenVINO GenAI pipeline takes one prompt (a string) per call."
            )
        if output_type not in ("pil", "np", "uint8"):
            raise InvalidConfigError(f"output_type={output_type!r}; use 'pil', 'np' or 'uint8'.")
        kwargs: dict[str, Any] = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
        }
        if height is not None:
            kwargs["height"] = height
        if width is not None:
            kwargs["width"] = width
        if negative_prompt is not None:
            kwargs["negative_prompt"] = negative_prompt
        if isinstance(generator, int):
            kwargs["generator"] = openvino_genai.TorchGenerator(generator)
        elif generator is not None:
            kwargs["generator"] = _torch_noise(generator)
        image = np.array(self.pipe.generate(prompt, **kwargs).data[0])  # a copy: GenAI reuses its buffer
        if output_type == "np":
            return SimpleNamespace(images=[image.astype(np.float32) / 255.0])
        if output_type == "uint8":
            return SimpleNamespace(images=[image])

        return SimpleNamespace(images=[Image.fromarray(image)])
