"""The compiled-model cache: OpenVINO's CACHE_DIR in a folder of ours, capped, safe to share, never fatal."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sd_ovopt import _compile_cache
from sd_ovopt._compile_cache import (
    DEFAULT_MAX_GB,
    cache_info,
    cache_properties,
    clear_cache,
    compile_with_cache,
    default_cache_dir,
    max_cache_bytes,
    resolve_cache_dir,
    trim_cache,
)
from sd_ovopt.cli import main
from sd_ovopt.errors import InvalidConfigError

INPUT = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads or writes the real home cache."""
    monkeypatch.delenv("SD_OVOPT_CACHE_DIR", raising=False)
    monkeypatch.delenv("SD_OVOPT_CACHE_MAX_GB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def tiny_ir(tmp_path):
    """A two-matmul IR on disk (read back, its node names and so its cache hash are the same every time)."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, 64], np.float32, name="x")
    w = ops.constant(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    y = ops.matmul(ops.relu(ops.matmul(x, w, False, False)), w, False, True)
    xml = tmp_path / "ir" / "tiny.xml"
    ov.save_model(ov.Model([y], [x], "tiny"), xml, compress_to_fp16=False)
    return xml


def _run(xml, config):
    """Compile in a fresh Core; return (loaded from the cache, the output on INPUT)."""
    import openvino as ov

    core = ov.Core()
    compiled = compile_with_cache(core, core.read_model(xml), "CPU", config)
    return compiled.get_property("LOADED_FROM_CACHE"), compiled(INPUT)[0]


def _blobs(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.blob")}


def _fake_entries(folder: Path, count: int, size: int = 1000) -> list[Path]:
    """``count`` finished (read-only) entries, the first the least recently used, all older than a day."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, now = [], time.time()
    for i in range(count):
        path = folder / f"{1000 + i}.blob"
        path.write_bytes(b"\0" * size)
        path.chmod(0o440)
        os.utime(path, (now - 86400 * 10 + i, now - 86400 * 10 + i))
        paths.append(path)
    return paths


# -- the setting --------------------------------------------------------------------------------------------
def test_the_default_folder_follows_the_environment(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "xdg" / "sd_ovopt" / "compiled"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "sd_ovopt" / "compiled"
    monkeypatch.setenv("SD_OVOPT_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == resolve_cache_dir(None) == tmp_path / "mine"
    for off in ("off", "0", "None", " OFF "):
        monkeypatch.setenv("SD_OVOPT_CACHE_DIR", off)
        assert resolve_cache_dir(None) is None
        assert default_cache_dir() == tmp_path / "home" / ".cache" / "sd_ovopt" / "compiled"
        assert resolve_cache_dir(True) == default_cache_dir()  # asked for explicitly: on


def test_the_setting_is_none_false_true_or_a_folder(tmp_path):
    assert resolve_cache_dir(None) == default_cache_dir()
    assert resolve_cache_dir(False) is None
    assert resolve_cache_dir(True) == default_cache_dir()
    assert resolve_cache_dir(tmp_path / "c") == resolve_cache_dir(str(tmp_path / "c")) == tmp_path / "c"
    for bad in ("", "  ", 1, 2.0, ["x"]):
        with pytest.raises(InvalidConfigError, match="cache_dir="):
            resolve_cache_dir(bad)


def test_the_cap_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    assert max_cache_bytes() == int(DEFAULT_MAX_GB * 2**30)
    monkeypatch.setenv("SD_OVOPT_CACHE_MAX_GB", "1.5")
    assert max_cache_bytes() == 3 * 2**29
    assert max_cache_bytes(0) == 0
    assert max_cache_bytes(2) == 2 * 2**30


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, "20"])
def test_a_bad_cap_argument_raises_the_typed_error_naming_it(bad):
    with pytest.raises(InvalidConfigError, match=r"max_gb=.*Fix: pass a size such as 20"):
        max_cache_bytes(bad)


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "lots", "20GB"])
def test_a_bad_cap_in_the_environment_raises_the_typed_error_naming_it(bad, monkeypatch):
    monkeypatch.setenv("SD_OVOPT_CACHE_MAX_GB", bad)
    with pytest.raises(
        InvalidConfigError, match=rf"SD_OVOPT_CACHE_MAX_GB='{bad}'.*unset SD_OVOPT_CACHE_MAX_GB"
    ):
        max_cache_bytes()
    with pytest.raises(InvalidConfigError):
        trim_cache(default_cache_dir())
    with pytest.raises(InvalidConfigError, match="max_bytes"):
        trim_cache(default_cache_dir(), -1)


# -- OpenVINO with the cache --------------------------------------------------------------------------------
def test_a_second_compile_loads_the_blob_and_writes_nothing_new(tiny_ir, tmp_path):
    folder = tmp_path / "cache"
    config = cache_properties(folder, {"INFERENCE_PRECISION_HINT": "f32"})
    assert config == {"INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(folder)}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    _, expected = _run(tiny_ir, {"INFERENCE_PRECISION_HINT": "f32"})  # uncached

    cached, first = _run(tiny_ir, config)
    written = _blobs(folder)
    assert not cached and len(written) == 1
    cached, second = _run(tiny_ir, config)
    assert cached and _blobs(folder) == written  # same file, not rewritten
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    assert cache_info(folder) == (1, next(folder.glob("*.blob")).stat().st_size)


def test_the_users_own_cache_dir_is_kept(tmp_path):
    theirs = {"CACHE_DIR": str(tmp_path / "theirs")}
    assert cache_properties(None, theirs) == theirs
    assert cache_properties(tmp_path / "ours", theirs) == theirs
    assert not (tmp_path / "ours").exists() and not default_cache_dir().exists()


def test_off_writes_nothing(tiny_ir, tmp_path, monkeypatch):
    assert cache_properties(False, {"A": 1}) == {"A": 1}
    monkeypatch.setenv("SD_OVOPT_CACHE_DIR", "off")
    config = cache_properties(None, {})
    assert config == {}
    _run(tiny_ir, config)
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_a_folder_that_cannot_be_made_skips_the_cache_with_one_warning(tiny_ir, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.warns(UserWarning, match=r"cannot be created.*SD_OVOPT_CACHE_DIR") as caught:
        config = cache_properties(tmp_path / "file" / "cache", {"INFERENCE_PRECISION_HINT": "f32"})
    assert len(caught) == 1 and config == {"INFERENCE_PRECISION_HINT": "f32"}
    assert _run(tiny_ir, config)[0] is False


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "header"])
def test_a_corrupt_blob_is_compiled_again_not_fatal_and_results_match(tiny_ir, tmp_path, damage):
    """What OpenVINO 2026.4 does itself: an unreadable blob is deleted and the model compiled again."""
    folder = tmp_path / "cache"
    config = cache_properties(folder)
    _, expected = _run(tiny_ir, {})
    _run(tiny_ir, config)
    blob = next(folder.glob("*.blob"))
    data = bytearray(blob.read_bytes())
    blob.chmod(0o600)  # OpenVINO leaves it read-only
    damaged = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "garbage": np.random.default_rng(0).bytes(len(data)),
        "header": bytes(b ^ 0xFF for b in data[:64]) + data[64:],
    }[damage]
    blob.write_bytes(damaged)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no retry needed: OpenVINO recompiles on its own
        cached, output = _run(tiny_ir, config)
    assert not cached
    np.testing.assert_array_equal(output, expected)
    assert blob.stat().st_size == len(data)  # written again
    cached, output = _run(tiny_ir, config)
    assert cached
    np.testing.assert_array_equal(output, expected)


class _CacheFailingCore:
    """A Core whose compile fails while a CACHE_DIR is set, as OpenVINO's does when a blob cannot be written."""

    def __init__(self):
        self.configs = []

    def compile_model(self, model, device, config):
        self.configs.append(dict(config))
        if config.get("CACHE_DIR"):
            raise RuntimeError("Cache file not visible after write")
        return "compiled"


def test_a_compile_that_fails_with_the_cache_is_retried_once_without_it(tmp_path):
    core = _CacheFailingCore()
    with pytest.warns(UserWarning, match=r"not visible after write.*sd-ovopt cache clear"):
        assert compile_with_cache(core, "m.xml", "CPU", {"CACHE_DIR": str(tmp_path), "A": 1}) == "compiled"
    assert core.configs == [{"CACHE_DIR": str(tmp_path), "A": 1}, {"CACHE_DIR": "", "A": 1}]


def test_a_compile_failure_without_the_cache_is_raised_as_it_is():
    class Broken:
        def compile_model(self, model, device, config):
            raise RuntimeError("bad model")

    with pytest.raises(RuntimeError, match="bad model"):
        compile_with_cache(Broken(), "m.xml", "CPU", {})


# -- the cap ------------------------------------------------------------------------------------------------
def test_the_cap_evicts_the_least_recently_used_first(tmp_path):
    folder = tmp_path / "cache"
    paths = _fake_entries(folder, 5)
    now = time.time()
    os.utime(paths[0], (now - 3600, os.stat(paths[0]).st_mtime))  # the oldest written, but read an hour ago
    (folder / "notes.txt").write_text("not an entry")
    assert cache_info(folder) == (5, 5000)

    assert trim_cache(folder, 2500) == 3000
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".blob") == [paths[0].name, paths[4].name]
    assert (folder / "notes.txt").exists()
    assert trim_cache(folder, 2500) == 0  # under the cap: nothing to do
    assert trim_cache(tmp_path / "missing", 0) == 0 and trim_cache(None) == 0


def test_the_cap_never_deletes_a_file_being_written(tmp_path):
    folder = tmp_path / "cache"
    _fake_entries(folder, 1)
    now = time.time()
    writing = folder / "1.blob"  # OpenVINO has not made it read-only yet
    writing.write_bytes(b"\0" * 1000)
    os.utime(writing, (now - 86400 * 20, now - 60))
    crashed = folder / "2.blob"  # writable, untouched for an hour: a killed write
    crashed.write_bytes(b"\0" * 1000)
    os.utime(crashed, (now - 3600, now - 3600))
    fresh = folder / "3.blob"  # finished this instant
    fresh.write_bytes(b"\0" * 1000)
    fresh.chmod(0o440)

    assert trim_cache(folder, 0) == 2000
    assert sorted(p.name for p in folder.glob("*.blob")) == ["1.blob", "3.blob"]
    assert clear_cache(folder) == 0  # clear spares them too


def test_files_vanishing_underneath_are_tolerated(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    paths = _fake_entries(folder, 6)
    scan = _compile_cache._scan

    def scan_then_another_process_evicts(path):
        entries = scan(path)
        for gone in paths[:3]:
            gone.unlink()
        return entries

    monkeypatch.setattr(_compile_cache, "_scan", scan_then_another_process_evicts)
    assert trim_cache(folder, 2000) == 1000  # three were gone already; one more had to go
    assert sorted(folder.glob("*.blob")) == paths[4:]


def test_concurrent_trims_leave_the_cache_under_the_cap(tmp_path):
    folder = tmp_path / "cache"
    paths = _fake_entries(folder, 120)
    caps = [90_000, 50_000, 70_000, 50_000, 30_000, 60_000]
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that may hold OpenVINO's threads
    workers = [spawn.Process(target=trim_cache, args=(str(folder), cap)) for cap in caps]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * len(workers)
    assert cache_info(folder) == (30, 30_000)
    assert sorted(folder.glob("*.blob")) == paths[-30:]  # the most recently used are kept


def test_clear_deletes_only_cache_entries(tmp_path):
    folder = tmp_path / "cache"
    _fake_entries(folder, 3)
    (folder / "0.cl_cache").write_bytes(b"k" * 10)
    os.utime(folder / "0.cl_cache", (1, 1))
    (folder / "readme.txt").write_text("mine")
    assert clear_cache(folder) == 3010
    assert cache_info(folder) == (0, 0)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["readme.txt"]


# -- the command line ---------------------------------------------------------------------------------------
def test_cache_info_and_clear_on_the_command_line(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "cache"
    _fake_entries(folder, 2, size=2048)
    assert main(["cache", "info", "--dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"location: {folder}" in out and "entries: 2" in out and "4096 bytes" in out
    assert "cap: 20.0 GiB" in out

    assert main(["cache", "clear", "--dir", str(folder)]) == 0
    assert "freed 4.0 KiB (4096 bytes)" in capsys.readouterr().out
    assert cache_info(folder) == (0, 0)

    monkeypatch.setenv("SD_OVOPT_CACHE_DIR", str(folder))  # the default folder, then the default when off
    _fake_entries(folder, 1)
    assert main(["cache", "info"]) == 0 and "entries: 1" in capsys.readouterr().out
    monkeypatch.setenv("SD_OVOPT_CACHE_DIR", "off")
    assert main(["cache", "info"]) == 0 and "(off: SD_OVOPT_CACHE_DIR=off)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["cache", "info", "--dir", "FILE"], None, "is a file"),
        (["cache", "clear", "--dir", ""], None, "--dir is empty"),
        (["cache", "info"], "-2", "SD_OVOPT_CACHE_MAX_GB='-2'"),
    ],
)
def test_bad_cache_arguments_exit_2_with_one_line(argv, env, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "FILE").write_text("x")
    if env is not None:
        monkeypatch.setenv("SD_OVOPT_CACHE_MAX_GB", env)
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sd-ovopt cache: error:") and message in err and err.count("\n") == 1


def test_cache_needs_an_action(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cache"])
    assert exit_info.value.code == 2 and "info,clear" in capsys.readouterr().err
