"""Quantization-aware training on the tiny pipeline: loss, teacher, EMA, export, resume, two processes, errors."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sd_ovopt import (
    DistillationLoss,
    InvalidConfigError,
    InvalidDatasetError,
    NonFiniteLossError,
    OutputExistsError,
    QATConfig,
    QATModel,
    SdOvOptPipeline,
    UnsupportedModelError,
    WeightEMA,
    collect_calibration,
    quantize_unet,
    read_metadata,
    train_qat,
)
from sd_ovopt.cli import main
from sd_ovopt.quantization.qat import QATLoss, noise_target
from sd_ovopt.quantization.qat_data import CaptionedImageFolder, sample_indices

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
# Every process single-threaded: the runs that are compared compute in the same order, and two runs
# side by side do not fight over the cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_args(model, data, output, steps=6):
    return [
        "--model", str(model), "--train-data", str(data), "--output", str(output),
        "--max-train-steps", str(steps), "--checkpointing-steps", "2", "--train-batch-size", "2",
        "--gradient-accumulation-steps", "2", "--learning-rate", "1e-4", "--ema-decay", "0.9",
        "--calibration-prompts", "2", "--calibration-steps", "2", "--eval-samples", "2", "--no-progress",
    ]  # fmt: skip


def write_squares(folder, count=8):
    """Coloured squares on white or black, 32x32, with captions: diffusers' text-to-image layout."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        name, rgb = list(COLOURS.items())[i % len(COLOURS)]
        background = "white" if i // len(COLOURS) % 2 == 0 else "black"
        image = Image.new("RGB", (32, 32), (255, 255, 255) if background == "white" else (0, 0, 0))
        image.paste(Image.new("RGB", (14, 14), rgb), (2 + 2 * i, 6 + i))
        image.save(folder / f"{i:03d}.png")
        lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": f"a {name} square on {background}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def run_cli(*args):
    cmd = [sys.executable, "-m", "sd_ovopt", "train-qat", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]
    return out


def load_state(run, step):
    return torch.load(run / "checkpoints" / f"checkpoint-{step}" / "training_state.pt", weights_only=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    from sd_ovopt.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="module")
def qunet(pipe):
    calibration = collect_calibration(pipe, ["a red square", "a blue square"], num_inference_steps=2)
    return quantize_unet(pipe, calibration)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_squares(tmp_path_factory.mktemp("data") / "squares")


def fixed_batch(pipe, data_dir, seed=0):
    from sd_ovopt.quantization.qat_data import encode_batch

    data = CaptionedImageFolder(data_dir, resolution=32)
    latents, states = encode_batch(pipe, *data.batch([0, 1]))
    generator = torch.Generator().manual_seed(seed)
    return latents, states, torch.randn(latents.shape, generator=generator), torch.tensor([100, 700])


# ----------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0},
        {"max_train_steps": 0},
        {"train_batch_size": 1.5},
        {"ema_decay": 1.0},
        {"max_grad_norm": -1.0},
        {"checkpoints_total_limit": 0},
        {"resolution": True},
        {"calibration_prompts": 0},
        {"calibration_steps": 1.5},
        {"eval_samples": -1},
        {"caption_column": ""},
        {"export": "yes"},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(InvalidConfigError, match=next(iter(kwargs))):
        QATConfig(**kwargs)


def test_config_round_trip_and_loss_weights():
    config = QATConfig(max_train_steps=10, max_grad_norm=None, resolution=256)
    assert QATConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InvalidConfigError, match="both 0"):
        QATConfig(task_loss_weight=0, distillation_loss_weight=0)


def test_resuming_warns_only_for_settings_that_change_what_the_remaining_steps_compute():
    import warnings

    from sd_ovopt.recipes.qat import _warn_config_changes

    saved = {"qat_config": QATConfig().to_dict(), "world_size": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_config_changes(saved, QATConfig(max_train_steps=9, eval_samples=2, export=False), 1)
        older = {k: v for k, v in saved["qat_config"].items() if k not in ("caption_column", "export")}
        _warn_config_changes({**saved, "qat_config": older}, QATConfig(), 1)  # written before those keys
    with pytest.warns(UserWarning, match="caption_column.*number of processes 1 -> 2"):
        _warn_config_changes(saved, QATConfig(caption_column="title"), 2)


# ------------------------------------------------------------------------------------------------- EMA


def test_ema_holds_exactly_the_non_quantizer_parameters_and_follows_the_formula(qunet):
    student = copy.deepcopy(qunet)
    ema = WeightEMA(student, decay=0.99)
    weights = {n for n, _ in student.named_parameters() if "__nncf_hooks" not in n}
    assert set(ema.shadow) == weights and len(weights) < len(list(student.parameters()))
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in ema.shadow.values())

    decays = []
    for _ in range(3):
        before = {n: t.clone() for n, t in ema.shadow.items()}
        with torch.no_grad():
            for p in student.parameters():
                if p.is_floating_point():
                    p.add_(torch.randn_like(p) * 0.01)
        decay = ema.update(student)
        decays.append(decay)
        params = dict(student.named_parameters())
        for name, shadow in ema.shadow.items():
            expected = decay * before[name] + (1 - decay) * params[name].detach()
            torch.testing.assert_close(shadow, expected, rtol=1e-6, atol=1e-7)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])  # warm-up: (1 + n) / (10 + n)
    ema.num_updates = 100_000
    assert ema.current_decay() == 0.99  # the warm-up ends at the decay and stays there
    ema.num_updates = 3
    assert WeightEMA(student, 0.9, warmup=False).update(student) == 0.9

    quantizers = {n: p.clone() for n, p in student.named_parameters() if "__nncf_hooks" in n}
    saved = copy.deepcopy(ema.state_dict())
    ema.copy_to(student)
    for name, param in student.named_parameters():
        if name in ema.shadow:
            assert torch.equal(param, ema.shadow[name])
        else:
            assert torch.equal(param, quantizers[name])  # quantizer parameters are not averaged
    restored = WeightEMA(qunet, 0.5)
    restored.load_state_dict(saved)
    assert restored.num_updates == 3 and all(
        torch.equal(restored.shadow[n], saved["shadow"][n]) for n in weights
    )


def test_ema_applied_to_restores_the_weights(qunet):
    student = copy.deepcopy(qunet)
    ema = WeightEMA(student)
    with torch.no_grad():
        for shadow in ema.shadow.values():
            shadow.add_(1.0)
    before = {n: p.clone() for n, p in student.named_parameters()}
    with ema.applied_to(student):
        assert not torch.equal(dict(student.named_parameters())["conv_in.weight"], before["conv_in.weight"])
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())


def _ema_moves_with_its_backup(student, device):
    ema = WeightEMA(student, 0.5, warmup=False).to(device)
    assert ema.device == torch.device(device) and {t.device for t in ema.shadow.values()} == {ema.device}
    with torch.no_grad():
        for shadow in ema.shadow.values():
            shadow.add_(1.0)
    before = {n: p.clone() for n, p in student.named_parameters()}
    with ema.applied_to(student):
        params = dict(student.named_parameters())
        assert all(torch.equal(params[n], ema.shadow[n].to(params[n].device)) for n in ema.shadow)
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())
    ema.update(student)
    saved = ema.state_dict()  # checkpoints hold CPU tensors wherever the EMA lives
    assert all(t.device.type == "cpu" for t in saved["shadow"].values())
    restored = WeightEMA(student, 0.5).to(device)
    restored.load_state_dict(saved)
    assert all(torch.equal(restored.shadow[n].cpu(), t) for n, t in saved["shadow"].items())
    assert {t.device for t in restored.shadow.values()} == {torch.device(device)}


def test_the_ema_can_live_on_the_training_device(qunet):
    _ema_moves_with_its_backup(copy.deepcopy(qunet), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_ema_can_live_on_a_gpu_beside_the_student(qunet):
    _ema_moves_with_its_backup(copy.deepcopy(qunet).cuda(), "cuda")


# ------------------------------------------------------------------------------------- loss and teacher


def test_loss_is_finite_and_decreases_and_the_teacher_never_changes(pipe, qunet, data_dir):
    qat = QATModel(pipe, copy.deepcopy(qunet), QATConfig(learning_rate=1e-3))
    teacher = {n: t.clone() for n, t in qat.loss.teacher.state_dict().items()}
    quantizers = {
        n: p.clone() for n, p in qat.student.named_parameters() if "__nncf_hooks" in n and p.requires_grad
    }
    optimizer = torch.optim.AdamW(qat.parameter_groups(), lr=1e-3)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0  # quantizer ranges do not decay
    batch = fixed_batch(pipe, data_dir)
    qat.train()
    assert not qat.loss.teacher.training
    losses = []
    for _ in range(8):
        loss = qat(*batch)
        assert isinstance(loss, QATLoss) and all(torch.isfinite(t) for t in loss)
        loss.total.backward()
        optimizer.step()
        optimizer.zero_grad()
        qat.update_ema()
        losses.append(loss.total.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(t, teacher[n]) for n, t in qat.loss.teacher.state_dict().items())
    assert not any(p.requires_grad for p in qat.loss.teacher.parameters())
    assert qat.loss.teacher is not pipe.unet  # copied: the pipeline's UNet stays trainable
    changed = [
        n for n, p in qat.student.named_parameters() if n in quantizers and not torch.equal(p, quantizers[n])
    ]
    assert len(changed) > 0.9 * len(quantizers)  # gradients reach the quantizer ranges


def test_distillation_alone_brings_the_student_closer_to_the_teacher(pipe, qunet, data_dir):
    """What "QAT beats PTQ" means on this random model: the error against the float UNet goes down."""
    qat = QATModel(pipe, copy.deepcopy(qunet), QATConfig(task_loss_weight=0.0))
    batch = fixed_batch(pipe, data_dir, seed=1)
    samples = [dict(zip(("latents", "encoder_hidden_states", "noise", "timesteps"), batch, strict=True))]
    ptq_error = qat.teacher_error(samples)
    optimizer = torch.optim.AdamW(qat.parameter_groups(), lr=3e-6)  # measured: 0.043 -> 0.035 in 8 steps
    for _ in range(8):
        qat(*batch).total.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert 0 < qat.teacher_error(samples) < 0.9 * ptq_error


def test_noise_target_follows_the_scheduler(pipe):
    from diffusers import DDPMScheduler

    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    epsilon = DDPMScheduler.from_config(pipe.scheduler.config)
    assert noise_target(epsilon, latents, noise, t) is noise
    velocity = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    assert torch.equal(noise_target(velocity, latents, noise, t), velocity.get_velocity(latents, noise, t))
    other = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="flow")
    with pytest.raises(UnsupportedModelError, match="prediction_type"):
        noise_target(other, latents, noise, t)


def test_models_that_cannot_train_get_typed_errors(pipe, qunet):
    with pytest.raises(UnsupportedModelError, match="quantize_unet"):
        QATModel(pipe, copy.deepcopy(pipe.unet))
    with pytest.raises(UnsupportedModelError, match="float UNet"):
        DistillationLoss(qunet)
    with pytest.raises(InvalidConfigError, match="QATConfig"):
        QATModel(pipe, qunet, {"learning_rate": 1e-5})


# ------------------------------------------------------------------------------ gradient checkpointing


def test_gradient_checkpointing_is_refused_with_the_reason(
    pipe, qunet, tiny_saved, data_dir, tmp_path, capsys
):
    with pytest.raises(InvalidConfigError, match="recomputes"):
        QATConfig(gradient_checkpointing=True)
    student = copy.deepcopy(qunet)
    student.enable_gradient_checkpointing()
    with pytest.raises(UnsupportedModelError, match="gradient checkpointing"):
        QATModel(pipe, student)
    args = [
        "train-qat",
        "--model",
        str(tiny_saved),
        "--train-data",
        str(data_dir),
        "--output",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--gradient-checkpointing"]) == 2
    err = capsys.readouterr().err
    assert "sd-ovopt train-qat: error" in err and "wrong gradients" in err


# -------------------------------------------------------------------------------------------- bad input


def test_bad_data_folders_get_typed_errors(tmp_path):
    with pytest.raises(InvalidDatasetError, match="does not exist"):
        CaptionedImageFolder(tmp_path / "missing", resolution=32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidDatasetError, match="no images and no captions"):
        CaptionedImageFolder(empty, resolution=32)
    uncaptioned = write_squares(tmp_path / "uncaptioned", count=2)
    (uncaptioned / "metadata.jsonl").unlink()
    with pytest.raises(InvalidDatasetError, match="2 images but no captions"):
        CaptionedImageFolder(uncaptioned, resolution=32)
    folder = write_squares(tmp_path / "data", count=2)
    for content, message in [
        ("\n\n", "lists no images"),
        ('{"file_name": "000.png"}\n', "'text'"),
        ("not json\n", "not JSON"),
        ('{"file_name": "nope.png", "text": "a cat"}\n', "do not exist"),
    ]:
        (folder / "metadata.jsonl").write_text(content)
        with pytest.raises(InvalidDatasetError, match=message):
            CaptionedImageFolder(folder, resolution=32)
    (folder / "bad.png").write_text("not an image")
    (folder / "metadata.jsonl").write_text('{"file_name": "bad.png", "text": "broken"}\n')
    with pytest.raises(InvalidDatasetError, match=r"cannot read image .*bad\.png"):
        CaptionedImageFolder(folder, resolution=32)  # at once, before any model loads
    png = (folder / "000.png").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])  # the header reads, the pixels do not
    (folder / "metadata.jsonl").write_text('{"file_name": "cut.png", "text": "cut short"}\n')
    cut = CaptionedImageFolder(folder, resolution=32)
    with pytest.raises(InvalidDatasetError, match=r"cannot read image .*cut\.png"):
        cut[0]


def test_images_are_resized_and_cropped_and_the_order_is_a_function_of_seed_and_position(data_dir):
    data = CaptionedImageFolder(data_dir, resolution=16)
    image, caption = data[0]
    assert (
        image.shape == (3, 16, 16) and image.min() >= -1 and image.max() <= 1 and caption.startswith("a red")
    )
    stream = sample_indices(len(data), 0, 0, 3 * len(data))
    assert sorted(stream[: len(data)]) == list(range(len(data)))  # each epoch is a permutation
    assert sample_indices(len(data), 0, 5, 7) == stream[5:12]
    assert sample_indices(len(data), 1, 0, len(data)) != stream[: len(data)]


def test_cli_rejects_models_that_are_not_stable_diffusion(data_dir, tmp_path, capsys):
    other = tmp_path / "sdxl"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    args = ["train-qat", "--train-data", str(data_dir), "--output", str(tmp_path / "out")]
    assert main([*args, "--model", str(other)]) == 2
    assert "StableDiffusionPipeline" in capsys.readouterr().err
    assert main([*args, "--model", str(data_dir)]) == 2
    assert "model_index.json" in capsys.readouterr().err


def test_a_used_output_folder_is_not_overwritten(tiny_saved, data_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="resume"):
        train_qat(tiny_saved, data_dir, tmp_path)
    with pytest.raises(InvalidConfigError, match="eval_samples"):
        train_qat(tiny_saved, data_dir, tmp_path / "new", QATConfig(eval_samples=-1))


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_the_run_resumes_from_it(
    tiny_saved, data_dir, tmp_path, monkeypatch
):
    """With a ToMe student: resuming rebuilds it from the checkpoint, without calibration."""
    from dataclasses import replace

    from sd_ovopt import ToMeConfig, is_tome_applied
    from sd_ovopt.quantization.checkpoints import load_checkpoint
    from sd_ovopt.testing import tiny_pipeline

    forward = DistillationLoss.forward
    calls = []

    def poisoned(self, *args):
        loss = forward(self, *args)
        calls.append(1)
        return loss if len(calls) < 3 else QATLoss(loss.total * float("nan"), loss.task, loss.distillation)

    config = QATConfig(
        max_train_steps=4,
        checkpointing_steps=1,
        gradient_accumulation_steps=1,
        checkpoints_total_limit=2,
        calibration_prompts=1,
        calibration_steps=2,
        eval_samples=1,
        export=False,
    )
    kwargs = {"show_progress": False}
    with monkeypatch.context() as patch:
        patch.setattr(DistillationLoss, "forward", poisoned)
        with pytest.raises(NonFiniteLossError, match="at step 3") as error:
            train_qat(tiny_saved, data_dir, tmp_path, config, tome=ToMeConfig(ratio=0.5), **kwargs)
    assert "checkpoint-2" in str(error.value)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]

    shorter = replace(config, max_train_steps=3)  # the step count may change on resume
    last = train_qat(tiny_saved, data_dir, tmp_path, shorter, resume_from_checkpoint="latest", **kwargs)
    assert last.name == "checkpoint-3"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-3"]  # the newest 2
    info, state, student = load_checkpoint(last, tiny_pipeline().unet)
    assert info["tome"]["ratio"] == 0.5 and is_tome_applied(student)  # rebuilt without calibration
    assert state["ema"]["num_updates"] == 3
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]


# ------------------------------------------------------------- whole runs in subprocesses: kill, resume


@pytest.fixture(scope="module")
def runs(tiny_saved, data_dir, tmp_path_factory):
    """An uninterrupted run, and a run killed (SIGKILL) after its first checkpoint and then resumed."""
    root = tmp_path_factory.mktemp("runs")
    whole = run_cli(*run_args(tiny_saved, data_dir, root / "whole"))
    killed = run_cli(*run_args(tiny_saved, data_dir, root / "killed"), "--no-export")
    first = root / "killed" / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 600
    while not first.is_dir() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    _, err = killed.communicate()
    assert killed.returncode == -signal.SIGKILL, err[-4000:]
    at_kill = sorted(
        p.name for p in (root / "killed" / "checkpoints").iterdir() if not p.name.startswith(".")
    )
    resumed = run_cli(
        *run_args(tiny_saved, data_dir, root / "killed"), "--no-export", "--resume-from-checkpoint", "latest"
    )
    finish(resumed)
    finish(whole)
    return {"whole": root / "whole", "resumed": root / "killed", "at_kill": at_kill}


def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends(runs):
    assert "checkpoint-2" in runs["at_kill"] and "checkpoint-6" not in runs["at_kill"]
    whole, resumed = load_state(runs["whole"], 6), load_state(runs["resumed"], 6)
    for key in ("student", "optimizer", "ema"):
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    assert resumed["ema"]["num_updates"] == 6
    log = [json.loads(line) for line in (runs["whole"] / "train_log.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (runs["resumed"] / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in log], rel=1e-5)
    assert all(np.isfinite(r["loss"]) for r in log)


def test_the_run_exports_an_int8_pipeline_that_generates(runs):
    out = runs["whole"] / "ov"
    meta = read_metadata(out)
    assert meta.config("int8").mode == "full" and meta.weight_compression == "int8"
    image = SdOvOptPipeline.from_pretrained(out)(
        "a red square", num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    report = json.loads((runs["whole"] / "qat_report.json").read_text())
    assert report["world_size"] == 1 and report["steps"] == 6
    assert all(0 < report[k] < 10 for k in ("ptq_error", "qat_error", "qat_ema_error"))
    assert not (runs["resumed"] / "ov").exists()  # --no-export


@pytest.mark.slow  # two accelerate processes (~1.5 min)
def test_two_cpu_processes_train_and_agree_on_weights(tiny_saved, data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "sd_ovopt", "train-qat", "--cpu",
    ]  # fmt: skip
    args = [*run_args(tiny_saved, data_dir, tmp_path / "ddp", steps=2), "--no-export"]
    out = subprocess.run([*launch, *args], env=ENV, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((tmp_path / "ddp" / "qat_report.json").read_text())
    assert report["world_size"] == 2
    assert report["rank_weight_difference"] == 0.0
    info = json.loads((tmp_path / "ddp" / "checkpoints" / "checkpoint-2" / "checkpoint.json").read_text())
    assert info["world_size"] == 2
