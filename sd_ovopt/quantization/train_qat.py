"""``python -m sd_ovopt.quantization.train_qat``: the ``sd-ovopt train-qat`` command, for ``accelerate launch``.

Examples::

    python -m sd_ovopt.quantization.train_qat --model sd15 --train-data pokemon --output sd15-qat
    accelerate launch --num_processes 1 -m sd_ovopt.quantization.train_qat --model sd15 ...      # one GPU
    accelerate launch --multi_gpu --num_processes 8 -m sd_ovopt.quantization.train_qat ...       # 8 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m sd_ovopt.quantization.train_qat --cpu ... # 2 CPU processes

Options are those of ``sd-ovopt train-qat --help``; the training itself is :func:`sd_ovopt.train_qat`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sd-ovopt train-qat`` with ``argv`` (default: the process arguments); return the exit code."""
    from sd_ovopt.cli import main as cli_main

    return cli_main(["train-qat", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
