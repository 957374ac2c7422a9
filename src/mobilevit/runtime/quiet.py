"""Third-party noise kept out of the terminal: the lines ExecuTorch, LiteRT and TensorFlow print on every load or
conversion of a model are dropped, everything else written to standard error meanwhile goes through at once.

They print in three ways: C++ code writing to the process's standard error (file descriptor 2: TensorFlow's and
LiteRT's ``I0000 ...`` and ``INFO: Created TensorFlow Lite XNNPACK delegate`` lines), C++ code writing through
Python's ``sys.stderr`` (ExecuTorch's ``[cpuinfo_utils.cpp:71] ...`` lines), and Python loggers (torch's
``_pytree`` warning when torchao registers its enums). :func:`third_party_output` filters all three around one call;
:data:`NOISE` lists the lines it drops, and :func:`tensorflow_environment` sets TensorFlow's own log level before it
is imported. ``mobilevit -v`` shows everything (:func:`show_third_party_output`): the noise is dropped exactly when
this module's debug log is off.

ExecuTorch also explains its failures in lines of its own (:data:`RUNTIME_DIAGNOSTICS`, ``[program.cpp:184]
Verification failed; ...``): those are kept back until the call ends, then dropped, since the caller reports the
failure itself in one line; if the process dies first (a damaged file can make ExecuTorch or LiteRT call
``abort()``), they are written out as its last words. For that the filter runs in a small child process rather than
a thread of this one: it outlives an abort.

File descriptor 2 is the process's, so while a call is filtered the other threads' output goes through the filter
too: a line that is neither noise nor a runtime's diagnostic reaches the real standard error as soon as it is
complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

logger = logging.getLogger(__name__)

# loggers of other packages that warn about their own internals on every import
NOISY_LOGGERS = ("torch.utils._pytree",)
# TensorFlow reads this when it is imported (by the LiteRT converter): its C++ logs errors only (its INFO note about
# oneDNN included; TF_ENABLE_ONEDNN_OPTS, which would also silence it, is left alone: it changes TensorFlow's numerics)
TENSORFLOW_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2"}
# The lines dropped while a third-party call is filtered, each a regular expression matched at the start of a line.
NOISE = (
    # ExecuTorch's XNNPACK backend describing the CPU, on each method load and export
    r"\[cpuinfo_utils\.cpp:\d+\] ",
    # absl, in TensorFlow and LiteRT, before its first log line
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    # absl's INFO lines (TensorFlow's oneDNN note and op counts), "I0000 00:00:1796667621.326493   23755 port.cc:153] "
    r"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ",
    # LiteRT's interpreter, on each model load
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
)
# ExecuTorch's log lines, "[file.cpp:line] message": written out only if the process dies inside the window
RUNTIME_DIAGNOSTICS = (r"\[\w+\.(?:cpp|h):\d+\] ",)
_NOISE = re.compile("|".join(f"(?:{pattern})" for pattern in NOISE))
_DIAGNOSTIC = re.compile("|".join(f"(?:{pattern})" for pattern in RUNTIME_DIAGNOSTICS))
# seconds the end of a filtered call waits for the filter to write out what it holds; only a child process started
# in the window and still holding the pipe makes it wait that long (the filter then keeps forwarding on its own)
FILTER_EXIT_TIMEOUT = 5.0

# The filter process: copies its standard input to its standard output line by line, without the lines that match
# the noise pattern (argv[1]) and holding back those that match the diagnostics pattern (argv[2]); an unfinished line
# goes out when its input closes. Then the control pipe (file descriptor argv[3]) says how the window ended: "." when
# it closed normally, nothing when this process died, and then the held lines go out too.
FILTER_SCRIPT = """
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the process filtered; the filter ends with its input
noise, diagnostic = (re.compile(pattern.encode()) for pattern in sys.argv[1:3])
control = int(sys.argv[3])
held = []

def write(data):
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

def now(line):
    if noise.match(line):
        return b""
    if diagnostic.match(line):
        held.append(line)
        return b""
    return line

rest = b""
while chunk := os.read(0, 65536):
    *lines, rest = (rest + chunk).split(b"\\n")
    write(b"".join(now(line + b"\\n") for line in lines))
write(now(rest))
if os.read(control, 1) != b".":
    write(b"".join(held))
"""


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


class _LineFilter:
    """Stands in for ``sys.stderr``: complete lines that are not noise go to the original stream at once, a runtime's
    diagnostics to the filter process if there is one (through file descriptor 2, wherever the stream writes); an
    unfinished line waits for its end or for :meth:`close`. Everything else (``encoding``, ``fileno``, ...) is the
    original stream's."""

    def __init__(self, stream: TextIO | None, filtered_fd: bool) -> None:
        self.stream = stream
        self.filtered_fd = filtered_fd
        self.held = ""
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            *lines, self.held = (self.held + text).split("\n")
            for line in lines:
                self._forward(line + "\n")
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.stream.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        """Write out the unfinished line, unless it is noise (the stream itself stays open)."""
        with self.lock:
            held, self.held = self.held, ""
            self._forward(held)

    def _forward(self, line: str) -> None:
        if not line or _NOISE.match(line):
            return
        with contextlib.suppress(OSError, ValueError):  # a closed or missing standard error: nowhere to write
            if _DIAGNOSTIC.match(line):
                if self.filtered_fd:
                    os.write(2, line.encode(errors="replace"))
            elif self.stream is not None:
                self.stream.write(line)
                self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _Window:
    """The process-wide filtering, on while at least one :func:`third_party_output` is open in any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved_fd: int | None = None  # the real file descriptor 2, while the pipe stands in for it
        self.control_fd: int | None = None  # the filter's control pipe
        self.process: subprocess.Popen | None = None
        self.stderr: _LineFilter | None = None
        self.levels: dict[str, int] = {}
        self.lingering: list[subprocess.Popen] = []  # filters still forwarding for a child process that holds the pipe

    def enter(self) -> None:
        with self.lock:
            self.users += 1
            if self.users == 1:
                try:
                    self._start()
                except BaseException:
                    self._stop()
                    self.users = 0
                    raise

    def exit(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self._stop()

    def _start(self) -> None:
        self.levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        self._start_pipe()
        self.stderr = _LineFilter(sys.stderr, self.saved_fd is not None)
        sys.stderr = self.stderr  # type: ignore[assignment]

    def _start_pipe(self) -> None:
        """File descriptor 2 onto a pipe read by the filter process, which writes to the real one; without a file
        descriptor 2 or a Python to run the filter, file descriptor 2 is left alone."""
        try:
            saved = os.dup(2)
        except OSError:  # no file descriptor 2 (a detached process): nothing to filter there
            return
        read_end, write_end = os.pipe()
        control_read, control_write = os.pipe()
        try:
            patterns = [_NOISE.pattern, _DIAGNOSTIC.pattern, str(control_read)]
            command = [sys.executable, "-I", "-S", "-c", FILTER_SCRIPT, *patterns]
            self.process = subprocess.Popen(
                command, stdin=read_end, stdout=saved, stderr=saved, pass_fds=(control_read,)
            )
        except (OSError, ValueError) as err:  # no interpreter to run (an embedded Python)
            logger.debug("third-party output left unfiltered: %s", err)
            for fd in (saved, write_end, control_write):
                os.close(fd)
            return
        finally:
            os.close(read_end)
            os.close(control_read)
        self.saved_fd, self.control_fd = saved, control_write
        os.dup2(write_end, 2)
        os.close(write_end)

    def _stop(self) -> None:
        if self.stderr is not None:
            self.stderr.close()
            if sys.stderr is self.stderr:  # else someone replaced it meanwhile: theirs stays
                sys.stderr = self.stderr.stream  # type: ignore[assignment]
            self.stderr = None
        if self.control_fd is not None:
            os.write(self.control_fd, b".")  # a normal end: the filter drops the diagnostics it holds
            os.close(self.control_fd)
            self.control_fd = None
        if self.saved_fd is not None:
            os.dup2(self.saved_fd, 2)  # closes this process's last write end of the pipe: the filter sees its end
            os.close(self.saved_fd)
            self.saved_fd = None
        if self.process is not None:
            try:
                self.process.wait(FILTER_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.lingering.append(self.process)
            self.process = None
        self.lingering = [p for p in self.lingering if p.poll() is None]
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        self.levels = {}


_window = _Window()


@contextlib.contextmanager
def third_party_output(what: str) -> Iterator[None]:
    """Around a third-party call (``what`` names it): the lines of :data:`NOISE` it writes to standard error
    (Python's ``sys.stderr`` or file descriptor 2) are dropped, those of :data:`RUNTIME_DIAGNOSTICS` too unless the
    process dies before the end, and :data:`NOISY_LOGGERS` log errors only; every other line written to standard
    error meanwhile, by any thread, goes through as soon as it is complete, and an unfinished one at the end.

    When the output is shown (:func:`show_third_party_output`), nothing is filtered. Nested and concurrent uses share
    one filter, on from the first entry to the last exit.
    """
    if _shown():
        yield
        return
    _window.enter()
    try:
        yield
    finally:
        _window.exit()
