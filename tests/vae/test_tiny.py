"""The tiny autoencoder (``AutoencoderTiny``, TAESD's architecture) in place of the full VAE: exported from a
module or a folder, matched to diffusers in f32, loaded by sd_ovopt, optimum-intel and OpenVINO GenAI, and
refused with a typed error when it does not fit the pipeline or its folder is not plain data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from sd_ovopt import (
    CorruptModelError,
    ModelNotFoundError,
    SdOvOptPipeline,
    UnsupportedModelError,
    export_pipeline,
    load_tiny_vae,
    read_metadata,
)
from sd_ovopt.testing import TINY_TAESD_CONFIG, tiny_pipeline, tiny_taesd

SIZE = 32
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def taesd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("taesd") / "taesd"
    tiny_taesd(seed=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vae_export(tmp_path_factory, taesd_folder):
    """The tiny pipeline exported with the tiny autoencoder read from its folder."""
    out = tmp_path_factory.mktemp("tiny-vae") / "tiny-ov-taesd"
    export_pipeline(tiny_pipeline(), out, height=SIZE, width=SIZE, vae=taesd_folder, show_progress=False)
    return out


def _reference(vae, **kwargs):
    """diffusers' own pipeline with ``vae`` swapped in, as its users do (``pipe.vae = AutoencoderTiny(...)``)."""
    pipe = tiny_pipeline()
    pipe.vae = vae
    generator = torch.Generator().manual_seed(0)
    return pipe(PROMPT, num_inference_steps=2, generator=generator, output_type="np", **kwargs).images[0]


def test_the_folder_records_the_tiny_autoencoder_and_the_source_is_untouched(tiny_vae_export):
    meta = read_metadata(tiny_vae_export)
    assert meta.vae == "AutoencoderTiny"
    # the interface its IRs have, and the only VAE class OpenVINO GenAI runs
    index = json.loads((tiny_vae_export / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    config = json.loads((tiny_vae_export / "vae_decoder" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny" and config["scaling_factor"] == 1.0


def test_sd_ovopt_matches_diffusers_with_the_tiny_decoder(tiny_vae_export, taesd_folder):
    ours = SdOvOptPipeline.from_pretrained(tiny_vae_export, precision="f32")
    generator = torch.Generator().manual_seed(0)
    image = ours(PROMPT, num_inference_steps=2, generator=generator, output_type="np").images[0]
    reference = _reference(AutoencoderTiny.from_pretrained(taesd_folder))
    assert image.shape == (SIZE, SIZE, 3)
    assert np.abs(image - reference).max() < 1e-4
    full = _reference(tiny_pipeline().vae)
    assert np.abs(image - full).max() > 1e-2  # the tiny decoder, not the full one, made it


def test_the_encoder_ir_returns_the_tiny_latents(tiny_vae_export, taesd_folder):
    import openvino as ov

    vae = AutoencoderTiny.from_pretrained(taesd_folder)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model = ov.Core().compile_model(
        tiny_vae_export / "vae_encoder" / "openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    assert model.output(0).get_any_name() == "latent_sample"  # what optimum-intel reads as latents
    latents = model(image.numpy())[0]
    with torch.no_grad():
        expected = vae.encode(image).latents.numpy()
    assert latents.shape == (1, 4, SIZE // 2, SIZE // 2) and np.abs(latents - expected).max() < 1e-4


def test_optimum_intel_and_openvino_genai_run_it(tiny_vae_export):
    from optimum.intel import OVStableDiffusionPipeline

    plain = OVStableDiffusionPipeline.from_pretrained(
        tiny_vae_export, ov_config={"INFERENCE_PRECISION_HINT": "f32"}
    )
    generator = torch.Generator().manual_seed(0)
    image = plain(
        PROMPT, num_inference_steps=2, height=SIZE, width=SIZE, generator=generator, output_type="np"
    ).images[0]
    ours = SdOvOptPipeline.from_pretrained(tiny_vae_export, precision="f32")
    generator = torch.Generator().manual_seed(0)
    expected = ours(PROMPT, num_inference_steps=2, generator=generator, output_type="np").images[0]
    assert np.abs(image - expected).max() < 1e-4
    openvino_genai = pytest.importorskip("openvino_genai")
    genai = openvino_genai.Text2ImagePipeline(str(tiny_vae_export), "CPU", INFERENCE_PRECISION_HINT="f32")
    out = genai.generate(
        PROMPT, num_inference_steps=2, width=SIZE, height=SIZE, generator=openvino_genai.TorchGenerator(0)
    )
    assert np.abs(out.data[0].astype(np.int16) - np.round(expected * 255).astype(np.int16)).max() <= 2


def test_a_pipeline_that_carries_a_tiny_autoencoder_exports_it(tmp_path):
    pipe = tiny_pipeline()
    pipe.vae = tiny_taesd()
    out = export_pipeline(pipe, tmp_path / "carried", height=SIZE, width=SIZE, show_progress=False)
    assert read_metadata(out).vae == "AutoencoderTiny"
    assert type(pipe.vae).__name__ == "AutoencoderTiny"


def test_a_vae_given_for_the_export_leaves_the_pipeline_as_it_was(tmp_path):
    pipe = tiny_pipeline()
    vae, scheduler = pipe.vae, pipe.scheduler
    export_pipeline(
        pipe,
        tmp_path / "given",
        height=SIZE,
        width=SIZE,
        vae=tiny_taesd(),
        scheduler="lcm",
        show_progress=False,
    )
    assert pipe.vae is vae and pipe.scheduler is scheduler
    assert json.loads((tmp_path / "given" / "model_index.json").read_text())["scheduler"][1] == "LCMScheduler"


# -- refused before anything is written ---------------------------------------------------------------
def _bin_only(folder):
    """A TAESD folder whose weights are a pickle (``.bin``): never unpickled."""
    vae = tiny_taesd()
    vae.save_pretrained(folder, safe_serialization=False)
    return folder


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: d / "missing", ModelNotFoundError, "does not exist"),
        (_bin_only, CorruptModelError, "never unpickles"),
        (lambda d: (tiny_pipeline().vae.save_pretrained(d / "kl"), d / "kl")[1], UnsupportedModelError,
         "not an AutoencoderTiny"),
    ],
    ids=["missing", "pickled-weights", "full-vae-folder"],
)  # fmt: skip
def test_a_bad_tiny_autoencoder_folder_is_refused(tmp_path, make, error, match):
    folder = make(tmp_path)
    with pytest.raises(error, match=match):
        load_tiny_vae(folder)
    with pytest.raises(error, match=match):
        export_pipeline(tiny_pipeline(), tmp_path / "out", vae=folder, show_progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({**TINY_TAESD_CONFIG, "latent_channels": 16}, "16 latent channels but the UNet takes 4"),
        ({**TINY_TAESD_CONFIG, "decoder_block_out_channels": (16, 16, 16), "num_decoder_blocks": (2, 1, 1),
          "encoder_block_out_channels": (16, 16, 16), "num_encoder_blocks": (1, 1, 1)}, "4x4 pixels"),
        (None, "must be a diffusers AutoencoderKL or AutoencoderTiny"),
    ],
    ids=["latent-channels", "size-factor", "not-a-vae"],
)  # fmt: skip
def test_a_tiny_autoencoder_that_does_not_fit_the_pipeline_is_refused(tmp_path, config, match):
    vae = torch.nn.Linear(2, 2) if config is None else AutoencoderTiny(**config)
    with pytest.raises(UnsupportedModelError, match=match):
        export_pipeline(tiny_pipeline(), tmp_path / "out", vae=vae, show_progress=False)
    assert not (tmp_path / "out").exists()


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_replace_vae_swaps_only_the_autoencoder_and_leaves_the_source_as_it_was(
    exported_tiny, taesd_folder, tiny_vae_export, tmp_path
):
    from sd_ovopt import replace_vae

    before = _files(exported_tiny)
    out = replace_vae(exported_tiny, taesd_folder, tmp_path / "swapped")
    assert _files(exported_tiny) == before
    after = _files(out)
    assert after[Path("unet/openvino_model.bin")] == before[Path("unet/openvino_model.bin")]
    assert read_metadata(out).vae == "AutoencoderTiny"
    # the same images as the folder exported with the tiny autoencoder from the start
    images = []
    for folder in (out, tiny_vae_export):
        pipe = SdOvOptPipeline.from_pretrained(folder, precision="f32")
        generator = torch.Generator().manual_seed(0)
        images.append(pipe(PROMPT, num_inference_steps=2, generator=generator, output_type="np").images[0])
    assert np.abs(images[0] - images[1]).max() < 1e-5


def test_replace_vae_refuses_a_folder_without_a_record_and_a_vae_that_does_not_fit(exported_tiny, tmp_path):
    import shutil

    from sd_ovopt import NotAPipelineError, replace_vae

    plain = tmp_path / "plain"
    shutil.copytree(exported_tiny, plain)
    (plain / "sd_ovopt.json").unlink()
    with pytest.raises(NotAPipelineError, match=r"no sd_ovopt\.json"):
        replace_vae(plain, tiny_taesd(), tmp_path / "out")
    wide = AutoencoderTiny(**{**TINY_TAESD_CONFIG, "latent_channels": 16})
    with pytest.raises(UnsupportedModelError, match="16 latent channels"):
        replace_vae(exported_tiny, wide, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _fake_quantize_count(folder):
    import openvino as ov

    model = ov.Core().read_model(folder / "vae_decoder" / "openvino_model.xml")
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def test_replace_vae_quantizes_the_tiny_decoder_on_the_folders_own_latents(
    exported_tiny, taesd_folder, tmp_path
):
    from sd_ovopt import replace_vae, replace_vae_int8

    float_out = replace_vae(exported_tiny, taesd_folder, tmp_path / "f32")
    int8_out = replace_vae_int8(
        exported_tiny,
        taesd_folder,
        tmp_path / "int8",
        calibration_prompts=["a red circle", "a blue square"],
        calibration_steps=2,
    )
    assert read_metadata(int8_out).vae_decoder_int8 is True
    assert read_metadata(float_out).vae_decoder_int8 is False
    assert _fake_quantize_count(int8_out) > 0 and _fake_quantize_count(float_out) == 0
    images = []
    for folder in (float_out, int8_out):
        pipe = SdOvOptPipeline.from_pretrained(folder, precision="f32")
        generator = torch.Generator().manual_seed(0)
        images.append(pipe(PROMPT, num_inference_steps=2, generator=generator, output_type="np").images[0])
    difference = np.abs(images[0] - images[1])
    assert 0 < difference.mean() < 0.02, difference.mean()


def test_decoder_int8_refuses_the_full_vae_and_a_record_claiming_it(exported_tiny, tmp_path):
    from sd_ovopt import CorruptModelError, InvalidConfigError, replace_vae, replace_vae_int8
    from sd_ovopt.export import ExportMetadata

    with pytest.raises(UnsupportedModelError, match="tiny autoencoder's decoder"):
        replace_vae_int8(exported_tiny, tiny_pipeline().vae, tmp_path / "out")
    latent = np.zeros((1, 4, SIZE // 2, SIZE // 2), np.float32)
    with pytest.raises(UnsupportedModelError, match="tiny autoencoder's decoder"):
        replace_vae(exported_tiny, tiny_pipeline().vae, tmp_path / "out", decoder_latents=[latent])
    with pytest.raises(InvalidConfigError, match=r"\(n, 4, h, w\) arrays"):
        replace_vae(exported_tiny, tiny_taesd(), tmp_path / "out", decoder_latents=[latent[:, :3]])
    assert not (tmp_path / "out").exists()
    data = json.loads((exported_tiny / "sd_ovopt.json").read_text())
    for value in (True, 1):
        with pytest.raises(CorruptModelError, match="vae_decoder_int8"):
            ExportMetadata.from_dict({**data, "vae_decoder_int8": value})


def test_the_decoder_latents_are_the_pipelines_final_latents():
    from sd_ovopt.vae.int8 import collect_decoder_latents

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    latents = collect_decoder_latents(pipe, ["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=1.0)  # fmt: skip
    assert [x.shape for x in latents] == [(1, 4, SIZE // 2, SIZE // 2)] * 2
    expected = pipe(
        "a blue square",
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
    ).images
    assert np.allclose(latents[1], expected.numpy() / pipe.vae.config.scaling_factor)
    # for another autoencoder's decoder (TAESD's scaling factor is 1.0): the UNet's latents as they are
    for_tiny = collect_decoder_latents(pipe, ["a red circle"], num_inference_steps=2, guidance_scale=1.0, scaling_factor=1.0)  # fmt: skip
    scale = pipe.vae.config.scaling_factor
    assert scale != 1.0 and np.allclose(for_tiny[0], latents[0] * scale, rtol=1e-5, atol=1e-6)
