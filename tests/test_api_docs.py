"""The documentation site, with its API reference generated from the docstrings, builds without a warning.

`mkdocs build --strict` (mkdocs.yml at the repository root) fails on a docstring mkdocstrings cannot render,
a name in docs/api.md that no longer exists, and a broken link or anchor between the pages of docs/.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strict_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("sd_ovopt.optimize_pipeline", "sd_ovopt.SdOvOptPipeline", "sd_ovopt.export_pipeline"):
        assert f'id="{name}"' in api, name
    for module in ("sd_ovopt.evaluation", "sd_ovopt.reference", "sd_ovopt.testing", "sd_ovopt.errors"):
        assert f'id="{module}"' in api, module
    assert (site / "results" / "index.html").is_file()
