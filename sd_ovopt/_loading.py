"""Loading user-supplied diffusers pipelines, with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_ovopt._fs import check_output_dir, read_json_object
from sd_ovopt._validation import check_int
from sd_ovopt.errors import (
    CorruptModelError,
    InvalidConfigError,
    ModelNotFoundError,
    NotAPipelineError,
    ShapeMismatchError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = [
    "ALLOWED_LIBRARIES",
    "MAX_IMAGE_SIDE",
    "check_image_size",
    "check_model_index",
    "check_requested_size",
    "check_steps",
    "find_unet",
    "guidance_embedding_dim",
    "load_for_output",
    "load_sd_pipeline",
    "max_steps",
    "path_inside",
    "read_model_index",
    "refuse_guidance_embedded",
]

_SUPPORTED = ("StableDiffusionPipeline",)
#: The largest height or width accepted (Stable Diffusion 1.x/2.x is trained at 512 to 768 pixels).
MAX_IMAGE_SIDE = 4096


def read_model_index(path: str | Path) -> dict[str, Any]:
    """Return ``model_index.json`` of a pipeline folder, or raise a typed error naming the problem."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelNotFoundError(
            f"model path {folder} does not exist. Pass a local folder written by "
            "StableDiffusionPipeline.save_pretrained (nothing is downloaded)."
        )
    if not folder.is_dir():
        raise NotAPipelineError(
            f"model path {folder} is a file; a pipeline is a folder with model_index.json."
        )
    index = folder / "model_index.json"
    if not index.is_file():
        raise NotAPipelineError(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder. "
            "Pass the folder that StableDiffusionPipeline.save_pretrained or sd-ovopt export wrote."
        )
    config = read_json_object(index, fix="Save the pipeline again with save_pretrained.")
    check_model_index(config, index)
    return config


#: The only libraries a ``model_index.json`` may name for its parts. diffusers and optimum-intel import
#: whatever module a folder names there (a ``payload.py`` beside the folder or in the working directory
#: would run), so anything else is refused before they see the file.
ALLOWED_LIBRARIES = ("diffusers", "transformers", "optimum", "sd_ovopt")
#: Plain (non-part) entries a Stable Diffusion ``model_index.json`` holds besides ``_``-prefixed ones.
_PLAIN_ENTRIES = ("requires_safety_checker",)


def check_model_index(config: dict[str, Any], index: Path) -> None:
    """Refuse a ``model_index.json`` that names a library outside :data:`ALLOWED_LIBRARIES` (or one of
    diffusers' own pipeline modules, as older folders do for the safety checker), a class that is not a
    plain name, or an entry diffusers would pass on to the pipeline as an argument. Nothing is imported
    from the folder or the working directory."""
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in _PLAIN_ENTRIES:
            if not isinstance(value, bool):
                raise CorruptModelError(f"{index}: {key!r} is {value!r}; it must be true or false.")
            continue
        if not (isinstance(value, list) and len(value) == 2):
            raise CorruptModelError(
                f"{index}: entry {key!r} is {value!r}, not a [library, class] pair. A pipeline folder lists "
                "its parts as [library, class]; save the pipeline again with save_pretrained."
            )
        library, class_name = value
        if library is None and class_name is None:
            continue
        if not _is_allowed_library(library):
            raise CorruptModelError(
                f"{index}: part {key!r} names the library {library!r}; sd_ovopt loads parts only from "
                f"{', '.join(ALLOWED_LIBRARIES)} (and diffusers' own pipeline modules), so code named by a "
                "model folder never runs. Use a folder written by save_pretrained or sd-ovopt export."
            )
        if not (isinstance(class_name, str) and class_name.isidentifier()):
            raise CorruptModelError(
                f"{index}: part {key!r} names the class {class_name!r}, which is not a class name. "
                "Save the pipeline again with save_pretrained."
            )


def _is_allowed_library(library: Any) -> bool:
    if not isinstance(library, str) or not library.isidentifier():
        return False
    if library in ALLOWED_LIBRARIES:
        return True
    # ``["stable_diffusion", "StableDiffusionSafetyChecker"]``: a module inside diffusers' own package
    return importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None


def load_sd_pipeline(source: Any) -> StableDiffusionPipeline:
    """Return ``source`` if it is a StableDiffusionPipeline, else load it from a local folder (offline)."""
    from diffusers import StableDiffusionPipeline  # the CLI imports this module: diffusers loads on use

    if isinstance(source, StableDiffusionPipeline):
        return source
    if not isinstance(source, (str, Path)):
        raise NotAPipelineError(
            f"expected a StableDiffusionPipeline or a path to one, got {type(source).__name__}."
        )
    config = read_model_index(source)
    class_name = config.get("_class_name")
    if class_name not in _SUPPORTED:
        raise NotAPipelineError(
            f"{source} holds a {class_name!r}; sd_ovopt supports {', '.join(_SUPPORTED)} "
            "(Stable Diffusion 1.x/2.x text-to-image)."
        )
    missing = [
        part for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if part not in config
    ]
    if missing:
        raise NotAPipelineError(f"{source}/model_index.json lacks the parts {missing}.")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(source), local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptModelError(
            f"could not load the Stable Diffusion pipeline in {source} ({type(exc).__name__}: {exc}). "
            "Check that every part folder (unet, vae, text_encoder, tokenizer, scheduler) is complete."
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_with(pipe: StableDiffusionPipeline, **parts: Any) -> StableDiffusionPipeline:
    """``pipe`` with some parts replaced (e.g. ``vae=``, ``scheduler=``) as a new pipeline sharing the other
    modules; ``pipe`` itself is left as it was (returned as it is when nothing changes)."""
    components = dict(pipe.components)
    changed = {name: part for name, part in parts.items() if components.get(name) is not part}
    if not changed:
        return pipe
    new = type(pipe)(**{**components, **changed, "requires_safety_checker": False})
    new.set_progress_bar_config(disable=True)
    return new


def load_for_output(
    pipeline_or_path: Any, output_dir: str | Path, *, overwrite: bool
) -> tuple[StableDiffusionPipeline, str | Path | None]:
    """The pipeline (see :func:`load_sd_pipeline`) and its source folder, once ``output_dir`` is checked
    (an existing folder without ``overwrite``, or one around the source, is refused before the slow part)."""
    if isinstance(pipeline_or_path, (str, Path)):  # checked before minutes of loading, and again after
        check_output_dir(output_dir, overwrite=overwrite, source=pipeline_or_path)
    pipe = load_sd_pipeline(pipeline_or_path)
    source = pipeline_or_path if isinstance(pipeline_or_path, (str, Path)) else pipe.name_or_path
    check_output_dir(output_dir, overwrite=overwrite, source=source or None)
    return pipe, source or None


def check_image_size(height: Any, width: Any, *, vae_scale_factor: int) -> tuple[int, int]:
    """Return ``(height, width)`` as ints (numpy integers accepted) if they are positive multiples of 8
    and of the VAE factor, and at most :data:`MAX_IMAGE_SIDE`; raise ShapeMismatchError otherwise."""
    multiple = max(8, vae_scale_factor)
    checked = []
    for name, value in (("height", height), ("width", width)):
        try:
            number = check_int(name, value)
        except InvalidConfigError:
            number = None
        if number is None or number <= 0 or number % multiple:
            example = max(multiple, round(number / multiple) * multiple) if number is not None else 512
            raise ShapeMismatchError(
                f"{name}={value!r} is not a positive multiple of {multiple}. "
                f"Use a {name} divisible by {multiple}, e.g. {example}."
            )
        if number > MAX_IMAGE_SIDE:
            raise ShapeMismatchError(
                f"{name}={value} is larger than {MAX_IMAGE_SIDE} pixels, the most sd_ovopt accepts (Stable "
                "Diffusion 1.x/2.x is trained at 512 to 768; a larger UNet would not fit in memory). "
                f"Use a {name} of at most {MAX_IMAGE_SIDE}."
            )
        checked.append(number)
    return checked[0], checked[1]


def check_requested_size(height: Any, width: Any) -> None:
    """Before a model is read: each of ``height`` and ``width`` is ``None`` (the model's native size) or a
    positive multiple of 8 of at most :data:`MAX_IMAGE_SIDE` (the VAE's own factor is checked later)."""
    for side in (height, width):
        if side is not None:
            check_image_size(side, side, vae_scale_factor=8)


def check_steps(value: object, name: str = "num_inference_steps", *, scheduler: Any = None) -> int:
    """Return ``value`` as an int if it is an integer >= 1 (numpy integers accepted) and, given a
    ``scheduler``, at most what it can take (:func:`max_steps`); raise InvalidConfigError otherwise."""
    try:
        steps = check_int(name, value, minimum=1)
    except InvalidConfigError:
        raise InvalidConfigError(
            f"{name}={value!r}; it must be an integer >= 1 (the number of denoising steps, e.g. 20)."
        ) from None
    limit = None if scheduler is None else max_steps(scheduler)
    if limit is not None and steps > limit:
        raise InvalidConfigError(
            f"{name}={steps}, but the {type(scheduler).__name__} can take at most {limit} steps "
            "(its training schedule). Use fewer steps."
        )
    return steps


def max_steps(scheduler: Any) -> int | None:
    """The most denoising steps ``scheduler`` can take: its training timesteps, or for consistency
    schedulers (LCM, TCD) the steps of the schedule they were distilled on; ``None`` if unknown."""
    config = getattr(scheduler, "config", None) or {}
    limits = [config.get(key) for key in ("num_train_timesteps", "original_inference_steps")]
    limits = [limit for limit in limits if isinstance(limit, int) and limit > 0]
    return min(limits) if limits else None


#: Why step caching and QAT refuse a UNet whose guidance is an input (LCM-distilled UNets).
GUIDANCE_EMBEDDED_UNSUPPORTED = (
    "this UNet takes its guidance as an input (time_cond_proj_dim, as LCM-distilled UNets do), which {what} "
    "does not support yet. Export it in float (export_pipeline) or post-training INT8 (optimize_pipeline "
    "with quantization=QuantizationConfig())."
)


def guidance_embedding_dim(unet: Any) -> int | None:
    """The size of ``unet``'s guidance embedding (``time_cond_proj_dim``), or ``None`` when guidance is
    classifier-free (two UNet rows per image) rather than an input. ``unet`` is a diffusers UNet or
    optimum-intel's OpenVINO one (both carry the config)."""
    dim = (getattr(unet, "config", None) or {}).get("time_cond_proj_dim")
    return int(dim) if dim else None


def refuse_guidance_embedded(unet: Any, what: str) -> None:
    """Raise UnsupportedModelError for a UNet with ``time_cond_proj_dim`` (see the message)."""
    if guidance_embedding_dim(unet) is not None:
        raise UnsupportedModelError(GUIDANCE_EMBEDDED_UNSUPPORTED.format(what=what))


def find_unet(target: Any, *, user: str, hint: str = "") -> Any:
    """Return ``target`` if it is a diffusers UNet2DConditionModel, else ``target.unet`` if that is one.

    ``user`` names the function in the error message; ``hint`` is appended to it.
    """
    from diffusers import UNet2DConditionModel  # the CLI imports this module: diffusers loads on use

    unet = getattr(target, "unet", target)
    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedModelError(
            f"{user} needs a diffusers UNet2DConditionModel or a pipeline with one as .unet; got "
            f"{type(target).__name__}.{hint}"
        )
    return unet


def path_inside(folder: str | Path, relative: Any, *, source: str, field_name: str) -> Path:
    """``folder / relative`` if ``relative`` is a relative path that stays inside ``folder`` (links
    resolved); raise CorruptModelError otherwise, so a record never points at another folder's files."""
    root = Path(folder).resolve()
    fix = "The file was edited or damaged: export the pipeline again (or restore the file)."
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise CorruptModelError(
            f"{source}: {field_name} is {relative!r}; it must be a path relative to the folder. {fix}"
        )
    target = (root / relative).resolve()
    if root not in target.parents:
        raise CorruptModelError(
            f"{source}: {field_name} is {relative!r}; it leads outside the folder {root}. {fix}"
        )
    return target
