"""Atomic creation of output folders: a failure or a kill never leaves a half-written folder behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sd_ovopt.errors import CorruptModelError, OutputExistsError

__all__ = ["atomic_output_dir", "check_output_dir", "read_json_object"]


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """Read a JSON object from ``path``; raise CorruptModelError (with ``fix`` appended) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptModelError(f"{path} is not valid JSON ({exc}). {fix}") from exc
    if not isinstance(data, dict):
        raise CorruptModelError(f"{path} must hold a JSON object. {fix}")
    return data


def check_output_dir(output_dir: str | Path, *, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder (or a file) unless ``overwrite``; return the resolved path."""
    path = Path(output_dir).expanduser().resolve()
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


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``output_dir``; move it into place only if the block succeeds.

    Example:
        >>> with atomic_output_dir("out") as tmp:  # doctest: +SKIP
        ...     (tmp / "model.xml").write_text("...")
    """
    final = check_output_dir(output_dir, overwrite=overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
