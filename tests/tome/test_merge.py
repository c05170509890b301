"""Unit tests of the pure ToMe tensor functions and the config."""

import json

import pytest
import torch

from sd_ovopt import InvalidConfigError, ToMeConfig
from sd_ovopt.tome import merge as ops


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": 0.0},
        {"ratio": 0.8},
        {"ratio": True},
        {"ratio": "0.5"},
        {"sx": 0},
        {"sx": 1, "sy": 1},
        {"max_downsample": 3},
        {"merge_attn": False},
        {"seed": -1},
        {"seed": 1.5},
        {"version": 2},
    ],
)
def test_config_rejects_bad_values_with_the_field_name(kwargs):
    field = next(iter(kwargs))
    with pytest.raises(InvalidConfigError, match=field if field != "merge_attn" else "at least one"):
        ToMeConfig(**kwargs)


def test_config_is_frozen_and_round_trips_json():
    cfg = ToMeConfig(ratio=0.4, max_downsample=2, seed=7, merge_mlp=True)
    assert ToMeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(AttributeError):
        cfg.ratio = 0.1
    with pytest.raises(InvalidConfigError, match="unknown"):
        ToMeConfig.from_dict({"ratio": 0.5, "use_rand": True})
    assert ToMeConfig(ratio=0.875, sx=4, sy=2).ratio == 0.875  # limit is 1 - 1/(sx*sy)


@pytest.mark.parametrize(("h", "w", "sx", "sy"), [(8, 8, 2, 2), (7, 9, 2, 2), (8, 6, 4, 2), (5, 5, 3, 3)])
@pytest.mark.parametrize("seed", [None, 0, 5])
def test_partition_has_one_destination_per_cell(h, w, sx, sy, seed):
    src, dst = ops.partition_2d(h, w, sx, sy, seed)
    assert src.dtype == dst.dtype == torch.int64
    assert torch.equal(src, src.sort().values) and torch.equal(dst, dst.sort().values)
    assert sorted(torch.cat([src, dst]).tolist()) == list(range(h * w))
    rows, cols = dst // w, dst % w
    assert len(dst) == (h // sy) * (w // sx)
    cells = set(zip((rows // sy).tolist(), (cols // sx).tolist(), strict=True))
    assert len(cells) == len(dst)
    assert (rows < (h // sy) * sy).all() and (cols < (w // sx) * sx).all()
    if seed is None:
        assert (rows % sy == 0).all() and (cols % sx == 0).all()


def test_seeded_partition_is_reproducible_and_differs_from_top_left():
    a = ops.partition_2d(16, 16, 2, 2, seed=3)
    b = ops.partition_2d(16, 16, 2, 2, seed=3)
    c = ops.partition_2d(16, 16, 2, 2, seed=None)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])


def test_seeded_partition_keeps_each_cells_choice_at_every_grid_size():
    _, small = ops.partition_2d(8, 8, 2, 2, seed=3)
    _, large = ops.partition_2d(16, 24, 2, 2, seed=3)
    small_cells = {(int(p) // 8 // 2, int(p) % 8 // 2): (int(p) // 8 % 2, int(p) % 8 % 2) for p in small}
    large_cells = {(int(p) // 24 // 2, int(p) % 24 // 2): (int(p) // 24 % 2, int(p) % 24 % 2) for p in large}
    assert all(large_cells[cell] == choice for cell, choice in small_cells.items())


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75])
def test_merged_count_is_the_floor_of_tokens_times_ratio(ratio):
    for num_tokens in (16, 64, 100, 256, 1024, 1536, 4096, 6144, 16384):
        assert ops.num_merged(num_tokens, ratio) == int(num_tokens * ratio + 1e-9)


def _plan(x, h=8, w=8, ratio=0.5, seed=None):
    src, dst = ops.partition_2d(h, w, 2, 2, seed)
    r = ops.num_merged(x.shape[1], ratio)
    return ops.plan_merge(x, src, dst, r), src, dst, r


def test_merge_removes_r_tokens_and_averages_like_scatter_reduce_mean():
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(0))
    plan, _, dst, r = _plan(x)
    merged = ops.merge(x, plan)
    assert merged.shape == (2, 64 - r, 16)
    # reference: tomesd's scatter_reduce(mean, include_self=True)
    mrg_src = x.gather(1, plan.mrg_tok[..., None].expand(-1, -1, 16))
    ref_dst = x[:, dst].scatter_reduce(1, plan.mrg_dst[..., None].expand(-1, -1, 16), mrg_src, reduce="mean")
    n_unm = plan.unm_tok.shape[1]
    torch.testing.assert_close(merged[:, n_unm:], ref_dst)
    torch.testing.assert_close(merged[:, :n_unm], x.gather(1, plan.unm_tok[..., None].expand(-1, -1, 16)))


def test_unmerge_of_merge_keeps_unmerged_tokens_and_copies_destinations():
    x = torch.randn(3, 64, 8, generator=torch.Generator().manual_seed(1))
    plan, _, dst, _ = _plan(x, ratio=0.3)
    merged = ops.merge(x, plan)
    restored = ops.unmerge(merged, plan)
    assert restored.shape == x.shape
    for b in range(3):
        unm = plan.unm_tok[b]
        torch.testing.assert_close(restored[b, unm], x[b, unm])
        n_unm = unm.shape[0]
        torch.testing.assert_close(restored[b, dst], merged[b, n_unm:])
        torch.testing.assert_close(restored[b, plan.mrg_tok[b]], merged[b, n_unm + plan.mrg_dst[b]])


def test_merged_sources_are_the_most_similar_ones():
    x = torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(2))
    src, dst = ops.partition_2d(8, 8, 2, 2)
    x[0, src[0]] = x[0, dst[0]] * 3.0  # an exact duplicate direction of a destination
    plan, *_ = _plan(x, ratio=0.05)
    assert int(src[0]) in plan.mrg_tok[0].tolist()


def test_active_grid_follows_tomesd_downsampling():
    assert ops.active_grid((64, 64), 4096, 1) == (64, 64)
    assert ops.active_grid((64, 64), 1024, 1) is None
    assert ops.active_grid((64, 64), 1024, 2) == (32, 32)
    assert ops.active_grid((15, 15), 64, 2) == (8, 8)
    assert ops.active_grid((64, 96), 1536, 2) == (32, 48)
