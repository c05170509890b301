"""Quantization-aware training against hostile inputs: non-finite settings, damaged or foreign checkpoints,
decompression bombs, weights that become NaN. Each case must stop with a typed error naming what to fix."""

import copy
import json
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sd_ovopt import (
    CorruptModelError,
    DistillationLoss,
    InvalidConfigError,
    InvalidDatasetError,
    NonFiniteLossError,
    QATConfig,
    QATModel,
    QuantizationConfig,
    ToMeConfig,
    UnsupportedModelError,
    WeightEMA,
    collect_calibration,
    quantize_unet,
    train_qat,
)
from sd_ovopt.quantization.checkpoints import (
    INFO_FILE,
    STATE_FILE,
    checkpoint_info,
    load_checkpoint,
    save_checkpoint,
)
from sd_ovopt.quantization.qat_data import MAX_IMAGE_PIXELS, CaptionedImageFolder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = QATConfig(
    max_train_steps=2,
    checkpointing_steps=1,
    gradient_accumulation_steps=1,
    learning_rate=1e-3,
    ema_decay=0.5,
    calibration_prompts=1,
    calibration_steps=1,
    eval_samples=0,
    export=False,
)


def write_squares(folder, count=2):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        Image.new("RGB", (32, 32), (200, 30 * i, 40)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a red square {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def forge_png_size(path, width, height):
    """Rewrite a PNG's header to claim ``width`` x ``height`` pixels (the file stays tiny): a decompression
    bomb as far as a header check can tell."""
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def pipe():
    from sd_ovopt.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="module")
def qunet(pipe):
    return quantize_unet(pipe, collect_calibration(pipe, ["a red square"], num_inference_steps=1))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_squares(tmp_path_factory.mktemp("data") / "squares")


@pytest.fixture(scope="module")
def saved_run(pipe, qunet, tmp_path_factory):
    """A run folder with ``checkpoint-1`` as train_qat writes it (one AdamW step and one EMA update)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    qat = QATModel(pipe, copy.deepcopy(qunet), CONFIG)
    optimizer = torch.optim.AdamW(qat.parameter_groups(), lr=CONFIG.learning_rate)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    qat(latents, torch.randn(1, 77, 32), torch.randn_like(latents), torch.tensor([500])).total.backward()
    optimizer.step()
    qat.update_ema()
    info = checkpoint_info(qat.student, qat_config=CONFIG.to_dict(), tome=None, world_size=1, ptq_error=None)
    save_checkpoint(run / "checkpoints", 1, qat, optimizer, info)
    return run


@pytest.fixture
def run(saved_run, tmp_path):
    """A fresh copy of the saved run, to damage."""
    return shutil.copytree(saved_run, tmp_path / "run")


def checkpoint(run):
    return run / "checkpoints" / "checkpoint-1"


def edit_info(run, **change):
    path = checkpoint(run) / INFO_FILE
    info = json.loads(path.read_text())
    info.update(change)
    path.write_text(json.dumps({k: v for k, v in info.items() if v is not ...}))


def edit_state(run, edit):
    path = checkpoint(run) / STATE_FILE
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


# ------------------------------------------------------------------------------- non-finite settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": float("inf")}, "learning_rate=inf; it must be a finite number"),
        ({"learning_rate": 2.0}, "learning_rate=2.0; it must be > 0 and <= 1"),
        ({"weight_decay": float("inf")}, "weight_decay=inf"),
        ({"weight_decay": 5.0}, "weight_decay=5.0"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm=inf.*None for no clipping"),
        ({"task_loss_weight": float("inf")}, "task_loss_weight=inf"),
        ({"distillation_loss_weight": float("inf")}, "distillation_loss_weight=inf"),
        ({"seed": 2**32}, "seed=4294967296"),
        ({"resolution": 33}, "resolution=33; it must be a multiple of 8"),
        ({"resolution": 2**20}, "resolution=1048576; it must be >= 8 and <= 4096"),
        ({"version": True}, "version=True"),
        ({"ema_device": "cuda"}, r"ema_device='cuda'; use one of \('cpu', 'accelerator'\)"),
    ],
)
def test_non_finite_and_out_of_range_settings_are_refused(kwargs, message):
    with pytest.raises(InvalidConfigError, match=message):
        QATConfig(**kwargs)


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    config = QATConfig(
        learning_rate=np.float32(1e-5),
        max_train_steps=np.int64(10),
        seed=np.uint32(3),
        ema_decay=np.float64(0.9),
    )
    assert type(config.learning_rate) is float and config.learning_rate == pytest.approx(1e-5)
    assert type(config.max_train_steps) is int and config.max_train_steps == 10
    assert type(config.seed) is int and type(config.ema_decay) is float
    assert QATConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert type(QuantizationConfig(subset_size=np.int32(4)).subset_size) is int
    with pytest.raises(InvalidConfigError, match=r"max_train_steps=10.0 \(float\); it must be an integer"):
        QATConfig(max_train_steps=10.0)


def test_loss_and_ema_objects_refuse_non_finite_settings(pipe):
    with pytest.raises(InvalidConfigError, match="task_weight=inf"):
        DistillationLoss(pipe.unet, task_weight=float("inf"))
    with pytest.raises(InvalidConfigError, match="distillation_weight=nan"):
        DistillationLoss(pipe.unet, distillation_weight=float("nan"))
    with pytest.raises(InvalidConfigError, match="both 0"):
        DistillationLoss(pipe.unet, task_weight=0, distillation_weight=0)
    with pytest.raises(InvalidConfigError, match=r"WeightEMA decay=.0\.5."):
        WeightEMA(torch.nn.Linear(2, 2), decay="0.5")
    with pytest.raises(InvalidConfigError, match="WeightEMA decay=inf"):
        WeightEMA(torch.nn.Linear(2, 2), decay=float("inf"))
    ema = WeightEMA(torch.nn.Linear(2, 2))
    state = ema.state_dict()
    with pytest.raises(UnsupportedModelError, match=r"shadow\['weight'\] has shape \(3,\)"):
        ema.load_state_dict({**state, "shadow": {**state["shadow"], "weight": torch.zeros(3)}})
    with pytest.raises(UnsupportedModelError, match="NaN"):
        ema.load_state_dict({**state, "shadow": {**state["shadow"], "bias": torch.full((2,), float("nan"))}})


def test_models_and_samples_holding_nan_are_refused(pipe, qunet, data_dir, tmp_path):
    broken = copy.deepcopy(pipe)
    with torch.no_grad():
        broken.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CorruptModelError, match=r"teacher UNet holds NaN.*conv_in\.weight"):
        DistillationLoss(broken.unet)
    with pytest.raises(CorruptModelError, match="pipeline's unet holds NaN"):  # before calibrating on it
        train_qat(broken, data_dir, tmp_path / "out", CONFIG, show_progress=False)
    assert not (tmp_path / "out").exists()
    qat = QATModel(pipe, copy.deepcopy(qunet), CONFIG)
    sample = {
        "latents": torch.full((1, 4, 16, 16), float("nan")),
        "encoder_hidden_states": torch.randn(1, 77, 32),
        "noise": torch.randn(1, 4, 16, 16),
        "timesteps": torch.tensor([10]),
    }
    with pytest.raises(InvalidConfigError, match=r"samples\[0\]\['latents'\] holds NaN"):
        qat.teacher_error([sample])
    with pytest.raises(InvalidConfigError, match=r"samples\[0\] lacks \['noise'\]"):
        qat.teacher_error([{k: v for k, v in sample.items() if k != "noise"}])


# ------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step": "ten"}, "'step' is 'ten'; it must be an integer >= 1"),
        ({"step": -1}, "'step' is -1"),
        ({"step": 7}, "'step' is 7, but the folder is checkpoint-1"),
        ({"tome": ...}, "has no 'tome' field"),
        ({"world_size": "x"}, "'world_size' is 'x'"),
        ({"ptq_error": float("nan")}, "'ptq_error' is nan"),
        ({"quantization": {"mode": "int4"}}, "'quantization' is not valid"),
        ({"qat_config": {"learning_rate": float("inf")}}, "'qat_config' is not valid"),
        ({"nncf_config": {}}, "'nncf_config' does not fit this UNet"),
        ({"quantization": None}, "must both be null \\(a float student\\) or both be set"),
        ({"format": 2}, "'format' is 2"),
    ],
)
def test_a_checkpoint_with_a_bad_info_field_is_refused_naming_file_and_field(run, pipe, change, message):
    edit_info(run, **change)
    with pytest.raises(CorruptModelError, match=message) as error:
        load_checkpoint(checkpoint(run), pipe.unet)
    assert str(checkpoint(run) / INFO_FILE) in str(error.value) and "new run" in str(error.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["student"].pop("conv_in.weight"), r"1 missing, e.g. \['conv_in.weight'\]"),
        (
            lambda s: s["student"].update({"other.weight": torch.zeros(1)}),
            r"unexpected, e.g. \['other.weight'\]",
        ),
        (lambda s: s["student"].update({"conv_in.weight": torch.zeros(3, 3)}), r"has shape \(3, 3\)"),
        (lambda s: s["student"]["conv_in.weight"].fill_(float("nan")), r"\['conv_in.weight'\] holds NaN"),
        (
            lambda s: s["ema"]["shadow"].update({"conv_in.weight": torch.zeros(2)}),
            r"EMA shadow\['conv_in.weight'\]",
        ),
        (lambda s: s["ema"].update({"num_updates": -4}), "num_updates is -4"),
        (
            lambda s: s["optimizer"]["state"][0].update({"exp_avg": torch.zeros(5)}),
            "'exp_avg' of parameter 0",
        ),
        (lambda s: s["optimizer"]["state"][1]["exp_avg_sq"].fill_(float("inf")), "holds NaN or infinite"),
        (lambda s: s["optimizer"]["param_groups"].pop(), "parameter groups"),
        (lambda s: s.pop("ema"), r"must hold the dicts \['student', 'optimizer', 'ema'\]"),
    ],
)
def test_a_checkpoint_whose_tensors_do_not_fit_the_model_is_refused(run, pipe, edit, message):
    edit_state(run, edit)
    with pytest.raises(CorruptModelError, match=message) as error:
        load_checkpoint(checkpoint(run), pipe.unet)
    assert str(checkpoint(run) / STATE_FILE) in str(error.value)


def test_a_checkpoint_of_another_unet_is_refused(run):
    from diffusers import UNet2DConditionModel

    from sd_ovopt.testing import tiny_pipeline

    config = dict(tiny_pipeline().unet.config)
    wider = [2 * c for c in config["block_out_channels"]]
    other = UNet2DConditionModel.from_config({**config, "block_out_channels": wider})
    with pytest.raises(CorruptModelError, match="another model"):
        load_checkpoint(checkpoint(run), other)


def test_resuming_refuses_settings_the_checkpoint_cannot_continue_before_loading_a_model(run, data_dir):
    def resume(config=CONFIG, **kwargs):
        return train_qat("no-such-model", data_dir, run, config, resume_from_checkpoint="latest", **kwargs)

    edit_info(run, step=2)
    checkpoint(run).rename(run / "checkpoints" / "checkpoint-2")
    with pytest.raises(InvalidConfigError, match=r"max_train_steps=1 is below the step.*step 2") as error:
        resume(QATConfig(**{**CONFIG.to_dict(), "max_train_steps": 1}))
    assert "new run" in str(error.value)
    (run / "checkpoints" / "checkpoint-2").rename(checkpoint(run))
    edit_info(run, step=1)
    with pytest.raises(
        InvalidConfigError, match=r"quantization differs.*mode='hybrid' \(checkpoint: 'full'\)"
    ):
        resume(quantization=QuantizationConfig(mode="hybrid"))
    with pytest.raises(InvalidConfigError, match=r"tome differs.*\(checkpoint: None\).*--tome-ratio"):
        resume(tome=ToMeConfig(ratio=0.5))
    with pytest.raises(InvalidConfigError, match="tome must be a ToMeConfig"):
        resume(tome={"ratio": 0.5})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert not (run / "train_log.jsonl").exists()  # nothing written


def test_a_resumed_run_takes_the_new_learning_rate_and_ema_decay_and_drops_a_cut_log_line(
    run, tiny_saved, data_dir
):
    (run / "train_log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # killed mid-write
    changed = QATConfig(**{**CONFIG.to_dict(), "learning_rate": 2e-4, "weight_decay": 0.0, "ema_decay": 0.25})
    with pytest.warns(UserWarning, match="learning_rate, weight_decay, ema_decay"):
        train_qat(tiny_saved, data_dir, run, changed, resume_from_checkpoint="latest", show_progress=False)
    state = torch.load(run / "checkpoints" / "checkpoint-2" / STATE_FILE, weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [2e-4, 2e-4]
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.0, 0.0]
    assert state["ema"]["decay"] == 0.25 and state["ema"]["num_updates"] == 2
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_weights_that_become_non_finite_stop_the_run_before_they_are_saved(
    run, tiny_saved, data_dir, monkeypatch
):
    step = torch.optim.AdamW.step

    def overflowing(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][3].fill_(float("inf"))  # as an overflowing update would
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing)
    before = (checkpoint(run) / STATE_FILE).read_bytes()
    with pytest.raises(
        NonFiniteLossError, match="weights are not finite after the optimizer step of step 2"
    ) as e:
        train_qat(tiny_saved, data_dir, run, CONFIG, resume_from_checkpoint="latest", show_progress=False)
    assert "checkpoint-1" in str(e.value)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert (checkpoint(run) / STATE_FILE).read_bytes() == before


# ------------------------------------------------------------------------------------- data folder


@pytest.mark.parametrize(("width", "height"), [(50_000, 50_000), (10_000, 10_000), (MAX_IMAGE_PIXELS + 1, 1)])
def test_an_image_claiming_too_many_pixels_is_refused_from_its_header(tmp_path, width, height):
    folder = write_squares(tmp_path / "data")
    forge_png_size(folder / "1.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not reach the user either
        with pytest.raises(
            InvalidDatasetError, match=r"1\.png has too many pixels.*MAX_IMAGE_PIXELS = 67108864"
        ):
            CaptionedImageFolder(folder, resolution=32)


def test_malformed_images_are_refused_naming_the_file(tmp_path):
    from PIL import PngImagePlugin

    folder = write_squares(tmp_path / "data")
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "a" * 5_000_000, zip=True)  # a few kB on disk, 5 MB inflated
    Image.new("RGB", (32, 32)).save(folder / "1.png", pnginfo=text)
    with pytest.raises(InvalidDatasetError, match=r"cannot read image .*1\.png: Decompressed data too large"):
        CaptionedImageFolder(folder, resolution=32)
    png = (folder / "0.png").read_bytes()
    (folder / "1.png").write_bytes(png[:20])  # the header chunk cut short
    with pytest.raises(InvalidDatasetError, match=r"cannot read image .*1\.png"):
        CaptionedImageFolder(folder, resolution=32)


def test_a_long_thin_image_is_cropped_without_a_huge_intermediate(tmp_path, monkeypatch):
    folder = write_squares(tmp_path / "data", count=1)
    strip = Image.new("RGB", (2, 4000), (10, 20, 30))
    strip.paste(Image.new("RGB", (2, 2), (250, 250, 250)), (0, 1999))
    strip.save(folder / "0.png")
    sizes = []
    resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(size[0] * size[1])
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    image, _ = CaptionedImageFolder(folder, resolution=64)[0]
    assert image.shape == (3, 64, 64) and max(sizes) <= 64 * 64
    assert image[:, 32, 32].min() > 0.9  # the centre square: the white mark in the middle of the strip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 0}, "resolution=0"),
        ({"resolution": "32"}, "resolution='32'"),
        ({"caption_column": 3}, "caption_column=3"),
    ],
)
def test_data_folder_arguments_are_checked(data_dir, kwargs, message):
    with pytest.raises(InvalidConfigError, match=message):
        CaptionedImageFolder(data_dir, **{"resolution": 32, **kwargs})
