"""Validators shared by every config and entry point: one message shape for one kind of mistake."""

from __future__ import annotations

from typing import Any

from sd_ovopt.errors import InvalidConfigError

__all__ = ["check_choice", "check_int"]


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an integer (not a bool) within the bounds; raise InvalidConfigError otherwise.

    Example:
        >>> check_int("steps", 20, minimum=1)
        20
    """
    bounds = " and ".join(
        part
        for part in (
            None if minimum is None else f">= {minimum}",
            None if maximum is None else f"<= {maximum}",
        )
        if part
    )
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(
            f"{name}={value!r} ({type(value).__name__}); it must be an integer{' ' + bounds if bounds else ''}."
        )
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidConfigError(f"{name}={value!r}; it must be {bounds}.")
    return value


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Return ``value`` if it is one of ``choices``; raise InvalidConfigError naming them otherwise."""
    if value not in choices:
        raise InvalidConfigError(f"{name}={value!r}; use one of {', '.join(map(repr, choices))}.")
    return value
