"""Training data for quantization-aware training: captioned images, a seeded order, frozen encoders.

The folder layout is the one diffusers' text-to-image training reads: images plus ``metadata.jsonl``
with one JSON object per line, ``{"file_name": "0001.png", "text": "a red square"}``. Which image a
step sees, and its noise, are pure functions of the seed and the step (:func:`sample_indices`,
:func:`step_generator`), so a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sd_ovopt.errors import InvalidDatasetError

__all__ = ["METADATA_FILE", "CaptionedImageFolder", "encode_batch", "sample_indices", "step_generator"]

METADATA_FILE = "metadata.jsonl"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_LAYOUT = (
    f"Write {METADATA_FILE} next to the images, one JSON object per line: "
    '{"file_name": "0001.png", "text": "a red square"}.'
)


class CaptionedImageFolder:
    """An image folder with ``metadata.jsonl`` captions, checked up front.

    Args:
        folder: The data folder.
        resolution: Images are resized (shorter side) and centre-cropped to ``resolution`` squared.
        caption_column: The caption key of each metadata line.

    Example:
        >>> from sd_ovopt.quantization.qat_data import CaptionedImageFolder
        >>> data = CaptionedImageFolder("pokemon", resolution=512)  # doctest: +SKIP
        >>> image, caption = data[0]  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, *, resolution: int, caption_column: str = "text") -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.resolution = resolution
        if not self.folder.is_dir():
            raise InvalidDatasetError(
                f"training data folder {self.folder} does not exist or is not a folder."
            )
        metadata = self.folder / METADATA_FILE
        if not metadata.is_file():
            images = [p for p in self.folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES]
            what = f"{len(images)} images but no captions" if images else "no images and no captions"
            raise InvalidDatasetError(f"{self.folder} has {what} ({METADATA_FILE} is missing). {_LAYOUT}")
        self.items = self._read(metadata, caption_column)

    def _read(self, metadata: Path, caption_column: str) -> list[tuple[Path, str]]:
        items = []
        try:
            lines = metadata.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InvalidDatasetError(f"{metadata} is not UTF-8 text ({exc}). {_LAYOUT}") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidDatasetError(f"{metadata} line {number} is not JSON ({exc}). {_LAYOUT}") from exc
            name = row.get("file_name") if isinstance(row, dict) else None
            caption = row.get(caption_column) if isinstance(row, dict) else None
            if not isinstance(name, str) or not isinstance(caption, str):
                raise InvalidDatasetError(
                    f"{metadata} line {number} needs string fields 'file_name' and {caption_column!r}, "
                    f"got {line.strip()[:120]!r}. {_LAYOUT}"
                )
            path = Path(os.path.normpath(self.folder / name))
            if self.folder not in path.parents:
                raise InvalidDatasetError(
                    f"{metadata} line {number}: file_name {name!r} leads outside {self.folder}; name images by "
                    "their path inside the data folder, e.g. '0001.png' or 'images/0001.png'."
                )
            items.append((path, caption))
        if not items:
            raise InvalidDatasetError(f"{metadata} lists no images. {_LAYOUT}")
        missing = [str(path.relative_to(self.folder)) for path, _ in items if not path.is_file()]
        if missing:
            raise InvalidDatasetError(
                f"{len(missing)} images named in {metadata} do not exist in {self.folder}, e.g. {missing[:3]}."
            )
        _check_headers([path for path, _ in items])
        return items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def captions(self) -> list[str]:
        return [caption for _, caption in self.items]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        """The image as a ``[3, resolution, resolution]`` tensor in ``[-1, 1]``, and its caption."""
        from PIL import Image

        path, caption = self.items[index]
        with _open_image(path) as opened:
            image = opened.convert("RGB")
        size = self.resolution
        scale = size / min(image.size)
        resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BILINEAR)
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        return pixels.permute(2, 0, 1).contiguous(), caption

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[str]]:
        """Images stacked to ``[len(indices), 3, resolution, resolution]`` and their captions."""
        images, captions = zip(*(self[i] for i in indices), strict=True)
        return torch.stack(images), list(captions)


def sample_indices(num_items: int, seed: int, start: int, count: int) -> list[int]:
    """Items ``start .. start + count - 1`` of an endless stream of epochs, each a permutation from (seed, epoch)."""
    indices: list[int] = []
    epoch, permutation = -1, None
    for n in range(start, start + count):
        if n // num_items != epoch:
            epoch = n // num_items
            permutation = torch.randperm(num_items, generator=step_generator(seed, epoch)).tolist()
        indices.append(permutation[n % num_items])  # type: ignore[index]
    return indices


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (e.g. step, micro-batch, process) by hashing."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@torch.no_grad()
def encode_batch(
    pipeline: Any,
    images: torch.Tensor,
    captions: list[str],
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (VAE sample, or its mean without ``generator``, times the scaling factor) and text states."""
    vae, text_encoder, tokenizer = pipeline.vae, pipeline.text_encoder, pipeline.tokenizer
    device = next(vae.parameters()).device
    distribution = vae.encode(images.to(device, vae.dtype)).latent_dist
    latents = distribution.sample(generator) if generator is not None else distribution.mode()
    latents = latents.float() * vae.config.scaling_factor
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    states = text_encoder(ids.to(next(text_encoder.parameters()).device), return_dict=False)[0]
    return latents, states.float()


def _check_headers(paths: list[Path]) -> None:
    """Every image's header read (not its pixels: a fraction of a millisecond each), so that a file that is
    not an image fails here, before the models load, rather than steps into training."""
    for path in paths:
        with _open_image(path):
            pass


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)``; what PIL cannot read in the block (not an image, cut short) raises
    :class:`InvalidDatasetError` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            yield image
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InvalidDatasetError(f"cannot read image {path}: {exc}") from exc
