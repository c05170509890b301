"""The seeding rule of fidelity measurements: its values, its errors, and generate_images following it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sd_ovopt._seeding import SEED_STRIDE, image_seed, noise_generator
from sd_ovopt.errors import InvalidConfigError
from sd_ovopt.reference import generate_images


@pytest.mark.parametrize(
    ("seed", "index", "expected"),
    [(0, 0, 0), (0, 5, 5), (1, 0, 1_000_000), (3, 7, 3_000_007), (2, SEED_STRIDE - 1, 2_999_999)],
)
def test_image_seed_is_seed_times_a_million_plus_index(seed, index, expected):
    assert SEED_STRIDE == 1_000_000
    assert image_seed(seed, index) == expected


def test_noise_generator_draws_what_manual_seed_draws():
    shape = (1, 4, 16, 16)
    got = torch.randn(shape, generator=noise_generator(2, 9))
    want = torch.randn(shape, generator=torch.Generator().manual_seed(2_000_009))
    assert noise_generator(2, 9).initial_seed() == 2_000_009
    assert noise_generator(2, 9).device == torch.device("cpu")
    assert torch.equal(got, want)


def test_distinct_seeds_never_share_noise():
    # seed + index would give seed 1's first image seed 0's second noise; the rule keeps every pair apart
    assert image_seed(1, 0) != image_seed(0, 1)
    pairs = [(seed, index) for seed in range(10) for index in range(300)]
    assert len({image_seed(seed, index) for seed, index in pairs}) == len(pairs)
    assert not torch.equal(
        torch.randn(8, generator=noise_generator(0, 1)), torch.randn(8, generator=noise_generator(1, 0))
    )


@pytest.mark.parametrize("seed", [-1, 1.0, "0", None, np.float64(1.0)])
def test_bad_seed_is_a_typed_error(seed):
    with pytest.raises(InvalidConfigError, match="seed="):
        image_seed(seed, 0)
    with pytest.raises(ValueError):  # the typed error is also a ValueError
        noise_generator(seed, 0)


@pytest.mark.parametrize("index", [-1, SEED_STRIDE, 2.0, "1", None])
def test_bad_index_is_a_typed_error(index):
    with pytest.raises(InvalidConfigError, match="index="):
        image_seed(0, index)


class _RecordingPipe:
    """Stands in for a pipeline: records each call's generator seeds and returns one marker per prompt."""

    def __init__(self, batch_size: int | None) -> None:
        self.calls: list[list[int]] = []
        if batch_size is not None:  # a static-batch OpenVINO export
            self.compiled_shape = SimpleNamespace(batch_size=batch_size)

    def __call__(self, prompts, *, generator, **kwargs):
        self.calls.append([g.initial_seed() for g in generator])
        return SimpleNamespace(images=[g.initial_seed() for g in generator])


def test_generate_images_seeds_each_prompt_by_its_index_and_pads_with_the_next_indices():
    pipe = _RecordingPipe(batch_size=4)
    out = generate_images(pipe, [f"p{i}" for i in range(5)], seed=2)
    assert pipe.calls == [[2_000_000 + i for i in range(4)], [2_000_000 + i for i in range(4, 8)]]
    assert out == [2_000_000 + i for i in range(5)]  # the padding's images are dropped


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_generate_images_noise_does_not_depend_on_the_batch(batch_size):
    pipe = _RecordingPipe(batch_size=None)
    out = generate_images(pipe, [f"p{i}" for i in range(7)], seed=1, batch_size=batch_size)
    assert out == [image_seed(1, i) for i in range(7)]


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_generate_images_bad_batch_size_is_a_typed_error(batch_size):
    with pytest.raises(InvalidConfigError, match="batch_size="):
        generate_images(_RecordingPipe(None), ["p"], batch_size=batch_size)


def test_generate_images_bad_seed_is_a_typed_error():
    with pytest.raises(InvalidConfigError, match="seed="):
        generate_images(_RecordingPipe(None), ["p"], seed=-1)


def test_generate_images_is_batching_independent_on_the_tiny_pipeline(tiny_pipe):
    tiny_pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue square", "a green triangle", "a cyan diamond"]
    kwargs = {"seed": 3, "num_inference_steps": 2, "guidance_scale": 4.0}
    one = [np.asarray(im, float) for im in generate_images(tiny_pipe, prompts, batch_size=1, **kwargs)]
    four = [np.asarray(im, float) for im in generate_images(tiny_pipe, prompts, batch_size=4, **kwargs)]
    other_seed = np.asarray(generate_images(tiny_pipe, prompts[:1], seed=4, num_inference_steps=2)[0], float)
    for a, b in zip(one, four, strict=True):
        assert np.abs(a - b).max() <= 1.0  # the same noise; batched kernels may round one level apart
    assert np.abs(one[0] - other_seed).mean() > 1.0
