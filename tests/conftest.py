"""Shared fixtures: the tiny pipeline and one export of it, made once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def compiled_model_cache(tmp_path_factory):
    """Pipelines loaded by the tests cache compiled models in a folder of the test session, never in the
    user's own cache (tests that check the cache set their own)."""
    previous = os.environ.get("SD_OVOPT_CACHE_DIR")
    os.environ["SD_OVOPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("compiled-model-cache"))
    yield
    if previous is None:
        os.environ.pop("SD_OVOPT_CACHE_DIR", None)
    else:
        os.environ["SD_OVOPT_CACHE_DIR"] = previous


TINY_SIZE = 32  # pixels; the tiny VAE halves it, so the UNet sees 16x16 latents


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SD_OVOPT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set SD_OVOPT_SLOW=1 (make test-slow) to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy machine spinning threads slow them 10x.
    Modules that train or quantize tiny models use it with ``pytestmark``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_pipe():
    from sd_ovopt.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="session")
def exported_tiny(tmp_path_factory):
    """The tiny pipeline exported once at 32x32 (batch 1, guidance on)."""
    from sd_ovopt import export_pipeline
    from sd_ovopt.testing import tiny_pipeline

    out = tmp_path_factory.mktemp("export") / "tiny-ov"
    return export_pipeline(tiny_pipeline(), out, height=TINY_SIZE, width=TINY_SIZE, show_progress=False)


@pytest.fixture(scope="session")
def tiny_saved(tmp_path_factory):
    """The tiny pipeline saved with save_pretrained, as a user's local model folder."""
    from sd_ovopt.testing import tiny_pipeline

    out = tmp_path_factory.mktemp("saved") / "tiny-sd"
    tiny_pipeline().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tome_int8_tiny(tmp_path_factory):
    """The tiny pipeline through the recipe once (ToMe 0.5, INT8, 32x32): the folder, the pipeline it
    was made from, and that pipeline's UNet weights from before."""
    from types import SimpleNamespace

    from sd_ovopt import QuantizationConfig, ToMeConfig, optimize_pipeline
    from sd_ovopt.testing import tiny_pipeline

    pipe = tiny_pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    out = optimize_pipeline(
        pipe,
        tmp_path_factory.mktemp("recipe") / "tome-int8",
        methods=[ToMeConfig(ratio=0.5), QuantizationConfig(subset_size=8)],
        calibration_steps=2,
        height=TINY_SIZE,
        width=TINY_SIZE,
        show_progress=False,
    )
    return SimpleNamespace(path=out, pipe=pipe, unet_before=before)
