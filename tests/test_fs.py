"""sd_ovopt._fs: atomic single files and folders, and the shared validators and config mixin."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import pytest

from sd_ovopt._config import JsonConfig
from sd_ovopt._fs import atomic_file, atomic_output_dir
from sd_ovopt._validation import check_choice, check_float, check_int, check_keywords
from sd_ovopt.errors import InvalidConfigError, OutputExistsError


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    with atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_atomic_file_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    from PIL import Image

    out = tmp_path / "image.png"
    with atomic_file(out, suffix=out.suffix) as tmp:
        assert tmp.suffix == ".png"
        Image.new("RGB", (4, 4)).save(tmp)
    assert Image.open(out).size == (4, 4)


def test_atomic_output_dir_leaves_nothing_on_failure_and_refuses_existing(tmp_path):
    with pytest.raises(ValueError), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("x")
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    with pytest.raises(OutputExistsError), atomic_output_dir(tmp_path / "out"):
        pass


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [(0, {"minimum": 1}, ">= 1"), (True, {}, "integer"), (2.0, {}, "integer"), (9, {"maximum": 8}, "<= 8")],
)
def test_check_int_names_the_field_and_the_rule(value, bounds, message):
    with pytest.raises(InvalidConfigError, match=message) as info:
        check_int("steps", value, **bounds)
    assert "steps=" in str(info.value)
    assert check_int("steps", 3, minimum=1, maximum=8) == 3


def test_check_choice():
    assert check_choice("mode", "full", ("full", "hybrid")) == "full"
    with pytest.raises(InvalidConfigError, match="'full', 'hybrid'"):
        check_choice("mode", "half", ("full", "hybrid"))


def test_json_config_round_trip_and_unknown_keys():
    @dataclass(frozen=True)
    class Example(JsonConfig):
        ratio: float = 0.5
        sizes: tuple[int, ...] = (1, 2)

    data = Example(ratio=0.25).to_dict()
    assert data == {"ratio": 0.25, "sizes": [1, 2]}
    assert Example.from_dict({"ratio": 0.25}) == Example(ratio=0.25)
    with pytest.raises(InvalidConfigError, match="unknown fields"):
        Example.from_dict({"ratio": 0.1, "colour": "red"})


def test_a_folder_that_appears_during_a_write_is_kept_and_the_write_refused(tmp_path):
    """Without overwrite, the commit never replaces what another writer made meanwhile."""
    out = tmp_path / "out"
    with (
        pytest.raises(OutputExistsError, match="appeared while this write ran"),
        atomic_output_dir(out) as tmp,
    ):
        (tmp / "mine.txt").write_text("this write")
        out.mkdir()
        (out / "theirs.txt").write_text("the other writer's result")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial left behind


def test_two_concurrent_writers_of_one_output_one_wins_and_nothing_is_lost(tmp_path):
    import threading

    out, barrier, results = tmp_path / "out", threading.Barrier(2), {}

    def write(name: str) -> None:
        try:
            with atomic_output_dir(out) as tmp:
                (tmp / "writer.txt").write_text(name)
                barrier.wait(timeout=30)  # both have passed the up-front check before either commits
            results[name] = "committed"
        except OutputExistsError:
            results[name] = "refused"

    threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == ["committed", "refused"]
    winner = next(name for name, result in results.items() if result == "committed")
    assert (out / "writer.txt").read_text() == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_and_an_empty_folder_is_filled(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_folders_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "part").mkdir()
        mkdir_mode = tmp_path / "plain"
        mkdir_mode.mkdir()
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
    assert mode == 0o777 & ~umask == stat.S_IMODE(mkdir_mode.stat().st_mode)


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (float("inf"), {}, "finite"),
        (float("nan"), {}, "finite"),
        ("1e-5", {}, "must be a number"),
        (True, {}, "must be a number"),
        (0.0, {"minimum": 0, "open_minimum": True}, "> 0"),
        (2.0, {"maximum": 1}, "<= 1"),
    ],
)
def test_check_float_refuses_non_finite_and_out_of_range(value, bounds, message):
    with pytest.raises(InvalidConfigError, match=message) as info:
        check_float("learning_rate", value, **bounds)
    assert "learning_rate=" in str(info.value)


def test_numpy_and_zero_d_tensor_scalars_are_accepted_as_python_numbers():
    import numpy as np
    import torch

    assert check_int("steps", np.int64(4), minimum=1) == 4 and type(check_int("steps", np.int32(4))) is int
    assert check_float("scale", np.float32(0.5)) == 0.5 and type(check_float("scale", np.float64(2))) is float
    assert check_float("scale", torch.tensor(1.5)) == 1.5
    with pytest.raises(InvalidConfigError, match="integer"):
        check_int("steps", np.float32(4.0))
    with pytest.raises(InvalidConfigError, match="finite"):
        check_float("scale", np.float32("nan"))


def test_check_keywords_names_the_closest_valid_one():
    check_keywords({"num_inference_steps": 4}, ("num_inference_steps", "guidance_scale"), where="the call")
    with pytest.raises(InvalidConfigError, match=r"'num_inference_step'.*Did you mean 'num_inference_steps'"):
        check_keywords({"num_inference_step": 4}, ("num_inference_steps", "guidance_scale"), where="the call")
