"""What the frozen config dataclasses (ToMeConfig, QuantizationConfig) share: JSON round trips."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

from sd_ovopt.errors import InvalidConfigError

__all__ = ["JsonConfig"]

T = TypeVar("T", bound="JsonConfig")


class JsonConfig:
    """Mixin for frozen dataclasses: ``to_dict`` gives JSON-ready values, ``from_dict`` rejects unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        unknown = set(data) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise InvalidConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}.")
        return cls(**data)
