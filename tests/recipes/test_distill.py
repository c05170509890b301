"""Consistency distillation of an INT8 student on the tiny pipeline: the loss, the run, its export to a
guidance-free LCM folder, resume after SIGKILL, and the settings' checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from sd_ovopt import (
    CorruptModelError,
    DistillConfig,
    InvalidConfigError,
    QATConfig,
    QuantizationConfig,
    SdOvOptPipeline,
    collect_calibration,
    distill_student,
    optimize_pipeline,
    quantize_unet,
    read_metadata,
)
from sd_ovopt.distill import ConsistencyDistillationModel
from sd_ovopt.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SETTINGS = {
    "checkpointing_steps": 2,
    "train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-4,
    "ema_decay": 0.9,
    "calibration_prompts": 2,
    "calibration_steps": 2,
    "eval_samples": 2,
}
DISTILLATION = DistillConfig(num_ddim_timesteps=10)
#: One run in its own process: model, data, output, steps, export (1/0), resume ("-": none), LoRA rank.
RUN = """
import sys
from sd_ovopt import DistillConfig, QATConfig, distill_student
model, data, out, steps, export, resume, lora_rank = sys.argv[1:8]
config = QATConfig(max_train_steps=int(steps), export=export == "1", **{settings})
distillation = DistillConfig(num_ddim_timesteps=10, lora_rank=int(lora_rank))
distill_student(model, data, out, config, distillation=distillation,
                resume_from_checkpoint=None if resume == "-" else resume, show_progress=False)
""".replace("{settings}", repr(SETTINGS))


def write_squares(folder, count=4):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (40, 60, 220))] * (count // 2)):
        image = Image.new("RGB", (32, 32), (255, 255, 255))
        image.paste(Image.new("RGB", (14, 14), rgb), (4 + 2 * i, 6 + i))
        image.save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a {name} square"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_squares(tmp_path_factory.mktemp("distill-data") / "squares")


def test_the_consistency_loss_falls_on_a_fixed_batch():
    pipe = tiny_pipeline()
    calibration = collect_calibration(pipe, ["a red square"], num_inference_steps=2, show_progress=False)
    model = ConsistencyDistillationModel(
        pipe, quantize_unet(pipe, calibration), QATConfig(ema_decay=0.5), DISTILLATION
    )
    generator = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(2, 4, 16, 16, generator=generator),
        torch.randn(2, 77, 32, generator=generator),
        torch.randn(2, 4, 16, 16, generator=generator),
        torch.tensor([300, 800]),
    )
    teacher = {k: v.clone() for k, v in model.loss.teacher.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = model(*batch)
        assert loss.task == 0 and torch.equal(loss.total.detach(), loss.distillation)
        loss.total.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_ema()
        losses.append(float(loss.total.detach()))
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert all(torch.equal(v, teacher[k]) for k, v in model.loss.teacher.state_dict().items())


def _run(*args):
    return subprocess.Popen(
        [sys.executable, "-c", RUN, *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def whole_run(tiny_saved, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "whole"
    config = QATConfig(max_train_steps=4, **SETTINGS)
    quantization = QuantizationConfig(subset_size=8)  # calibration samples: 8 of the default 200 suffice here
    return distill_student(
        tiny_saved, data_dir, out, config, distillation=DISTILLATION, quantization=quantization,
        show_progress=False,
    )  # fmt: skip


def test_the_run_exports_a_guidance_free_int8_lcm_folder(whole_run):
    meta = read_metadata(whole_run)
    assert meta.classifier_free_guidance is False and meta.config("int8") is not None
    pipe = SdOvOptPipeline.from_pretrained(whole_run)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    for steps in (1, 2, 4):
        out = pipe("a red square", num_inference_steps=steps, guidance_scale=1.0, output_type="np")
        assert out.images[0].shape == (32, 32, 3) and np.isfinite(out.images[0]).all()
    info = json.loads((whole_run.parent / "checkpoints" / "checkpoint-4" / "checkpoint.json").read_text())
    assert info["distillation"] == DISTILLATION.to_dict()
    report = json.loads((whole_run.parent / "distill_report.json").read_text())
    assert all(np.isfinite(report[k]) for k in ("ptq_error", "qat_error", "qat_ema_error"))


@pytest.fixture(scope="module")
def float_run(tiny_saved, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "float"
    config = QATConfig(max_train_steps=4, **SETTINGS)
    distillation = DistillConfig(num_ddim_timesteps=10, student="float")
    return distill_student(tiny_saved, data_dir, out, config, distillation=distillation, show_progress=False)


def test_a_float_student_exports_a_float_folder_and_a_pytorch_pipeline_with_its_ema_weights(float_run):
    run = float_run.parent
    meta = read_metadata(float_run)
    assert meta.classifier_free_guidance is False and meta.config("int8") is None and not meta.methods
    info = json.loads((run / "checkpoints" / "checkpoint-4" / "checkpoint.json").read_text())
    assert info["quantization"] is None and info["nncf_config"] is None
    assert info["distillation"]["student"] == "float"
    state = torch.load(run / "checkpoints" / "checkpoint-4" / "training_state.pt", weights_only=True)
    torch_pipe = StableDiffusionPipeline.from_pretrained(run / "diffusers")
    assert type(torch_pipe.scheduler).__name__ == "LCMScheduler"
    saved = torch_pipe.unet.state_dict()
    ema = state["ema"]["shadow"]
    assert ema and all(torch.equal(saved[name], ema[name]) for name in ema)
    assert any(not torch.equal(ema[name], state["student"][name]) for name in ema)  # EMA, not raw weights
    ov_pipe = SdOvOptPipeline.from_pretrained(float_run, precision="f32")
    call = {"num_inference_steps": 2, "guidance_scale": 1.0, "output_type": "np"}
    ours = ov_pipe("a red square", generator=torch.Generator().manual_seed(0), **call).images[0]
    theirs = torch_pipe("a red square", generator=torch.Generator().manual_seed(0), **call).images[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert json.loads((run / "distill_report.json").read_text())["qat_ema_error"] >= 0


def test_a_float_student_resumes_and_the_recipe_quantizes_it(float_run, tiny_saved, data_dir, tmp_path):
    config = QATConfig(max_train_steps=6, **SETTINGS)
    distillation = DistillConfig(num_ddim_timesteps=10, student="float")
    distill_student(
        tiny_saved, data_dir, float_run.parent, config, distillation=distillation,
        resume_from_checkpoint="latest", show_progress=False,
    )  # fmt: skip
    assert (float_run.parent / "checkpoints" / "checkpoint-6").is_dir()
    folder = optimize_pipeline(
        float_run.parent / "diffusers", tmp_path / "ptq", methods=[QuantizationConfig(subset_size=4)],
        calibration_prompts=["a red square"], calibration_steps=2, guidance_scale=1.0, show_progress=False,
    )  # fmt: skip
    assert read_metadata(folder).config("int8") is not None
    pipe = SdOvOptPipeline.from_pretrained(folder)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    image = pipe("a red square", num_inference_steps=2, guidance_scale=1.0, output_type="np").images[0]
    assert np.isfinite(image).all()


# The LoRA run keeps its EMA on the training device (the CPU here, a GPU in real runs).
LORA_SETTINGS = {**SETTINGS, "ema_device": "accelerator"}


@pytest.fixture(scope="module")
def lora_run(tiny_saved, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "lora"
    config = QATConfig(max_train_steps=4, **LORA_SETTINGS)
    distillation = DistillConfig(num_ddim_timesteps=10, lora_rank=4)
    return distill_student(
        tiny_saved, data_dir, out, config, distillation=distillation,
        quantization=QuantizationConfig(subset_size=8), show_progress=False,
    )  # fmt: skip


def test_a_lora_student_trains_its_adapters_only_and_exports_them_fused_into_the_int8_unet(
    lora_run, tiny_saved, data_dir
):
    run = lora_run.parent
    state = torch.load(run / "checkpoints" / "checkpoint-4" / "training_state.pt", weights_only=True)
    ema = state["ema"]["shadow"]
    assert ema and all(name.endswith(("lora_A", "lora_B")) for name in ema)
    ups = [name for name in ema if name.endswith("lora_B")]
    assert all(torch.count_nonzero(state["student"][name]) for name in ups)  # trained from zero
    assert not [name for name in state["student"] if "original" in name]  # the base weights are the model's
    info = json.loads((run / "checkpoints" / "checkpoint-4" / "checkpoint.json").read_text())
    assert info["distillation"]["lora_rank"] == 4 and info["nncf_config"] is not None
    assert info["frozen_weights_signature"] > 0 and info["qat_config"]["ema_device"] == "accelerator"
    meta = read_metadata(lora_run)
    assert meta.classifier_free_guidance is False and meta.config("int8") is not None
    pipe = SdOvOptPipeline.from_pretrained(lora_run)
    image = pipe("a red square", num_inference_steps=2, guidance_scale=1.0, output_type="np").images[0]
    assert np.isfinite(image).all()
    config = QATConfig(max_train_steps=6, **LORA_SETTINGS)
    distill_student(
        tiny_saved, data_dir, run, config, distillation=DistillConfig(num_ddim_timesteps=10, lora_rank=4),
        resume_from_checkpoint="latest", show_progress=False,
    )  # fmt: skip
    assert (run / "checkpoints" / "checkpoint-6").is_dir()
    other = tiny_pipeline(seed=1)  # the same layers, other weights: the adapters would meet another base
    other.save_pretrained(run.parent / "other-model")
    config = QATConfig(max_train_steps=8, **LORA_SETTINGS)
    with pytest.raises(CorruptModelError, match="other base weights"):
        distill_student(
            run.parent / "other-model", data_dir, run, config,
            distillation=DistillConfig(num_ddim_timesteps=10, lora_rank=4), resume_from_checkpoint="latest",
        )  # fmt: skip
    with pytest.raises(InvalidConfigError, match="distillation settings"):  # a full student cannot resume it
        distill_student(
            tiny_saved, data_dir, run, config, distillation=DISTILLATION, resume_from_checkpoint="latest"
        )


@pytest.mark.parametrize(
    "settings", [{"quantization": QuantizationConfig()}, {"config": QATConfig(export_ptq=True)}]
)
def test_a_float_student_refuses_quantization_settings(settings, tiny_saved, data_dir, tmp_path):
    distillation = DistillConfig(student="float")
    with pytest.raises(InvalidConfigError, match="float student"):
        distill_student(tiny_saved, data_dir, tmp_path / "o", distillation=distillation, **settings)
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_of_other_settings_is_refused(whole_run, tiny_saved, data_dir):
    config = QATConfig(max_train_steps=6, **SETTINGS)
    with pytest.raises(InvalidConfigError, match="distillation settings"):
        distill_student(
            tiny_saved, data_dir, whole_run.parent, config, distillation=DistillConfig(num_ddim_timesteps=20),
            resume_from_checkpoint="latest", show_progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guidance_scale": 1.0},
        {"num_ddim_timesteps": 0},
        {"loss_type": "l1"},
        {"huber_c": 0.0},
        {"student": "int4"},
        {"version": 2},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(InvalidConfigError, match=next(iter(kwargs))):
        DistillConfig(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_a_killed_distillation_resumes_and_ends_where_an_uninterrupted_one_ends(
    tiny_saved, data_dir, tmp_path, lora_rank
):
    whole = _run(tiny_saved, data_dir, tmp_path / "whole", 4, 0, "-", lora_rank)
    killed = _run(tiny_saved, data_dir, tmp_path / "killed", 4, 0, "-", lora_rank)
    first = tmp_path / "killed" / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 600
    while not first.is_dir() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "killed" / "checkpoints" / "checkpoint-4").exists()
    resumed = _run(tiny_saved, data_dir, tmp_path / "killed", 4, 0, "latest", lora_rank)
    for process in (resumed, whole):
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-4000:]
    states = [
        torch.load(run / "checkpoints" / "checkpoint-4" / "training_state.pt", weights_only=True)
        for run in (tmp_path / "whole", tmp_path / "killed")
    ]
    for key in ("student", "optimizer", "ema"):
        torch.testing.assert_close(states[1][key], states[0][key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--guidance-scale", "1"], "guidance_scale"),
        (["--guidance-scale", "nan"], "--guidance-scale"),
        (["--num-ddim-timesteps", "0"], "num_ddim_timesteps"),
        (["--huber-c", "0"], "huber_c"),
        (["--student", "float", "--mode", "hybrid"], "--mode"),
        (["--lora-alpha", "nan"], "--lora-alpha"),
        (["--lora-alpha", "8"], "lora_rank is 0"),
        (["--lora-rank", "-2"], "lora_rank"),
    ],
)
def test_the_cli_refuses_bad_distillation_settings_before_loading(flags, match, tmp_path, capsys):
    from sd_ovopt.cli import main

    code = main(
        [
            "distill",
            "--model",
            str(tmp_path / "none"),
            "--train-data",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
            *flags,
        ]
    )
    assert code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _training_argv(command, model, data, output):
    return [command, "--model", str(model), "--train-data", str(data), "--output", str(output)]


@pytest.mark.parametrize("command", ["distill", "train-qat"])
def test_device_cuda_is_refused_at_once_without_cuda_and_passed_on_with_it(
    command, tiny_saved, tmp_path, capsys, monkeypatch
):
    from sd_ovopt.cli import main

    args = _training_argv(command, tiny_saved, tmp_path, tmp_path / "o")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*args, "--device", "cuda"]) == 2
    assert "--device cuda: this machine has no CUDA device" in capsys.readouterr().err
    assert main([*args, "--device", "cuda", "--cpu"]) == 2
    assert "contradict" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main([*args, "--device", "cuda"]) == 2  # past the device check: the empty data folder is next
    err = capsys.readouterr().err
    assert "--device" not in err and "metadata.jsonl" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flags", "where"), [([], "cpu"), (["--ema-device", "accelerator"], "accelerator")])
def test_the_cli_passes_the_ema_device_on(flags, where, tiny_saved, data_dir, tmp_path, monkeypatch):
    import sd_ovopt.recipes.distill
    from sd_ovopt.cli import main

    seen = {}
    monkeypatch.setattr(
        sd_ovopt.recipes.distill,
        "distill_student",
        lambda *args, **kwargs: seen.setdefault("config", args[3]),
    )
    args = _training_argv("distill", tiny_saved, data_dir, tmp_path / "o")
    assert main([*args, *flags]) == 0
    assert seen["config"].ema_device == where
