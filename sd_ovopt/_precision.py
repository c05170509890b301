"""Which precision OpenVINO computes float ops in: the accepted values, and what ``"auto"`` means here.

Light to import (OpenVINO loads only when a device is queried), so the CLI and the benchmark settings can
share :data:`PRECISIONS` without loading optimum-intel.
"""

from __future__ import annotations

from typing import Any

from sd_ovopt.errors import InvalidConfigError

__all__ = [
    "EXPLICIT_PRECISIONS",
    "HINT",
    "PRECISIONS",
    "check_device_config",
    "openvino_message",
    "precision_config",
    "precision_hint",
    "resolve_precision",
]

#: The precisions that name what OpenVINO is told, "auto" aside: what optimum-intel's loader takes (the
#: benchmark's variants load through it). ``"default"`` sets no hint and lets the plugin choose.
EXPLICIT_PRECISIONS = ("f32", "bf16", "f16", "default")

#: Accepted values of ``precision``. ``"auto"`` (the default): bf16 where the CPU plugin reports native
#: BF16 (AVX512-BF16 or AMX), f32 elsewhere; or one of :data:`EXPLICIT_PRECISIONS`.
PRECISIONS = ("auto", *EXPLICIT_PRECISIONS)

#: The OpenVINO property that carries the precision (optimum-intel's users set it in ``ov_config``).
HINT = "INFERENCE_PRECISION_HINT"


def _optimization_capabilities(device: str) -> list[str]:
    """What OpenVINO's ``device`` plugin computes natively, e.g. ``["FP32", "BF16", "INT8", ...]``."""
    import openvino as ov  # the CLI imports this module: OpenVINO loads when a precision is resolved

    return [str(c) for c in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")]


def resolve_precision(precision: str, device: str = "CPU") -> str:
    """The precision ``precision`` stands for on ``device``.

    ``"auto"`` becomes ``"bf16"`` on a CPU whose OpenVINO plugin reports native BF16 in
    ``OPTIMIZATION_CAPABILITIES``, ``"f32"`` on other CPUs, and ``"default"`` (no hint: the plugin's own
    choice, e.g. f16 on a GPU) on other devices. Every other accepted value is returned as it is.

    Example:
        >>> resolve_precision("f32")
        'f32'
        >>> resolve_precision("auto") in ("bf16", "f32")
        True
    """
    if precision not in PRECISIONS:
        raise InvalidConfigError(f"precision={precision!r}; use one of {PRECISIONS}.")
    if precision != "auto":
        return precision
    if not device.upper().startswith("CPU"):
        return "default"
    return "bf16" if "BF16" in _optimization_capabilities(device) else "f32"


def hint_name(value: Any) -> str:
    """The name of an ``INFERENCE_PRECISION_HINT`` value as OpenVINO reports it, e.g. ``"f32"``."""
    return str(value.get_type_name() if hasattr(value, "get_type_name") else value)


def precision_config(
    precision: str | None, ov_config: dict[str, Any] | None, device: str = "CPU"
) -> tuple[dict[str, Any], str]:
    """The OpenVINO properties to compile with, and the precision they ask for (``"default"``: no hint).

    ``precision=None`` means not given: ``ov_config``'s ``INFERENCE_PRECISION_HINT`` (optimum-intel's
    convention) is honoured if set, otherwise ``"auto"`` applies. Given both, they must agree.

    Example:
        >>> precision_config(None, {"INFERENCE_PRECISION_HINT": "f32"})
        ({'INFERENCE_PRECISION_HINT': 'f32'}, 'f32')
        >>> precision_config("bf16", None)
        ({'INFERENCE_PRECISION_HINT': 'bf16'}, 'bf16')
    """
    if precision is not None and precision not in PRECISIONS:
        raise InvalidConfigError(f"precision={precision!r}; use one of {PRECISIONS}.")
    config = dict(ov_config or {})
    if HINT in config:
        hint = hint_name(config[HINT])
        if precision is not None and precision != hint:
            raise InvalidConfigError(
                f"precision={precision!r} and ov_config[{HINT!r}]={hint!r} disagree; pass only one of them "
                f"(precision= takes {PRECISIONS}; the ov_config key is optimum-intel's convention)."
            )
        return config, hint
    resolved = resolve_precision("auto" if precision is None else precision, device)
    if resolved != "default":
        config[HINT] = resolved
    return config, resolved


def precision_hint(precision: str | None) -> dict[str, str]:
    """The OpenVINO property that pins an explicit precision: ``{}`` for ``None`` or ``"default"`` (the
    plugin's choice), else ``{"INFERENCE_PRECISION_HINT": precision}`` (``"auto"`` resolved first).

    Example:
        >>> precision_hint("f32")
        {'INFERENCE_PRECISION_HINT': 'f32'}
    """
    if precision is None:
        return {}
    resolved = resolve_precision(precision)
    return {} if resolved == "default" else {HINT: resolved}


def openvino_message(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what is wrong (it ends a stack of source locations)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception from src/")]
    return (useful or lines or [type(exc).__name__])[-1]


def check_device_config(device: Any, ov_config: dict[str, Any] | None) -> None:
    """Refuse a device or OpenVINO properties that OpenVINO rejects, before any model is read.

    A tiny model is compiled with them: a typo in a property name, a bad value or an unknown device is
    then the user's mistake, named as such, not reported later as a corrupt IR.
    """
    # the CLI imports this module: OpenVINO loads only when a device is checked
    import openvino as ov
    import openvino.opset13 as ops

    if not isinstance(device, str) or not device.strip():
        raise InvalidConfigError(f"device={device!r}; pass an OpenVINO device name such as 'CPU'.")
    if ov_config is None:
        ov_config = {}
    if not isinstance(ov_config, dict):
        raise InvalidConfigError(
            f"ov_config={ov_config!r} ({type(ov_config).__name__}); pass a dict of OpenVINO properties."
        )
    bad_keys = [key for key in ov_config if not isinstance(key, str)]
    if bad_keys:
        raise InvalidConfigError(
            f"ov_config keys must be OpenVINO property names (strings); got {bad_keys!r}."
        )
    core = ov.Core()
    probe = ops.parameter([1], ov.Type.f32)
    try:
        core.compile_model(ov.Model([ops.relu(probe)], [probe]), device, ov_config)
    except (RuntimeError, TypeError) as exc:
        raise InvalidConfigError(
            f"OpenVINO refuses device={device!r} with ov_config={ov_config!r}: {openvino_message(exc)} "
            f"Devices here: {', '.join(core.available_devices)}. Fix the device name or the property."
        ) from exc
