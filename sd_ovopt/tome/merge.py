"""Token merging as pure tensor functions that convert to OpenVINO.

The algorithm is tomesd's bipartite soft matching over an ``sx x sy`` stride partition: one destination
token per cell, every other token a source; each source finds its most similar destination (cosine
similarity); the ``r`` most similar sources are averaged into their destinations; after the wrapped layer
every merged source gets a copy of its destination's output back.

Written for export at any resolution: the partition and ``r`` are integer tensor arithmetic on the token
grid's size, so a traced graph computes them from the run-time shape (OpenVINO folds them to constants
once the model is compiled at a static size), and the same IR merges the same fraction at 512x512,
768x512 or 1024x1024. The graph holds only Gathers of token rows, MatMul, ReduceMax/TopK, small integer
scatters and an accumulating row scatter and divide for the mean (``scatter_reduce`` with ``"mean"`` does
not export well). No random op, no data-dependent control flow.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import torch

from sd_ovopt.errors import ShapeMismatchError

__all__ = [
    "DownsamplePlan",
    "MergePlan",
    "active_grid",
    "downsample_tokens",
    "merge",
    "num_merged",
    "partition_2d",
    "plan_merge",
    "unmerge",
]


class DownsamplePlan(NamedTuple):
    """Token grid of a block and the stride of its key/value grid (``method="downsample"``)."""

    h: int
    w: int
    factor: int


def downsample_tokens(x: torch.Tensor, plan: DownsamplePlan) -> torch.Tensor:
    """``[B, h*w, C]`` → ``[B, ceil(h/f)*ceil(w/f), C]``: every ``f``-th token of the grid in each direction.

    A strided slice of a reshape: no gather, no scatter, nothing data-dependent (ToDo's "nearest").
    """
    batch, _, channels = x.shape
    grid = x.transpose(1, 2).reshape(batch, channels, plan.h, plan.w)
    return grid[:, :, :: plan.factor, :: plan.factor].flatten(2).transpose(1, 2)


class MergePlan(NamedTuple):
    """Indices of one merge, shared by every layer that merges around the same block input.

    Attributes:
        unm_tok: ``[B, Ns - r]`` token positions of the sources kept unmerged.
        mrg_tok: ``[B, r]`` token positions of the merged sources.
        dst_tok: ``[Nd]`` token positions of the destinations (constant).
        mrg_dst: ``[B, r]`` destination slot (``0..Nd-1``) each merged source goes to.
        count: ``[B, Nd, 1]`` tokens averaged into each destination (itself included).
        inverse: ``[B, N]`` where each original position finds its value in ``[unm, dst, copies]``.
    """

    unm_tok: torch.Tensor
    mrg_tok: torch.Tensor
    dst_tok: torch.Tensor
    mrg_dst: torch.Tensor
    count: torch.Tensor
    inverse: torch.Tensor


def active_grid(latent_hw: tuple[Any, Any], num_tokens: Any, max_downsample: int) -> tuple[Any, Any] | None:
    """The ``(h, w)`` token grid of a block, or ``None`` when it is downsampled more than allowed.

    Which blocks merge depends on the UNet's structure only; the grid is integer arithmetic on the latent
    size, so it stays a function of the run-time shape while tracing.
    """
    height, width = latent_hw
    downsample = math.ceil(math.sqrt(int(height * width) // int(num_tokens)))
    if downsample > max_downsample:
        return None
    return (height + downsample - 1) // downsample, (width + downsample - 1) // downsample


#: A seeded layout is drawn once for a grid of this many cells a side and cut to the block's grid, so that
#: a block's layout does not depend on the image size it runs at (4096 pixels a side with 2x2 cells).
MAX_SEEDED_CELLS = 256


@functools.lru_cache(maxsize=8)
def _seeded_choice(sx: int, sy: int, seed: int) -> torch.Tensor:
    """Which token of each ``sx x sy`` cell is the destination, for every cell of the largest grid."""
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, sx * sy, size=(MAX_SEEDED_CELLS, MAX_SEEDED_CELLS), dtype=np.int64)
    return torch.from_numpy(choice.astype(np.int8))


def partition_2d(
    h: Any, w: Any, sx: int, sy: int, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an ``h x w`` token grid into (sources, destinations): one destination per ``sx x sy`` cell.

    ``seed=None`` picks each cell's top-left token; an integer picks one per cell from that seed (the same
    token of a given cell at every grid size). Rows and columns left over when ``h``/``w`` do not divide
    by ``sy``/``sx`` are sources, as in tomesd. ``h`` and ``w`` may be traced sizes: the result is then
    computed in the graph from the run-time shape. Returns two sorted int64 tensors of flat positions.
    """
    cells_h, cells_w = h // sy, w // sx
    rows = torch.arange(cells_h)[:, None] * sy
    cols = torch.arange(cells_w)[None, :] * sx
    if seed is not None:
        if int(cells_h) > MAX_SEEDED_CELLS or int(cells_w) > MAX_SEEDED_CELLS:
            raise ShapeMismatchError(
                f"a token grid of {int(cells_h)}x{int(cells_w)} cells is larger than a seeded ToMe layout covers "
                f"({MAX_SEEDED_CELLS} a side); use ToMeConfig(seed=None) at this size."
            )
        choice = _seeded_choice(sx, sy, seed)[:cells_h, :cells_w].long()
        rows, cols = rows + choice // sx, cols + choice % sx
    dst = (rows * w + cols).flatten().sort().values
    num_tokens = h * w
    is_dst = torch.zeros(num_tokens, dtype=torch.int64).scatter(0, dst, torch.ones_like(dst))
    order = torch.argsort(is_dst * num_tokens + torch.arange(num_tokens))  # sources first, each part sorted
    return order[: num_tokens - dst.shape[0]], dst


def num_merged(num_tokens: Any, ratio: float) -> Any:
    """Tokens removed: ``floor(N * ratio)`` in exact integer arithmetic (ratio as a fraction of
    denominator at most 10000), so a traced graph computes it from the run-time token count. It never
    exceeds the number of sources, because ``ratio <= 1 - 1/(sx*sy)``."""
    fraction = Fraction(ratio).limit_denominator(10_000)
    return num_tokens * fraction.numerator // fraction.denominator


@torch.no_grad()
def plan_merge(metric: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor, r: int) -> MergePlan:
    """Match every source to its most similar destination and keep the ``r`` best matches.

    Args:
        metric: ``[B, N, C]`` token features the similarity is measured on.
        src_idx: ``[Ns]`` source positions (from :func:`partition_2d`).
        dst_idx: ``[Nd]`` destination positions.
        r: Number of sources to merge, ``1 <= r <= Ns``.
    """
    batch, num_tokens, _ = metric.shape
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a = metric.index_select(1, src_idx)
    b = metric.index_select(1, dst_idx)
    scores = a @ b.transpose(-1, -2)
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)
    unm, mrg = edge_idx[:, r:], edge_idx[:, :r]
    unm_tok, mrg_tok = src_idx[unm], src_idx[mrg]
    mrg_dst = node_idx.gather(1, mrg)
    count = torch.ones(batch, dst_idx.shape[0], 1, dtype=metric.dtype, device=metric.device)
    count = count.scatter_add(1, mrg_dst[..., None], torch.ones_like(mrg_dst[..., None], dtype=metric.dtype))
    order = torch.cat([unm_tok, dst_idx.expand(batch, -1), mrg_tok], dim=1)
    positions = torch.arange(num_tokens, device=metric.device).expand(batch, -1)
    inverse = torch.zeros_like(order).scatter(1, order, positions)
    return MergePlan(unm_tok, mrg_tok, dst_idx, mrg_dst, count, inverse)


def _flat_rows(index: torch.Tensor, num_tokens: Any) -> torch.Tensor:
    """``[B, K]`` token positions → ``[B*K]`` row numbers in the ``[B*N, C]`` flattening of the tokens."""
    offsets = torch.arange(index.shape[0], device=index.device)[:, None] * num_tokens
    return (index + offsets).reshape(-1)


def _take_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b], :]`` for every batch row: ``[B, N, C]`` and ``[B, K]`` → ``[B, K, C]``.

    Written as one ``index_select`` of whole rows of the flattened tokens rather than ``gather`` with the
    index broadcast over channels: OpenVINO runs the first as a Gather of rows, the second as a
    GatherElements of single values behind a Broadcast of the index, about 4x slower at 512x512.
    """
    batch, num_tokens, channels = x.shape
    rows = _flat_rows(index, num_tokens)
    return x.reshape(-1, channels).index_select(0, rows).reshape(batch, -1, channels)


def _add_tokens(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` with ``values[b, k]`` added to token ``index[b, k]`` of row ``b`` (repeats accumulate).

    An accumulating ``index_put_`` on the flattened tokens: OpenVINO runs it as a ScatterNDUpdate of
    whole rows, about 10x faster than the element-wise ScatterElementsUpdate ``scatter_add`` becomes.
    """
    batch, num_tokens, channels = x.shape
    out = x.reshape(-1, channels).clone()
    out.index_put_((_flat_rows(index, num_tokens),), values.reshape(-1, channels), accumulate=True)
    return out.reshape(batch, num_tokens, channels)


def merge(x: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """``[B, N, C]`` → ``[B, N - r, C]``: unmerged sources, then destinations averaged with their sources."""
    unm = _take_tokens(x, plan.unm_tok)
    src = _take_tokens(x, plan.mrg_tok)
    dst = _add_tokens(x.index_select(1, plan.dst_tok), plan.mrg_dst, src) / plan.count
    return torch.cat([unm, dst], dim=1)


def unmerge(y: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """``[B, N - r, C]`` → ``[B, N, C]``: every merged source gets a copy of its destination's value."""
    dst = y[:, plan.unm_tok.shape[1] :]
    copies = _take_tokens(dst, plan.mrg_dst)
    return _take_tokens(torch.cat([y, copies], dim=1), plan.inverse)
