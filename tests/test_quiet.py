"""Filtering of third-party noise (:func:`mobilevit.runtime.quiet.third_party_output`), in child processes whose
standard error the tests read.

The noise lines are the ones ExecuTorch, TensorFlow and LiteRT printed when this package exported and loaded small
models; the children write them themselves, with ``os.write(2, ...)`` as C++ code does and through ``sys.stderr``.
The children load ``quiet.py`` by its path: it needs the standard library only, and importing the package would
import torch (seconds per child).
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mobilevit

QUIET = Path(mobilevit.__file__).parent / "runtime" / "quiet.py"
TIMEOUT = 30  # seconds: bounds a hang, never reached by a passing run

# what the runtimes printed to standard error on export and load
NOISE_LINES = (
    "[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version",
    "[cpuinfo_utils.cpp:125] CPU info and manual query on # of cpus dont match.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796667621.326493   23755 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796667625.259727   23755 flatbuffer_export.cc:4410] Estimated count of arithmetic ops: 0.099 M  ops",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
)
# what ExecuTorch printed before the error it raised, on loading damaged .pte files
DIAGNOSTICS = (
    "[program.cpp:184] Verification failed; data may be truncated or corrupt",
    "[mmap_data_loader.cpp:165] File /tmp/truncated-8.pte: offset 0 + size 64 > file_size_ 8, or overflow detected",
)

PRELUDE = """
import importlib.util, os, sys, threading
spec = importlib.util.spec_from_file_location("quiet", sys.argv[1])
quiet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quiet)
NOISE = sys.argv[2].split("\\n")
noise_bytes = "".join(line + "\\n" for line in NOISE).encode()
DIAGNOSTICS = sys.argv[3].split("\\n")
"""


def start(script: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + script, str(QUIET), "\n".join(NOISE_LINES), "\n".join(DIAGNOSTICS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(script: str) -> tuple[int, str, str]:
    child = start(script)
    try:
        out, err = child.communicate(timeout=TIMEOUT)
    finally:
        child.kill()
    return child.returncode, out, err


def assert_no_noise(stderr: str) -> None:
    noisy = [line for line in stderr.splitlines() if line in NOISE_LINES + DIAGNOSTICS]
    assert not noisy, noisy


def test_other_lines_reach_stderr_while_the_call_runs_and_noise_does_not() -> None:
    """Lines written inside the window from the same thread, from another thread and through ``sys.stderr`` reach
    the real standard error before the window ends (the child waits inside it until the test has read them); the
    noise lines, a megabyte of them among the rest, never do, nor ExecuTorch's diagnostics when the call returns."""
    child = start("""
with quiet.third_party_output("test"):
    os.write(2, noise_bytes + (DIAGNOSTICS[0] + "\\n").encode())
    os.write(2, b"same thread: kept\\n")
    thread = threading.Thread(target=lambda: os.write(2, noise_bytes * 5000 + b"other thread: kept\\n"))
    thread.start()
    thread.join()
    sys.stderr.write("\\n".join(NOISE + DIAGNOSTICS) + "\\npython: kept\\n")
    sys.stdin.readline()  # until the test has seen the kept lines
print("after", file=sys.stderr)
""")
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stderr], daemon=True)
    reader.start()
    try:
        expected = {"same thread: kept\n", "other thread: kept\n", "python: kept\n"}
        seen = []
        while not expected <= set(seen):
            try:
                seen.append(lines.get(timeout=TIMEOUT))
            except queue.Empty:
                raise AssertionError(f"inside the window, only these lines reached stderr: {seen}") from None
        child.stdin.write("go on\n")
        child.stdin.close()
        assert child.wait(TIMEOUT) == 0
        reader.join(TIMEOUT)
    finally:
        child.kill()
    seen += list(lines.queue)
    assert seen[-1] == "after\n", seen
    assert_no_noise("".join(seen))


def test_a_line_written_just_before_an_abort_reaches_stderr() -> None:
    """A runtime that explains itself and aborts inside the window: the explanation, in its own words or ExecuTorch's
    diagnostics, is not lost with the process; the noise stays out."""
    code, _, err = run("""
with quiet.third_party_output("test"):
    os.write(2, noise_bytes + b"fatal: the delegate's blob is damaged\\n" + (DIAGNOSTICS[0] + "\\n").encode())
    sys.stderr.write(NOISE[0] + "\\npython: the method cannot be loaded\\n" + DIAGNOSTICS[1] + "\\n")
    os.abort()
""")
    assert code == -signal.SIGABRT, err
    lines = err.splitlines()
    for line in ("fatal: the delegate's blob is damaged", "python: the method cannot be loaded", *DIAGNOSTICS):
        assert line in lines, err
    assert not set(NOISE_LINES) & set(lines), err


def test_nested_and_overlapping_windows_give_stderr_back() -> None:
    """Windows nested in one thread and overlapping in two (the first to open closes first); an unfinished line is
    written out when the last one closes; afterwards standard error is the real one again."""
    code, out, err = run("""
opened, closed = threading.Event(), threading.Event()
def second():
    opened.wait()
    with quiet.third_party_output("second"):
        with quiet.third_party_output("nested"):
            os.write(2, noise_bytes)
        opened.clear()
        closed.wait()
        sys.stderr.write(DIAGNOSTICS[0] + "\\n")
        os.write(2, b"second: kept\\n" + noise_bytes + b"unfinished")
thread = threading.Thread(target=second)
thread.start()
with quiet.third_party_output("first"):
    opened.set()
    while opened.is_set():  # until the second window is open
        threading.Event().wait(0.01)
closed.set()
thread.join()
os.write(2, b"\\nafter: fd 2\\n")
print("after: sys.stderr", file=sys.stderr)
print(sys.stderr is sys.__stderr__)
""")
    assert code == 0, err
    assert out == "True\n"
    assert err.endswith("second: kept\nunfinished\nafter: fd 2\nafter: sys.stderr\n"), err
    assert_no_noise(err)


def test_without_file_descriptor_2_and_with_the_output_shown() -> None:
    """No file descriptor 2: the call still runs; shown (``-v``): the noise goes through as written."""
    code, out, err = run("""
quiet.show_third_party_output()
with quiet.third_party_output("shown"):
    os.write(2, noise_bytes)
quiet.logger.setLevel("WARNING")
os.close(2)
with quiet.third_party_output("no fd 2"):
    sys.stderr.write(NOISE[0] + "\\nkept\\n")
print("ran")
""")
    assert code == 0 and out == "ran\n"
    assert err.splitlines() == list(NOISE_LINES)
