"""The contract every registered method keeps, checked on each one (built-ins and the toy plug-in alike):
a new method gets these checks by registering. Each method's config is its ``example_config`` (by default
its config class's defaults; a LoRA writes its file under a temporary folder)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from toy import ScaleOutputMethod  # tests/methods/toy.py: a plug-in registered from the tests

from sd_ovopt import InvalidConfigError, export_pipeline, read_metadata
from sd_ovopt._convert import unet_example_inputs
from sd_ovopt.methods import RecipeSettings, register_method, registered_methods, unregister_method
from sd_ovopt.testing import tiny_pipeline

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def toy():
    method = register_method(ScaleOutputMethod())
    yield method
    unregister_method(method.name)


def _names() -> list[str]:
    register_method(ScaleOutputMethod())  # collected before the fixture runs: the toy is one of them
    return list(registered_methods())


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Each method's example config, made once (the same config in every test)."""
    folder = tmp_path_factory.mktemp("method-examples")
    return {name: method.example_config(folder / name) for name, method in registered_methods().items()}


@pytest.fixture(scope="module")
def calibration(pipe):
    from sd_ovopt import collect_calibration

    return collect_calibration(
        pipe, ["a red circle"], num_inference_steps=4, height=SIZE, width=SIZE, show_progress=False
    )


def _inputs(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The export's own example inputs at the tiny export shape (batch 2: guidance on)."""
    return unet_example_inputs(unet, batch=2, latent_height=SIZE // 2, latent_width=SIZE // 2, text_length=77)


def _run(unet: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return unet(**_inputs(unet), return_dict=False)[0]


def _no_recording(collector, unet, max_samples):
    raise AssertionError("the contract gives calibration inputs; nothing is recorded")


def _applied(method, config, unet, calibration):
    """A copy of ``unet`` with the method's example config in: applied, or made by the recipe's stage
    (a quantizing method needs calibration)."""
    if method.quantizes:
        return method.prepare(unet, config, RecipeSettings(record=_no_recording, calibration=calibration))
    return method.apply(copy.deepcopy(unet), config)


@pytest.mark.parametrize("name", _names())
def test_apply_is_idempotent_and_remove_restores_outputs_bit_for_bit(name, pipe, configs):
    method, config = registered_methods()[name], configs[name]
    unet = copy.deepcopy(pipe.unet)
    before = _run(unet)
    if method.quantizes:  # needs calibration: applied only by the recipe, never removed
        with pytest.raises(InvalidConfigError, match="calibration"):
            method.apply(unet, config)
        assert method.applied_config(unet) is None and torch.equal(_run(unet), before)
        return
    assert method.apply(unet, config) is unet and method.applied_config(unet) == config
    once = _run(unet)
    assert method.apply(unet, config) is unet and torch.equal(_run(unet), once)  # the same config: no-op
    method.remove(unet)
    assert method.applied_config(unet) is None and torch.equal(_run(unet), before)
    method.remove(unet)  # removing again is a no-op
    assert torch.equal(_run(unet), before)


@pytest.mark.parametrize("name", _names())
def test_deepcopy_and_state_dict_carry_the_method(name, pipe, configs, calibration):
    method, config = registered_methods()[name], configs[name]
    unet = _applied(method, config, pipe.unet, calibration)
    assert method.applied_config(unet) == config and method.applied_config(pipe.unet) is None
    twin = copy.deepcopy(unet)
    assert method.applied_config(twin) == config and torch.equal(_run(twin), _run(unet))
    if not method.quantizes:  # a graph change adds no weights: the float checkpoint loads as it is
        assert unet.state_dict().keys() == pipe.unet.state_dict().keys()
        unet.load_state_dict(pipe.unet.state_dict(), strict=True)


@pytest.mark.parametrize("name", _names())
def test_export_records_it_and_the_ir_matches_pytorch(name, pipe, configs, calibration, tmp_path):
    import openvino as ov

    method, config = registered_methods()[name], configs[name]
    unet = _applied(method, config, pipe.unet, calibration)
    out = export_pipeline(pipe, tmp_path / "ov", unet=unet, height=SIZE, width=SIZE, show_progress=False)
    record = read_metadata(out).record(name)
    assert record is not None and record.config == config
    assert type(record).from_dict(record.to_dict(), method.config_class, source="test") == record
    compiled = ov.Core().compile_model(
        out / "unet" / "openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    inputs = _inputs(unet)
    ir = compiled({k: v.numpy() for k, v in inputs.items()})[0]
    reference = _run(unet).numpy()
    error = np.abs(ir - reference).max() / np.abs(reference).max()
    assert error < (5e-2 if method.quantizes else 1e-4), error
