"""How OpenVINO's CPU plugin runs ToMe's token moves: element-wise against whole-row formulations.

    python benchmarks/tome_ops.py --rounds 50

ToMe gathers tokens (``[B, N, C]`` rows picked by ``[B, K]`` positions) and sums merged tokens into their
destinations. Written with ``gather``/``scatter_add`` and the index broadcast over channels, they convert
to GatherElements and ScatterElementsUpdate behind a Broadcast of the index; written on the flattened
tokens (``index_select`` of rows, an accumulating ``index_put_``), to a Gather of rows and a
ScatterNDUpdate. ``sd_ovopt.tome.merge`` uses the second form. Each pair is converted, compiled with
sd_ovopt's default precision hint (bf16 where the CPU has it, else f32) and timed interleaved at the
shapes of SD-1.5's first level at 512x512 with ratio 0.5 (4096 tokens of 320 channels, 1024
destinations); prints the median of each and checks that both forms give the same result.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


class GatherElementwise(torch.nn.Module):
    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class GatherRows(torch.nn.Module):
    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        rows = (index + torch.arange(batch)[:, None] * tokens).reshape(-1)
        return x.reshape(-1, channels).index_select(0, rows).reshape(batch, -1, channels)


class AddElementwise(torch.nn.Module):
    def forward(self, dst: torch.Tensor, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return dst.scatter_add(1, index[..., None].expand(-1, -1, dst.shape[-1]), src)


class AddRows(torch.nn.Module):
    def forward(self, dst: torch.Tensor, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = dst.shape
        rows = (index + torch.arange(batch)[:, None] * tokens).reshape(-1)
        out = dst.reshape(-1, channels).clone()
        out.index_put_((rows,), src.reshape(-1, channels), accumulate=True)
        return out.reshape(batch, tokens, channels)


def _time_pair(pair: dict[str, torch.nn.Module], inputs: tuple[torch.Tensor, ...], rounds: int) -> dict:
    import openvino as ov

    from sd_ovopt._precision import resolve_precision

    core = ov.Core()
    hint = {"INFERENCE_PRECISION_HINT": resolve_precision("auto")}
    arrays = [t.numpy() for t in inputs]
    compiled = {
        name: core.compile_model(ov.convert_model(m, example_input=inputs), "CPU", hint)
        for name, m in pair.items()
    }
    outputs = {name: c(arrays)[0] for name, c in compiled.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, c in compiled.items():
            t0 = time.perf_counter()
            c(arrays)
            times[name].append(time.perf_counter() - t0)
    first, second = outputs.values()
    scale = float(np.abs(first).max())
    return {
        "ms": {name: 1e3 * statistics.median(ts) for name, ts in times.items()},
        "max_rel_difference": float(np.abs(first - second).max()) / scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    tokens, channels, destinations, merged = 4096, 320, 1024, 2048
    x = torch.randn(1, tokens, channels, generator=generator)
    keep = torch.randint(0, tokens, (1, tokens - merged), generator=generator)
    dst = torch.randn(1, destinations, channels, generator=generator)
    src = torch.randn(1, merged, channels, generator=generator)
    slots = torch.randint(0, destinations, (1, merged), generator=generator)
    results = {
        "gather tokens": _time_pair(
            {"element-wise": GatherElementwise(), "rows": GatherRows()}, (x, keep), args.rounds
        ),
        "sum merged tokens": _time_pair(
            {"element-wise": AddElementwise(), "rows": AddRows()}, (dst, src, slots), args.rounds
        ),
    }
    print("| op | element-wise ms | rows ms | speed-up | max relative difference |")
    print("|---|---|---|---|---|")
    for op, r in results.items():
        slow, fast = r["ms"]["element-wise"], r["ms"]["rows"]
        print(f"| {op} | {slow:.3f} | {fast:.3f} | {slow / fast:.1f}x | {r['max_rel_difference']:.1e} |")


if __name__ == "__main__":
    main()
