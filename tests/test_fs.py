"""sd_ovopt._fs: atomic single files and folders, and the shared validators and config mixin."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sd_ovopt._config import JsonConfig
from sd_ovopt._fs import atomic_file, atomic_output_dir
from sd_ovopt._validation import check_choice, check_int
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
