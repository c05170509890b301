"""Heavy checks on the full SD-1.5-architecture UNet (860 M parameters). Run with `make test-slow`."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_sd15_unet_exports_and_matches_pytorch_with_tome(tmp_path):
    import openvino as ov

    from sd_ovopt import ToMeConfig, apply_tome
    from sd_ovopt._convert import convert_unet, unet_example_inputs
    from sd_ovopt.testing import sd15_unet

    unet = apply_tome(sd15_unet(), ToMeConfig(ratio=0.5))
    shape = {"batch": 2, "latent_height": 64, "latent_width": 64, "text_length": 77}
    model = convert_unet(unet, **shape)
    ov.save_model(model, tmp_path / "unet.xml", compress_to_fp16=False)
    assert 3.3e9 < (tmp_path / "unet.bin").stat().st_size < 3.6e9  # 859.5 M float32 weights
    inputs = unet_example_inputs(unet, **shape)
    with torch.no_grad():
        ref = unet(**inputs).sample.numpy()
    out = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(inputs)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
