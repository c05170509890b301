"""Killed writers: SIGKILL an export and a QAT run at several points; the rerun succeeds and leaves no partials.

Also the sweep's own rules: only our temporary folders, of this output, and only stale ones are removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sd_ovopt._fs import _prefix, atomic_output_dir, sweep_stale_partials

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
EXPORT = "import sys; from sd_ovopt import export_pipeline; export_pipeline(sys.argv[1], sys.argv[2], height=32, width=32, overwrite=True, show_progress=False)"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".old-" in p.name)


def kill_when(process: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` is true (it must not have ended by itself first)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


# --------------------------------------------------------------------------------------- the sweep


def test_the_sweep_removes_only_our_stale_partials_of_this_output(tmp_path):
    out = tmp_path / "out"
    mine = _prefix("out", "partial").rsplit("-", 2)[0]  # ".out.partial-HOST"
    dead = tmp_path / f"{mine}-{dead_pid()}-abc"
    alive = tmp_path / f"{mine}-{os.getpid()}-abc"  # a write in progress (this process)
    legacy_fresh = tmp_path / ".out.partial-x1y2"  # no PID recorded: only age can tell
    legacy_old = tmp_path / ".out.old-x1y2"
    other_output = tmp_path / f".other{mine[4:]}-{dead_pid()}-abc"
    a_file = tmp_path / f"{mine}-{dead_pid()}-file"
    for folder in (dead, alive, legacy_fresh, legacy_old, other_output):
        folder.mkdir()
        (folder / "unet.bin").write_bytes(b"0" * 10)
    a_file.write_text("a file, not ours to remove")
    target = tmp_path / "user-data"
    target.mkdir()
    (tmp_path / f"{mine}-{dead_pid()}-link").symlink_to(target)
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(legacy_old, (two_days_ago, two_days_ago))

    removed = sweep_stale_partials(out)

    assert sorted(p.name for p in removed) == sorted([dead.name, legacy_old.name])
    assert alive.is_dir() and legacy_fresh.is_dir() and other_output.is_dir() and a_file.is_file()
    assert target.is_dir()  # a link is never followed


def test_a_write_killed_between_its_renames_gets_the_previous_output_back(tmp_path):
    old = tmp_path / f"{_prefix('out', 'old').rsplit('-', 2)[0]}-{dead_pid()}-abc"
    (old / "out").mkdir(parents=True)
    (old / "out" / "model.xml").write_text("previous")
    sweep_stale_partials(tmp_path / "out")
    assert (tmp_path / "out" / "model.xml").read_text() == "previous"
    assert partials(tmp_path) == []


def test_a_failed_write_leaves_nothing_and_the_next_write_sweeps_a_killed_one(tmp_path):
    stale = tmp_path / f"{_prefix('out', 'partial').rsplit('-', 2)[0]}-{dead_pid()}-abc"
    stale.mkdir()
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("conversion failed")
    assert partials(tmp_path) == [] and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- export


@pytest.mark.slow
def test_a_killed_export_leaves_a_partial_that_the_rerun_removes(tiny_saved, tmp_path):
    out = tmp_path / "ov"

    def started() -> bool:
        return bool(partials(tmp_path))

    def unet_written() -> bool:
        return any((tmp_path / name / "unet" / "openvino_model.bin").exists() for name in partials(tmp_path))

    for ready in (started, unet_written):  # killed early, then killed midway (a full model on disk)
        export = subprocess.Popen(
            [sys.executable, "-c", EXPORT, str(tiny_saved), str(out)],
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        kill_when(export, ready)
        assert not out.exists() and partials(tmp_path)  # nothing half-written at the output itself

    rerun = subprocess.run(
        [sys.executable, "-c", EXPORT, str(tiny_saved), str(out)], env=ENV, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "sd_ovopt.json").is_file() and partials(tmp_path) == []


# --------------------------------------------------------------------------------------- train-qat


def write_squares(folder: Path, count: int = 2) -> Path:
    import json

    from PIL import Image

    folder.mkdir(parents=True)
    lines = []
    for i in range(count):
        Image.new("RGB", (32, 32), (200, 60 * i, 40)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a red square {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow  # three train-qat processes (~2 min); tests/quantization/test_qat.py covers resume by default
def test_a_killed_qat_run_reruns_before_its_first_checkpoint_and_resumes_after_it(tiny_saved, tmp_path):
    data = write_squares(tmp_path / "data")
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "sd_ovopt", "train-qat", "--model", str(tiny_saved),
        "--train-data", str(data), "--output", str(out), "--max-train-steps", "3", "--checkpointing-steps", "1",
        "--gradient-accumulation-steps", "1", "--calibration-prompts", "1", "--calibration-steps", "1",
        "--eval-samples", "1", "--no-export", "--no-progress",
    ]  # fmt: skip

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # 1. killed before its first checkpoint: the same command runs again (nothing there to resume)
    kill_when(start(), lambda: (out / "checkpoints").is_dir())
    # 2. that rerun killed after its first checkpoint: resuming finishes the run
    kill_when(start(), lambda: (out / "checkpoints" / "checkpoint-1").is_dir())
    refused = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert refused.returncode == 2 and "resume" in refused.stderr  # a run with a checkpoint is kept
    resumed = subprocess.run(
        [*command, "--resume-from-checkpoint", "latest"], env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "checkpoint-3"
    assert not [p for p in out.rglob("*") if ".partial" in p.name or ".old-" in p.name]
