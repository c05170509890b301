"""A method written the way a user's plug-in would be: one config, one Method subclass, one registration.

It scales the UNet's output by ``factor`` through a forward hook (traced into the IR), and counts pipeline
calls at run time, so every hook of the protocol is exercised without touching sd_ovopt's code.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sd_ovopt._config import JsonConfig
from sd_ovopt.errors import AlreadyAppliedError, InvalidConfigError
from sd_ovopt.methods import Method

_STATE = "_toy_scale_output"


@dataclass(frozen=True)
class ScaleConfig(JsonConfig):
    factor: float = 2.0
    version: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.factor, (int, float)) and 0 < self.factor < 100):
            raise InvalidConfigError(f"factor={self.factor!r}; pass a number in (0, 100).")


def _scale(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
    factor = getattr(module, _STATE)[0].factor
    if isinstance(output, tuple):
        return (output[0] * factor, *output[1:])
    output.sample = output.sample * factor
    return output


class ScaleOutputMethod(Method):
    name = "scale_output"
    config_class = ScaleConfig
    rank = 50
    label = "scale"

    def __init__(self) -> None:
        self.calls = 0

    def applied_config(self, unet: Any) -> ScaleConfig | None:
        state = getattr(unet, _STATE, None)
        return None if state is None else state[0]

    def apply(self, unet: Any, config: ScaleConfig) -> Any:
        current = self.applied_config(unet)
        if current == config:
            return unet
        if current is not None:
            raise AlreadyAppliedError(f"scale {current} is applied; remove it first.")
        handle = unet.register_forward_hook(_scale, with_kwargs=True)
        object.__setattr__(unet, _STATE, (config, handle))
        return unet

    def remove(self, unet: Any) -> Any:
        state = unet.__dict__.pop(_STATE, None)
        if state is not None:
            state[1].remove()
        return unet

    def add_cli_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        parser.add_argument("--scale-output", type=float, default=None)

    def config_from_cli(self, args: argparse.Namespace, command: str) -> ScaleConfig | None:
        return None if args.scale_output is None else ScaleConfig(factor=args.scale_output)

    @contextlib.contextmanager
    def call_context(self, pipe: Any, record: Any, loaded: Any) -> Iterator[None]:
        self.calls += 1
        yield
