"""DeepCacheConfig validation and round trip; the refresh schedules; StepTracker's view of a run."""

import itertools

import pytest
import torch

from sd_ovopt import DeepCacheConfig, InvalidConfigError
from sd_ovopt.deepcache import StepTracker


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "interval=0"),
        ({"interval": 2.5}, "interval=2.5"),
        ({"interval": True}, "interval=True"),
        ({"branch": -1}, "branch=-1"),
        ({"schedule": "cosine"}, "schedule='cosine'"),
        ({"version": 2}, "version=2"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(kwargs, message):
    with pytest.raises(InvalidConfigError, match=message):
        DeepCacheConfig(**kwargs)


def test_round_trips_through_a_dict_and_refuses_unknown_keys():
    config = DeepCacheConfig(interval=5, branch=2, schedule="quadratic")
    assert DeepCacheConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidConfigError, match="unknown fields"):
        DeepCacheConfig.from_dict({**config.to_dict(), "ratio": 1})


def test_uniform_refreshes_every_interval_steps():
    assert DeepCacheConfig(interval=3).refresh_steps(10) == (0, 3, 6, 9)
    assert DeepCacheConfig(interval=1).refresh_steps(4) == (0, 1, 2, 3)
    config = DeepCacheConfig(interval=3)
    assert [config.is_refresh(i, 10) for i in range(10)] == [i in (0, 3, 6, 9) for i in range(10)]


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 50])
@pytest.mark.parametrize("interval", [2, 3, 5])
def test_quadratic_has_as_many_refreshes_as_uniform_denser_early(steps, interval):
    quadratic = DeepCacheConfig(interval=interval, schedule="quadratic").refresh_steps(steps)
    uniform = DeepCacheConfig(interval=interval).refresh_steps(steps)
    assert len(quadratic) == len(uniform) and quadratic[0] == 0
    assert all(b > a for a, b in itertools.pairwise(quadratic)) and quadratic[-1] < steps
    half = [s for s in quadratic if s < steps / 2]
    assert len(half) >= len([s for s in uniform if s < steps / 2])  # at least as many in the first half


def test_tracker_follows_runs_by_the_timesteps_position():
    timesteps = torch.tensor([900, 700, 500, 300, 100])
    tracker = StepTracker(DeepCacheConfig(interval=2))
    assert [tracker.refresh(t, timesteps) for t in timesteps] == [True, False, True, False, True]
    # a new run (the step falls back) refreshes first, then counts from there
    assert [tracker.refresh(t, timesteps) for t in timesteps[:3]] == [True, False, True]
    # img2img starts later in the schedule: the run counts from its first step, as deepcache does
    tracker.reset()
    assert [tracker.refresh(t, timesteps) for t in timesteps[1:]] == [True, False, True, False]
    assert tracker.refresh(torch.tensor(123), timesteps) is True  # not a scheduled step: full UNet
    assert tracker.refresh(700, None) is True  # no scheduler: full UNet
