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
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sd_ovopt._validation import check_int
from sd_ovopt.errors import InvalidConfigError, InvalidDatasetError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "METADATA_FILE",
    "CaptionedImageFolder",
    "encode_batch",
    "sample_indices",
    "step_generator",
]

METADATA_FILE = "metadata.jsonl"
#: The most pixels a training image may have (8192 x 8192, 64 megapixels): far above any training
#: resolution, and below PIL's own decompression-bomb threshold. A larger image (or a file whose header
#: claims one, to exhaust memory when decoded) is refused from its header, without decoding it.
MAX_IMAGE_PIXELS = 8192 * 8192
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
        self.resolution = check_int("CaptionedImageFolder resolution", resolution, minimum=1)
        if not isinstance(caption_column, str) or not caption_column:
            raise InvalidConfigError(
                f"CaptionedImageFolder caption_column={caption_column!r}; name the caption key of "
                f"{METADATA_FILE} (default 'text')."
            )
        self.folder = Path(folder).expanduser().resolve()
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

        path, caption = self.items[index]
        with _open_image(path) as opened:
            image = opened.convert("RGB")
        # The centre square, resized straight to the resolution: no intermediate as large as the image
        # scaled (a 1 x 100000 strip would otherwise become 512 x 51 million pixels).
        side = min(image.size)
        left, top = (image.width - side) / 2, (image.height - side) / 2
        box = (left, top, left + side, top + side)
        image = image.resize((self.resolution,) * 2, Image.Resampling.BILINEAR, box=box)
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
    not an image, or too large, fails here, before the models load, rather than steps into training."""
    for path in paths:
        with _open_image(path):
            pass


def _too_large(path: Path, size: str) -> InvalidDatasetError:
    return InvalidDatasetError(
        f"image {path} has too many pixels ({size}): training images may have at most MAX_IMAGE_PIXELS = "
        f"{MAX_IMAGE_PIXELS} (8192 x 8192), and decoding it could exhaust memory. Downscale it (e.g. to 1024 "
        f"pixels on the shorter side) or remove it from {METADATA_FILE}."
    )


#: What PIL raises for a file it cannot read: not an image (UnidentifiedImageError is an OSError), cut
#: short, a malformed chunk (ValueError, SyntaxError, struct.error, ...), a text chunk that inflates too far.
_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, IndexError, struct.error)


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)``, refused from its header if over :data:`MAX_IMAGE_PIXELS`; what PIL cannot
    read in the block (not an image, cut short, malformed, a decompression bomb) raises
    :class:`InvalidDatasetError` naming the file."""

    try:
        with warnings.catch_warnings():
            # Our own limit, lower than PIL's, decides: PIL's warning is not for the user to act on.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as exc:  # its header claims more than twice PIL's limit
        raise _too_large(path, f"PIL: {exc}") from exc
    except _READ_ERRORS as exc:
        raise InvalidDatasetError(f"cannot read image {path}: {exc}") from exc
    try:
        with opened as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise _too_large(path, f"{image.width} x {image.height}")
            yield image
    except InvalidDatasetError:
        raise
    except _READ_ERRORS as exc:
        raise InvalidDatasetError(f"cannot read image {path}: {exc}") from exc
