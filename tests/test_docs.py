"""Every ```python block in README.md and docs/*.md runs (in a temporary folder)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SNIPPETS = [
    (f, i, code) for f in FILES for i, code in enumerate(BLOCK.findall(f.read_text(encoding="utf-8")))
]


def test_docs_have_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize(("path", "index", "code"), SNIPPETS, ids=[f"{p.name}-{i}" for p, i, _ in SNIPPETS])
def test_snippet_runs(path, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}[{index}]", "exec"), {"__name__": "__docs__"})


def test_quickstart_example_runs(tmp_path):
    import subprocess
    import sys

    script = ROOT / "examples" / "quickstart.py"
    out = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "q"), "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fp32: mean" in out.stdout and "tome-int8: mean" in out.stdout
    assert (tmp_path / "q" / "tome-int8.png").is_file()
