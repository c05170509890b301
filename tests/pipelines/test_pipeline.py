import shutil

import numpy as np
import pytest
import torch

from sd_ovopt import CorruptModelError, InvalidConfigError, SdOvOptPipeline, ShapeMismatchError

KW = {"num_inference_steps": 4, "output_type": "np"}
PROMPT = "a red circle on a blue background"


def _gen(pipe, seed=0, **kw):
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **{**KW, **kw}).images[0]


@pytest.fixture(scope="module")
def ov_pipe(exported_tiny):
    return SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32")


def test_parity_with_pytorch_within_one_level(ov_pipe, tiny_pipe):
    ref = _gen(tiny_pipe)
    out = _gen(ov_pipe)
    assert out.shape == ref.shape == (32, 32, 3)
    assert np.abs(out - ref).mean() < 1 / 255
    assert ov_pipe.inference_precision == "f32"


def test_same_seed_same_image_other_seed_other_image(ov_pipe):
    a, b, c = _gen(ov_pipe, 0), _gen(ov_pipe, 0), _gen(ov_pipe, 1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_other_size_or_batch_is_a_typed_error(ov_pipe):
    with pytest.raises(ShapeMismatchError, match=r"compiled for 32x32.*pipe\.reshape"):
        _gen(ov_pipe, height=64, width=64)
    with pytest.raises(ShapeMismatchError, match="batch_size=1"):
        ov_pipe([PROMPT, PROMPT], **KW)
    with pytest.raises(ShapeMismatchError, match="num_images_per_prompt"):
        _gen(ov_pipe, num_images_per_prompt=2)
    with pytest.raises(ShapeMismatchError, match="guidance"):
        _gen(ov_pipe, guidance_scale=1.0)
    with pytest.raises(ShapeMismatchError, match="multiple of 8"):
        ov_pipe.reshape(1, 60, 64, 1)
    assert ov_pipe.compiled_shape.height == 32


def test_metadata_is_reported(ov_pipe):
    assert ov_pipe.export_metadata.unet_batch == 2
    assert ov_pipe.methods == {} and ov_pipe.method_config("tome") is None


def test_plain_optimum_pipeline_loads_and_generates(exported_tiny, tiny_pipe):
    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(
        exported_tiny, ov_config={"INFERENCE_PRECISION_HINT": "f32"}
    )
    out = _gen(pipe)
    assert np.abs(out - _gen(tiny_pipe)).mean() < 1 / 255


def test_batch_two_export(tiny_pipe, tmp_path):
    from sd_ovopt import export_pipeline

    path = export_pipeline(tiny_pipe, tmp_path / "b2", batch_size=2, show_progress=False)
    pipe = SdOvOptPipeline.from_pretrained(path, precision="f32")
    images = pipe([PROMPT, "a green square"], generator=torch.Generator().manual_seed(0), **KW).images
    ref = tiny_pipe([PROMPT, "a green square"], generator=torch.Generator().manual_seed(0), **KW).images
    assert images.shape == (2, 32, 32, 3)
    assert np.abs(images - ref).mean() < 1 / 255


def test_precision_option(exported_tiny):
    with pytest.raises(InvalidConfigError, match="precision"):
        SdOvOptPipeline.from_pretrained(exported_tiny, precision="fp32")
    with pytest.raises(InvalidConfigError, match="INFERENCE_PRECISION_HINT"):
        SdOvOptPipeline.from_pretrained(
            exported_tiny, precision="f32", ov_config={"INFERENCE_PRECISION_HINT": "bf16"}
        )
    default = SdOvOptPipeline.from_pretrained(exported_tiny, precision="default")
    assert default.inference_precision in {"f32", "bf16", "f16"}


@pytest.mark.parametrize("victim", ["unet/openvino_model.bin", "unet/openvino_model.xml"])
def test_truncated_ir_is_a_typed_error(exported_tiny, tmp_path, victim):
    broken = tmp_path / "broken"
    shutil.copytree(exported_tiny, broken)
    path = broken / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(CorruptModelError, match="corrupt or truncated"):
        SdOvOptPipeline.from_pretrained(broken)


def test_missing_ir_is_a_typed_error(exported_tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported_tiny, broken)
    (broken / "vae_decoder" / "openvino_model.bin").unlink()
    with pytest.raises(CorruptModelError, match="vae_decoder"):
        SdOvOptPipeline.from_pretrained(broken)


def test_numpy_scalars_are_taken_where_python_numbers_are(ov_pipe):
    """Values read from numpy configs or arrays: the same image as the Python numbers give."""
    numpy_kw = {"num_inference_steps": np.int64(4), "guidance_scale": np.float32(7.5), "height": np.int64(32)}
    assert np.array_equal(_gen(ov_pipe, **numpy_kw), _gen(ov_pipe, guidance_scale=7.5, height=32))


def test_export_takes_numpy_sizes(tiny_pipe, tmp_path):
    from sd_ovopt import export_pipeline, read_metadata

    out = export_pipeline(
        tiny_pipe,
        tmp_path / "o",
        height=np.int64(32),
        width=np.int32(32),
        batch_size=np.int64(1),
        show_progress=False,
    )
    meta = read_metadata(out)
    assert (meta.height, meta.width, meta.batch_size) == (32, 32, 1) and type(meta.height) is int
