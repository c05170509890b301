"""One step-caching export of the tiny pipeline, shared by the export and runtime tests."""

import pytest

from sd_ovopt import DeepCacheConfig

CONFIG = DeepCacheConfig(interval=3)


@pytest.fixture(scope="session")
def deepcache_export(tmp_path_factory):
    """The tiny pipeline exported at 32x32 with step caching (interval 3, branch 0), float UNet."""
    import torch

    from sd_ovopt import export_pipeline
    from sd_ovopt.testing import tiny_pipeline

    out = tmp_path_factory.mktemp("deepcache") / "tiny-dc"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return export_pipeline(
            tiny_pipeline(), out, height=32, width=32, methods=[CONFIG], show_progress=False
        )
    finally:
        torch.set_num_threads(threads)
