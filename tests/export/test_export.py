import json
import shutil

import pytest

from sd_ovopt import (
    ExportMetadata,
    ModelNotFoundError,
    NotAPipelineError,
    OutputExistsError,
    SdOvOptPipeline,
    ShapeMismatchError,
    ToMeConfig,
    export_pipeline,
    read_metadata,
)
from sd_ovopt.export import pipeline as export_module
from sd_ovopt.methods import MethodRecord

PARTS = ("unet", "text_encoder", "vae_decoder", "vae_encoder")


def test_layout_and_metadata(exported_tiny):
    for part in PARTS:
        for name in ("openvino_model.xml", "openvino_model.bin", "config.json"):
            assert (exported_tiny / part / name).is_file(), f"{part}/{name}"
    assert (exported_tiny / "scheduler" / "scheduler_config.json").is_file()
    assert (exported_tiny / "tokenizer").is_dir()
    index = json.loads((exported_tiny / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    meta = read_metadata(exported_tiny)
    assert (meta.height, meta.width, meta.batch_size, meta.unet_batch) == (32, 32, 1, 2)
    assert (meta.latent_height, meta.latent_width) == (16, 16)
    assert meta.versions["openvino"] != "not installed"
    assert meta.methods == {} and meta.weight_compression is None


def test_unet_ir_takes_any_shape_is_named_for_optimum_and_loads_static(exported_tiny):
    import openvino as ov

    model = ov.Core().read_model(exported_tiny / "unet" / "openvino_model.xml")
    inputs = {i.get_any_name(): i.get_partial_shape() for i in model.inputs}
    assert set(inputs) == {"sample", "timestep", "encoder_hidden_states"}
    assert str(inputs["sample"]) == "[?,4,?,?]" and str(inputs["encoder_hidden_states"]) == "[?,77,32]"
    assert str(inputs["timestep"]) == "[1]"
    assert model.outputs[0].get_names() == {"out_sample"}
    pipe = SdOvOptPipeline.from_pretrained(exported_tiny, precision="f32")
    assert list(pipe.unet.request.input("sample").get_shape()) == [2, 4, 16, 16]  # compiled static


def test_metadata_round_trip(tmp_path):
    meta = ExportMetadata(
        height=64,
        width=32,
        batch_size=2,
        num_images_per_prompt=1,
        classifier_free_guidance=True,
        unet_batch=4,
        latent_height=32,
        latent_width=16,
        methods={"tome": MethodRecord(config=ToMeConfig(ratio=0.5))},
    )
    meta.save(tmp_path)
    assert read_metadata(tmp_path) == meta


def test_refuses_non_empty_output_unless_overwrite(tiny_pipe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        export_pipeline(tiny_pipe, out, show_progress=False)
    assert (out / "keep.txt").read_text() == "user data"
    export_pipeline(tiny_pipe, out, overwrite=True, show_progress=False)
    assert not (out / "keep.txt").exists()
    assert read_metadata(out) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left


def test_failure_leaves_nothing_behind(tiny_pipe, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure while converting the VAE")

    monkeypatch.setattr(export_module, "convert_vae_decoder", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_pipeline(tiny_pipe, tmp_path / "out", show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_export(tiny_pipe, exported_tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(exported_tiny, out)
    monkeypatch.setattr(
        export_module, "convert_unet", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x"))
    )
    with pytest.raises(RuntimeError):
        export_pipeline(tiny_pipe, out, overwrite=True, show_progress=False)
    assert read_metadata(out) == read_metadata(exported_tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(("height", "width"), [(30, 32), (32, 36), (0, 32), (-8, 32)])
def test_bad_size_is_a_typed_error(tiny_pipe, tmp_path, height, width):
    with pytest.raises(ShapeMismatchError, match="multiple of 8"):
        export_pipeline(tiny_pipe, tmp_path / "out", height=height, width=width, show_progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_path_and_non_pipeline_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export_pipeline(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "not-sd").mkdir()
    (tmp_path / "not-sd" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(NotAPipelineError, match=r"model_index\.json"):
        export_pipeline(tmp_path / "not-sd", tmp_path / "out")
    with pytest.raises(NotAPipelineError, match="a StableDiffusionPipeline or a path"):
        export_pipeline(object(), tmp_path / "out")


def test_exports_from_a_saved_folder(tiny_saved, exported_tiny, tmp_path):
    import openvino as ov

    out = export_pipeline(tiny_saved, tmp_path / "from-folder", show_progress=False)
    assert read_metadata(out).height == 32  # the tiny UNet's native size
    core = ov.Core()
    a = core.read_model(out / "unet" / "openvino_model.xml")
    b = core.read_model(exported_tiny / "unet" / "openvino_model.xml")
    assert [i.get_partial_shape() for i in a.inputs] == [i.get_partial_shape() for i in b.inputs]
