"""sd_ovopt.evaluation.timing: the one interleaved loop, on stand-in pipelines (no model, milliseconds)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sd_ovopt._seeding import image_seed
from sd_ovopt.evaluation.timing import Call, Loaded, Sample, time_variants

CALL = Call(steps=3, guidance_scale=7.5, height=16, width=16)


class _Pipe:
    """A PyTorch-runtime stand-in: records its calls; its image is the first noise value it is given."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.unet = lambda **kwargs: log.append(f"{name}:unet")
        self.unet.config = {"in_channels": 4, "cross_attention_dim": 8}  # type: ignore[attr-defined]
        self.tokenizer = SimpleNamespace(model_max_length=5)
        self.vae_scale_factor = 8
        self.text_encoder = lambda ids: log.append(f"{name}:text")
        self.vae = SimpleNamespace(decode=lambda latent: log.append(f"{name}:vae"))

    def __call__(self, prompt, *, num_inference_steps, generator, **_):
        self.log.append(f"{self.name}:call{num_inference_steps}:{prompt}")
        image = np.full((2, 2, 3), generator.initial_seed() % 97 / 97, dtype=np.float32)
        return SimpleNamespace(images=[image])


def _run(one_at_a_time: bool, rounds: int = 3):
    log: list[str] = []
    loads: dict[str, int] = {}
    first_loads: list[str] = []

    def loader(name: str):
        def load() -> Loaded:
            loads[name] = loads.get(name, 0) + 1
            return Loaded(_Pipe(name, log), "torch")

        return load

    samples = [Sample("p0", 0, 0), Sample("p1", 0, 1)]
    timings, images = time_variants(
        {name: loader(name) for name in ("a", "b", "c")},
        samples,
        CALL,
        rounds=rounds,
        one_at_a_time=one_at_a_time,
        time_parts=True,
        on_load=lambda name, loaded: first_loads.append(name),
        show_progress=False,
    )
    return log, loads, first_loads, timings, images


@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_every_variant_is_timed_each_round_in_rotating_order(one_at_a_time):
    log, loads, first_loads, timings, _ = _run(one_at_a_time)
    assert loads == ({"a": 3, "b": 3, "c": 3} if one_at_a_time else {"a": 1, "b": 1, "c": 1})
    assert first_loads == ["a", "b", "c"]  # told once per variant, whatever the load mode
    for timing in timings.values():
        assert len(timing.pipeline_s) == 3 * 2 and len(timing.unet_step_s) == 3 and len(timing.other_s) == 3
    timed = [line.split(":")[0] for line in log if line.endswith(":call3:p0")]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # the order rotates by one each round
    warm_ups = [line for line in log if ":call2:" in line]  # a short untimed call after each load
    assert len(warm_ups) == sum(loads.values())
    assert log.count("a:text") == 2 * (3 + loads["a"])  # prompt and negative prompt, each turn and warm-up


def test_first_round_images_follow_the_seeding_rule():
    *_, images = _run(one_at_a_time=True, rounds=2)
    for name in ("a", "b", "c"):
        assert [float(img[0, 0, 0]) for img in images[name]] == pytest.approx(
            [image_seed(0, i) % 97 / 97 for i in (0, 1)]
        )


def test_unet_only_makes_no_pipeline_calls():
    log: list[str] = []
    timings, images = time_variants(
        {"a": lambda: Loaded(_Pipe("a", log), "torch")},
        [Sample("p", 0, 0)],
        CALL,
        rounds=2,
        unet_only=True,
        time_parts=True,
        show_progress=False,
    )
    assert not [line for line in log if ":call" in line] and images == {"a": []}
    assert len(timings["a"].unet_step_s) == 2 and not timings["a"].pipeline_s and not timings["a"].other_s


def test_a_dynamic_input_with_several_names_is_fed_by_its_known_name():
    """optimum-intel's text encoder input carries "input_ids" and numeric names; the runner finds its shape."""
    import openvino as ov
    import openvino.opset13 as ops

    from sd_ovopt.evaluation.timing import _ov_runner

    ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
    ids.output(0).get_tensor().set_names({"31", "input_ids", "input_ids_1"})
    model = ov.Model([ops.convert(ids, "f32")], [ids])
    compiled = ov.Core().compile_model(model, "CPU")
    _ov_runner(compiled, {"input_ids": (1, 77)})()
