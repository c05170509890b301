"""The one seeding rule of every fidelity measurement: the noise of image ``index`` of a run with ``seed``.

Image ``index`` (its place in the prompt list) of a run with seed ``s`` draws its initial noise from
``torch.Generator().manual_seed(s * SEED_STRIDE + index)`` on the CPU. So an image's noise does not depend
on how prompts are batched, and two seeds never share noise (with ``seed + index``, seed 1's first image
would reuse seed 0's second noise, and the spread between seeds would read smaller than it is).
"""

from __future__ import annotations

import torch

from sd_ovopt._validation import check_int

__all__ = ["SEED_STRIDE", "image_seed", "noise_generator"]

#: Images per seed the rule keeps apart: a run holds at most this many prompts.
SEED_STRIDE = 1_000_000


def image_seed(seed: int, index: int) -> int:
    """The integer seed of image ``index`` in a run with ``seed`` (see the module docstring)."""
    seed = check_int("seed", seed, minimum=0)  # numpy integers accepted, booleans refused
    index = check_int("index", index, minimum=0, maximum=SEED_STRIDE - 1)
    return seed * SEED_STRIDE + index


def noise_generator(seed: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for image ``index`` of a run with ``seed``."""

    return torch.Generator().manual_seed(image_seed(seed, index))
