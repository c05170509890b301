"""Atomic creation of output folders: a failure or a kill never leaves a half-written folder behind.

Every writer goes through :func:`atomic_output_dir`, so every writer gets the same guarantees:

* the output path is checked first (:func:`check_output_dir`): an empty path, the working directory or
  one of its ancestors, the home directory, a filesystem root, and an output equal to, inside or around
  the source model are refused, so replacing the output can never delete the user's other files;
* the new folder is written under a hidden temporary name next to the output and renamed into place
  only when the block succeeds;
* temporary folders that a killed run left next to the same output are removed on the next write,
  but only ours (named ``.NAME.partial-*`` / ``.NAME.old-*``) and only stale ones: made on this machine
  by a process that is no longer alive, or older than :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sd_ovopt.errors import CorruptModelError, OutputExistsError, UnsafeOutputError

__all__ = [
    "STALE_AFTER_S",
    "atomic_file",
    "atomic_output_dir",
    "check_output_dir",
    "check_safe_output_path",
    "read_json_object",
    "sweep_stale_partials",
]

#: Temporary folders older than this are stale whoever made them (a day: longer than any export).
STALE_AFTER_S = 24 * 3600
_KINDS = ("partial", "old")


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """Read a JSON object from ``path``; raise CorruptModelError (with ``fix`` appended) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptModelError(f"{path} is not valid JSON ({exc}). {fix}") from exc
    if not isinstance(data, dict):
        raise CorruptModelError(f"{path} must hold a JSON object. {fix}")
    return data


def _is_within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_safe_output_path(output_dir: str | Path, *, source: str | Path | None = None) -> Path:
    """Refuse output paths whose replacement could delete what is not ours; return the resolved path.

    Refused: an empty path, the working directory or an ancestor of it, the home directory, a
    filesystem root, and (when ``source`` is a folder) an output equal to, inside, or around ``source``.
    """
    if not str(output_dir).strip():
        raise UnsafeOutputError(
            "the output path is empty, which would mean the working directory. Name a new folder, e.g. 'out'."
        )
    path = Path(output_dir).expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    why = None
    if path == Path(path.anchor):
        why = "a filesystem root"
    elif path == home:
        why = "your home directory"
    elif _is_within(cwd, path):
        why = "the working directory" if path == cwd else f"an ancestor of the working directory {cwd}"
    if why is not None:
        raise UnsafeOutputError(
            f"output folder {path} is {why}; writing there would replace everything in it. "
            "Name a new folder for the output, e.g. 'out'."
        )
    if source is not None and str(source).strip():
        src = Path(source).expanduser().resolve()
        if src.is_dir() and (_is_within(path, src) or _is_within(src, path)):
            where = "is" if path == src else ("is inside" if _is_within(path, src) else "contains")
            raise UnsafeOutputError(
                f"output folder {path} {where} the source model {src}; writing it would damage the source. "
                "Choose an output folder outside the source."
            )
    return path


def check_output_dir(output_dir: str | Path, *, overwrite: bool, source: str | Path | None = None) -> Path:
    """Refuse unsafe paths, a file, or an existing non-empty folder unless ``overwrite``; return the path."""
    path = check_safe_output_path(output_dir, source=source)
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise OutputExistsError(
            f"{parent} is a file, so {path} cannot be made inside it. Choose another path."
        )
    if path.exists() and not path.is_dir():
        raise OutputExistsError(
            f"output path {path} exists and is a file, not a folder. Choose another path."
        )
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output folder {path} already exists and is not empty. "
            "Pass overwrite=True (CLI: --overwrite) to replace it, or choose another folder."
        )
    return path


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _prefix(name: str, kind: str) -> str:
    """``.NAME.KIND-HOST-PID-``: enough to tell later whether the process that made it still runs."""
    return f".{name}.{kind}-{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there; rely on age instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, but another user's
        return True
    return True


def _is_stale(entry: os.DirEntry, suffix: str, now: float) -> bool:
    info = entry.stat(follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):  # never follow a link or touch a file
        return False
    if now - info.st_mtime > STALE_AFTER_S:
        return True
    match = re.fullmatch(r"([0-9a-f]{8})-(\d+)-\w+", suffix)
    return bool(match) and match.group(1) == _host() and not _pid_alive(int(match.group(2)))


def sweep_stale_partials(output_dir: str | Path) -> list[Path]:
    """Remove the stale temporary folders that killed writes of ``output_dir`` left next to it.

    Only folders named ``.NAME.partial-*`` or ``.NAME.old-*`` for this very ``NAME`` are considered, and
    only those whose process (same machine) is gone or that are older than :data:`STALE_AFTER_S`. A write
    killed between its two renames leaves the previous output in ``.NAME.old-*`` and none at ``NAME``: that
    previous output is moved back. Returns the folders removed.
    """
    final = Path(output_dir).expanduser().resolve()
    if not final.parent.is_dir():
        return []
    removed, now = [], time.time()
    with os.scandir(final.parent) as entries:
        for entry in entries:
            for kind in _KINDS:
                head = f".{final.name}.{kind}-"
                if entry.name.startswith(head) and _is_stale(entry, entry.name[len(head) :], now):
                    previous = Path(entry.path) / final.name
                    if kind == "old" and previous.is_dir() and not os.path.lexists(final):
                        os.replace(previous, final)
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_output_dir(
    output_dir: str | Path, *, overwrite: bool = False, source: str | Path | None = None
) -> Iterator[Path]:
    """Yield a temporary folder next to ``output_dir``; move it into place only if the block succeeds.

    ``source`` is the folder the output is made from, if any: an output equal to, inside or around it
    is refused. Stale temporary folders of earlier, killed writes of the same output are removed first.

    Example:
        >>> with atomic_output_dir("out") as tmp:  # doctest: +SKIP
        ...     (tmp / "model.xml").write_text("...")
    """
    final = check_safe_output_path(output_dir, source=source)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(final)
    check_output_dir(final, overwrite=overwrite, source=source)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(final.name, "partial"), dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the output follows the umask like mkdir
        yield tmp
        with _locked(final.parent):
            _commit(tmp, final, overwrite=overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (the output's parent) while a writer commits, so two writers of the
    same output commit one after the other and each sees what the other left. No lock file is made."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # Windows: the rename below still refuses a non-empty target
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _commit(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Move ``tmp`` to ``final``. Without ``overwrite`` only an absent or empty ``final`` is replaced: a
    folder that another writer made while this one ran is kept, and this write is refused."""
    if not overwrite:
        try:
            os.rename(tmp, final)  # replaces an empty folder; fails on a non-empty one or a file
        except OSError as exc:
            if not os.path.lexists(final):
                raise
            raise OutputExistsError(
                f"output folder {final} appeared while this write ran (another process wrote it), so this "
                "result was not moved there and the other one is kept. Write again with overwrite=True "
                "(CLI: --overwrite) to replace it, or choose another folder."
            ) from exc
        return
    if final.exists():
        if not final.is_dir():
            raise OutputExistsError(f"output path {final} became a file while this write ran; it is kept.")
        old = Path(tempfile.mkdtemp(prefix=_prefix(final.name, "old"), dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write one file to; move it into place only if the block
    succeeds, so a failure or a kill leaves the previous file (or none), never a half-written one.

    ``suffix`` is kept at the end of the temporary name for writers that pick a format by it (``.png``).

    Example:
        >>> with atomic_file("results.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
