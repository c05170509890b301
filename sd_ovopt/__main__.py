"""``python -m sd_ovopt`` runs the ``sd-ovopt`` command line."""

import sys

from sd_ovopt.cli import main

sys.exit(main())
