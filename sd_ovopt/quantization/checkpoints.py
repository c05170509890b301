"""QAT checkpoints: written atomically, found by step, and reloaded without calibrating again.

A checkpoint is a folder ``checkpoint-<step>`` with ``training_state.pt`` (student, optimizer and EMA
state dicts, read back with ``weights_only=True``) and ``checkpoint.json`` (the step, the settings, and
NNCF's description of where the quantizers sit, from which the student is rebuilt). The folder is
written under a temporary name and renamed into place, so a killed run leaves either a whole checkpoint
or none; the temporary folders it leaves behind are removed when the next run starts.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from sd_ovopt._fs import atomic_output_dir, read_json_object
from sd_ovopt._nncf import import_nncf
from sd_ovopt.errors import CorruptModelError, ModelNotFoundError
from sd_ovopt.quantization.config import QuantizationConfig
from sd_ovopt.quantization.ptq import QUANTIZATION_ATTR
from sd_ovopt.tome.config import ToMeConfig

__all__ = [
    "CHECKPOINTS_DIR",
    "checkpoint_info",
    "find_checkpoint",
    "load_checkpoint",
    "remove_partial_checkpoints",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "training_state.pt"
INFO_FILE = "checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    paths = folder.iterdir() if folder.is_dir() else []
    return sorted((int(m.group(1)), p) for p in paths if (m := _NAME.match(p.name)))


def find_checkpoint(output_dir: str | Path, which: str | Path = "latest") -> Path | None:
    """The checkpoint to resume from: ``"latest"`` in ``output_dir`` (``None`` if none yet), or a folder."""
    if str(which) != "latest":
        path = Path(which).expanduser().resolve()
        if not (path / INFO_FILE).is_file() or not (path / STATE_FILE).is_file():
            raise ModelNotFoundError(
                f"{path} is not a QAT checkpoint (no {INFO_FILE} and {STATE_FILE}); pass an "
                f"OUT/{CHECKPOINTS_DIR}/checkpoint-<step> folder or 'latest'."
            )
        return path
    found = _numbered(Path(output_dir).expanduser().resolve() / CHECKPOINTS_DIR)
    return found[-1][1] if found else None


def save_checkpoint(
    folder: Path, step: int, qat: Any, optimizer: Any, info: dict[str, Any], *, keep: int | None = None
) -> Path:
    """Write ``folder/checkpoint-<step>`` atomically; then keep only the newest ``keep`` checkpoints."""
    final = folder / f"checkpoint-{step}"
    state = {
        "student": qat.student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": qat.ema.state_dict(),
    }
    with atomic_output_dir(final, overwrite=True) as tmp:
        torch.save(state, tmp / STATE_FILE)
        (tmp / INFO_FILE).write_text(json.dumps({**info, "step": step}, indent=1) + "\n", encoding="utf-8")
    if keep is not None:
        for _, old in _numbered(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved %s", final)
    return final


def remove_partial_checkpoints(folder: Path) -> None:
    """Remove the temporary folders of checkpoints that a killed run was writing."""
    for path in folder.glob(".checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path, float_unet: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Read a checkpoint; return its info, its state dicts, and the student rebuilt with its weights.

    The student is rebuilt from a copy of ``float_unet`` (ToMe applied as recorded, then NNCF's quantizers
    inserted where the checkpoint says), so resuming needs no calibration.
    """
    from sd_ovopt.tome.patch import apply_tome

    info = read_json_object(path / INFO_FILE, fix="Resume from another checkpoint.")
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        # Not torch's message: it advises turning weights_only off, which would run code from the file.
        raise CorruptModelError(
            f"cannot read {path / STATE_FILE} ({type(exc).__name__}): it is truncated, or not a checkpoint "
            "sd_ovopt wrote (code in it is never run). Resume from another checkpoint."
        ) from exc
    import_nncf()
    import nncf.torch

    student = copy.deepcopy(float_unet)
    if info["tome"] is not None:
        apply_tome(student, ToMeConfig.from_dict(info["tome"]))
    student = nncf.torch.load_from_config(student, info["nncf_config"])
    setattr(student, QUANTIZATION_ATTR, QuantizationConfig.from_dict(info["quantization"]))
    student.load_state_dict(state["student"])
    return info, state, student


def checkpoint_info(student: Any, **fields: Any) -> dict[str, Any]:
    """What ``checkpoint.json`` records besides the step: ``fields`` plus NNCF's quantizer layout."""
    import nncf.torch

    from sd_ovopt.quantization.ptq import get_quantization_config

    return {
        "format": 1,
        "quantization": get_quantization_config(student).to_dict(),
        "nncf_config": nncf.torch.get_config(student),
        **fields,
    }
