"""What an export baked into its IRs: static shapes, library versions, and each method's record.

Written as ``sd_ovopt.json`` at the root of an exported folder and read back by the OV pipeline.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from sd_ovopt._fs import read_json_object
from sd_ovopt._loading import MAX_IMAGE_SIDE
from sd_ovopt.errors import CorruptModelError
from sd_ovopt.methods import MethodRecord, get_method, registered_methods
from sd_ovopt.vae import VAE_CLASSES

__all__ = ["METADATA_FILE", "ExportMetadata", "library_versions", "read_metadata"]

METADATA_FILE = "sd_ovopt.json"
FORMAT_VERSION = 2

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
        weight_compression: ``"int8"`` when the text encoder and VAE weights are stored as int8, else ``None``.
        vae: The autoencoder's class: ``"AutoencoderKL"`` (Stable Diffusion's own) or ``"AutoencoderTiny"``
            (TAESD's architecture).
        vae_decoder_int8: Whether the tiny autoencoder's decoder runs in INT8 (activations and weights,
            calibrated on the pipeline's own latents).
        any_shape: Whether the IRs take any batch and any multiple-of-8 image size (the shape fields are
            then the default a pipeline compiles at); ``False`` for folders traced at one static shape.
        methods: What each method baked in (its typed record), by method name, in the order applied.
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
    weight_compression: str | None = None
    vae: str = "AutoencoderKL"
    vae_decoder_int8: bool = False
    any_shape: bool = False
    methods: dict[str, MethodRecord] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    format_version: int = FORMAT_VERSION

    def record(self, name: str) -> MethodRecord | None:
        """The record of the method ``name``, or ``None`` when the folder does not use it."""
        return self.methods.get(name)

    def config(self, name: str) -> Any:
        """The config of the method ``name``, or ``None`` when the folder does not use it."""
        record = self.methods.get(name)
        return None if record is None else record.config

    def at_shape(
        self, batch_size: int, height: int, width: int, num_images_per_prompt: int
    ) -> ExportMetadata:
        """This record with another shape (the UNet batch and latent size follow), for a folder whose IRs
        take any shape; the arguments are checked by the caller."""
        scale = self.height // self.latent_height
        images = batch_size * num_images_per_prompt
        return dataclasses.replace(
            self,
            height=height,
            width=width,
            batch_size=batch_size,
            num_images_per_prompt=num_images_per_prompt,
            unet_batch=images * (2 if self.classifier_free_guidance else 1),
            latent_height=height // scale,
            latent_width=width // scale,
        )

    def to_fields(self) -> dict[str, Any]:
        """The fields as they are (records stay typed): ``ExportMetadata(**meta.to_fields())`` copies."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        data = self.to_fields()
        data["methods"] = {name: record.to_dict() for name, record in self.methods.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / METADATA_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "metadata") -> ExportMetadata:
        version = data.get("format_version")
        if version == 1:
            data = _upgrade_from_1(data)
        elif version != FORMAT_VERSION:
            raise CorruptModelError(
                f"{source}: format_version is {version!r}, this sd_ovopt reads {FORMAT_VERSION} (and 1). "
                "Re-export the pipeline with this version of sd_ovopt."
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["methods"] = _read_methods(data.get("methods", {}), source)
        try:
            meta = cls(**values)
        except TypeError as exc:
            raise CorruptModelError(f"{source}: {exc}. Re-export the pipeline.") from exc
        _check_fields(meta, source)
        return meta


def _upgrade_from_1(data: dict[str, Any]) -> dict[str, Any]:
    """A layout-1 record (``tome``, ``quantization``, ``deepcache`` fields) in layout 2 (``methods``)."""
    methods: dict[str, Any] = {}
    if data.get("tome") is not None:
        methods["tome"] = {"version": 1, "config": data["tome"]}
    quantization = data.get("quantization")
    compression = None
    if isinstance(quantization, dict):
        compression = quantization.get("weight_compression")
        if quantization.get("unet") is not None:
            methods["int8"] = {"version": 1, "config": quantization["unet"]}
    elif quantization is not None:
        compression = quantization  # not an object: the record check below refuses it
    if data.get("deepcache") is not None:
        record = data["deepcache"]
        methods["step_caching"] = {"version": 1, **record} if isinstance(record, dict) else record
    upgraded = {k: v for k, v in data.items() if k not in ("tome", "quantization", "deepcache")}
    return {
        **upgraded,
        "methods": methods,
        "weight_compression": compression,
        "format_version": FORMAT_VERSION,
    }


def _read_methods(data: Any, source: str) -> dict[str, MethodRecord]:
    """Each method record read by its registered method's record type (unknown methods refused)."""
    if not isinstance(data, dict):
        raise _bad(source, "methods", data, "it must map method names to records")
    records = {}
    for name, raw in data.items():
        method = get_method(name, source=source)
        records[name] = method.record_class.from_dict(
            raw, method.config_class, source=f"{source}: methods.{name}"
        )
    ranks = {name: method.rank for name, method in registered_methods().items()}
    return dict(sorted(records.items(), key=lambda item: (ranks[item[0]], item[0])))


# -- what a record may hold: sd_ovopt.json is read from folders that anyone may have edited ------------
def _bad(source: str, field_name: str, value: Any, allowed: str) -> CorruptModelError:
    return CorruptModelError(
        f"{source}: {field_name} is {value!r}; {allowed}. The file was edited or damaged: export the "
        "pipeline again (or restore the file)."
    )


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_fields(meta: ExportMetadata, source: str) -> None:
    """Types, ranges and consistency of every field; the method records are read by their own types."""
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
    if meta.weight_compression not in (None, "int8"):
        raise _bad(source, "weight_compression", meta.weight_compression, "it must be null or 'int8'")
    if not isinstance(meta.any_shape, bool):
        raise _bad(source, "any_shape", meta.any_shape, "it must be true or false")
    if meta.vae not in VAE_CLASSES:
        raise _bad(source, "vae", meta.vae, f"it must be one of {list(VAE_CLASSES)}")
    int8_vae = meta.vae_decoder_int8
    if not isinstance(int8_vae, bool) or (int8_vae and meta.vae != "AutoencoderTiny"):
        raise _bad(source, "vae_decoder_int8", int8_vae, "it must be false, or true with vae AutoencoderTiny")
    if not (isinstance(meta.versions, dict) and all(isinstance(v, str) for v in meta.versions.values())):
        raise _bad(source, "versions", meta.versions, "it must map library names to version strings")


def read_metadata(folder: str | Path) -> ExportMetadata | None:
    """Read ``sd_ovopt.json`` from an exported folder; ``None`` when the folder has none."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    data = read_json_object(path, fix="Re-export the pipeline.")
    return ExportMetadata.from_dict(data, source=str(path))
