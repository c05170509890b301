"""What an export baked into its IRs: static shapes, library versions, quantization and ToMe settings.

Written as ``sd_ovopt.json`` at the root of an exported folder and read back by the OV pipeline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from sd_ovopt._fs import read_json_object
from sd_ovopt._loading import MAX_IMAGE_SIDE
from sd_ovopt.errors import CorruptModelError, InvalidConfigError

__all__ = ["METADATA_FILE", "ExportMetadata", "library_versions", "path_inside", "read_metadata"]

METADATA_FILE = "sd_ovopt.json"
FORMAT_VERSION = 1

_VERSIONED = (
    "sd_ovopt",
    "torch",
    "diffusers",
    "transformers",
    "openvino",
    "openvino-tokenizers",  # wrote tokenizer/openvino_tokenizer.xml, which OpenVINO GenAI reads
    "optimum-intel",
    "nncf",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an export depends on (``"not installed"`` when absent)."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass(frozen=True)
class ExportMetadata:
    """The static shape and settings an exported pipeline was built for.

    Attributes:
        height: Image height in pixels.
        width: Image width in pixels.
        batch_size: Prompts per call.
        num_images_per_prompt: Images per prompt.
        classifier_free_guidance: Whether the UNet batch is doubled for guidance (``guidance_scale > 1``).
        unet_batch: The UNet's static batch.
        latent_height: Latent height (``height // vae_scale_factor``).
        latent_width: Latent width.
        weights_dtype: How non-quantized weights are stored on disk (``"f32"`` or ``"f16"``).
        tome: The ToMe settings baked into the UNet, or ``None``.
        quantization: The quantization settings of the UNet, or ``None``.
        deepcache: Step caching, or ``None``: its config (``"config"``), the two UNet IRs (``"full"``, which
            also returns the cached feature, and ``"shallow"``, which takes it), the feature's name and
            static shape (``"feature"``, ``"feature_shape"``).
        versions: Library versions at export time.
        format_version: Version of this file's layout.
    """

    height: int
    width: int
    batch_size: int
    num_images_per_prompt: int
    classifier_free_guidance: bool
    unet_batch: int
    latent_height: int
    latent_width: int
    weights_dtype: str = "f32"
    tome: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    deepcache: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / METADATA_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "metadata") -> ExportMetadata:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CorruptModelError(
                f"{source}: format_version is {version!r}, this sd_ovopt reads {FORMAT_VERSION}. "
                "Re-export the pipeline with this version of sd_ovopt."
            )
        known = set(cls.__dataclass_fields__)
        try:
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise CorruptModelError(f"{source}: {exc}. Re-export the pipeline.") from exc
        _check_fields(meta, source)
        return meta


# -- what a record may hold: sd_ovopt.json is read from folders that anyone may have edited ------------
def _bad(source: str, field_name: str, value: Any, allowed: str) -> CorruptModelError:
    return CorruptModelError(
        f"{source}: {field_name} is {value!r}; {allowed}. The file was edited or damaged: export the "
        "pipeline again (or restore the file)."
    )


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_fields(meta: ExportMetadata, source: str) -> None:
    """Types, ranges and consistency of every field; the nested records are read by their own configs."""
    for name in ("height", "width"):
        value = getattr(meta, name)
        if not (_is_int(value, 8) and value % 8 == 0 and value <= MAX_IMAGE_SIDE):
            raise _bad(source, name, value, f"it must be a multiple of 8 from 8 to {MAX_IMAGE_SIDE}")
    for name in ("batch_size", "num_images_per_prompt", "unet_batch", "latent_height", "latent_width"):
        if not _is_int(getattr(meta, name), 1):
            raise _bad(source, name, getattr(meta, name), "it must be an integer >= 1")
    if not isinstance(meta.classifier_free_guidance, bool):
        raise _bad(
            source, "classifier_free_guidance", meta.classifier_free_guidance, "it must be true or false"
        )
    images = meta.batch_size * meta.num_images_per_prompt
    if meta.unet_batch != images * (2 if meta.classifier_free_guidance else 1):
        raise _bad(
            source, "unet_batch", meta.unet_batch,
            "it must be batch_size x num_images_per_prompt, times 2 with classifier_free_guidance",
        )  # fmt: skip
    for name, pixels in (("latent_height", meta.height), ("latent_width", meta.width)):
        latent = getattr(meta, name)
        if pixels % latent or (pixels // latent) & (pixels // latent - 1):
            raise _bad(source, name, latent, f"it must divide {pixels} by a power of 2 (the VAE's scale)")
    if meta.weights_dtype not in ("f32", "f16"):
        raise _bad(source, "weights_dtype", meta.weights_dtype, "it must be 'f32' or 'f16'")
    if not (isinstance(meta.versions, dict) and all(isinstance(v, str) for v in meta.versions.values())):
        raise _bad(source, "versions", meta.versions, "it must map library names to version strings")
    _check_records(meta, source)


def _check_records(meta: ExportMetadata, source: str) -> None:
    from sd_ovopt.deepcache.config import DeepCacheConfig
    from sd_ovopt.quantization.config import QuantizationConfig
    from sd_ovopt.tome.config import ToMeConfig

    quantization = meta.quantization
    if quantization is not None:
        if not isinstance(quantization, dict) or set(quantization) != {"unet", "weight_compression"}:
            raise _bad(source, "quantization", quantization, "it must hold 'unet' and 'weight_compression'")
        if quantization["weight_compression"] not in (None, "int8"):
            raise _bad(source, "quantization.weight_compression", quantization["weight_compression"], "it must be null or 'int8'")  # fmt: skip
        _read_config(QuantizationConfig, quantization["unet"], source, "quantization.unet", optional=True)
    _read_config(ToMeConfig, meta.tome, source, "tome", optional=True)
    if meta.deepcache is not None:
        record = meta.deepcache
        if not isinstance(record, dict):
            raise _bad(source, "deepcache", record, "it must be an object")
        _read_config(DeepCacheConfig, record.get("config"), source, "deepcache.config")
        for key in ("full", "shallow", "feature"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise _bad(source, f"deepcache.{key}", record.get(key), "it must be a non-empty string")
        shape = record.get("feature_shape")
        if not (isinstance(shape, list) and len(shape) == 4 and all(_is_int(d, 1) for d in shape)):
            raise _bad(source, "deepcache.feature_shape", shape, "it must be 4 integers >= 1")


def _read_config(cls: Any, data: Any, source: str, field_name: str, *, optional: bool = False) -> Any:
    if data is None and optional:
        return None
    if not isinstance(data, dict):
        raise _bad(source, field_name, data, f"it must be a {cls.__name__} object")
    try:
        return cls.from_dict(data)
    except (InvalidConfigError, TypeError, ValueError) as exc:
        raise CorruptModelError(
            f"{source}: {field_name} is not a valid {cls.__name__} ({exc}). Export the pipeline again."
        ) from exc


def path_inside(folder: str | Path, relative: Any, *, source: str, field_name: str) -> Path:
    """``folder / relative`` if ``relative`` is a relative path that stays inside ``folder`` (links
    resolved); raise CorruptModelError otherwise, so a record never points at another folder's files."""
    root = Path(folder).resolve()
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise _bad(source, field_name, relative, "it must be a path relative to the folder")
    target = (root / relative).resolve()
    if root not in target.parents:
        raise _bad(source, field_name, relative, f"it leads outside the folder {root}")
    return target


def read_metadata(folder: str | Path) -> ExportMetadata | None:
    """Read ``sd_ovopt.json`` from an exported folder; ``None`` when the folder has none."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    data = read_json_object(path, fix="Re-export the pipeline.")
    return ExportMetadata.from_dict(data, source=str(path))
