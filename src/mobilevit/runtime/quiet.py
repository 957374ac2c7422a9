"""Third-party output kept out of the terminal: what ExecuTorch, LiteRT and TensorFlow print while they load or
convert a model goes to this module's debug log instead.

They print in three ways: C++ code writing to the process's standard error (file descriptor 2: TensorFlow's and
LiteRT's ``I0000 ...`` and ``INFO: Created TensorFlow Lite XNNPACK delegate`` lines), C++ code writing through
Python's ``sys.stderr`` (ExecuTorch's ``[cpuinfo_utils.cpp:71] ...`` lines), and Python loggers (torch's
``_pytree`` warning when torchao registers its enums). :func:`third_party_output` catches all three around one call
and replays the text at DEBUG on the ``mobilevit.runtime.quiet`` logger; :func:`tensorflow_environment` sets
TensorFlow's own log level before it is imported. ``mobilevit -v`` shows everything (:func:`show_third_party_output`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# loggers of other packages that warn about their own internals on every import
NOISY_LOGGERS = ("torch.utils._pytree",)
# TensorFlow reads this when it is imported (by the LiteRT converter): its C++ logs errors only (its INFO note about
# oneDNN included; TF_ENABLE_ONEDNN_OPTS, which would also silence it, is left alone: it changes TensorFlow's numerics)
TENSORFLOW_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def show_third_party_output() -> None:
    """Let third-party output through as the packages print it (the CLI's ``-v``)."""
    logger.setLevel(logging.DEBUG)


def _shown() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


def tensorflow_environment() -> None:
    """Quiet TensorFlow's C++ logging, unless the output is shown or the variables are already set; call it before
    TensorFlow is imported (later it has no effect)."""
    if _shown():
        return
    for name, value in TENSORFLOW_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def third_party_output(what: str) -> Iterator[None]:
    """Around a third-party call: its standard error (Python's ``sys.stderr`` and file descriptor 2) and the warnings
    of :data:`NOISY_LOGGERS` go to this module's debug log, prefixed with ``what``.

    When the output is shown (:func:`show_third_party_output`), nothing is caught. File descriptor 2 is the process's:
    what other threads write to it meanwhile is caught too, so keep the scope to one loading or converting call.
    """
    if _shown():
        yield
        return
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    python_text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no file descriptor 2 (a detached process): nothing to catch there
            saved = None
        else:
            os.dup2(sink.fileno(), 2)
        try:
            for name in NOISY_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
            with contextlib.redirect_stderr(python_text):
                yield
        finally:
            sys.stderr.flush()
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            sink.seek(0)
            text = python_text.getvalue() + sink.read().decode("utf-8", errors="replace")
            for line in text.splitlines():
                if line.strip():
                    logger.debug("%s: %s", what, line)
