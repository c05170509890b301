"""Step caching as a registered method: two UNet IRs in the folder, a schedule at run time."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd_ovopt._loading import path_inside, refuse_guidance_embedded
from sd_ovopt.deepcache.calibration import collect_deepcache_calibration, quantize_deepcache_unet
from sd_ovopt.deepcache.config import SCHEDULES, DeepCacheConfig
from sd_ovopt.deepcache.export import FEATURE_NAME, SHALLOW_PART, convert_deepcache_unets
from sd_ovopt.deepcache.patch import attach, get_deepcache_config, plan_skips, remove_deepcache
from sd_ovopt.deepcache.runtime import CachedOVUNet
from sd_ovopt.errors import AlreadyAppliedError, CorruptModelError, InvalidConfigError
from sd_ovopt.methods import (
    ExportShape,
    Method,
    MethodRecord,
    RecipeSettings,
    UNetConversion,
    register_method,
)

__all__ = ["StepCachingMethod", "StepCachingRecord"]

_IR = "openvino_model.xml"


@dataclass(frozen=True)
class StepCachingRecord(MethodRecord):
    """Step caching in ``sd_ovopt.json``.

    Attributes:
        config: The :class:`DeepCacheConfig`.
        full: The full UNet IR (it also returns the cached feature), relative to the folder.
        shallow: The shallow UNet IR (it takes the feature), relative to the folder.
        feature: The feature's name (the full IR's second output, the shallow IR's fourth input).
        feature_shape: The feature's static shape.
    """

    full: str = f"unet/{_IR}"
    shallow: str = f"{SHALLOW_PART}/{_IR}"
    feature: str = FEATURE_NAME
    feature_shape: tuple[int, ...] = ()

    def check(self, source: str) -> None:
        for name in ("full", "shallow", "feature"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise CorruptModelError(f"{source}.{name} is {value!r}; it must be a non-empty string.")
        shape = self.feature_shape
        if not (
            isinstance(shape, (list, tuple))
            and len(shape) == 4
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        ):
            raise CorruptModelError(f"{source}.feature_shape is {shape!r}; it must be 4 integers >= 1.")


class StepCachingMethod(Method):
    """DeepCache: the full UNet on refresh steps, the shallow UNet with the cached feature in between."""

    name = "step_caching"
    config_class = DeepCacheConfig
    record_class = StepCachingRecord
    rank = 20  # after ToMe (traced inside both IRs), before INT8 (which calibrates each step in its mode)
    label = "step caching"
    switchable = True

    def applied_config(self, unet: Any) -> DeepCacheConfig | None:
        return get_deepcache_config(unet)

    def apply(self, unet: Any, config: DeepCacheConfig) -> Any:
        """The patch without a pipeline: every call runs the full UNet unless it passes the cached
        feature (what export and calibration use; :func:`sd_ovopt.apply_deepcache` follows a pipeline)."""
        current = self.applied_config(unet)
        if current == config:
            return unet
        if current is not None:
            raise AlreadyAppliedError(
                f"the UNet carries step caching {current}, not {config}; call remove_deepcache first."
            )
        return attach(unet, config)

    def remove(self, unet: Any) -> Any:
        return remove_deepcache(unet)

    def add_cli_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        parser.add_argument(
            "--deepcache-interval",
            type=int,
            default=None,
            help="step caching (DeepCache): run the full UNet every N steps, the shallow UNet between (e.g. 3)",
        )
        parser.add_argument(
            "--deepcache-branch",
            type=int,
            default=None,
            help="skip branch the UNet is cut at (default 0: shallowest)",
        )
        parser.add_argument(
            "--deepcache-schedule",
            choices=SCHEDULES,
            default=None,
            help="which steps refresh (default uniform; quadratic: denser early)",
        )

    def config_from_cli(self, args: argparse.Namespace, command: str) -> DeepCacheConfig | None:
        if args.deepcache_interval is None:
            if args.deepcache_branch is not None or args.deepcache_schedule is not None:
                raise InvalidConfigError(
                    "--deepcache-branch and --deepcache-schedule need --deepcache-interval (e.g. 3)."
                )
            return None
        return DeepCacheConfig(
            interval=args.deepcache_interval,
            branch=0 if args.deepcache_branch is None else args.deepcache_branch,
            schedule=args.deepcache_schedule or "uniform",
        )

    def prepare(self, unet: Any, config: DeepCacheConfig, settings: RecipeSettings) -> Any:
        """Calibration follows the cached sampling, and quantization replays each step in its mode."""
        refuse_guidance_embedded(unet, "step caching")

        def collector(pipeline: Any, prompts: Any, **call: Any) -> Any:
            return collect_deepcache_calibration(pipeline, prompts, config=config, **call)

        def quantizer(student: Any, calibration: Any, quantization: Any) -> Any:
            return quantize_deepcache_unet(student, calibration, config, quantization)

        settings.collector, settings.quantizer = collector, quantizer
        return unet

    def check_export(self, unet: Any, config: DeepCacheConfig) -> None:
        refuse_guidance_embedded(unet, "step caching")
        plan_skips(unet, config.branch)  # a branch this UNet lacks is refused before anything is written

    def convert_unet(self, unet: Any, config: DeepCacheConfig, shape: ExportShape) -> UNetConversion:
        full, shallow, feature_shape = convert_deepcache_unets(unet, config, **shape.as_kwargs())
        record = StepCachingRecord(config=config, feature_shape=tuple(feature_shape))
        return UNetConversion(parts={"unet": full, SHALLOW_PART: shallow}, record=record)

    def load(self, pipe: Any, record: StepCachingRecord, folder: Path) -> Any:
        """The shallow UNet, as an optimum-intel UNet part."""
        # on use: the method registry (so `sd-ovopt --help`) imports this module
        import openvino as ov
        from optimum.intel.openvino.modeling_diffusion import OVModelUnet

        xml = path_inside(folder, record.shallow, source=str(folder / "sd_ovopt.json"), field_name="shallow")
        if not xml.is_file() or not xml.with_suffix(".bin").is_file():
            raise CorruptModelError(
                f"{xml} (or its .bin) is missing, but sd_ovopt.json records step caching: the export is "
                "incomplete. Export it again."
            )
        try:
            model = ov.Core().read_model(xml)
        except RuntimeError as exc:
            raise CorruptModelError(
                f"OpenVINO could not read {xml}: {exc}. Export the pipeline again."
            ) from exc
        return OVModelUnet(model, pipe, xml.parent.name)

    @contextlib.contextmanager
    def call_context(self, pipe: Any, record: StepCachingRecord, loaded: Any) -> Iterator[None]:
        # Swapped in the instance dict: DiffusionPipeline.__setattr__ would rewrite the pipeline's config.
        full = pipe.__dict__["unet"]
        cached = CachedOVUNet(full, loaded, record.config, lambda: pipe.scheduler)
        pipe.__dict__["unet"] = cached
        try:
            yield
        finally:
            pipe.__dict__["unet"] = full
            pipe.last_unet_steps = tuple(cached.steps)

    def reshape(self, pipe: Any, record: StepCachingRecord, loaded: Any) -> None:
        """The shallow UNet at the pipeline's new shape: the UNet's inputs as the full UNet IR has them, and
        the feature as the full IR computes it at that shape."""
        full = pipe.unet.model
        shapes = {}
        for port in loaded.model.inputs:
            name = port.get_any_name()
            source = full.output(record.feature) if name == record.feature else full.input(name)
            shapes[port] = source.get_partial_shape()
        loaded.model.reshape(shapes)
        loaded.clear_requests()


register_method(StepCachingMethod())
