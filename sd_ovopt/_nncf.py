"""Importing NNCF with settings that make its first torch run work on small machines."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["import_nncf"]


def import_nncf() -> Any:
    """Import ``nncf``; give its C++ extension build time to finish on a 2-core machine.

    The first NNCF torch run compiles a C++ extension, which takes longer than NNCF's 60 s load
    timeout on small machines. ``NNCF_EXTENSION_LOAD_TIMEOUT`` defaults to 600 s here unless set.
    """
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
    import nncf

    return nncf
