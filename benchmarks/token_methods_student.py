"""Token methods on the reference model's float few-step student, each followed by the recipe's INT8,
judged on the held-out prompts at 1, 2 and 4 steps.

    python benchmarks/token_methods_student.py --work /tmp/distill-tome --data /tmp/distill-ref/data

``--work`` is a finished ``benchmarks/distill_reference.py`` run with a float student (``float/diffusers``).
Each variant of ``benchmarks/few_step_unet.py`` (the same method configs: no token method, ToMe, ToMe with
the feed-forward layers merged too, token downsampling) quantizes that student with the recipe into
``WORK/tokens-NAME``, calibrated on the 32 captions ``distill_reference.py`` calibrates on, along the
student's guidance-free 4-step LCM sampling; a folder already there is reused. Every folder then
generates the 144 held-out prompts with each ``--seeds`` value at ``precision="f32"`` and the judge scores
them. Prints a markdown table and writes ``tokens-result.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_reference import STUDENT_STEPS, _print_table, _scores, _stage_ptq
from few_step_unet import variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="training images (default WORK/data)")
    parser.add_argument("--variants", nargs="+", choices=list(variants()), default=list(variants()))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds of the scores")
    args = parser.parse_args()

    from sd_ovopt import SdOvOptPipeline
    from sd_ovopt.reference import held_out_prompts

    data = args.data or args.work / "data"
    prompts = [s.prompt for s in held_out_prompts()]
    rows = {}
    for name in args.variants:
        folder = f"tokens-{name}"
        token_methods = variants()[name][:-1]  # the recipe's INT8 is added by _stage_ptq
        if not (args.work / folder / "sd_ovopt.json").is_file():
            _stage_ptq(args.work, data, folder, token_methods)
        pipe = SdOvOptPipeline.from_pretrained(args.work / folder, precision="f32")
        pipe.set_progress_bar_config(disable=True)
        for steps in reversed(STUDENT_STEPS):
            rows[f"{name} {steps} steps"] = _scores(pipe, prompts, args.seeds, steps, 1.0)
            print(name, steps, rows[f"{name} {steps} steps"]["accuracy"], flush=True)
    (args.work / "tokens-result.json").write_text(json.dumps(rows, indent=2) + "\n")
    _print_table(rows, args.seeds)


if __name__ == "__main__":
    main()
