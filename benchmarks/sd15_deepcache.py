"""Step caching on SD-1.5's architecture (random weights, 512x512, 50 steps): the harness's preset.

    python benchmarks/sd15_deepcache.py --output /tmp/sd15-dc [--rounds 2]

The same as ``sd-ovopt bench --preset sd15-512-deepcache --output ...``; every other ``sd-ovopt bench`` flag
works.
"""

import sys

from sd_ovopt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--preset", "sd15-512-deepcache", *sys.argv[1:]]))
