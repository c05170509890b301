"""``LoRAConfig``: which LoRA files to fuse into the UNet and at what scale, frozen and JSON round-trippable."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd_ovopt._config import JsonConfig
from sd_ovopt._validation import check_float
from sd_ovopt.errors import InvalidConfigError, ModelNotFoundError

__all__ = ["LoRAConfig", "file_sha256", "refuse_unsafe_suffix"]

#: File endings of pickled checkpoints: loading them can run code, so they are refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, as 64 lowercase hex digits; ``ModelNotFoundError`` if it is not a file."""
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise ModelNotFoundError(
            f"the LoRA file {str(file)!r} {what}; pass the path of a .safetensors file (in a diffusers LoRA "
            "folder it is usually pytorch_lora_weights.safetensors)."
        )
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_unsafe_suffix(path: str, field: str) -> None:
    """Refuse a path that does not end in ``.safetensors`` (pickles first, with how to convert them)."""
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InvalidConfigError(
            f"{field}={path!r} is a pickled checkpoint ({suffix}); sd_ovopt reads LoRA files in the "
            "safetensors format only, so that nothing untrusted is unpickled. Use the adapter's "
            ".safetensors file, or convert one you trust: safetensors.torch.save_file(torch.load(path, "
            "weights_only=True), 'adapter.safetensors')."
        )
    if suffix != ".safetensors":
        raise InvalidConfigError(
            f"{field}={path!r}; pass a LoRA file in the safetensors format (a path ending in .safetensors)."
        )


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, (list, tuple)):
        return (value,)
    return tuple(value)


def _spread(field: str, value: Any, count: int) -> tuple[Any, ...]:
    """One value for every adapter, or one per adapter."""
    values = _as_tuple(value)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise InvalidConfigError(
            f"LoRAConfig.{field} holds {len(values)} values for {count} files; pass one value for all of "
            "them or one per file."
        )
    return values


@dataclass(frozen=True)
class LoRAConfig(JsonConfig):
    """LoRA adapters fused into the UNet's weights before any other method (ToMe, calibration, INT8,
    export): the exported IR holds plain, fused weights, so no runtime ever sees a LoRA layer.

    One config holds one adapter or several (a method appears once in ``methods=[...]``): ``path`` is a
    file or a sequence of files, fused in that order; ``scale``, ``name`` and ``sha256`` are one value for
    all of them or one per file. Every field is stored as a tuple, one entry per file.

    Attributes:
        path: The ``.safetensors`` LoRA file(s): diffusers/PEFT (``unet.….lora_A.weight``) or kohya
            (``lora_unet_…lora_down.weight``) keys. Pickled files (``.bin``, ``.pt``, ``.ckpt``) are refused:
            nothing untrusted is unpickled. Kept as given, for the record; the hash is what identifies it.
        scale: Strength of each adapter (``lora_scale`` of diffusers' ``fuse_lora``); any finite number,
            0 leaves the UNet as it is.
        name: A label per adapter for records and logs (default: the file's name without ``.safetensors``).
        sha256: The file's sha256; computed from the file when not given. Fusing refuses a file whose
            contents no longer match, and a record read on another machine needs no file.
        ignore_text_encoder: A file that also carries text-encoder LoRA layers is refused (only the UNet
            is fused); ``True`` fuses its UNet layers and leaves the text encoder as it is.
        version: Layout version of this config, for serialized copies.

    Example:
        >>> from sd_ovopt import LoRAConfig
        >>> config = LoRAConfig("lcm-lora-sdv1-5.safetensors", scale=1.0)  # doctest: +SKIP
        >>> config.name, config.scale  # doctest: +SKIP
        (('lcm-lora-sdv1-5',), (1.0,))
    """

    path: Any
    scale: Any = 1.0
    name: Any = None
    sha256: Any = None
    ignore_text_encoder: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        paths = tuple(os.fspath(p) if isinstance(p, os.PathLike) else p for p in _as_tuple(self.path))
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise InvalidConfigError(
                f"LoRAConfig.path={self.path!r}; pass the path of a .safetensors file, or a list of them."
            )
        for path in paths:
            refuse_unsafe_suffix(path, "LoRAConfig.path")
        scales = tuple(
            check_float("LoRAConfig.scale", s, hint="Use e.g. 1.0 (0: no change).")
            for s in _spread("scale", self.scale, len(paths))
        )
        names = self._names(paths)
        hashes = self._hashes(paths)
        if not isinstance(self.ignore_text_encoder, bool):
            raise InvalidConfigError(
                f"LoRAConfig.ignore_text_encoder={self.ignore_text_encoder!r}; it must be True or False."
            )
        if self.version != 1:
            raise InvalidConfigError(f"LoRAConfig.version={self.version!r}; this sd_ovopt reads version 1.")
        for field, value in (("path", paths), ("scale", scales), ("name", names), ("sha256", hashes)):
            object.__setattr__(self, field, value)

    def _names(self, paths: tuple[str, ...]) -> tuple[str, ...]:
        if self.name is None:
            return tuple(Path(p).stem for p in paths)
        names = _spread("name", self.name, len(paths))
        if not all(isinstance(n, str) and n for n in names):
            raise InvalidConfigError(f"LoRAConfig.name={self.name!r}; use non-empty strings (or None).")
        return names

    def _hashes(self, paths: tuple[str, ...]) -> tuple[str, ...]:
        if self.sha256 is None:
            return tuple(file_sha256(p) for p in paths)
        hashes = _as_tuple(self.sha256)
        if len(hashes) != len(paths) or not all(isinstance(h, str) and _SHA256.fullmatch(h) for h in hashes):
            raise InvalidConfigError(
                f"LoRAConfig.sha256={self.sha256!r}; pass one sha256 per file (64 lowercase hex digits), "
                "or None to compute them from the files."
            )
        return hashes

    @property
    def adapters(self) -> tuple[tuple[str, float, str, str], ...]:
        """``(path, scale, name, sha256)`` of each adapter, in fusing order."""
        return tuple(zip(self.path, self.scale, self.name, self.sha256, strict=True))
