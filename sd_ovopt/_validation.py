"""Validators shared by every config and entry point: one message shape for one kind of mistake.

Numbers that reach a sampler, an optimizer or a record go through :func:`check_int` and
:func:`check_float`: numpy scalars and 0-d tensors are accepted where Python numbers are (and returned as
Python numbers), while booleans, strings, NaN and infinities are refused with an
:class:`~sd_ovopt.errors.InvalidConfigError` that names the field, shows the value and says what is allowed.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any

from sd_ovopt.errors import InvalidConfigError

__all__ = ["check_choice", "check_finite_tensor", "check_float", "check_int", "check_keywords"]


def _plain(value: Any) -> Any:
    """A numpy scalar or a 0-d tensor/array as the Python number it holds; anything else unchanged."""
    if isinstance(value, (bool, int, float)) or not callable(getattr(value, "item", None)):
        return value
    if getattr(value, "ndim", None) == 0 or (
        hasattr(value, "dim") and callable(value.dim) and value.dim() == 0
    ):
        return value.item()
    return value


def _bounds(minimum: float | None, maximum: float | None, *, open_minimum: bool = False) -> str:
    low = None if minimum is None else f"{'>' if open_minimum else '>='} {minimum}"
    high = None if maximum is None else f"<= {maximum}"
    return " and ".join(part for part in (low, high) if part)


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer (not a bool; numpy integers accepted) within the
    bounds; raise InvalidConfigError otherwise.

    Example:
        >>> check_int("steps", 20, minimum=1)
        20
    """
    bounds = _bounds(minimum, maximum)
    plain = _plain(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Integral):
        raise InvalidConfigError(
            f"{name}={value!r} ({type(value).__name__}); it must be an integer{' ' + bounds if bounds else ''}."
        )
    plain = int(plain)
    if (minimum is not None and plain < minimum) or (maximum is not None and plain > maximum):
        raise InvalidConfigError(f"{name}={value!r}; it must be {bounds}.")
    return plain


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_minimum: bool = False,
    hint: str = "",
) -> float:
    """Return ``value`` as a finite float within the bounds (``> minimum`` with ``open_minimum``).

    Integers, numpy scalars and 0-d tensors are accepted; booleans, strings, NaN and infinities are not.
    ``hint`` is appended to the message (what the value is for, a typical value).

    Example:
        >>> check_float("learning_rate", 1e-5, minimum=0, open_minimum=True)
        1e-05
    """
    tail = f" {hint}" if hint else ""
    plain = _plain(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Real):
        raise InvalidConfigError(f"{name}={value!r} ({type(value).__name__}); it must be a number.{tail}")
    number = float(plain)
    if not math.isfinite(number):
        raise InvalidConfigError(f"{name}={value!r}; it must be a finite number, not NaN or infinity.{tail}")
    below = minimum is not None and (number <= minimum if open_minimum else number < minimum)
    if below or (maximum is not None and number > maximum):
        raise InvalidConfigError(
            f"{name}={value!r}; it must be {_bounds(minimum, maximum, open_minimum=open_minimum)}.{tail}"
        )
    return number


def check_finite_tensor(name: str, value: Any, *, hint: str = "") -> None:
    """Raise InvalidConfigError unless the tensor or array ``value`` holds only finite numbers."""
    import torch  # the CLI imports this module: torch loads when a tensor is checked

    values = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise InvalidConfigError(
            f"{name} holds NaN or infinite values, which turn every output into NaN (a black image)."
            f"{' ' + hint if hint else ''}"
        )


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Return ``value`` if it is one of ``choices``; raise InvalidConfigError naming them otherwise."""
    if value not in choices:
        raise InvalidConfigError(f"{name}={value!r}; use one of {', '.join(map(repr, choices))}.")
    return value


def check_keywords(given: Iterable[str], known: Iterable[str], *, where: str) -> None:
    """Raise InvalidConfigError for a keyword not in ``known``, naming the closest valid one: a typo such
    as ``num_inference_step=4`` must not be ignored (and run the default 50 steps)."""
    valid = sorted(set(known))
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            suggestion = f" Did you mean {close[0]!r}?" if close else ""
            raise InvalidConfigError(
                f"{where} got an unknown keyword argument {key!r}.{suggestion} Valid ones: {', '.join(valid)}."
            )
