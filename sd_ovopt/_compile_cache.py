"""The compiled-model cache: OpenVINO's ``CACHE_DIR``, in a folder of ours, with a size cap.

Compiling a Stable Diffusion UNet for the CPU takes seconds to minutes; with ``CACHE_DIR`` set, OpenVINO
writes the compiled model to ``<CACHE_DIR>/<hash>.blob`` once and later loads read it back. The hash covers
the model and the compile properties, so a new export, shape or precision is a new entry, and old entries
pile up: :func:`trim_cache` evicts the least recently used ones above a cap.

The setting (``cache_dir`` here, and in ``SdOvOptPipeline.from_pretrained``):

* ``None`` (the default): on, in :func:`default_cache_dir`, unless the environment variable
  ``SD_OVOPT_CACHE_DIR`` is ``off`` (or ``0``, ``none``, ``false``);
* ``False``: off; ``True``: on in :func:`default_cache_dir` whatever the environment says;
* a path: on, in that folder.

The cap is :data:`DEFAULT_MAX_GB` GiB, or ``SD_OVOPT_CACHE_MAX_GB``, or the ``max_gb`` argument.

What OpenVINO (2026.4) does with the folder, as read in its source and seen in this module's tests:
it writes a blob in place under its final name and makes it read-only (``0o440``) when done; a blob
that is empty, truncated, or whose header is damaged is deleted and the model compiled again, silently.
A blob whose header is intact but whose body was changed is not detected (there is no checksum), so
never edit blobs: delete them (:func:`clear_cache`). A failure to *write* a blob is re-raised by
OpenVINO's compile (its source deletes the entry and rethrows): :func:`compile_with_cache` then compiles
once more without the cache.

Example:
    >>> import openvino as ov  # doctest: +SKIP
    >>> config = cache_properties(None, {"INFERENCE_PRECISION_HINT": "f32"})  # doctest: +SKIP
    >>> compiled = compile_with_cache(ov.Core(), "unet/openvino_model.xml", "CPU", config)  # doctest: +SKIP
    >>> trim_cache(resolve_cache_dir(None))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sd_ovopt.errors import InvalidConfigError

try:
    import fcntl  # POSIX only
except ImportError:  # Windows: processes trim unlocked; a file that vanishes underneath is tolerated
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import openvino as ov

__all__ = [
    "DEFAULT_MAX_GB",
    "ENV_CACHE_DIR",
    "ENV_MAX_GB",
    "CacheInfo",
    "CacheSetting",
    "cache_info",
    "cache_properties",
    "clear_cache",
    "compile_with_cache",
    "default_cache_dir",
    "max_cache_bytes",
    "resolve_cache_dir",
    "trim_cache",
]

logger = logging.getLogger(__name__)

#: The environment variable naming the cache folder, or switching the cache off (``off``, ``0``, ``none``).
ENV_CACHE_DIR = "SD_OVOPT_CACHE_DIR"
#: The environment variable setting the cap, in GiB.
ENV_MAX_GB = "SD_OVOPT_CACHE_MAX_GB"
#: The cap when neither ``max_gb`` nor ``SD_OVOPT_CACHE_MAX_GB`` says otherwise, in GiB (2**30 bytes).
DEFAULT_MAX_GB = 20.0
#: What the cache setting may be: None (default), False (off), True (on, default folder) or a folder.
CacheSetting = str | os.PathLike | bool | None

_OFF_WORDS = frozenset({"off", "0", "none", "false"})
_ENTRY_SUFFIXES = (".blob", ".cl_cache")  # the CPU's compiled models; the GPU plugin's kernels
_LOCK_NAME = ".sd_ovopt-cache.lock"
#: A file modified this recently may be in the middle of being written or made read-only: never deleted.
_RECENT_S = 10.0
#: OpenVINO makes a blob read-only once written: a writable one this young is still being written.
_UNFINISHED_S = 600.0


class CacheInfo(NamedTuple):
    """What a cache folder holds: ``(entries, total_bytes)``."""

    entries: int
    total_bytes: int


@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    last_use: float
    busy: bool


def default_cache_dir() -> Path:
    """Where the cache lives unless told otherwise.

    ``$SD_OVOPT_CACHE_DIR`` when it names a folder, else ``$XDG_CACHE_HOME/sd_ovopt/compiled``, else
    ``~/.cache/sd_ovopt/compiled``. (``SD_OVOPT_CACHE_DIR=off`` switches the cache off; this still says
    where it would live.)

    Example:
        >>> default_cache_dir().name
        'compiled'
    """
    named = os.environ.get(ENV_CACHE_DIR, "").strip()
    if named and named.lower() not in _OFF_WORDS:
        return Path(named).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(base).expanduser().absolute() / "sd_ovopt" / "compiled"


def resolve_cache_dir(cache_dir: CacheSetting = None) -> Path | None:
    """The cache folder a setting means, or None when the cache is off.

    Args:
        cache_dir: None (on in :func:`default_cache_dir`, unless ``SD_OVOPT_CACHE_DIR=off``), False (off),
            True (on in :func:`default_cache_dir`), or a folder.

    Raises:
        InvalidConfigError: ``cache_dir`` is of another type, or an empty path.

    Example:
        >>> resolve_cache_dir(False) is None
        True
    """
    if cache_dir is None:
        named = os.environ.get(ENV_CACHE_DIR, "").strip().lower()
        return None if named in _OFF_WORDS else default_cache_dir()
    if isinstance(cache_dir, bool):
        return default_cache_dir() if cache_dir else None
    if not isinstance(cache_dir, (str, os.PathLike)) or not str(os.fspath(cache_dir)).strip():
        raise InvalidConfigError(
            f"cache_dir={cache_dir!r}; pass None (the default folder), False (no cache) or a folder path."
        )
    return Path(cache_dir).expanduser().absolute()


def max_cache_bytes(max_gb: float | None = None) -> int:
    """The cap in bytes: ``max_gb`` GiB, else ``$SD_OVOPT_CACHE_MAX_GB``, else :data:`DEFAULT_MAX_GB`.

    Raises:
        InvalidConfigError: the value is not a finite number >= 0 (negative, NaN, infinite, text).

    Example:
        >>> max_cache_bytes(1.5)
        1610612736
    """
    if max_gb is not None:
        name, value = "max_gb", max_gb
    elif os.environ.get(ENV_MAX_GB, "").strip():
        name, value = ENV_MAX_GB, os.environ[ENV_MAX_GB]
    else:
        name, value = "the default", DEFAULT_MAX_GB
    readable = isinstance(value, str) if name == ENV_MAX_GB else isinstance(value, (int, float))
    try:
        number = float(value) if readable and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number < 0:
        fix = f"unset {ENV_MAX_GB} or set it to" if name == ENV_MAX_GB else "pass"
        raise InvalidConfigError(
            f"{name}={value!r}; the compiled-model cache cap must be a finite number of GiB >= 0. "
            f"Fix: {fix} a size such as {DEFAULT_MAX_GB:g} (0 keeps no idle entry)."
        )
    return int(number * 2**30)


def _usable_folder(folder: Path) -> str | None:
    """Make ``folder`` (mode 0o700) if missing; return why it cannot hold the cache, or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return f"it cannot be created ({exc})"
    if not folder.is_dir():
        return "it is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def cache_properties(
    cache_dir: CacheSetting = None, ov_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A copy of ``ov_config`` with ``CACHE_DIR`` set to the cache folder (made if missing, mode 0o700).

    Left without it when the cache is off; a ``CACHE_DIR`` already in ``ov_config`` is the user's and is
    kept as it is. A folder that cannot be made or written to is skipped with a warning: loading works,
    uncached.

    Args:
        cache_dir: the cache setting (see :func:`resolve_cache_dir`).
        ov_config: the OpenVINO compile properties; not modified.

    Example:
        >>> cache_properties(False, {"INFERENCE_PRECISION_HINT": "f32"})
        {'INFERENCE_PRECISION_HINT': 'f32'}
    """
    config = dict(ov_config or {})
    folder = resolve_cache_dir(cache_dir)
    if "CACHE_DIR" in config or folder is None:
        return config
    problem = _usable_folder(folder)
    if problem is not None:
        warnings.warn(
            f"the compiled-model cache folder {folder} is not used: {problem}. Models compile uncached. "
            f"Fix: set {ENV_CACHE_DIR} (or cache_dir=) to a writable folder, or to 'off'.",
            stacklevel=2,
        )
        return config
    config["CACHE_DIR"] = str(folder)
    return config


def compile_with_cache(
    core: ov.Core, model: Any, device: str = "CPU", config: Mapping[str, Any] | None = None
) -> ov.CompiledModel:
    """``core.compile_model(model, device, config)``; if it fails while caching, once more without the cache.

    OpenVINO itself recompiles over a corrupt or truncated blob; what makes its compile raise is a blob it
    cannot write (a full disk, a folder removed underneath). The model is then compiled uncached, with a
    warning; a failure of that second compile is the model's own and is raised.

    Example:
        >>> import openvino as ov  # doctest: +SKIP
        >>> compiled = compile_with_cache(ov.Core(), "model.xml", "CPU", cache_properties())  # doctest: +SKIP
    """
    config = dict(config or {})
    try:
        return core.compile_model(model, device, config)
    except RuntimeError as exc:
        if not config.get("CACHE_DIR"):
            raise
        warnings.warn(
            f"compiling with the compiled-model cache {config['CACHE_DIR']} failed ({exc}); compiling "
            "without it. If this repeats, run `sd-ovopt cache clear` or check the folder's free space.",
            stacklevel=2,
        )
    return core.compile_model(model, device, {**config, "CACHE_DIR": ""})  # "": off, even if set on core


def _scan(folder: Path) -> list[_Entry]:
    """The cache entries in ``folder``; files that vanish while it is read are left out."""
    entries, now = [], time.time()
    try:
        names = [e.name for e in os.scandir(folder) if e.name.endswith(_ENTRY_SUFFIXES)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    for name in names:
        path = folder / name
        try:
            info = path.lstat()
        except FileNotFoundError:  # another process evicted it
            continue
        if not stat.S_ISREG(info.st_mode):  # never follow a link or touch a folder
            continue
        age = now - info.st_mtime
        writing = bool(info.st_mode & stat.S_IWUSR) and age < _UNFINISHED_S
        busy = age < _RECENT_S or writing
        entries.append(_Entry(path, info.st_size, max(info.st_atime, info.st_mtime), busy))
    return entries


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[bool]:
    """An exclusive lock on ``folder``'s lock file while entries are measured and deleted; yields False
    when the folder has no lock file and none can be made (read-only: nothing can be deleted there)."""
    try:
        descriptor = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield False
        return
    try:
        if fcntl is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def _delete(entry: _Entry) -> bool:
    """Delete one entry; False when another process removed it first or it cannot be removed."""
    try:
        entry.path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # e.g. open elsewhere on Windows: kept, tried again next time
        logger.debug("cache entry %s not removed: %s", entry.path, exc)
        return False
    return True


def trim_cache(cache_dir: str | os.PathLike[str] | None, max_bytes: int | None = None) -> int:
    """Evict the least recently used entries until the folder holds at most ``max_bytes``; return the bytes freed.

    "Used" is the later of a file's access and modification times. OpenVINO reads blobs through mmap, which
    updates the access time; on ``relatime`` filesystems (Linux's default) at most once a day, and never on
    ``noatime`` ones, where this becomes oldest-written first. Safe while other processes load models:
    an exclusive ``flock`` on a lock file in the folder is held while measuring and deleting, files that
    vanish underneath are skipped, and files still being written (OpenVINO makes a blob read-only when it
    is done) or modified in the last seconds are never deleted, though they count toward the total.

    Args:
        cache_dir: the cache folder; None (the cache is off) does nothing.
        max_bytes: the cap (default: :func:`max_cache_bytes`).

    Example:
        >>> trim_cache(None)
        0
    """
    cap = max_cache_bytes() if max_bytes is None else max_bytes
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise InvalidConfigError(f"max_bytes={max_bytes!r}; pass a whole number of bytes >= 0, or None.")
    if cache_dir is None or not Path(cache_dir).is_dir():
        return 0
    folder = Path(cache_dir)
    with _locked(folder) as locked:
        if not locked:
            return 0
        entries = sorted(_scan(folder), key=lambda e: (e.last_use, e.path.name))
        total = sum(e.size for e in entries)
        freed = 0
        for entry in entries:
            if total <= cap:
                break
            if entry.busy:
                continue
            if _delete(entry):
                freed += entry.size
            total -= entry.size  # deleted here, or by another process
    if total > cap:
        logger.info(
            "compiled-model cache %s holds %d bytes, over its cap of %d: the rest is in use",
            folder,
            total,
            cap,
        )
    return freed


def clear_cache(cache_dir: CacheSetting = None) -> int:
    """Delete every cache entry in the folder (but those being written); return the bytes freed.

    Only OpenVINO's cache files (``*.blob``, the GPU plugin's ``*.cl_cache``) are deleted, nothing else.

    Args:
        cache_dir: the cache setting (default: the default folder, even when the cache is off).

    Example:
        >>> clear_cache("/nonexistent/cache")
        0
    """
    folder = resolve_cache_dir(cache_dir) or default_cache_dir()
    if not folder.is_dir():
        return 0
    freed = 0
    with _locked(folder):
        for entry in _scan(folder):
            if not entry.busy and _delete(entry):
                freed += entry.size
    return freed


def cache_info(cache_dir: CacheSetting = None) -> CacheInfo:
    """How many entries the cache folder holds and their total size in bytes.

    Args:
        cache_dir: the cache setting (default: the default folder, even when the cache is off).

    Example:
        >>> cache_info("/nonexistent/cache")
        CacheInfo(entries=0, total_bytes=0)
    """
    entries = _scan(resolve_cache_dir(cache_dir) or default_cache_dir())
    return CacheInfo(len(entries), sum(e.size for e in entries))
