"""Export the full SD-1.5-architecture UNet (random weights) to OpenVINO IR; report time, peak memory, size.

    python benchmarks/export_sd15_unet.py --out /tmp/sd15-unet --height 512 --width 512

It converts with sd_ovopt's own UNet path (the one ``export_pipeline`` uses), at a static shape with the
batch doubled for classifier-free guidance, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for unet/openvino_model.xml")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--weights-dtype", choices=("f32", "f16"), default="f32")
    args = parser.parse_args()

    import openvino as ov

    from sd_ovopt._convert import convert_unet
    from sd_ovopt.testing import sd15_unet

    t0 = time.perf_counter()
    unet = sd15_unet()
    t_build = time.perf_counter() - t0
    params = sum(p.numel() for p in unet.parameters())
    t0 = time.perf_counter()
    model = convert_unet(
        unet, batch=2, latent_height=args.height // 8, latent_width=args.width // 8, text_length=77
    )
    t_convert = time.perf_counter() - t0
    out = Path(args.out) / "unet"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ov.save_model(model, out / "openvino_model.xml", compress_to_fp16=args.weights_dtype == "f16")
    t_save = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.iterdir())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "params": params,
                "shape": [2, 4, args.height // 8, args.width // 8],
                "build_s": round(t_build, 1),
                "convert_s": round(t_convert, 1),
                "save_s": round(t_save, 1),
                "ir_size_gb": round(size / 1e9, 3),
                "peak_rss_gib": round(peak_gib, 2),
                "weights_dtype": args.weights_dtype,
            }
        )
    )


if __name__ == "__main__":
    main()
