"""`sd-ovopt export/quantize --deepcache-*`: the flags reach the export; bad values exit 2 before any work."""

import pytest

from sd_ovopt.cli import main
from sd_ovopt.export.metadata import read_metadata


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--deepcache-branch", "1"], "need --deepcache-interval"),
        (["--deepcache-interval", "0"], "interval=0"),
        (["--deepcache-interval", "3", "--deepcache-branch", "9"], "branches 0 to 3"),
    ],
)
@pytest.mark.parametrize("command", ["export", "quantize"])
def test_bad_flags_exit_2_and_write_nothing(tiny_saved, tmp_path, capsys, command, flags, message):
    out = tmp_path / "out"
    assert main([command, str(tiny_saved), str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_export_with_step_caching_then_generate(tiny_saved, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "dc"
    args = [
        "export",
        str(tiny_saved),
        str(out),
        "--deepcache-interval",
        "2",
        "--deepcache-schedule",
        "quadratic",
    ]
    assert main(args) == 0
    meta = read_metadata(out)
    assert meta.config("step_caching").to_dict() == {
        "interval": 2,
        "branch": 0,
        "schedule": "quadratic",
        "version": 1,
    }
    image = tmp_path / "image.png"
    assert main(["generate", str(out), "a red circle", "--steps", "4", "--output", str(image)]) == 0
    assert image.is_file()
