"""``python -m sd_ovopt`` runs the ``sd-ovopt`` command line; ``accelerate launch`` uses it for QAT.

Examples::

    python -m sd_ovopt train-qat --model sd15 --train-data pokemon --output sd15-qat
    accelerate launch --num_processes 1 -m sd_ovopt train-qat --model sd15 ...              # one GPU
    accelerate launch --multi_gpu --num_processes 8 -m sd_ovopt train-qat ...               # 8 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m sd_ovopt train-qat --cpu ...         # 2 CPU processes
"""

import sys

from sd_ovopt.cli import main

sys.exit(main())
