import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from sd_ovopt import ToMeConfig
from sd_ovopt.cli import build_parser, main
from sd_ovopt.errors import (
    InvalidConfigError,
    InvalidDatasetError,
    NotAPipelineError,
    OutputExistsError,
    ShapeMismatchError,
    UnsafeOutputError,
)


def test_export_then_generate(tiny_saved, tmp_path, capsys):
    out = tmp_path / "ov"
    assert main(["export", str(tiny_saved), str(out), "--height", "32", "--width", "32"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    png = tmp_path / "images" / "img.png"  # a missing folder of --output is made
    assert (
        main(["generate", str(out), "a red circle", "--seed", "3", "--steps", "2", "--output", str(png)]) == 0
    )
    assert Image.open(png).size == (32, 32)


def test_a_guidance_free_export_generates_at_guidance_1(tiny_saved, tmp_path, capsys):
    out = tmp_path / "ov"
    assert main(["export", str(tiny_saved), str(out), "--height", "32", "--guidance-free"]) == 0
    capsys.readouterr()
    png = tmp_path / "img.png"
    args = ["generate", str(out), "a red circle", "--steps", "2", "--output", str(png)]
    assert main([*args, "--guidance-scale", "1"]) == 0 and Image.open(png).size == (32, 32)
    assert main(args) == 2 and "classifier_free_guidance=True" in capsys.readouterr().err


def test_a_few_step_folder_from_the_cli_has_the_tiny_decoder_and_the_lcm_scheduler(
    tiny_saved, tmp_path, capsys
):
    """An SD folder plus a TAESD folder and the LCM scheduler become one guidance-free folder."""
    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.testing import tiny_taesd

    tiny_taesd().save_pretrained(tmp_path / "taesd")
    out = tmp_path / "ov"
    args = ["export", str(tiny_saved), str(out), "--height", "32", "--guidance-free"]
    assert main([*args, "--vae-tiny", str(tmp_path / "taesd"), "--scheduler", "lcm"]) == 0
    capsys.readouterr()
    pipe = SdOvOptPipeline.from_pretrained(out)
    assert pipe.export_metadata.vae == "AutoencoderTiny" and type(pipe.scheduler).__name__ == "LCMScheduler"
    png = tmp_path / "img.png"
    assert (
        main(
            [
                "generate",
                str(out),
                "a red circle",
                "--steps",
                "2",
                "--guidance-scale",
                "1",
                "--output",
                str(png),
            ]
        )
        == 0
    )
    assert Image.open(png).size == (32, 32)


def test_quantize_passes_guidance_tiny_vae_and_scheduler_to_the_recipe(tiny_saved, tmp_path, monkeypatch):
    import sd_ovopt.recipes

    seen = {}
    monkeypatch.setattr(sd_ovopt.recipes, "optimize_pipeline", lambda *a, **k: seen.update(k) or tmp_path)
    args = ["quantize", str(tiny_saved), str(tmp_path / "q"), "--guidance-scale", "1", "--scheduler", "tcd"]
    assert main([*args, "--vae-tiny", str(tmp_path / "taesd")]) == 0
    assert seen["guidance_scale"] == 1.0 and seen["scheduler"] == "tcd"
    assert seen["vae"] == str(tmp_path / "taesd") and seen["vae_int8"] is False
    assert main([*args, "--vae-tiny", str(tmp_path / "taesd"), "--vae-int8"]) == 0
    assert seen["vae_int8"] is True


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tome-ratio", "0.4"], ToMeConfig(ratio=0.4)),
        (["--tome-ratio", "0.5", "--tome-max-downsample", "2"], ToMeConfig(ratio=0.5, max_downsample=2)),
        (["--tome-method", "downsample"], ToMeConfig(method="downsample")),
        (
            ["--tome-method", "downsample", "--tome-max-downsample", "2"],
            ToMeConfig(method="downsample", max_downsample=2),
        ),
    ],
    ids=["merge", "merge-two-levels", "downsample", "downsample-two-levels"],
)
def test_quantize_passes_the_token_merging_flags_as_one_config(
    tiny_saved, tmp_path, monkeypatch, flags, expected
):
    import sd_ovopt.recipes

    seen = {}
    monkeypatch.setattr(sd_ovopt.recipes, "optimize_pipeline", lambda *a, **k: seen.update(k) or tmp_path)
    assert main(["quantize", str(tiny_saved), str(tmp_path / "q"), *flags]) == 0
    assert [m for m in seen["methods"] if isinstance(m, ToMeConfig)] == [expected]


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "sd-ovopt export: error" in err


def test_bad_size_on_cli(tiny_saved, tmp_path, capsys):
    assert main(["export", str(tiny_saved), str(tmp_path / "o"), "--height", "30"]) == 2
    assert "multiple of 8" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "sd_ovopt", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "export" in out.stdout and "generate" in out.stdout


def test_quantize_prints_only_the_folder_it_wrote(tiny_saved, tmp_path):
    """NNCF's log lines and progress bars stay off stdout, so `OUT=$(sd-ovopt quantize ...)` works."""
    out = tmp_path / "q"
    args = ["quantize", str(tiny_saved), str(out), "--num-samples", "4", "--steps", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "sd_ovopt", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"{out.resolve()}\n"
    assert "INFO:nncf" not in done.stderr


# -- every subcommand checks all its arguments before it loads or builds a model -------------------------

SEED_OVER = str(2**64)  # torch.Generator.manual_seed takes 0 to 2**64 - 1


def _loaded(*args, **kwargs):
    raise AssertionError("loaded")


@pytest.fixture
def no_loading(monkeypatch):
    """Every way a subcommand loads or builds a model raises AssertionError("loaded")."""
    from diffusers import StableDiffusionPipeline

    from sd_ovopt.evaluation import benchmark
    from sd_ovopt.pipelines.ov_pipeline import SdOvOptPipeline

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", _loaded)
    monkeypatch.setattr(SdOvOptPipeline, "from_pretrained", _loaded)
    monkeypatch.setattr(benchmark, "build_variants", _loaded)


@pytest.fixture
def sandbox(tmp_path, monkeypatch, tiny_saved):
    """The working directory (and home) of a bad command, with the files the commands point at."""
    root, assets = tmp_path / "cwd", tmp_path / "assets"
    for folder in (root, tmp_path / "home", assets / "a-folder"):
        folder.mkdir(parents=True)
    (assets / "a-file").write_text("not a folder")
    (assets / "a-folder" / "keep.txt").write_text("user data")
    (assets / "blank-prompts.txt").write_text("\n   \n")
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return SimpleNamespace(root=root, assets=assets, saved=tiny_saved)


def _generate(p, *flags):
    return ["generate", p.saved, "a red circle", "--steps", "1", *flags]


def _train_qat(p, *flags):
    return [
        "train-qat",
        "--model",
        p.saved,
        "--train-data",
        p.assets / "a-folder",
        "--output",
        p.root / "run",
        *flags,
    ]


def _bench(p, *flags):
    return ["bench", "--model", p.saved, "--output", p.root / "bench", *flags]


# (id, argv from the sandbox, the typed error, what its message must contain)
BAD_ARGUMENTS = [
    ("generate-seed-negative", lambda p: _generate(p, "--seed", "-1", "--output", p.root / "x.png"), InvalidConfigError, "--seed=-1"),
    ("generate-seed-over-2**64", lambda p: _generate(p, "--seed", SEED_OVER, "--output", p.root / "x.png"), InvalidConfigError, "<= 18446744073709551615"),
    ("generate-guidance-nan", lambda p: _generate(p, "--guidance-scale", "nan", "--output", p.root / "x.png"), InvalidConfigError, "--guidance-scale=nan"),
    ("generate-guidance-inf", lambda p: _generate(p, "--guidance-scale", "inf", "--output", p.root / "x.png"), InvalidConfigError, "--guidance-scale=inf"),
    ("generate-guidance-negative", lambda p: _generate(p, "--guidance-scale", "-1", "--output", p.root / "x.png"), InvalidConfigError, "--guidance-scale=-1.0"),
    ("generate-output-unknown-format", lambda p: _generate(p, "--output", p.root / "x.xyz"), InvalidConfigError, "'.xyz' is not an image format"),
    ("generate-output-no-extension", lambda p: _generate(p, "--output", p.root / "x"), InvalidConfigError, "no extension"),
    ("generate-output-rgb-unwritable", lambda p: _generate(p, "--output", p.root / "x.xbm"), InvalidConfigError, "'.xbm'"),
    ("generate-output-inside-a-file", lambda p: _generate(p, "--output", p.assets / "a-file" / "x.png"), OutputExistsError, "is a file"),
    ("generate-output-is-a-folder", lambda p: _generate(p, "--output", p.assets / "a-folder"), OutputExistsError, "is a folder"),
    ("generate-prompt-blank", lambda p: ["generate", p.saved, " ", "--output", p.root / "x.png"], InvalidConfigError, "is empty"),
    ("generate-model-is-a-file", lambda p: ["generate", p.assets / "a-file", "a", "--output", p.root / "x.png"], NotAPipelineError, "is a file"),
    ("export-output-not-empty", lambda p: ["export", p.saved, p.assets / "a-folder"], OutputExistsError, "not empty"),
    ("export-output-is-a-file", lambda p: ["export", p.saved, p.assets / "a-file"], OutputExistsError, "is a file"),
    ("export-output-cwd", lambda p: ["export", p.saved, ".", "--overwrite"], UnsafeOutputError, "working directory"),
    ("export-height-30", lambda p: ["export", p.saved, p.root / "o", "--height", "30"], ShapeMismatchError, "--height=30"),
    ("export-width-8192", lambda p: ["export", p.saved, p.root / "o", "--width", "8192"], ShapeMismatchError, "at most 4096"),
    ("quantize-prompts-is-a-folder", lambda p: ["quantize", p.saved, p.root / "q", "--prompts", p.assets / "a-folder"], InvalidConfigError, "is a folder"),
    ("quantize-prompts-blank", lambda p: ["quantize", p.saved, p.root / "q", "--prompts", p.assets / "blank-prompts.txt"], InvalidConfigError, "has no prompts"),
    ("quantize-height-30", lambda p: ["quantize", p.saved, p.root / "q", "--height", "30"], ShapeMismatchError, "--height=30"),
    ("quantize-tome-ratio-nan", lambda p: ["quantize", p.saved, p.root / "q", "--tome-ratio", "nan"], InvalidConfigError, "--tome-ratio=nan"),
    ("quantize-tome-method-unknown", lambda p: ["quantize", p.saved, p.root / "q", "--tome-method", "shuffle"], InvalidConfigError, "--tome-method='shuffle'"),
    ("quantize-tome-downsample-with-a-ratio", lambda p: ["quantize", p.saved, p.root / "q", "--tome-method", "downsample", "--tome-ratio", "0.4"], InvalidConfigError, "has no ratio"),
    ("quantize-tome-levels-without-a-ratio", lambda p: ["quantize", p.saved, p.root / "q", "--tome-max-downsample", "2"], InvalidConfigError, "need --tome-ratio"),
    ("quantize-tome-max-downsample-3", lambda p: ["quantize", p.saved, p.root / "q", "--tome-method", "downsample", "--tome-max-downsample", "3"], InvalidConfigError, "max_downsample=3"),
    ("quantize-num-samples-0", lambda p: ["quantize", p.saved, p.root / "q", "--num-samples", "0"], InvalidConfigError, "--num-samples=0"),
    ("bench-guidance-nan", lambda p: _bench(p, "--guidance-scale", "nan"), InvalidConfigError, "--guidance-scale=nan"),
    ("bench-guidance-negative", lambda p: _bench(p, "--guidance-scale", "-2"), InvalidConfigError, "--guidance-scale=-2.0"),
    ("bench-seed-over-2**64", lambda p: _bench(p, "--seeds", "0", SEED_OVER), InvalidConfigError, "--seeds=18446744073709551616"),
    ("bench-output-is-the-model", lambda p: ["bench", "--model", p.saved, "--output", p.saved], UnsafeOutputError, "overlap"),
    ("bench-output-inside-the-model", lambda p: ["bench", "--model", p.saved, "--output", p.saved / "bench"], UnsafeOutputError, "overlap"),
    ("bench-output-home", lambda p: ["bench", "--model", p.saved, "--output", "~"], UnsafeOutputError, "home"),
    ("bench-output-inside-a-file", lambda p: ["bench", "--model", p.saved, "--output", p.assets / "a-file" / "b"], OutputExistsError, "is a file"),
    ("bench-prompts-is-a-folder", lambda p: _bench(p, "--prompts", p.assets / "a-folder"), InvalidConfigError, "is a folder"),
    ("bench-held-out-and-prompts", lambda p: _bench(p, "--held-out-prompts", "--prompts", p.assets / "a-file"), InvalidConfigError, "--held-out-prompts"),
    ("bench-tome-ratio-inf", lambda p: _bench(p, "--tome-ratio", "inf"), InvalidConfigError, "--tome-ratio=inf"),
    ("bench-width-12", lambda p: _bench(p, "--width", "12"), ShapeMismatchError, "--width=12"),
    ("train-qat-learning-rate-inf", lambda p: _train_qat(p, "--learning-rate", "inf"), InvalidConfigError, "--learning-rate=inf"),
    ("train-qat-weight-decay-inf", lambda p: _train_qat(p, "--weight-decay", "inf"), InvalidConfigError, "--weight-decay=inf"),
    ("train-qat-max-grad-norm-inf", lambda p: _train_qat(p, "--max-grad-norm", "inf"), InvalidConfigError, "--max-grad-norm=inf"),
    ("train-qat-seed-over-2**32", lambda p: _train_qat(p, "--seed", str(2**32)), InvalidConfigError, "<= 4294967295"),
    ("train-qat-resolution-30", lambda p: _train_qat(p, "--resolution", "30"), ShapeMismatchError, "--resolution=30"),
    ("train-qat-data-missing", lambda p: ["train-qat", "--model", p.saved, "--train-data", p.root / "none", "--output", p.root / "run"], InvalidDatasetError, "does not exist"),
    ("train-qat-data-without-captions", lambda p: _train_qat(p), InvalidDatasetError, "metadata.jsonl is missing"),
    ("demo-seed-negative", lambda p: ["demo", "--output-dir", p.root / "d", "--seed", "-1"], InvalidConfigError, "--seed=-1"),
    ("demo-output-home", lambda p: ["demo", "--output-dir", "~"], UnsafeOutputError, "home"),
    ("demo-output-inside-a-file", lambda p: ["demo", "--output-dir", p.assets / "a-file" / "d"], OutputExistsError, "is a file"),
]  # fmt: skip


def _files(folder):
    return sorted(str(path) for path in folder.rglob("*"))


@pytest.mark.parametrize(
    ("argv", "error", "message"), [row[1:] for row in BAD_ARGUMENTS], ids=[row[0] for row in BAD_ARGUMENTS]
)
def test_bad_arguments_are_refused_before_any_model_loads(
    sandbox, no_loading, tmp_path, capsys, argv, error, message
):
    argv = [str(a) for a in argv(sandbox)]
    before = _files(tmp_path), _files(sandbox.saved)
    args = build_parser().parse_args(argv)
    with pytest.raises(error) as raised:  # not AssertionError("loaded")
        args.func(args)
    assert message in str(raised.value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("sd-ovopt ")]
    assert len(errors) == 1 and errors[0].startswith(f"sd-ovopt {argv[0]}: error: ") and message in errors[0]
    assert (_files(tmp_path), _files(sandbox.saved)) == before  # nothing made, nothing removed
