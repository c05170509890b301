"""Bad inputs, one row each: the call, the typed error it must raise, and nothing left on disk after it.

Each row names the harm its check prevents: ``broken`` (attacker code would run, files would be deleted,
or the result would be silently wrong), ``poor`` (a raw traceback or a confusing message) or ``handled``
(a plain typed error). docs/reliability.md reports the rows per family.
A row runs with a fresh sandbox as working directory (and its ``home/`` as home); the sandbox, the shared assets and the
shared models must be exactly as before (no new, changed or removed file, hidden ones included).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sd_ovopt import (
    CorruptModelError,
    DistillationLoss,
    InvalidConfigError,
    InvalidDatasetError,
    ModelNotFoundError,
    NotAPipelineError,
    OutputExistsError,
    QATConfig,
    QuantizationConfig,
    SdOvOptPipeline,
    ShapeMismatchError,
    UnsafeOutputError,
    UnsupportedModelError,
    WeightEMA,
    collect_calibration,
    export_pipeline,
    optimize_pipeline,
    quantize_unet,
    train_qat,
)
from sd_ovopt.cli import build_parser, main
from sd_ovopt.export.metadata import METADATA_FILE
from sd_ovopt.quantization.checkpoints import load_checkpoint
from sd_ovopt.quantization.qat_data import CaptionedImageFolder

SIZE = 32
TINY_QAT = {"calibration_prompts": 1, "calibration_steps": 1, "eval_samples": 1, "export": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def static_unet_ir(folder: Path) -> None:
    """Make the folder's UNet IR static at its exported shape (batch 2 at 16x16 latents), as folders traced
    at one shape are."""
    import openvino as ov

    xml = folder / "unet" / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    model.reshape({"sample": [2, 4, 16, 16], "encoder_hidden_states": [2, 77, 32], "timestep": [1]})
    ov.save_model(model, folder / "static.xml", compress_to_fp16=False)
    del model
    (folder / "static.xml").replace(xml)
    (folder / "static.bin").replace(xml.with_suffix(".bin"))


@dataclass
class Ctx:
    """What rows call with: the sandbox (cwd and home), shared models, and prepared bad assets."""

    root: Path
    pipe: Any  # the tiny PyTorch pipeline
    saved: Path  # the tiny pipeline saved with save_pretrained
    ov: Path  # the tiny pipeline exported at 32x32
    ov_pipe: SdOvOptPipeline
    ov_nometa_pipe: SdOvOptPipeline  # the same export without sd_ovopt.json
    assets: Path

    def cli(self, *argv: str) -> Any:
        """Run a subcommand's function, so the typed error surfaces (main maps it to exit code 2)."""
        args = build_parser().parse_args([str(a) for a in argv])
        return args.func(args)

    def item(self, **change: Any) -> dict[str, Any]:
        """One valid UNet calibration input of the tiny pipeline, with ``change`` applied."""
        unet = self.pipe.unet.config
        item = {
            "sample": torch.randn(2, unet.in_channels, 16, 16),
            "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": torch.randn(2, 77, unet.cross_attention_dim),
        }
        return {**item, **change}


def write_squares(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for i in range(count):
        Image.new("RGB", (SIZE, SIZE), (200, 30 * i, 40)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a red square {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def forge_png_size(path: Path, width: int, height: int) -> None:
    """Rewrite a PNG's header to claim width x height pixels (the file stays tiny): a decompression bomb."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def qat_assets(assets: Path, pipe: Any) -> None:
    """A valid data folder, QAT runs holding one checkpoint each (damaged in one way), hostile images, and
    a saved pipeline with a NaN weight."""
    import copy

    from PIL import PngImagePlugin

    from sd_ovopt import QATModel
    from sd_ovopt.quantization.checkpoints import checkpoint_info, save_checkpoint

    write_squares(assets / "squares")
    config = QATConfig(max_train_steps=1, **TINY_QAT)
    student = quantize_unet(pipe, collect_calibration(pipe, ["a red square"], num_inference_steps=1))
    qat = QATModel(pipe, student, config)
    optimizer = torch.optim.AdamW(qat.parameter_groups(), lr=config.learning_rate)
    info = checkpoint_info(student, qat_config=config.to_dict(), tome=None, world_size=1, ptq_error=None)
    good = save_checkpoint(assets / "qat-run" / "checkpoints", 1, qat, optimizer, info)

    def damaged(name: str, info: Any = None, state: Any = None, step: int = 1) -> None:
        folder = shutil.copytree(good, assets / name / "checkpoints" / f"checkpoint-{step}")
        if info:
            data = json.loads((folder / "checkpoint.json").read_text())
            info(data)
            (folder / "checkpoint.json").write_text(json.dumps(data))
        if state:
            tensors = torch.load(folder / "training_state.pt", weights_only=True)
            state(tensors)
            torch.save(tensors, folder / "training_state.pt")

    damaged("qat-step-ten", info=lambda d: d.update(step="ten"))
    damaged("qat-no-tome", info=lambda d: d.pop("tome"))
    damaged("qat-step-2", info=lambda d: d.update(step=2), step=2)
    damaged("qat-other-shape", state=lambda s: s["student"].update({"conv_in.weight": torch.zeros(3, 3)}))
    damaged("qat-nan-weights", state=lambda s: s["student"]["conv_in.weight"].fill_(float("nan")))
    forge_png_size(write_squares(assets / "bomb-image") / "1.png", 50_000, 50_000)
    forge_png_size(write_squares(assets / "big-image") / "1.png", 10_000, 10_000)
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "a" * 5_000_000, zip=True)  # a few kB on disk, 5 MB inflated
    Image.new("RGB", (SIZE, SIZE)).save(write_squares(assets / "text-bomb-image") / "1.png", pnginfo=text)
    caption = write_squares(assets / "caption-not-text")
    (caption / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": 5}) + "\n")
    broken = copy.deepcopy(pipe)
    with torch.no_grad():
        broken.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    broken.save_pretrained(assets / "nan-model")


def evil_checkpoint(path: Path, marker: Path) -> None:
    """A checkpoint whose loading would create ``marker`` (any code would run the same way)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path.write_bytes(pickle.dumps({"model": Payload(), "step": 1}))


@pytest.fixture(scope="module")
def shared(tiny_saved, exported_tiny, tmp_path_factory):
    from sd_ovopt.testing import tiny_pipeline

    assets = tmp_path_factory.mktemp("assets")
    (assets / "bad-prompts.txt").write_bytes(b"a red circle\n\xff\xfe caf\xe9\n")
    (assets / "a-file").write_text("not a folder")
    (assets / "blank-prompts.txt").write_text("\n   \n")
    (assets / "a-folder").mkdir()
    (assets / "a-folder" / "keep.txt").write_text("user data")
    broken = write_squares(assets / "unreadable-image")
    (broken / "0.png").write_bytes(b"not a png")
    escaping = write_squares(assets / "escaping")
    (escaping / "metadata.jsonl").write_text(json.dumps({"file_name": "../a-file", "text": "x"}) + "\n")
    absolute = write_squares(assets / "absolute")
    (absolute / "metadata.jsonl").write_text(
        json.dumps({"file_name": str(assets / "a-file"), "text": "x"}) + "\n"
    )
    (assets / "not-utf8-data").mkdir()
    (assets / "not-utf8-data" / "metadata.jsonl").write_bytes(b'{"file_name": "\xff.png"}\n')
    tampered_folders(assets, exported_tiny, tiny_saved)
    tiny_vae_folders(assets)
    qat_assets(assets, tiny_pipeline())
    nometa = assets / "tiny-ov-no-metadata"
    shutil.copytree(exported_tiny, nometa)
    (nometa / METADATA_FILE).unlink()
    static_unet_ir(nometa)  # as an earlier sd_ovopt traced it: one static shape, its record lost
    return {
        "pipe": tiny_pipeline(),
        "ov_pipe": SdOvOptPipeline.from_pretrained(exported_tiny),
        "ov_nometa_pipe": SdOvOptPipeline.from_pretrained(nometa),
        "assets": assets,
    }


def reference_unet_resume(ctx: Ctx) -> None:
    from sd_ovopt.reference.train import TrainingConfig, _train_unet, reference_tokenizer

    work = ctx.root / "work"
    work.mkdir()
    evil_checkpoint(work / "unet.pt", ctx.root / "PAYLOAD-RAN")
    try:
        _train_unet(None, [], None, reference_tokenizer(), work, TrainingConfig(), "cpu", False)
    finally:
        assert not (ctx.root / "PAYLOAD-RAN").exists(), "the checkpoint's code ran"
        shutil.rmtree(work)


def reference_vae_resume(ctx: Ctx) -> None:
    from sd_ovopt.reference.train import TrainingConfig, _train_vae

    work = ctx.root / "work"
    work.mkdir()
    evil_checkpoint(work / "vae.pt", ctx.root / "PAYLOAD-RAN")
    try:
        _train_vae(np.zeros((1, SIZE, SIZE, 3), np.uint8), work, TrainingConfig(), "cpu", False)
    finally:
        assert not (ctx.root / "PAYLOAD-RAN").exists(), "the checkpoint's code ran"
        shutil.rmtree(work)


def reference_tiny_vae_resume(ctx: Ctx) -> None:
    from sd_ovopt.reference.tiny_vae import train_tiny_vae

    work = ctx.root / "work"
    work.mkdir()
    evil_checkpoint(work / "tiny_vae.pt", ctx.root / "PAYLOAD-RAN")
    try:
        train_tiny_vae(ctx.root / "tiny-vae", work, steps=2, batch_size=2, num_images=2)
    finally:
        assert not (ctx.root / "PAYLOAD-RAN").exists(), "the checkpoint's code ran"
        assert not (ctx.root / "tiny-vae").exists()
        shutil.rmtree(work)


def qat_checkpoint_resume(ctx: Ctx) -> None:
    from sd_ovopt.quantization.checkpoints import INFO_FILE, STATE_FILE, load_checkpoint

    folder = ctx.root / "checkpoint-1"
    folder.mkdir()
    good = ctx.assets / "qat-run" / "checkpoints" / "checkpoint-1"
    shutil.copy(good / INFO_FILE, folder / INFO_FILE)  # a valid record: the state file is what is read next
    evil_checkpoint(folder / STATE_FILE, ctx.root / "PAYLOAD-RAN")
    try:
        load_checkpoint(folder, ctx.pipe.unet)
    finally:
        assert not (ctx.root / "PAYLOAD-RAN").exists(), "the checkpoint's code ran"
        shutil.rmtree(folder)


PAYLOAD = "sdovopt_payload"  # a module beside the model folders; importing it would create PAYLOAD-RAN


def no_folder_code_runs(call: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
    """A row whose model folder names a module of its own: with that module importable (the folder's
    parent on ``sys.path``, as the working directory often is), loading must refuse it without running it."""
    import sys

    def row(ctx: Ctx) -> Any:
        sys.path.insert(0, str(ctx.assets))
        try:
            return call(ctx)
        finally:
            sys.path.remove(str(ctx.assets))
            sys.modules.pop(PAYLOAD, None)
            assert not (ctx.root / "PAYLOAD-RAN").exists(), "code named by the model folder ran"

    return row


def before_loading(call: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
    """A row whose error must come before the model folder is loaded (minutes for a real model)."""
    from unittest import mock

    from diffusers import StableDiffusionPipeline

    def row(ctx: Ctx) -> Any:
        with mock.patch.object(
            StableDiffusionPipeline, "from_pretrained", side_effect=AssertionError("loaded")
        ):
            return call(ctx)

    return row


def export_while_another_writer_fills_the_output(ctx: Ctx) -> None:
    """Another process writes the same output while this export runs: its result must be kept."""
    from unittest import mock

    import sd_ovopt.export.pipeline as export_module

    out = ctx.root / "o"
    save_tokenizer = export_module._save_tokenizer

    def and_meanwhile(tokenizer: Any, folder: Path) -> None:
        save_tokenizer(tokenizer, folder)
        out.mkdir()
        (out / "theirs.txt").write_text("the other writer's result")

    try:
        with mock.patch.object(export_module, "_save_tokenizer", and_meanwhile):
            export_pipeline(ctx.pipe, out, show_progress=False)
    finally:
        assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"], "the other writer's result was lost"
        shutil.rmtree(out)


def copy_export(source: Path, target: Path, *, meta: Callable[[dict], Any] | None = None) -> Path:
    """A copy of an exported folder (IR files hard-linked, JSON copied) with ``meta`` applied to its
    ``sd_ovopt.json``; ``meta`` may return a replacement or edit in place."""

    def link_or_copy(src: str, dst: str) -> None:
        (shutil.copy2 if src.endswith(".json") else os.link)(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)
    if meta is not None:
        record = json.loads((target / METADATA_FILE).read_text())
        record = meta(record) or record
        (target / METADATA_FILE).write_text(json.dumps(record))
    return target


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def tampered_folders(assets: Path, exported: Path, saved: Path) -> None:
    """Model folders edited as an attacker or a careless hand would, each under ``assets``."""
    (assets / f"{PAYLOAD}.py").write_text("import pathlib\npathlib.Path('PAYLOAD-RAN').touch()\n")
    for name, entry in (("evil-ov", [PAYLOAD, "Scheduler"]), ("stdlib-ov", ["this", "Zen"])):
        edit_json(copy_export(exported, assets / name) / "model_index.json", scheduler=entry)
    shutil.copytree(saved, assets / "evil-sd")
    edit_json(assets / "evil-sd" / "model_index.json", tokenizer=[PAYLOAD, "Tokenizer"])
    edit_json(
        copy_export(exported, assets / "not-a-pair-ov") / "model_index.json", unet="UNet2DConditionModel"
    )
    edit_json(copy_export(exported, assets / "extra-arg-ov") / "model_index.json", device="GPU")
    shallow = {"version": 1, "config": {"interval": 3, "branch": 0, "schedule": "uniform", "version": 1}, "full": "unet/openvino_model.xml", "feature": "deep_feature", "feature_shape": [1, 32, 16, 16]}  # fmt: skip
    for name, path in (("escape", "../tiny-ov/unet/openvino_model.xml"), ("absolute", str(exported / "unet" / "openvino_model.xml"))):  # fmt: skip
        copy_export(exported, assets / f"shallow-{name}-ov", meta=lambda m, p=path: m.update(methods={"step_caching": {**shallow, "shallow": p}}))  # fmt: skip
    edits = {
        "height-string": {"height": "32"},
        "height-30": {"height": 30, "width": 30},
        "cfg-string": {"classifier_free_guidance": "yes"},
        "unet-batch": {"unet_batch": 3},
        "dtype": {"weights_dtype": "f8"},
        "tome-ratio": {"methods": {"tome": {"version": 1, "config": {"ratio": 5}}}},
        "quantization": {"methods": {"int8": {"version": 1, "config": "int8"}}},
        "unknown-method": {"methods": {"sharpen": {"version": 1, "config": {}}}},
        "other-ir": {"height": 64, "width": 64, "latent_height": 32, "latent_width": 32, "any_shape": False},
        "any-shape-string": {"any_shape": "yes"},
        "vae-unknown": {"vae": "AutoencoderXL"},
    }
    for name, change in edits.items():
        copy_export(exported, assets / f"meta-{name}-ov", meta=lambda m, c=change: m.update(c))
    (copy_export(exported, assets / "no-unet-config-ov") / "unet" / "config.json").unlink()
    shutil.rmtree(copy_export(exported, assets / "no-tokenizer-ov") / "tokenizer")
    (copy_export(exported, assets / "bad-scheduler-ov") / "scheduler" / "scheduler_config.json").write_text(
        "{"
    )


def tiny_vae_folders(assets: Path) -> None:
    """Tiny autoencoder folders: pickled weights only, and a full VAE's folder under that name."""
    from sd_ovopt.testing import tiny_pipeline, tiny_taesd

    tiny_taesd().save_pretrained(assets / "taesd-pickled", safe_serialization=False)
    tiny_pipeline().vae.save_pretrained(assets / "taesd-is-a-kl-vae")


def user_folder(ctx: Ctx, name: str) -> Path:
    """A folder of the user's, made before the row's snapshot (under assets, shared by rows)."""
    return ctx.assets / name


S = "--steps"
# (id, harm prevented, family, call, expected error, message must contain); docs/reliability.md names the families
CASES: list[tuple[str, str, str, Callable[[Ctx], Any], type[Exception], str]] = [
    # --- prevents code execution, data loss, silent garbage --------------------------------------------
    ("reference-train-unet.pt-payload", "broken", "code", reference_unet_resume, InvalidConfigError, "never run"),
    ("reference-train-vae.pt-payload", "broken", "code", reference_vae_resume, InvalidConfigError, "never run"),
    ("reference-tiny-vae.pt-payload", "broken", "code", reference_tiny_vae_resume, InvalidConfigError, "never run"),
    ("qat-checkpoint-payload", "broken", "code", qat_checkpoint_resume, CorruptModelError, "never run"),
    ("export-to-empty-path", "broken", "outputs", lambda c: export_pipeline(c.pipe, "", overwrite=True), UnsafeOutputError, "empty"),
    ("export-to-cwd", "broken", "outputs", lambda c: export_pipeline(c.pipe, ".", overwrite=True), UnsafeOutputError, "working directory"),
    ("export-to-cwd-ancestor", "broken", "outputs", lambda c: export_pipeline(c.pipe, "..", overwrite=True), UnsafeOutputError, "ancestor"),
    ("export-to-home", "broken", "outputs", lambda c: export_pipeline(c.pipe, "~", overwrite=True), UnsafeOutputError, "home"),
    ("export-to-root", "broken", "outputs", lambda c: export_pipeline(c.pipe, "/", overwrite=True), UnsafeOutputError, "root"),
    ("cli-export-src-onto-itself", "broken", "outputs", lambda c: c.cli("export", c.saved, c.saved, "--overwrite"), UnsafeOutputError, "is the source"),
    ("cli-export-into-src", "broken", "outputs", lambda c: c.cli("export", c.saved, c.saved / "ov", "--overwrite"), UnsafeOutputError, "inside the source"),
    ("cli-export-around-src", "broken", "outputs", lambda c: c.cli("export", c.saved, c.saved.parent, "--overwrite"), UnsafeOutputError, "contains the source"),
    ("cli-quantize-onto-src", "broken", "outputs", lambda c: c.cli("quantize", c.saved, c.saved, "--prompts", c.assets / "a-file", "--overwrite"), UnsafeOutputError, "source"),
    ("calibration-nan", "broken", "numbers", lambda c: quantize_unet(c.pipe, [c.item(sample=torch.full((2, 4, 16, 16), float("nan")))]), InvalidConfigError, "calibration[0]['sample']"),
    ("calibration-inf", "broken", "numbers", lambda c: quantize_unet(c.pipe, [c.item(), c.item(encoder_hidden_states=torch.full((2, 77, 32), float("inf")))]), InvalidConfigError, "calibration[1]['encoder_hidden_states']"),
    ("pipeline-steps-0", "broken", "numbers", lambda c: c.ov_pipe("a red circle", num_inference_steps=0), InvalidConfigError, "num_inference_steps=0"),
    ("pipeline-steps-negative", "broken", "numbers", lambda c: c.ov_pipe("a red circle", num_inference_steps=-2), InvalidConfigError, "num_inference_steps=-2"),
    ("calibration-steps-0", "broken", "numbers", lambda c: collect_calibration(c.pipe, ["a"], num_inference_steps=0), InvalidConfigError, "num_inference_steps=0"),
    ("cli-generate-steps-0", "broken", "numbers", lambda c: c.cli("generate", c.ov, "a", S, "0", "--output", c.root / "x.png"), InvalidConfigError, "steps=0"),
    ("cli-generate-steps-negative", "broken", "numbers", lambda c: c.cli("generate", c.ov, "a", S, "-1", "--output", c.root / "x.png"), InvalidConfigError, "steps=-1"),
    ("cli-quantize-steps-0", "broken", "numbers", lambda c: c.cli("quantize", c.saved, c.root / "q", "--prompts", c.assets / "a-file", S, "0"), InvalidConfigError, "--steps=0"),
    ("cli-demo-steps-0", "broken", "numbers", lambda c: c.cli("demo", "--output-dir", c.root / "d", S, "0"), InvalidConfigError, "--steps=0"),
    ("cli-generate-output-is-a-folder", "broken", "outputs", lambda c: c.cli("generate", c.ov, "a", S, "1", "--output", c.assets / "a-folder"), OutputExistsError, "is a folder"),
    ("cli-quantize-prompts-not-utf8", "broken", "prompts", lambda c: c.cli("quantize", c.saved, c.root / "q", "--prompts", c.assets / "bad-prompts.txt"), InvalidConfigError, "not UTF-8"),
    ("cli-demo-output-dir-is-a-file", "broken", "outputs", lambda c: c.cli("demo", "--output-dir", c.assets / "a-file"), OutputExistsError, "is a file"),
    ("train-qat-unreadable-image", "broken", "data", lambda c: train_qat(c.saved, c.assets / "unreadable-image", c.root / "run", QATConfig(max_train_steps=1, **TINY_QAT), show_progress=False), InvalidDatasetError, "cannot read image"),
    ("train-data-file-name-escapes", "broken", "data", lambda c: CaptionedImageFolder(c.assets / "escaping", resolution=SIZE), InvalidDatasetError, "leads outside"),
    ("train-data-file-name-absolute", "broken", "data", lambda c: CaptionedImageFolder(c.assets / "absolute", resolution=SIZE), InvalidDatasetError, "leads outside"),
    ("load-folder-names-its-own-module", "broken", "code", no_folder_code_runs(lambda c: SdOvOptPipeline.from_pretrained(c.assets / "evil-ov")), CorruptModelError, "names the library 'sdovopt_payload'"),
    ("cli-generate-folder-names-its-own-module", "broken", "code", no_folder_code_runs(lambda c: c.cli("generate", c.assets / "evil-ov", "a", S, "1", "--output", c.root / "x.png")), CorruptModelError, "code named by a model folder never runs"),
    ("export-folder-names-its-own-module", "broken", "code", no_folder_code_runs(lambda c: export_pipeline(c.assets / "evil-sd", c.root / "o")), CorruptModelError, "names the library 'sdovopt_payload'"),
    ("load-folder-names-a-stdlib-module", "broken", "code", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "stdlib-ov"), CorruptModelError, "names the library 'this'"),
    ("load-shallow-ir-outside-the-folder", "broken", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "shallow-escape-ov"), CorruptModelError, "leads outside the folder"),
    ("load-shallow-ir-absolute-path", "broken", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "shallow-absolute-ov"), CorruptModelError, "relative to the folder"),
    ("export-output-filled-meanwhile", "broken", "outputs", export_while_another_writer_fills_the_output, OutputExistsError, "appeared while this write ran"),
    ("pipeline-guidance-inf", "broken", "numbers", lambda c: c.ov_pipe("a", guidance_scale=float("inf"), num_inference_steps=1), InvalidConfigError, "guidance_scale=inf"),
    ("pipeline-eta-nan", "broken", "numbers", lambda c: c.ov_pipe("a", eta=float("nan"), num_inference_steps=1), InvalidConfigError, "eta=nan"),
    ("pipeline-prompt-embeds-nan", "broken", "numbers", lambda c: c.ov_pipe(None, prompt_embeds=torch.full((1, 77, 32), float("nan")), num_inference_steps=1), InvalidConfigError, "prompt_embeds holds NaN"),
    ("export-guidance-flag-a-string", "broken", "numbers", lambda c: export_pipeline(c.pipe, c.root / "o", classifier_free_guidance="False"), InvalidConfigError, "pass True or False"),
    ("recipe-guidance-nan", "broken", "numbers", before_loading(lambda c: optimize_pipeline(c.saved, c.root / "o", guidance_scale=float("nan"))), InvalidConfigError, "guidance_scale=nan"),
    # --- prevents raw tracebacks and confusing messages -------------------------------------------------
    ("recipe-height-30-from-a-folder", "poor", "layers", before_loading(lambda c: optimize_pipeline(c.saved, c.root / "o", height=30, methods=[QuantizationConfig(subset_size=1)])), ShapeMismatchError, "height=30"),
    ("export-from-a-folder-over-user-folder", "poor", "layers", before_loading(lambda c: export_pipeline(c.saved, c.assets / "a-folder")), OutputExistsError, "not empty"),
    ("load-model-index-entry-not-a-pair", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "not-a-pair-ov"), CorruptModelError, "not a [library, class] pair"),
    ("load-model-index-extra-argument", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "extra-arg-ov"), CorruptModelError, "entry 'device'"),
    ("load-record-height-a-string", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-height-string-ov"), CorruptModelError, "height is '32'"),
    ("load-record-height-not-multiple-of-8", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-height-30-ov"), CorruptModelError, "multiple of 8"),
    ("load-record-guidance-a-string", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-cfg-string-ov"), CorruptModelError, "classifier_free_guidance is 'yes'"),
    ("load-record-unet-batch-inconsistent", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-unet-batch-ov"), CorruptModelError, "unet_batch is 3"),
    ("load-record-weights-dtype", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-dtype-ov"), CorruptModelError, "weights_dtype is 'f8'"),
    ("load-record-tome-ratio", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-tome-ratio-ov"), CorruptModelError, "methods.tome.config is not a valid ToMeConfig"),
    ("load-record-quantization", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-quantization-ov"), CorruptModelError, "methods.int8.config must be an object"),
    ("load-record-unknown-method", "handled", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-unknown-method-ov"), UnsupportedModelError, "method 'sharpen' is not registered"),
    ("export-vae-tiny-pickled-weights", "handled", "code", before_loading(lambda c: export_pipeline(c.saved, c.root / "o", vae=c.assets / "taesd-pickled")), CorruptModelError, "never unpickles"),
    ("export-vae-tiny-is-a-kl-vae", "handled", "folders", before_loading(lambda c: export_pipeline(c.saved, c.root / "o", vae=c.assets / "taesd-is-a-kl-vae")), UnsupportedModelError, "not an AutoencoderTiny"),
    ("load-record-vae-unknown", "handled", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-vae-unknown-ov"), CorruptModelError, "vae is 'AutoencoderXL'"),
    ("export-scheduler-unknown-name", "handled", "layers", before_loading(lambda c: export_pipeline(c.saved, c.root / "o", scheduler="lcm-lora")), InvalidConfigError, "not a scheduler name"),
    ("load-cache-dir-empty", "handled", "layers", lambda c: SdOvOptPipeline.from_pretrained(c.ov, cache_dir=""), InvalidConfigError, "cache_dir=''"),
    ("load-record-of-another-ir", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-other-ir-ov"), CorruptModelError, "no static 4-d 'sample' input"),
    ("load-record-any-shape-a-string", "handled", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "meta-any-shape-string-ov"), CorruptModelError, "any_shape is 'yes'"),
    ("load-part-config-missing", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "no-unet-config-ov"), CorruptModelError, "config.json is missing"),
    ("load-tokenizer-missing", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "no-tokenizer-ov"), CorruptModelError, "tokenizer_config.json is missing"),
    ("load-scheduler-config-broken", "poor", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.assets / "bad-scheduler-ov"), CorruptModelError, "not valid JSON"),
    ("load-ov-config-unknown-property", "poor", "layers", lambda c: SdOvOptPipeline.from_pretrained(c.ov, ov_config={"NUM_STREAM": 1}), InvalidConfigError, "Unsupported property NUM_STREAM"),
    ("load-ov-config-bad-value", "poor", "layers", lambda c: SdOvOptPipeline.from_pretrained(c.ov, ov_config={"INFERENCE_NUM_THREADS": "many"}), InvalidConfigError, "INFERENCE_NUM_THREADS"),
    ("load-unknown-device", "poor", "layers", lambda c: SdOvOptPipeline.from_pretrained(c.ov, device="cpu"), InvalidConfigError, "Devices here: CPU"),
    ("load-unknown-keyword", "poor", "layers", lambda c: SdOvOptPipeline.from_pretrained(c.ov, precison="f32"), InvalidConfigError, "unknown keyword argument 'precison'"),
    ("pipeline-unknown-keyword", "poor", "numbers", lambda c: c.ov_pipe("a", num_inference_step=1), InvalidConfigError, "Did you mean 'num_inference_steps'"),
    ("pipeline-steps-beyond-the-schedule", "poor", "numbers", lambda c: c.ov_pipe("a", num_inference_steps=5000), InvalidConfigError, "at most 1000 steps"),
    ("calibration-steps-beyond-the-schedule", "poor", "numbers", lambda c: collect_calibration(c.pipe, ["a"], num_inference_steps=5000), InvalidConfigError, "at most 1000 steps"),
    ("pipeline-steps-a-float", "handled", "numbers", lambda c: c.ov_pipe("a", num_inference_steps=2.5), InvalidConfigError, "num_inference_steps=2.5"),
    ("pipeline-negative-guidance", "poor", "numbers", lambda c: c.ov_pipe("a", guidance_scale=-3.0, num_inference_steps=1), InvalidConfigError, "guidance_scale=-3.0"),
    ("pipeline-negative-prompt-int", "poor", "numbers", lambda c: c.ov_pipe("a", negative_prompt=5, num_inference_steps=1), InvalidConfigError, "negative_prompt=5"),
    ("pipeline-output-type-unknown", "poor", "numbers", lambda c: c.ov_pipe("a", output_type="jpg", num_inference_steps=1), InvalidConfigError, "output_type='jpg'"),
    ("pipeline-generator-an-int", "poor", "numbers", lambda c: c.ov_pipe("a", generator=5, num_inference_steps=1), InvalidConfigError, "torch.Generator"),
    ("pipeline-clip-skip-beyond-the-layers", "poor", "numbers", lambda c: c.ov_pipe("a", clip_skip=50, num_inference_steps=1), InvalidConfigError, "must be < 2"),
    ("pipeline-cross-attention-kwargs", "poor", "numbers", lambda c: c.ov_pipe("a", cross_attention_kwargs={"scale": 0.5}, num_inference_steps=1), InvalidConfigError, "fuse a LoRA"),
    ("pipeline-prompt-embeds-wrong-shape", "poor", "numbers", lambda c: c.ov_pipe(None, prompt_embeds=torch.randn(1, 10, 32), num_inference_steps=1), ShapeMismatchError, "(prompts, 77, 32)"),
    ("pipeline-guidance-a-string", "poor", "numbers", lambda c: c.ov_pipe("a", guidance_scale="7.5", num_inference_steps=1), InvalidConfigError, "must be a number"),
    ("no-metadata-other-size", "poor", "shapes", lambda c: c.ov_nometa_pipe("a", height=64, width=64, num_inference_steps=1), ShapeMismatchError, "no sd_ovopt.json"),
    ("no-metadata-other-batch", "poor", "shapes", lambda c: c.ov_nometa_pipe(["a", "b"], num_inference_steps=1), ShapeMismatchError, "UNet batch 2"),
    ("latents-wrong-shape", "poor", "shapes", lambda c: c.ov_pipe("a", latents=torch.randn(1, 4, 8, 8), num_inference_steps=1), ShapeMismatchError, "(1, 4, 16, 16)"),
    ("prompt-int", "poor", "prompts", lambda c: c.ov_pipe(5, num_inference_steps=1), InvalidConfigError, "prompt=5"),
    ("prompt-none", "poor", "prompts", lambda c: c.ov_pipe(None, num_inference_steps=1), InvalidConfigError, "prompt=None"),
    ("prompt-list-with-int", "poor", "prompts", lambda c: c.ov_pipe(["a", 3], num_inference_steps=1), InvalidConfigError, "list of strings"),
    ("latents-nan", "poor", "numbers", lambda c: c.ov_pipe("a", latents=torch.full((1, 4, 16, 16), float("nan")), num_inference_steps=1), InvalidConfigError, "NaN"),
    ("latents-inf", "poor", "numbers", lambda c: c.ov_pipe("a", latents=torch.full((1, 4, 16, 16), float("inf")), num_inference_steps=1), InvalidConfigError, "infinite"),
    ("export-absurd-size", "poor", "shapes", lambda c: export_pipeline(c.pipe, c.root / "o", height=28672, width=28672), ShapeMismatchError, "at most 4096"),
    ("calibration-list", "poor", "numbers", lambda c: quantize_unet(c.pipe, [c.item(sample=[[0.0] * 16] * 16)]), InvalidConfigError, "builtins.list"),
    ("cli-train-qat-output-is-a-file", "poor", "data", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.assets / "escaping", "--output", c.assets / "a-file"), OutputExistsError, "is a file"),
    ("train-qat-output-is-a-file-on-resume", "poor", "data", lambda c: train_qat(c.saved, c.assets / "escaping", c.assets / "a-file", resume_from_checkpoint="latest"), OutputExistsError, "is a file"),
    ("train-data-metadata-not-utf8", "poor", "data", lambda c: CaptionedImageFolder(c.assets / "not-utf8-data", resolution=SIZE), InvalidDatasetError, "not UTF-8"),
    # --- plain typed errors -----------------------------------------------------------------------------
    ("export-missing-model", "handled", "folders", lambda c: export_pipeline(c.root / "missing", c.root / "o"), ModelNotFoundError, "does not exist"),
    ("export-not-a-pipeline", "handled", "folders", lambda c: export_pipeline(c.assets / "a-folder", c.root / "o"), NotAPipelineError, "model_index.json"),
    ("export-over-user-folder", "handled", "outputs", lambda c: export_pipeline(c.pipe, c.assets / "a-folder"), OutputExistsError, "not empty"),
    ("export-size-not-multiple-of-8", "handled", "shapes", lambda c: export_pipeline(c.pipe, c.root / "o", height=30), ShapeMismatchError, "multiple of 8"),
    ("export-batch-0", "handled", "shapes", lambda c: export_pipeline(c.pipe, c.root / "o", batch_size=0), ShapeMismatchError, "batch_size=0"),
    ("load-missing-folder", "handled", "folders", lambda c: SdOvOptPipeline.from_pretrained(c.root / "missing"), ModelNotFoundError, "does not exist"),
    ("load-bad-precision", "handled", "layers", lambda c: SdOvOptPipeline.from_pretrained(c.ov, precision="f8"), InvalidConfigError, "precision"),
    ("pipeline-other-size", "handled", "shapes", lambda c: c.ov_pipe("a", height=64, num_inference_steps=1), ShapeMismatchError, "height=64"),
    ("load-at-size-not-multiple-of-8", "handled", "shapes", lambda c: SdOvOptPipeline.from_pretrained(c.ov, height=36), ShapeMismatchError, "height=36"),
    ("reshape-batch-0", "handled", "shapes", lambda c: c.ov_pipe.reshape(0, 32, 32, 1), ShapeMismatchError, "batch_size=0"),
    ("calibration-empty", "handled", "numbers", lambda c: quantize_unet(c.pipe, []), InvalidConfigError, "empty"),
    ("calibration-wrong-shape", "handled", "shapes", lambda c: quantize_unet(c.pipe, [c.item(sample=torch.randn(2, 3, 16, 16))]), ShapeMismatchError, "shape"),
    ("cli-quantize-missing-prompts", "handled", "prompts", lambda c: c.cli("quantize", c.saved, c.root / "q", "--prompts", c.root / "none.txt"), InvalidConfigError, "does not exist"),
    ("train-qat-used-output", "handled", "outputs", lambda c: train_qat(c.saved, c.assets / "escaping", c.assets / "a-folder"), OutputExistsError, "resume"),
    ("train-data-no-captions", "handled", "data", lambda c: CaptionedImageFolder(c.assets / "a-folder", resolution=SIZE), InvalidDatasetError, "metadata.jsonl"),
    # --- the command line: every argument checked before a model loads ----------------------------------
    ("cli-generate-seed-negative", "broken", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--seed", "-1", "--output", c.root / "x.png"), InvalidConfigError, "--seed=-1"),
    ("cli-generate-guidance-inf", "broken", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--guidance-scale", "inf", "--output", c.root / "x.png"), InvalidConfigError, "--guidance-scale=inf"),
    ("cli-generate-prompt-blank", "broken", "cli", lambda c: c.cli("generate", c.ov, " ", S, "1", "--output", c.root / "x.png"), InvalidConfigError, "is empty"),
    ("cli-generate-output-inside-a-file", "broken", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--output", c.assets / "a-file" / "x.png"), OutputExistsError, "is a file"),
    ("cli-export-output-not-empty", "broken", "cli", lambda c: c.cli("export", c.saved, c.assets / "a-folder"), OutputExistsError, "not empty"),
    ("cli-export-output-is-a-file", "broken", "cli", lambda c: c.cli("export", c.saved, c.assets / "a-file"), OutputExistsError, "is a file"),
    ("cli-export-to-cwd", "broken", "cli", lambda c: c.cli("export", c.saved, ".", "--overwrite"), UnsafeOutputError, "working directory"),
    ("cli-export-height-30", "broken", "cli", lambda c: c.cli("export", c.saved, c.root / "o", "--height", "30"), ShapeMismatchError, "--height=30"),
    ("cli-export-width-over-4096", "broken", "cli", lambda c: c.cli("export", c.saved, c.root / "o", "--width", "8192"), ShapeMismatchError, "at most 4096"),
    ("cli-quantize-height-30", "broken", "cli", lambda c: c.cli("quantize", c.saved, c.root / "q", "--prompts", c.assets / "a-file", "--height", "30"), ShapeMismatchError, "--height=30"),
    ("cli-export-vae-tiny-missing", "handled", "cli", before_loading(lambda c: c.cli("export", c.saved, c.root / "o", "--vae-tiny", c.root / "missing")), ModelNotFoundError, "does not exist"),
    ("cli-quantize-vae-int8-without-a-tiny-vae", "handled", "cli", lambda c: c.cli("quantize", c.saved, c.root / "q", "--vae-int8"), UnsupportedModelError, "tiny autoencoder's decoder"),
    ("cli-quantize-guidance-nan", "handled", "cli", before_loading(lambda c: c.cli("quantize", c.saved, c.root / "q", "--guidance-scale", "nan")), InvalidConfigError, "--guidance-scale=nan"),
    ("cli-bench-guidance-nan", "broken", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--guidance-scale", "nan"), InvalidConfigError, "--guidance-scale=nan"),
    ("cli-bench-guidance-negative", "broken", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--guidance-scale", "-1"), InvalidConfigError, "--guidance-scale=-1.0"),
    ("cli-bench-output-is-the-model", "broken", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.saved), UnsafeOutputError, "overlap"),
    ("cli-bench-output-home", "broken", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", "~"), UnsafeOutputError, "home"),
    ("cli-bench-held-out-and-prompts", "broken", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--held-out-prompts", "--prompts", c.assets / "a-file"), InvalidConfigError, "--held-out-prompts"),
    ("cli-train-qat-learning-rate-inf", "broken", "cli", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.assets / "a-folder", "--output", c.root / "run", "--learning-rate", "inf"), InvalidConfigError, "--learning-rate=inf"),
    ("cli-train-qat-max-grad-norm-inf", "broken", "cli", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.assets / "a-folder", "--output", c.root / "run", "--max-grad-norm", "inf"), InvalidConfigError, "--max-grad-norm=inf"),
    ("cli-train-qat-resolution-30", "broken", "cli", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.assets / "a-folder", "--output", c.root / "run", "--resolution", "30"), ShapeMismatchError, "--resolution=30"),
    ("cli-train-qat-data-missing", "broken", "cli", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.root / "none", "--output", c.root / "run"), InvalidDatasetError, "does not exist"),
    ("cli-train-qat-data-without-captions", "broken", "cli", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.assets / "a-folder", "--output", c.root / "run"), InvalidDatasetError, "metadata.jsonl is missing"),
    ("cli-demo-seed-negative", "broken", "cli", lambda c: c.cli("demo", "--output-dir", c.root / "d", "--seed", "-1"), InvalidConfigError, "--seed=-1"),
    ("cli-demo-output-home", "broken", "cli", lambda c: c.cli("demo", "--output-dir", "~"), UnsafeOutputError, "home"),
    ("cli-demo-output-inside-a-file", "broken", "cli", lambda c: c.cli("demo", "--output-dir", c.assets / "a-file" / "d"), OutputExistsError, "is a file"),
    ("cli-generate-seed-over-2**64", "poor", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--seed", str(2**64), "--output", c.root / "x.png"), InvalidConfigError, "<= 18446744073709551615"),
    ("cli-generate-guidance-nan", "poor", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--guidance-scale", "nan", "--output", c.root / "x.png"), InvalidConfigError, "--guidance-scale=nan"),
    ("cli-generate-guidance-negative", "poor", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--guidance-scale", "-3", "--output", c.root / "x.png"), InvalidConfigError, "--guidance-scale=-3.0"),
    ("cli-generate-output-unknown-format", "poor", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--output", c.root / "x.xyz"), InvalidConfigError, "'.xyz' is not an image format"),
    ("cli-generate-output-no-extension", "poor", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--output", c.root / "x"), InvalidConfigError, "no extension"),
    ("cli-generate-output-not-rgb-format", "poor", "cli", lambda c: c.cli("generate", c.ov, "a", S, "1", "--output", c.root / "x.xbm"), InvalidConfigError, "'.xbm'"),
    ("cli-quantize-prompts-is-a-folder", "poor", "cli", lambda c: c.cli("quantize", c.saved, c.root / "q", "--prompts", c.assets / "a-folder"), InvalidConfigError, "is a folder"),
    ("cli-bench-prompts-is-a-folder", "poor", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--prompts", c.assets / "a-folder"), InvalidConfigError, "is a folder"),
    ("cli-bench-seed-over-2**64", "poor", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--seeds", "0", str(2**64)), InvalidConfigError, "--seeds=18446744073709551616"),
    ("cli-bench-output-inside-a-file", "poor", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.assets / "a-file" / "b"), OutputExistsError, "is a file"),
    ("cli-train-qat-seed-over-2**32", "poor", "cli", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.assets / "a-folder", "--output", c.root / "run", "--seed", str(2**32)), InvalidConfigError, "<= 4294967295"),
    ("cli-demo-seed-over-2**64", "poor", "cli", lambda c: c.cli("demo", "--output-dir", c.root / "d", "--seed", str(2**64)), InvalidConfigError, "--seed=18446744073709551616"),
    ("cli-generate-model-is-a-file", "handled", "cli", lambda c: c.cli("generate", c.assets / "a-file", "a", "--output", c.root / "x.png"), NotAPipelineError, "is a file"),
    ("cli-quantize-prompts-blank", "handled", "cli", lambda c: c.cli("quantize", c.saved, c.root / "q", "--prompts", c.assets / "blank-prompts.txt"), InvalidConfigError, "has no prompts"),
    ("cli-quantize-tome-ratio-nan", "handled", "cli", lambda c: c.cli("quantize", c.saved, c.root / "q", "--tome-ratio", "nan"), InvalidConfigError, "ratio=nan"),
    ("cli-quantize-num-samples-0", "handled", "cli", lambda c: c.cli("quantize", c.saved, c.root / "q", "--num-samples", "0"), InvalidConfigError, "=0; it must be"),
    ("cli-export-deepcache-interval-0", "handled", "cli", lambda c: c.cli("export", c.saved, c.root / "o", "--deepcache-interval", "0"), InvalidConfigError, "interval=0"),
    ("cli-bench-unknown-variant", "handled", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--variants", "ov-nope"), InvalidConfigError, "unknown variant"),
    ("cli-bench-output-is-a-file", "handled", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.assets / "a-file"), OutputExistsError, "is a file"),
    ("cli-bench-prompts-not-utf8", "handled", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--prompts", c.assets / "bad-prompts.txt"), InvalidConfigError, "not UTF-8"),
    ("cli-bench-tome-ratio-inf", "handled", "cli", lambda c: c.cli("bench", "--model", c.saved, "--output", c.root / "b", "--tome-ratio", "inf"), InvalidConfigError, "ratio=inf"),
    ("cli-train-qat-learning-rate-nan", "handled", "cli", lambda c: c.cli("train-qat", "--model", c.saved, "--train-data", c.assets / "a-folder", "--output", c.root / "run", "--learning-rate", "nan"), InvalidConfigError, "rate=nan"),
    # --- quantization-aware training: configs, checkpoints, data -----------------------------------------
    ("qat-config-learning-rate-inf", "broken", "qat", lambda c: QATConfig(learning_rate=float("inf")), InvalidConfigError, "learning_rate=inf"),
    ("qat-config-learning-rate-huge", "broken", "qat", lambda c: QATConfig(learning_rate=1e30), InvalidConfigError, "it must be > 0 and <= 1"),
    ("qat-config-weight-decay-inf", "broken", "qat", lambda c: QATConfig(weight_decay=float("inf")), InvalidConfigError, "weight_decay=inf"),
    ("qat-config-distillation-weight-inf", "broken", "qat", lambda c: QATConfig(distillation_loss_weight=float("inf")), InvalidConfigError, "distillation_loss_weight=inf"),
    ("qat-config-seed-too-large", "poor", "qat", lambda c: QATConfig(seed=2**32), InvalidConfigError, "seed=4294967296"),
    ("qat-config-steps-float", "handled", "qat", lambda c: QATConfig(max_train_steps=10.0), InvalidConfigError, "max_train_steps=10.0"),
    ("qat-loss-weight-inf", "broken", "qat", lambda c: DistillationLoss(c.pipe.unet, task_weight=float("inf")), InvalidConfigError, "task_weight=inf"),
    ("qat-ema-decay-string", "poor", "qat", lambda c: WeightEMA(c.pipe.unet, decay="0.5"), InvalidConfigError, "decay='0.5'"),
    ("train-qat-nan-model", "poor", "qat", lambda c: train_qat(c.assets / "nan-model", c.assets / "squares", c.root / "run", QATConfig(max_train_steps=1, **TINY_QAT), show_progress=False), CorruptModelError, "holds NaN"),
    ("qat-resume-step-not-int", "poor", "qat", lambda c: train_qat(c.saved, c.assets / "squares", c.assets / "qat-step-ten", QATConfig(max_train_steps=1, **TINY_QAT), resume_from_checkpoint="latest", show_progress=False), CorruptModelError, "'step' is 'ten'"),
    ("qat-resume-missing-field", "poor", "qat", lambda c: train_qat(c.saved, c.assets / "squares", c.assets / "qat-no-tome", QATConfig(max_train_steps=1, **TINY_QAT), resume_from_checkpoint="latest", show_progress=False), CorruptModelError, "has no 'tome' field"),
    ("qat-resume-past-max-steps", "broken", "qat", lambda c: train_qat(c.saved, c.assets / "squares", c.assets / "qat-step-2", QATConfig(max_train_steps=1, **TINY_QAT), resume_from_checkpoint="latest", show_progress=False), InvalidConfigError, "below the step"),
    ("qat-resume-other-quantization", "broken", "qat", lambda c: train_qat(c.saved, c.assets / "squares", c.assets / "qat-run", QATConfig(max_train_steps=1, **TINY_QAT), quantization=QuantizationConfig(mode="hybrid"), resume_from_checkpoint="latest", show_progress=False), InvalidConfigError, "quantization differs"),
    ("qat-resume-nan-weights", "broken", "qat", lambda c: train_qat(c.saved, c.assets / "squares", c.assets / "qat-nan-weights", QATConfig(max_train_steps=1, **TINY_QAT), resume_from_checkpoint="latest", show_progress=False), CorruptModelError, "holds NaN"),
    ("qat-checkpoint-other-shape", "poor", "qat", lambda c: load_checkpoint(c.assets / "qat-other-shape" / "checkpoints" / "checkpoint-1", c.pipe.unet), CorruptModelError, "has shape (3, 3)"),
    ("train-data-decompression-bomb", "poor", "qat", lambda c: CaptionedImageFolder(c.assets / "bomb-image", resolution=SIZE), InvalidDatasetError, "MAX_IMAGE_PIXELS"),
    ("train-data-oversized-image", "poor", "qat", lambda c: CaptionedImageFolder(c.assets / "big-image", resolution=SIZE), InvalidDatasetError, "10000 x 10000"),
    ("train-data-png-text-bomb", "poor", "qat", lambda c: CaptionedImageFolder(c.assets / "text-bomb-image", resolution=SIZE), InvalidDatasetError, "Decompressed data too large"),
    ("train-data-resolution-0", "poor", "qat", lambda c: CaptionedImageFolder(c.assets / "squares", resolution=0), InvalidConfigError, "resolution=0"),
    ("train-data-caption-not-string", "handled", "qat", lambda c: CaptionedImageFolder(c.assets / "caption-not-text", resolution=SIZE), InvalidDatasetError, "needs string fields"),
]  # fmt: skip


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folders`` (hidden ones too) with its size and modification time."""
    found = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            info = path.lstat()
            found[str(path)] = (info.st_size, info.st_mtime_ns if path.is_file() else 0)
    return found


@pytest.mark.parametrize(("name", "kind", "item", "call", "error", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_typed_error_and_leaves_nothing(
    name, kind, item, call, error, match, shared, tiny_saved, exported_tiny, tmp_path, monkeypatch
):
    root = tmp_path / "sandbox"
    (root / "user-file.txt").parent.mkdir()
    (root / "user-file.txt").write_text("the user's work")
    monkeypatch.chdir(root)
    (root / "home").mkdir()
    monkeypatch.setenv("HOME", str(root / "home"))
    ctx = Ctx(
        root,
        shared["pipe"],
        tiny_saved,
        exported_tiny,
        shared["ov_pipe"],
        shared["ov_nometa_pipe"],
        shared["assets"],
    )
    watched = (root, shared["assets"], tiny_saved, exported_tiny)
    before = snapshot(*watched)
    with pytest.raises(error, match=None) as raised:
        call(ctx)
    assert match in str(raised.value), f"{name}: {raised.value}"
    assert snapshot(*watched) == before, f"{name} left something on disk"


def test_the_cli_maps_each_row_to_exit_code_2(shared, tiny_saved, tmp_path, capsys):
    """Two rows through ``main``: the typed error becomes a one-line message and exit code 2."""
    assert main(["export", str(tiny_saved), str(tiny_saved), "--overwrite"]) == 2
    assert "is the source model" in capsys.readouterr().err
    prompts = shared["assets"] / "bad-prompts.txt"
    assert main(["quantize", str(tiny_saved), str(tmp_path / "q"), "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert "sd-ovopt quantize: error: " in err and "Traceback" not in err


#: The families of bad input, as docs/reliability.md lists them.
FAMILIES = ("code", "folders", "outputs", "numbers", "shapes", "prompts", "data", "qat", "layers", "cli")


def test_counts():
    kinds = [c[1] for c in CASES]
    assert len({c[0] for c in CASES}) == len(CASES)
    assert {c[2] for c in CASES} <= set(FAMILIES)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    for family in FAMILIES:  # the docs' table counts the rows this table holds
        rows = sum(c[2] == family for c in CASES)
        assert f"| {family} |" in docs, family
        assert docs.split(f"| {family} |", 1)[1].split("\n", 1)[0].endswith(f" | {rows} |"), family
    assert f"all {len(CASES)} rows" in docs
    assert kinds.count("broken") >= 9 and kinds.count("poor") >= 10 and kinds.count("handled") >= 10


def test_conversion_shows_no_library_deprecation_notices(shared):
    """torch.jit's FutureWarnings and transformers'/diffusers' notices during export are not the user's."""
    import logging
    import warnings

    from sd_ovopt._convert import convert_text_encoder, convert_vae_decoder

    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    libraries = [logging.getLogger(name) for name in ("transformers", "diffusers")]
    for library in libraries:
        library.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            convert_vae_decoder(shared["pipe"].vae, latent_height=16, latent_width=16)
            convert_text_encoder(shared["pipe"].text_encoder, text_length=77)
    finally:
        for library in libraries:
            library.removeHandler(handler)
    assert not [str(w.message) for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not [record.getMessage() for record in records]
