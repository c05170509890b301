import subprocess
import sys

from PIL import Image

from sd_ovopt.cli import main


def test_export_then_generate(tiny_saved, tmp_path, capsys):
    out = tmp_path / "ov"
    assert main(["export", str(tiny_saved), str(out), "--height", "32", "--width", "32"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    png = tmp_path / "img.png"
    assert (
        main(["generate", str(out), "a red circle", "--seed", "3", "--steps", "2", "--output", str(png)]) == 0
    )
    assert Image.open(png).size == (32, 32)


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
