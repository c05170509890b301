"""A benchmark's four outputs: ``results.json``, ``results.md`` (the table), ``chart.png``, ``grid.png``."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from sd_ovopt._fs import atomic_file
from sd_ovopt.evaluation.fidelity import to_uint8
from sd_ovopt.evaluation.variants import PEER, PEER_FULL, REFERENCE

if TYPE_CHECKING:
    from sd_ovopt.evaluation.results import BenchmarkResult, VariantResult
    from sd_ovopt.evaluation.timing import Sample

__all__ = ["GRID_CAPTION", "GRID_CELL_MIN", "GRID_HEADER", "GRID_ROWS_MAX", "markdown_table", "write_report"]

GRID_HEADER = 28  # pixels of the variant-name band on top of the grid
GRID_CAPTION = 20  # pixels of the prompt/seed band above each row
GRID_CELL_MIN = 128  # small images are enlarged (nearest neighbour) by an integer factor to at least this
GRID_ROWS_MAX = 24  # the grid shows the first (prompt, seed) pairs; every image is saved under images/
_MISSING = "–"


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return format(value * scale, spec)


def _ratio(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2f}x"


def _speed_rows(result: BenchmarkResult, ok: list[VariantResult]) -> list[str]:
    """The speed table; a column against the full-INT8 peer and one against each row's baseline (e.g. its
    uncached twin) join when the run has them."""
    names = {r.name for r in ok}
    full = PEER_FULL in names
    baselines = any(r.baseline in names for r in ok)
    extra = (" vs full INT8 peer |" if full else "") + (" vs baseline |" if baselines else "")
    lines = [
        "| variant | runtime precision | pipeline s, median (min) | vs PyTorch FP32 | vs peer |"
        + extra
        + " UNet step ms, median (min) | vs PyTorch FP32 | vs peer |",
        "|---|---|---|---|---|" + "---|" * (full + baselines) + "---|---|---|",
    ]
    for r in ok:
        pipeline = f"{_fmt(r.pipeline_median_s, '.3f')} ({_fmt(r.pipeline_min_s, '.3f')})"
        step = f"{_fmt(r.unet_step_median_s, '.1f', 1e3)} ({_fmt(r.unet_step_min_s, '.1f', 1e3)})"
        cells = [_ratio(result.speedup(r.name, PEER_FULL))] if full else []
        if baselines:
            against = result.speedup(r.name, r.baseline) if r.baseline in names else None
            cells.append(_MISSING if against is None else f"{_ratio(against)} vs {r.baseline}")
        lines.append(
            f"| {r.name} | {r.runtime_precision or _MISSING} | {pipeline} "
            f"| {_ratio(result.speedup(r.name, REFERENCE))} | {_ratio(result.speedup(r.name, PEER))} | "
            + "".join(f"{cell} | " for cell in cells)
            + f"{step} | {_ratio(result.speedup(r.name, REFERENCE, 'unet_step'))} "
            f"| {_ratio(result.speedup(r.name, PEER, 'unet_step'))} |"
        )
    return lines


def _calls(calls: dict[str, int]) -> str:
    return " + ".join(f"{n} {ir}" for ir, n in calls.items()) or _MISSING


def _extrapolation_rows(ok: list[VariantResult]) -> list[str]:
    """Each row's pipeline call against the sum of its timed parts, and a 50-step call from them."""
    lines = [
        "| variant | UNet calls | UNet IR s, median | TE + VAE s | extrapolated s | measured / extrapolated "
        "| 50 steps: UNet calls | 50 steps s (extrapolated) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        irs = {"unet": r.unet_step_median_s, **{k: statistics.median(v) for k, v in r.unet_ir_s.items()}}
        per_ir = ", ".join(f"{_fmt(v, '.3f')} ({k})" for k, v in irs.items())
        other = statistics.median(r.other_s) if r.other_s else None
        lines.append(
            f"| {r.name} | {_calls(r.unet_calls)} | {per_ir} | {_fmt(other, '.3f')} "
            f"| {_fmt(r.extrapolated_s, '.3f')} | {_fmt(r.measured_over_extrapolated, '.3f')} "
            f"| {_calls(r.unet_calls_50)} | {_fmt(r.pipeline_50_steps_s, '.1f')} |"
        )
    return lines


def _accuracy(r: VariantResult) -> str:
    text = _fmt(r.prompt_accuracy, ".1%")
    if len(r.prompt_accuracy_by_seed) > 1:
        text += " (" + " / ".join(format(v, ".1%") for v in r.prompt_accuracy_by_seed.values()) + ")"
    return text


def _footprint_rows(ok: list[VariantResult]) -> list[str]:
    lines = [
        "| variant | peak RSS GiB (variant's own) | UNet on disk MB | weights on disk MB "
        "| PSNR dB (worst) | SSIM | prompt accuracy (per seed) | UNet rel. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        own = (
            None
            if r.peak_rss_bytes is None or r.baseline_rss_bytes is None
            else r.peak_rss_bytes - r.baseline_rss_bytes
        )
        memory = f"{_fmt(r.peak_rss_bytes, '.2f', 2**-30)} ({_fmt(own, '.2f', 2**-30)})"
        if r.memory_error:
            memory = f"{_MISSING} (probe failed)"
        psnr = (
            f"{_fmt(r.psnr_db, '.1f')} ({_fmt(r.psnr_min_db, '.1f')})" if r.psnr_db is not None else _MISSING
        )
        lines.append(
            f"| {r.name} | {memory} | {_fmt(r.unet_bytes, '.1f', 1e-6)} | {_fmt(r.total_bytes, '.1f', 1e-6)} "
            f"| {psnr} | {_fmt(r.ssim, '.4f')} | {_accuracy(r)} | {_fmt(r.unet_rel_error, '.4f')} |"
        )
    return lines


def _load_line(result: BenchmarkResult) -> str:
    s = result.settings
    if s.get("load_mode") == "one":
        text = "Timed one variant at a time in each round (load, warm-up, timed calls, release)"
    else:
        text = "Timed with every variant loaded at once"
    estimate = s.get("estimated_all_at_once_bytes")
    if estimate is not None:
        text += f" (all at once estimated at {estimate / 2**30:.2f} GiB)"
    if result.timing_peak_rss_bytes is not None:
        text += f"; peak RSS while timing {result.timing_peak_rss_bytes / 2**30:.2f} GiB"
    return text + "."


def _extrapolation_section(result: BenchmarkResult, ok: list[VariantResult]) -> list[str]:
    if not result.settings.get("check_extrapolation") or result.settings["unet_only"]:
        return []
    return [
        "## Pipeline call vs its parts",
        "",
        *_extrapolation_rows(ok),
        "",
        "Extrapolated: each UNet IR's median times its calls (counted on the variant's scheduler), plus the "
        "text encoder and VAE decoder of one call (TE + VAE); measured / extrapolated above 1 is the time "
        "between the parts (scheduler, latents, Python).",
        "",
    ]


def markdown_table(result: BenchmarkResult) -> str:
    """The results as markdown: settings and machine, a speed table, a footprint and fidelity table."""
    s, m = result.settings, result.machine
    ok = [r for r in result.variants if r.status == "ok"]
    versions = m.get("versions", {})
    lines = [
        f"# sd-ovopt bench: {Path(result.model).name}",
        "",
        f"{s['height']}x{s['width']}, {s['steps']} steps, guidance {s['guidance_scale']:g} (UNet batch "
        f"{s['unet_batch']}); {len(s['prompts'])} prompt(s) x {len(s['seeds'])} seed(s), {s['rounds']} "
        "interleaved rounds, warm-up excluded. OpenVINO INT8 variants and the peer run with precision "
        f"hint `{s['precision']}`.",
        "",
        f"Machine: {m.get('cpu')} ({', '.join(m.get('isa') or []) or 'ISA not read'}), "
        f"{m.get('usable_cpus')} usable CPUs, {m.get('memory')}; OpenVINO "
        f"{versions.get('openvino')} (CPU capabilities {', '.join(m.get('openvino_capabilities', []))}), "
        f"torch {versions.get('torch')} ({m.get('torch_threads')} threads), optimum-intel "
        f"{versions.get('optimum-intel')}, NNCF {versions.get('nncf')}.",
        "",
        _load_line(result),
        "",
        "## Speed",
        "",
        *_speed_rows(result, ok),
        "",
        *_extrapolation_section(result, ok),
        "## Footprint and fidelity",
        "",
        *_footprint_rows(ok),
        "",
        f"Peak RSS: high-water mark of a fresh process while it loads the variant and "
        f"{'runs one UNet step' if s['unet_only'] else 'generates one image'} (libraries imported before; "
        "in brackets, the part above the resident set at the start of loading). Weights on disk: UNet, "
        "text encoder and VAE. "
        + (
            f"PSNR and SSIM: against `{result.reference}` with the same prompt and seed (8-bit RGB; mean "
            "over pairs, worst pair in brackets)."
            if result.reference
            else "Fidelity: not measured (no reference images)."
        ),
    ]
    skipped = [r for r in result.variants if r.status != "ok"]
    if skipped:
        lines += ["", "Not run:", ""]
        lines += [f"- `{r.name}` ({r.status}): {r.reason}" for r in skipped]
    probes = [r for r in result.variants if r.memory_error]
    if probes:
        lines += ["", "Peak memory not measured:", ""]
        lines += [f"- `{r.name}`: {r.memory_error}" for r in probes]
    return "\n".join(lines) + "\n"


def _write_chart(result: BenchmarkResult, path: Path) -> None:
    import matplotlib  # an optional dependency, set to its file backend before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.variants if r.status == "ok"]
    names = [r.name for r in ok]
    panels: list[tuple[str, list[float | None], list[float | None]]] = []
    if not result.settings["unet_only"]:
        panels.append(
            (
                "pipeline latency, s (median; dot: min)",
                [r.pipeline_median_s for r in ok],
                [r.pipeline_min_s for r in ok],
            )
        )
    panels.append(
        (
            "UNet step, ms (median; dot: min)",
            [None if r.unet_step_median_s is None else r.unet_step_median_s * 1e3 for r in ok],
            [None if r.unet_step_min_s is None else r.unet_step_min_s * 1e3 for r in ok],
        )
    )
    panels.append(
        ("weights on disk, MB", [None if r.total_bytes is None else r.total_bytes / 1e6 for r in ok], [])
    )
    notes: dict[int, str] = {}
    if result.reference is not None:
        psnr = [None if r.psnr_db is None or math.isinf(r.psnr_db) else r.psnr_db for r in ok]
        panels.append((f"PSNR vs {result.reference}, dB", psnr, []))
        for y, r in enumerate(ok):
            if r.name == result.reference:
                notes[y] = "reference"
            elif r.psnr_db is not None and math.isinf(r.psnr_db):
                notes[y] = "identical images"
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4 * len(panels), 1.5 + 0.4 * len(ok)), dpi=100, sharey=True
    )
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, values, marks) in zip(axes, panels, strict=True):
        ys = range(len(ok))
        ax.barh(list(ys), [v or 0.0 for v in values], color="#4c72b0")
        for y, mark in zip(ys, marks, strict=False):
            if mark is not None:
                ax.plot(mark, y, "o", color="black", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    for y, note in notes.items():  # bars the PSNR panel cannot draw
        axes[-1].text(0.02, y, note, va="center", fontsize=8, transform=axes[-1].get_yaxis_transform())
    axes[0].set_yticks(list(range(len(ok))), names)
    axes[0].invert_yaxis()
    fig.suptitle(
        f"{Path(result.model).name}: {result.settings['height']}x{result.settings['width']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text


def _write_grid(images: dict[str, list[Any]], samples: Sequence[Sample], path: Path) -> None:
    names = [n for n, imgs in images.items() if imgs]
    first = to_uint8(images[names[0]][0])
    h, w = first.shape[:2]
    factor = max(1, math.ceil(GRID_CELL_MIN / max(h, w)))
    ch, cw = h * factor, w * factor
    grid = Image.new("RGB", (cw * len(names), GRID_HEADER + len(samples) * (GRID_CAPTION + ch)), "white")
    draw = ImageDraw.Draw(grid)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for col, name in enumerate(names):
        draw.text((cw * col + 2, 6), _fit(draw, name, font, cw), fill="black", font=font)
    for row, (prompt, seed, _) in enumerate(samples):
        top = GRID_HEADER + row * (GRID_CAPTION + ch)
        caption = _fit(draw, f"seed {seed}: {prompt}", font, cw * len(names))
        draw.text((2, top + 3), caption, fill="black", font=font)
        for col, name in enumerate(names):
            cell = Image.fromarray(to_uint8(images[name][row])).resize((cw, ch), Image.NEAREST)
            grid.paste(cell, (cw * col, top + GRID_CAPTION))
    grid.save(path)


def _atomic_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_report(
    result: BenchmarkResult, images: dict[str, list[Any]], samples: Sequence[Sample], output_dir: Path
) -> dict[str, str]:
    """Write the four outputs (the grid only when there are images) and each image; return their paths."""
    out = Path(output_dir)
    outputs = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "chart.png"}
    if any(images.values()):
        outputs["grid"] = out / "grid.png"
        _write_grid(images, samples[:GRID_ROWS_MAX], outputs["grid"])
        for name, imgs in images.items():
            folder = out / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, (image, (_, seed, _)) in enumerate(zip(imgs, samples, strict=False)):
                Image.fromarray(to_uint8(image)).save(folder / f"{i:02d}-seed{seed}.png")
    _write_chart(result, outputs["chart"])
    result.outputs = {k: str(v) for k, v in outputs.items()}
    _atomic_text(outputs["markdown"], markdown_table(result))
    _atomic_text(outputs["json"], json.dumps(result.to_dict(), indent=2) + "\n")
    return result.outputs
