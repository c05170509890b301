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
from sd_ovopt.errors import CorruptModelError

__all__ = ["METADATA_FILE", "ExportMetadata", "library_versions", "read_metadata"]

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
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise CorruptModelError(f"{source}: {exc}. Re-export the pipeline.") from exc


def read_metadata(folder: str | Path) -> ExportMetadata | None:
    """Read ``sd_ovopt.json`` from an exported folder; ``None`` when the folder has none."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    data = read_json_object(path, fix="Re-export the pipeline.")
    return ExportMetadata.from_dict(data, source=str(path))
