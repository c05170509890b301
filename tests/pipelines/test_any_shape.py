"""One export, any shape: a folder compiled at another batch or size computes what a fresh export at
that shape computes, with ToMe, INT8 and step caching in its IRs, in sd_ovopt and in OpenVINO GenAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_ovopt import (
    CorruptModelError,
    DeepCacheConfig,
    QuantizationConfig,
    SdOvOptPipeline,
    ShapeMismatchError,
    ToMeConfig,
    apply_tome,
    collect_calibration,
    export_pipeline,
    quantize_unet,
    read_metadata,
)
from sd_ovopt.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red circle on a blue background"
EXPORTED = (32, 32)
#: (height, width) other than the exported size: taller, wider, larger
SIZES = ((48, 32), (32, 64), (64, 64))


def _image(pipe, steps: int = 3, seed: int = 0, **size) -> np.ndarray:
    out = pipe(
        PROMPT,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **size,
    )
    return out.images[0]


class _Exports(dict):
    """The export of one quantized UNet at each size asked for, made on first use."""

    def __init__(self, pipe, qunet, root) -> None:
        super().__init__()
        self.pipe, self.qunet, self.root = pipe, qunet, root

    def __missing__(self, size):
        folder = self.root / f"{size[0]}x{size[1]}"
        self[size] = export_pipeline(
            self.pipe, folder, unet=self.qunet, height=size[0], width=size[1], show_progress=False
        )
        return self[size]


@pytest.fixture(scope="module")
def tome_int8(tmp_path_factory):
    """A ToMe 0.5 + INT8 UNet quantized once, exported at each size on first use (the default: 32x32)."""
    pipe = apply_tome(tiny_pipeline(), ToMeConfig(ratio=0.5))
    calibration = collect_calibration(
        pipe,
        ["a red circle", "a blue square"],
        num_inference_steps=2,
        show_progress=False,
        height=32,
        width=32,
    )
    qunet = quantize_unet(pipe, calibration, QuantizationConfig(subset_size=8))
    return _Exports(pipe, qunet, tmp_path_factory.mktemp("any-shape"))


def test_export_records_any_shape_and_leaves_the_irs_dynamic(tome_int8):
    import openvino as ov

    folder = tome_int8[EXPORTED]
    assert read_metadata(folder).any_shape is True
    sample = ov.Core().read_model(folder / "unet" / "openvino_model.xml").input("sample").get_partial_shape()
    assert sample.rank.get_length() == 4 and sample[0].is_dynamic and sample[2].is_dynamic


@pytest.mark.parametrize(
    "size",
    [SIZES[0], *(pytest.param(size, marks=pytest.mark.slow) for size in SIZES[1:])],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
def test_tome_int8_folder_reshaped_matches_a_fresh_export_at_that_size(tome_int8, size):
    height, width = size
    reshaped = SdOvOptPipeline.from_pretrained(
        tome_int8[EXPORTED], precision="f32", height=height, width=width
    )
    fresh = SdOvOptPipeline.from_pretrained(tome_int8[size], precision="f32")
    assert reshaped.compiled_shape.latent_height == fresh.compiled_shape.latent_height
    image = _image(reshaped)
    assert image.shape == (height, width, 3)
    np.testing.assert_allclose(image, _image(fresh), atol=2e-3)
    np.testing.assert_array_equal(image, _image(reshaped))  # deterministic


def test_reshape_after_load_goes_there_and_back(tome_int8):
    pipe = SdOvOptPipeline.from_pretrained(tome_int8[EXPORTED], precision="f32")
    before = _image(pipe)
    pipe.reshape(batch_size=1, height=48, width=32)
    assert _image(pipe).shape == (48, 32, 3)
    with pytest.raises(ShapeMismatchError, match=r"compiled for 48x32.*pipe\.reshape"):
        _image(pipe, height=32, width=32)
    pipe.reshape(batch_size=1, height=32, width=32)
    np.testing.assert_array_equal(_image(pipe), before)


def test_batch_and_images_per_prompt_follow_the_reshape(tome_int8):
    pipe = SdOvOptPipeline.from_pretrained(
        tome_int8[EXPORTED], precision="f32", batch_size=2, num_images_per_prompt=2
    )
    out = pipe([PROMPT, "a green square"], num_inference_steps=2, num_images_per_prompt=2, output_type="np")
    assert out.images.shape == (4, 32, 32, 3)
    with pytest.raises(ShapeMismatchError, match="batch_size=2"):
        pipe(PROMPT, num_inference_steps=2, num_images_per_prompt=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"height": 36}, "multiple of 8"),
        ({"width": 0}, "multiple of 8"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_images_per_prompt": 1.5}, "num_images_per_prompt"),
    ],
)
def test_bad_load_shapes_are_refused_before_loading(tome_int8, kwargs, match):
    with pytest.raises(ShapeMismatchError, match=match):
        SdOvOptPipeline.from_pretrained(tome_int8[EXPORTED], **kwargs)


def test_a_folder_traced_at_one_static_shape_refuses_other_shapes(tome_int8, tmp_path):
    import json
    import shutil

    import openvino as ov

    folder = shutil.copytree(tome_int8[EXPORTED], tmp_path / "static")
    xml = folder / "unet" / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    model.reshape({"sample": [2, 4, 16, 16], "encoder_hidden_states": [2, 77, 32], "timestep": [1]})
    ov.save_model(model, tmp_path / "unet.xml", compress_to_fp16=False)
    shutil.move(tmp_path / "unet.xml", xml)
    shutil.move(tmp_path / "unet.bin", xml.with_suffix(".bin"))
    record = json.loads((folder / "sd_ovopt.json").read_text())
    record["any_shape"] = False
    (folder / "sd_ovopt.json").write_text(json.dumps(record))
    pipe = SdOvOptPipeline.from_pretrained(folder, precision="f32")
    assert _image(pipe).shape == (32, 32, 3)
    with pytest.raises(ShapeMismatchError, match=r"one static shape.*Export it again"):
        pipe.reshape(batch_size=1, height=48, width=32)
    record.update(height=64, width=64, latent_height=32, latent_width=32)  # a static record of another IR
    (folder / "sd_ovopt.json").write_text(json.dumps(record))
    with pytest.raises(CorruptModelError, match="does not belong to this IR"):
        SdOvOptPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def step_caching(tmp_path_factory):
    pipe = tiny_pipeline()
    root = tmp_path_factory.mktemp("any-shape-caching")
    config = DeepCacheConfig(interval=2)
    return {
        size: export_pipeline(
            pipe,
            root / f"{size[0]}x{size[1]}",
            methods=[config],
            height=size[0],
            width=size[1],
            show_progress=False,
        )
        for size in (EXPORTED, SIZES[0])
    }


def test_step_caching_folder_reshaped_matches_a_fresh_export(step_caching):
    height, width = SIZES[0]
    reshaped = SdOvOptPipeline.from_pretrained(
        step_caching[EXPORTED], precision="f32", height=height, width=width
    )
    fresh = SdOvOptPipeline.from_pretrained(step_caching[SIZES[0]], precision="f32")
    image = _image(reshaped, steps=4)
    assert reshaped.last_unet_steps == ("full", "shallow", "full", "shallow")
    np.testing.assert_allclose(image, _image(fresh, steps=4), atol=1e-4)


def test_genai_reshapes_our_folder_to_a_new_size(tome_int8):
    openvino_genai = pytest.importorskip("openvino_genai")
    height, width = SIZES[0]
    images = []
    for folder in (tome_int8[EXPORTED], tome_int8[SIZES[0]]):  # reshaped, and a fresh export at that size
        genai = openvino_genai.Text2ImagePipeline(str(folder))
        genai.reshape(1, height, width, 7.5)
        genai.compile("CPU", INFERENCE_PRECISION_HINT="f32")
        out = genai.generate(PROMPT, num_inference_steps=3, height=height, width=width)
        images.append(out.data[0].copy().astype(int))  # GenAI's own noise, the same seed both times
    assert images[0].shape == (height, width, 3) and images[0].std() > 0
    assert np.abs(images[0] - images[1]).mean() < 1
    assert np.abs(images[0] - images[1]).max() <= 2
