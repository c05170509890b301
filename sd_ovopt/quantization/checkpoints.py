"""QAT checkpoints: written atomically, found by step, and reloaded without calibrating again.

A checkpoint is a folder ``checkpoint-<step>`` with ``training_state.pt`` (student, optimizer and EMA
state dicts, read back with ``weights_only=True``; a LoRA student's frozen base weights are left out and
come from the model on resume) and ``checkpoint.json`` (the step, the settings, NNCF's description of
where the quantizers sit, from which the student is rebuilt, null for a float student, and a signature
of the weights left out, which a resume checks). Reading one checks every field and tensor against the
model first, so a checkpoint edited by hand, of another model or holding NaN is refused with
:class:`~sd_ovopt.errors.CorruptModelError`. The folder is written under a temporary name and renamed
into place, so a killed run leaves either a whole checkpoint or none; the temporary folders it leaves
behind are removed when the next run starts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sd_ovopt._fs import atomic_output_dir, read_json_object
from sd_ovopt._nncf import import_nncf
from sd_ovopt.errors import CorruptModelError, InvalidConfigError, ModelNotFoundError
from sd_ovopt.quantization.config import QATConfig, QuantizationConfig
from sd_ovopt.quantization.ptq import QUANTIZATION_ATTR, get_quantization_config, is_quantized
from sd_ovopt.quantization.qat import ema_state_mismatch, state_mismatch, trainable_parameters
from sd_ovopt.tome.config import ToMeConfig
from sd_ovopt.tome.patch import apply_tome

__all__ = [
    "CHECKPOINTS_DIR",
    "checkpoint_info",
    "find_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "remove_partial_checkpoints",
    "save_checkpoint",
    "saved_student_state",
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


def _left_out(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The frozen parametrized originals (a LoRA student's base weights): the float UNet's own, rebuilt
    from it on resume, so a checkpoint leaves them out (3.4 GB for SD-1.5)."""
    return {n: p for n, p in student.named_parameters() if not p.requires_grad and ".parametrizations." in n}


def saved_student_state(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the student: its state dict without the frozen parametrized originals."""
    left_out = _left_out(student)
    return {name: t for name, t in student.state_dict().items() if name not in left_out}


@torch.no_grad()
def _left_out_signature(student: torch.nn.Module) -> float | None:
    """The sum of squares (float64) of what the checkpoint leaves out; ``None`` if nothing is."""
    left_out = _left_out(student)
    return float(sum(w.double().square().sum() for w in left_out.values())) if left_out else None


def _left_out_mismatch(info: dict[str, Any], student: torch.nn.Module) -> str | None:
    """Why the left-out weights of the rebuilt student are not the ones the run trained on; ``None`` if
    they are (or nothing was left out)."""
    if info.get("frozen_weights_signature") == _left_out_signature(student):
        return None
    return (
        "the student's frozen base weights, which a checkpoint leaves out and takes from the model, differ "
        "from the ones it was trained on: its LoRA adapters were trained on other base weights"
    )


def save_checkpoint(
    folder: Path, step: int, qat: Any, optimizer: Any, info: dict[str, Any], *, keep: int | None = None
) -> Path:
    """Write ``folder/checkpoint-<step>`` atomically; then keep only the newest ``keep`` checkpoints."""
    final = folder / f"checkpoint-{step}"
    state = {
        "student": saved_student_state(qat.student),
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


#: What a refused checkpoint's message says to do.
_FIX = (
    "The file was changed by hand or written by another program or model: resume from another checkpoint "
    "of this run, resume the run in the output folder that matches the model, or start a new run in a new "
    "output folder."
)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_error(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value is None or (number and math.isfinite(value) and value >= 0)


# Each field of checkpoint.json: a test of its value, and what it must be.
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (lambda v: v == 1 and type(v) is int, "1"),
    "step": (_is_count, "an integer >= 1"),
    "world_size": (_is_count, "an integer >= 1"),
    "ptq_error": (_is_error, "null or a finite number >= 0"),
    "quantization": (lambda v: v is None or isinstance(v, dict), "null (a float student) or a JSON object"),
    "tome": (lambda v: v is None or isinstance(v, dict), "null or a JSON object (a ToMeConfig)"),
    "qat_config": (lambda v: isinstance(v, dict), "a JSON object (a QATConfig)"),
    "nncf_config": (lambda v: v is None or isinstance(v, dict), "null (a float student) or a JSON object"),
}


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """``checkpoint.json`` of the checkpoint folder ``path``, every field checked; CorruptModelError naming
    the file and the field otherwise (a checkpoint edited by hand, cut short, or of another program)."""
    file = path / INFO_FILE
    info = read_json_object(file, fix=_FIX)
    for name, (valid, rule) in _FIELDS.items():
        if name not in info:
            raise CorruptModelError(f"{file} has no {name!r} field. {_FIX}")
        if not valid(info[name]):
            raise CorruptModelError(f"{file}: {name!r} is {info[name]!r}; it must be {rule}. {_FIX}")
    if (info["quantization"] is None) != (info["nncf_config"] is None):
        raise CorruptModelError(
            f"{file}: 'quantization' and 'nncf_config' must both be null (a float student) or both be set. {_FIX}"
        )
    numbered = _NAME.match(path.name)
    if numbered and int(numbered.group(1)) != info["step"]:
        raise CorruptModelError(f"{file}: 'step' is {info['step']}, but the folder is {path.name}. {_FIX}")
    known = {k: v for k, v in info["qat_config"].items() if k in QATConfig.__dataclass_fields__}
    for name, read in (
        (
            "quantization",
            lambda: info["quantization"] is None or QuantizationConfig.from_dict(info["quantization"]),
        ),
        ("tome", lambda: info["tome"] is None or ToMeConfig.from_dict(info["tome"])),
        ("qat_config", lambda: QATConfig(**known)),
    ):
        try:
            read()
        except (InvalidConfigError, TypeError) as exc:
            raise CorruptModelError(f"{file}: {name!r} is not valid ({exc}). {_FIX}") from exc
    return info


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        # Not torch's message: it advises turning weights_only off, which would run code from the file.
        raise CorruptModelError(
            f"cannot read {path / STATE_FILE} ({type(exc).__name__}): it is truncated, or not a checkpoint "
            "sd_ovopt wrote (code in it is never run). Resume from another checkpoint."
        ) from exc
    parts = ("student", "optimizer", "ema")
    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in parts):
        found = sorted(state, key=str) if isinstance(state, dict) else type(state).__name__
        raise CorruptModelError(
            f"{path / STATE_FILE} must hold the dicts {list(parts)}, found {found}. {_FIX}"
        )
    return state


def _rebuild_student(path: Path, info: dict[str, Any], float_unet: torch.nn.Module) -> Any:
    """A copy of ``float_unet``, ToMe applied as recorded, NNCF's quantizers inserted where recorded (none
    for a float student)."""
    student = copy.deepcopy(float_unet)
    if info["tome"] is not None:
        apply_tome(student, ToMeConfig.from_dict(info["tome"]))
    if info["nncf_config"] is None:
        return student
    import_nncf()
    import nncf.torch  # after import_nncf's set-up

    try:
        student = nncf.torch.load_from_config(student, info["nncf_config"])
    except Exception as exc:  # NNCF raises KeyError, RuntimeError, ... for a layout of another model
        raise CorruptModelError(
            f"{path / INFO_FILE}: 'nncf_config' does not fit this UNet ({type(exc).__name__}: {exc}); the "
            f"checkpoint was written for another model. {_FIX}"
        ) from exc
    setattr(student, QUANTIZATION_ATTR, QuantizationConfig.from_dict(info["quantization"]))
    return student


def _optimizer_mismatch(saved: dict[str, Any], student: torch.nn.Module) -> str | None:
    """Why ``saved`` is not the AdamW state of ``student``'s two parameter groups; ``None`` if it is."""
    groups = trainable_parameters(student)
    saved_groups, per_parameter = saved.get("param_groups"), saved.get("state")
    if not isinstance(saved_groups, list) or not isinstance(per_parameter, dict):
        return "the optimizer state lacks 'param_groups' or 'state'"
    sizes = [len(g.get("params", ())) if isinstance(g, dict) else None for g in saved_groups]
    if sizes != [len(group) for group in groups]:
        return f"the optimizer state has parameter groups of {sizes} parameters, the model {[len(g) for g in groups]}"
    for saved_group, params in zip(saved_groups, groups, strict=True):
        for index, param in zip(saved_group["params"], params, strict=True):
            entry = per_parameter.get(index, {}) if isinstance(index, int) else None
            if not isinstance(entry, dict):
                return f"the optimizer state of parameter {index!r} is not a dict of tensors"
            for key, value in entry.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.ndim and value.shape != param.shape:
                    return f"the optimizer's {key!r} of parameter {index} has another shape than the model's"
                if value.is_floating_point() and not torch.isfinite(value).all():
                    return f"the optimizer's {key!r} of parameter {index} holds NaN or infinite values"
    return None


def load_checkpoint(
    path: Path,
    float_unet: torch.nn.Module,
    adapt: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Read a checkpoint; return its info, its state dicts, and the student rebuilt with its weights.

    The student is rebuilt from a copy of ``float_unet`` (ToMe applied as recorded, then NNCF's quantizers
    inserted where the checkpoint says, then ``adapt``, e.g. a LoRA student's adapters, applied to it),
    so resuming needs no calibration. Every field of the info and every tensor of the state is checked
    first (names and shapes against the rebuilt student, finite values, the signature of the frozen
    weights it left out): a checkpoint of another model, edited by hand or holding NaN raises
    CorruptModelError.
    """
    info = read_checkpoint_info(path)
    state = _read_state(path)
    student = _rebuild_student(path, info, float_unet)
    if adapt is not None:
        student = adapt(student)
    problem = (
        state_mismatch(state["student"], saved_student_state(student), "the student state")
        or ema_state_mismatch(state["ema"], student)
        or _optimizer_mismatch(state["optimizer"], student)
        or _left_out_mismatch(info, student)
    )
    if problem:
        raise CorruptModelError(f"{path / STATE_FILE}: {problem}. {_FIX}")
    student.load_state_dict(state["student"], strict=False)  # the frozen originals are the float UNet's
    return info, state, student


def checkpoint_info(student: Any, **fields: Any) -> dict[str, Any]:
    """What ``checkpoint.json`` records besides the step: ``fields``, NNCF's quantizer layout (``None``
    for a float student) and the signature of the frozen weights the checkpoint leaves out (``None``
    unless the student has some)."""
    signature = {"frozen_weights_signature": _left_out_signature(student)}
    if not is_quantized(student):
        return {"format": 1, "quantization": None, "nncf_config": None, **signature, **fields}
    import nncf.torch  # loaded already (the student is quantized), after import_nncf's set-up

    return {
        "format": 1,
        "quantization": get_quantization_config(student).to_dict(),
        "nncf_config": nncf.torch.get_config(student),
        **signature,
        **fields,
    }
