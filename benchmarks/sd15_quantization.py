"""Every row of the SD-1.5 table (SD-1.5's architecture, random weights, 512x512): the harness's preset.

    python benchmarks/sd15_quantization.py --output /tmp/sd15-bench [--rounds 2] [--load one]

The same as ``sd-ovopt bench --preset sd15-512 --output ...``; every other ``sd-ovopt bench`` flag works.
"""

import sys

from sd_ovopt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--preset", "sd15-512", *sys.argv[1:]]))
