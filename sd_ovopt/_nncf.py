"""Importing NNCF with settings that make its first torch run work on small machines, and keeping its
console output off the caller's standard output."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["compress_weights_int8", "import_nncf", "nncf_output_on_stderr"]


def import_nncf() -> Any:
    """Import ``nncf``; give its C++ extension build time to finish on a 2-core machine.

    The first NNCF torch run compiles a C++ extension, which takes longer than NNCF's 60 s load
    timeout on small machines. ``NNCF_EXTENSION_LOAD_TIMEOUT`` defaults to 600 s here unless set.
    """
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
    import nncf  # after the variable is set: NNCF reads it at import

    return nncf


@contextlib.contextmanager
def nncf_output_on_stderr() -> Iterator[None]:
    """While NNCF runs: its progress bars and log lines on standard error, its INFO lines (ignored nodes,
    skipped quantizers, bit-width tables) left out; its warnings still show.

    NNCF logs to the standard output it found at import and draws its progress bars there, so a script
    reading ``sd-ovopt quantize``'s output (the folder it wrote) or a caller's own stdout would get them.
    """
    import_nncf()
    from nncf.common.logging.logger import nncf_logger  # after import_nncf has set up the import

    handlers = [h for h in nncf_logger.handlers if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    level = nncf_logger.level
    nncf_logger.setLevel(max(level, logging.WARNING))
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars write to sys.stdout
            yield
    finally:
        nncf_logger.setLevel(level)
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)


def compress_weights_int8(model: Any, *, skip_types: tuple[str, ...] = ()) -> Any:
    """``model`` (an OpenVINO model) with its weights stored as int8 (NNCF weight-only, asymmetric),
    leaving ops of ``skip_types`` (e.g. ``("Convolution",)``) as they are; NNCF's output on stderr."""
    nncf = import_nncf()
    ignored = {"ignored_scope": nncf.IgnoredScope(types=list(skip_types))} if skip_types else {}
    with nncf_output_on_stderr():
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, **ignored)
