"""The method protocol: what an optimization gives the export, the recipe and the pipeline.

A method (ToMe, step caching, INT8, and whatever comes next) is one subpackage with a :class:`Method`
subclass registered once (:func:`sd_ovopt.methods.register_method`). The export, the recipe, the OpenVINO
pipeline, the CLI and the benchmark loop over the methods a UNet carries or a call asks for and call the
hooks below; none of them names a method. Every hook has a default that does nothing, so a method
implements only what it changes.

The hooks, by where they run:

* on a PyTorch UNet: :meth:`Method.applied_config`, :meth:`Method.apply`, :meth:`Method.remove`
  (and :meth:`Method.example_config`, the config the shared contract suite tries it with);
* in the recipe, on the copy of the UNet that is quantized and exported: :meth:`Method.prepare`;
* in the export: :meth:`Method.check_export`, :meth:`Method.convert_unet` (a method that writes the UNet
  as other IRs), :meth:`Method.finish_unet_ir`, :meth:`Method.record`;
* on the command line: :meth:`Method.add_cli_arguments`, :meth:`Method.config_from_cli`;
* at run time in :class:`sd_ovopt.SdOvOptPipeline`: :meth:`Method.load`, :meth:`Method.call_context`.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sd_ovopt.errors import CorruptModelError, InvalidConfigError

__all__ = [
    "ExportShape",
    "Method",
    "MethodRecord",
    "RecipeSettings",
    "UNetConversion",
]


@dataclass(frozen=True)
class MethodRecord:
    """What a method baked into a folder: its config, plus what its IRs need at run time (subclasses add
    fields). Written under ``"methods"`` in ``sd_ovopt.json`` with a ``"version"`` of the record's layout.

    Attributes:
        config: The method's config (a frozen dataclass with ``to_dict`` / ``from_dict``).
    """

    VERSION: ClassVar[int] = 1
    config: Any

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (the config as its dict)."""
        data: dict[str, Any] = {"version": self.VERSION, "config": self.config.to_dict()}
        for item in dataclasses.fields(self):
            if item.name != "config":
                value = getattr(self, item.name)
                data[item.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Any, config_class: type, *, source: str) -> MethodRecord:
        """Read a record written by :meth:`to_dict`; raise ``CorruptModelError`` naming what is wrong."""
        if not isinstance(data, dict):
            raise CorruptModelError(f"{source} is {data!r}; it must be an object. Export the pipeline again.")
        if data.get("version") != cls.VERSION:
            raise CorruptModelError(
                f"{source}: version is {data.get('version')!r}, this sd_ovopt reads {cls.VERSION}. Export the "
                "pipeline again with this version of sd_ovopt."
            )
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = set(data) - names - {"version"}
        if unknown or not names <= set(data):
            raise CorruptModelError(
                f"{source} holds {sorted(data)}; a {cls.__name__} holds {sorted(names | {'version'})}. The "
                "file was edited or damaged: export the pipeline again."
            )
        try:
            config = config_class.from_dict(data["config"]) if isinstance(data["config"], dict) else None
        except (InvalidConfigError, TypeError, ValueError) as exc:
            raise CorruptModelError(
                f"{source}.config is not a valid {config_class.__name__} ({exc}). Export the pipeline again."
            ) from exc
        if config is None:
            raise CorruptModelError(f"{source}.config must be an object. Export the pipeline again.")
        values = {k: tuple(data[k]) if isinstance(data[k], list) else data[k] for k in names - {"config"}}
        record = cls(**values, config=config)
        record.check(source)
        return record

    def check(self, source: str) -> None:
        """Subclasses check their own fields here (raise ``CorruptModelError``)."""


@dataclass(frozen=True)
class ExportShape:
    """The shape the UNet IRs are traced at.

    Attributes:
        batch: The UNet's batch (images, times 2 with classifier-free guidance).
        latent_height: Latent height.
        latent_width: Latent width.
        text_length: Tokens per prompt.
        any_shape: Leave the IRs' batch and latent size dynamic (the traced shape is then an example);
            otherwise they are static at this shape.
    """

    batch: int
    latent_height: int
    latent_width: int
    text_length: int
    any_shape: bool = False

    def as_kwargs(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class UNetConversion:
    """What :meth:`Method.convert_unet` gives the export: the UNet's IRs by part folder (``"unet"`` first,
    the IR optimum-intel and OpenVINO GenAI run) and the record to write for the method."""

    parts: dict[str, Any]
    record: MethodRecord


@dataclass
class RecipeSettings:
    """How the recipe records calibration and quantizes; methods may change both in :meth:`Method.prepare`.

    Attributes:
        record: The recipe's recorder: ``record(collector, unet, max_samples)`` runs ``collector(pipeline,
            prompts, max_samples=..., **call)`` with ``unet`` as the pipeline's UNet and returns the inputs.
        calibration: Inputs given by the caller (used as they are, nothing is recorded).
        collector: What records calibration (``None``: the quantizing method's own).
        quantizer: ``quantizer(unet, calibration, config)`` (``None``: the quantizing method's own).
    """

    record: Callable[[Callable[..., Sequence[Any]], Any, int], Sequence[Any]]
    calibration: Sequence[Any] | None = None
    collector: Callable[..., Sequence[Any]] | None = None
    quantizer: Callable[[Any, Sequence[Any], Any], Any] | None = None

    def calibrate(
        self, unet: Any, default_collector: Callable[..., Sequence[Any]], max_samples: int
    ) -> Sequence[Any]:
        """The calibration inputs for ``unet``: the given ones, or up to ``max_samples`` recorded along its
        sampling."""
        if self.calibration is not None:
            return self.calibration
        return self.record(self.collector or default_collector, unet, max_samples)


class Method(abc.ABC):
    """Base class of an optimization (see the module docstring for where each hook runs).

    Class attributes:
        name: The key in the registry and in ``sd_ovopt.json`` (lowercase, e.g. ``"tome"``).
        config_class: The method's config type (frozen dataclass with ``to_dict`` / ``from_dict``).
        record_class: Its record type in ``sd_ovopt.json`` (:class:`MethodRecord` or a subclass).
        rank: Order on a UNet: lower ranks are applied first (graph changes before quantization, which
            records the graph it is given).
        label: Short text for tables and logs.
        quantizes: Whether the method stores the UNet's weights in 8 bits (the recipe then stores the text
            encoder's and VAE's weights in int8 too, unless told not to).
        switchable: Whether the pipeline can switch it off at run time (``pipe.disable_method``); a
            method baked into the IR's graph cannot be.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    record_class: ClassVar[type[MethodRecord]] = MethodRecord
    rank: ClassVar[int] = 50
    label: ClassVar[str] = ""
    quantizes: ClassVar[bool] = False
    switchable: ClassVar[bool] = False

    # -- on a PyTorch UNet ------------------------------------------------------------------------------
    @abc.abstractmethod
    def applied_config(self, unet: Any) -> Any:
        """The config this method has applied to ``unet``, or ``None``."""

    @abc.abstractmethod
    def apply(self, unet: Any, config: Any) -> Any:
        """Apply to ``unet`` in place (same config again: no-op); return it. Keep hook handles."""

    @abc.abstractmethod
    def remove(self, unet: Any) -> Any:
        """Undo :meth:`apply` exactly (no-op when not applied); return ``unet``."""

    @classmethod
    def example_config(cls, folder: Path) -> Any:
        """A config to try the method with on the tiny test UNet (:func:`sd_ovopt.testing.tiny_pipeline`);
        the shared contract suite runs every method with it. A method whose config needs files (a LoRA
        file) writes them under ``folder``. Default: ``config_class()``."""
        return cls.config_class()

    # -- in the recipe ----------------------------------------------------------------------------------
    def prepare(self, unet: Any, config: Any, settings: RecipeSettings) -> Any:
        """The recipe's UNet with this method in, as a new UNet or ``unet`` itself when the method changes
        nothing on it; ``unet`` itself is never changed (default: :meth:`apply` on a deep copy)."""
        return self.apply(copy.deepcopy(unet), config)

    # -- in the export ----------------------------------------------------------------------------------
    def check_export(self, unet: Any, config: Any) -> None:
        """Refuse, with a typed error, a UNet this method cannot be exported with (nothing is written yet)."""
        return None

    @contextlib.contextmanager
    def applied_for_export(self, unet: Any, config: Any) -> Iterator[None]:
        """``config`` applied to ``unet`` while the export traces it, removed after unless it was there."""
        before = self.applied_config(unet)
        if before is None:
            self.apply(unet, config)
        try:
            yield
        finally:
            if before is None:
                self.remove(unet)

    def convert_unet(self, unet: Any, config: Any, shape: ExportShape) -> UNetConversion | None:
        """The UNet's IRs when this method writes them itself (``None``: the plain UNet IR)."""
        return None

    def finish_unet_ir(self, model: Any, config: Any) -> Any:
        """Change a converted UNet IR before it is saved (e.g. compress weights); return it."""
        return model

    def record(self, config: Any) -> MethodRecord:
        """The record of a method whose IRs the plain conversion wrote (see :meth:`convert_unet`)."""
        return self.record_class(config=config)

    # -- on the command line (``sd-ovopt export`` and ``sd-ovopt quantize``) ------------------------------
    def add_cli_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        """Add this method's flags to the ``command`` subcommand's parser (default: none)."""
        return None

    def config_from_cli(self, args: argparse.Namespace, command: str) -> Any:
        """The config the flags ask for, or ``None`` (method not asked for); refuse bad flags with a typed
        error naming the flag."""
        return None

    # -- at run time ------------------------------------------------------------------------------------
    def load(self, pipe: Any, record: MethodRecord, folder: Path) -> Any:
        """Load what the method needs beside the pipeline's parts; the result is passed to
        :meth:`call_context` (default: nothing). An optimum-intel pipeline part returned here is compiled
        and cleared with the pipeline's own parts."""
        return None

    @contextlib.contextmanager
    def call_context(self, pipe: Any, record: MethodRecord, loaded: Any) -> Iterator[None]:
        """Wrap one pipeline call (e.g. swap the UNet for a cached one); default: nothing."""
        yield

    def reshape(self, pipe: Any, record: MethodRecord, loaded: Any) -> None:
        """Fit what :meth:`load` returned to the pipeline's new static shape; called after the pipeline's
        own parts are reshaped (``pipe.unet.model`` has the new shape). Default: nothing to fit."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
