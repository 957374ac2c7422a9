"""Damaged exported files and third-party noise, through the real CLI in child processes.

A file that is not a model (random bytes, an empty file), a truncated one, or a valid header over a garbage body,
as ``.pte``, ``.tflite`` and ``.onnx``, makes ``mobilevit predict`` print one error line and exit with 2 (a
:class:`~mobilevit.errors.UsageError`), never crash the process: each attempt runs in its own process, so an abort
in a runtime's C++ code shows as a negative exit status instead of killing pytest. The files are small models
written by this package's exporters (with its metadata), and the undamaged ones predict (exit 0).

The same child processes show what the runtimes print: exporting and predicting print nothing from ExecuTorch
(``cpuinfo``), TensorFlow/LiteRT or torch's ``_pytree`` unless ``-v`` asks for it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# suffix -> the modules the format's exporter and runtime need
FORMATS = {
    ".onnx": ("onnxscript", "onnxruntime"),
    ".pte": ("executorch",),
    ".tflite": ("litert_torch", "ai_edge_litert"),
}
AVAILABLE = [s for s, modules in FORMATS.items() if all(importlib.util.find_spec(m) for m in modules)]
# what the third-party packages print when nobody quiets them
NOISE = ("cpuinfo", "TensorFlow", "oneDNN", "absl::", "_pytree", "XNNPACK delegate", "I0000", "W0000")
TIMEOUT = 300  # seconds for one child process: bounds a hang, never reached by a passing run

# Writes a tiny classifier (32x32 input, 10 classes) in each format given, with the metadata `mobilevit export`
# records, through the package's own exporters; prints nothing itself.
EXPORT = """
import dataclasses, sys
from pathlib import Path
import torch
from torch import nn
from mobilevit.export.metadata import ExportMetadata
from mobilevit.weights.entries import get_weights, resize_size_for

folder, suffixes = Path(sys.argv[1]), sys.argv[2:]
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
).eval()
pre = get_weights("mobileone_s0.orig_in1k_reparam").preprocess
pre = dataclasses.replace(pre, input_size=(32, 32), resize_size=resize_size_for(32, pre.crop_pct))
labels = tuple(f"class {i}" for i in range(10))
meta = ExportMetadata("tiny", "", (32, 32), (), 1, pre, labels)
if ".onnx" in suffixes:
    from mobilevit.export.onnx import export_onnx
    export_onnx(model, folder / "tiny.onnx", meta)
if ".pte" in suffixes:
    from mobilevit.export.executorch import export_executorch
    export_executorch(model, folder / "tiny.pte", meta)
if ".tflite" in suffixes:
    from mobilevit.export.litert import export_litert
    export_litert(model, folder / "tiny.tflite", meta)
"""

# Takes a JSON list of steps: {"argv": [...]} runs `mobilevit ARGV...` in a forked child of this process (the imports
# are paid once) and prints one JSON line: the child's exit status (negative: killed by that signal), stdout, stderr;
# {"import": MODULE} imports a runtime's module in this process, so that the children after it find it imported (and
# do not print what it prints on import). Nothing here loads a model or starts a thread pool.
DRIVER = """
import importlib, json, os, signal, sys, tempfile
import torch
import mobilevit.cli, mobilevit.predict, mobilevit.runtime

for step in json.loads(sys.argv[1]):
    if "import" in step:
        importlib.import_module(step["import"])
        continue
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            signal.alarm(120)
            code = mobilevit.cli.main(step["argv"])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        result = {"argv": step["argv"], "code": os.waitstatus_to_exitcode(status)}
        result.update(stdout=out.read().decode(errors="replace"), stderr=err.read().decode(errors="replace"))
        print(json.dumps(result), flush=True)
"""


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )


@dataclasses.dataclass(frozen=True)
class Exported:
    folder: Path
    stderr: str  # what exporting printed


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The tiny model in every available format, written once in a child process."""
    if not AVAILABLE:
        pytest.skip("no export toolchain installed")
    folder = tmp_path_factory.mktemp("damaged")
    done = _python(EXPORT, str(folder), *AVAILABLE)
    assert done.returncode == 0, done.stderr
    return Exported(folder, done.stderr)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "red.png"
    Image.new("RGB", (40, 48), (200, 30, 30)).save(path)
    return path


# the runtime modules the driver imports before the damaged files' children
RUNTIME_MODULES = {".onnx": "onnxruntime", ".pte": "executorch.runtime", ".tflite": "ai_edge_litert.interpreter"}


def predict_steps(paths: list[Path], image: Path, *options: str) -> list[dict]:
    """The driver's steps for ``mobilevit [options] predict --model PATH IMAGE``, one per path."""
    return [{"argv": [*options, "predict", str(image), "--model", str(p), "--no-progress"]} for p in paths]


def run_driver(steps: list[dict]) -> list[dict]:
    """The results of the driver's ``argv`` steps, in order."""
    done = _python(DRIVER, json.dumps(steps))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def damaged_paths(exported: Exported, folder: Path, many: bool) -> list[Path]:
    """Damaged copies of every exported file, written to ``folder``."""
    paths = []
    for i, suffix in enumerate(AVAILABLE):
        original = (exported.folder / f"tiny{suffix}").read_bytes()
        for name, data in damaged(original, i, many).items():
            path = folder / f"{name}{suffix}"
            path.write_bytes(data)
            paths.append(path)
    return paths


@dataclasses.dataclass(frozen=True)
class Outcomes:
    clean: list[dict]  # each undamaged file, predicted by a child that imports its runtime itself
    verbose: list[dict]  # the same for the .pte file with -v
    damaged: list[dict]  # each damaged file


@pytest.fixture(scope="module")
def outcomes(exported: Exported, image: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    """Every prediction of this module's default tests, by one driver process."""
    clean = predict_steps([exported.folder / f"tiny{suffix}" for suffix in AVAILABLE], image)
    verbose = predict_steps([exported.folder / "tiny.pte"], image, "-v") if ".pte" in AVAILABLE else []
    imports = [{"import": RUNTIME_MODULES[suffix]} for suffix in AVAILABLE]
    broken = predict_steps(damaged_paths(exported, tmp_path_factory.mktemp("damaged-files"), False), image)
    results = run_driver(clean + verbose + imports + broken)
    return Outcomes(results[: len(clean)], results[len(clean) : len(clean) + len(verbose)], results[-len(broken) :])


def damaged(original: bytes, seed: int, many: bool) -> dict[str, bytes]:
    """Named damaged copies of ``original``: random bytes, empty, truncations, its header over a garbage body (and,
    with ``many``, more sizes and cut points)."""
    rng = random.Random(seed)
    size = len(original)
    files = {
        "random": rng.randbytes(2048),
        "empty": b"",
        "truncated-16": original[:16],
        "truncated-half": original[: size // 2],
        "header-garbage-64": original[:64] + rng.randbytes(size - 64),
    }
    if many:
        files |= {f"random-{n}": rng.randbytes(n) for n in (1, 7, 64, 100_000)}
        cuts = (4, 8, 12, 40, 41, 100, 1000, size // 4, 3 * size // 4, size - 1)
        files |= {f"truncated-{n}": original[:n] for n in cuts if n < size}
        files |= {f"header-garbage-{n}": original[:n] + rng.randbytes(size - n) for n in (8, 40, 256, 1024) if n < size}
    return files


def assert_refused_cleanly(result: dict) -> None:
    name = result["argv"][-2]
    assert result["code"] >= 0, f"{name}: the process was killed by signal {-result['code']}: {result['stderr']}"
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1, f"{name}: exit {result['code']}, stderr {result['stderr']!r}"
    assert lines[0].startswith("mobilevit predict: error: ") and name in lines[0], lines[0]


def test_damaged_files_are_refused_with_one_line(outcomes: Outcomes) -> None:
    assert len(outcomes.damaged) == 5 * len(AVAILABLE)
    for result in outcomes.damaged:
        assert_refused_cleanly(result)


@pytest.mark.slow  # about 70 files, each loaded by a fresh process
def test_many_damaged_files_are_refused_with_one_line(exported: Exported, image: Path, tmp_path: Path) -> None:
    imports = [{"import": RUNTIME_MODULES[suffix]} for suffix in AVAILABLE]
    for result in run_driver(imports + predict_steps(damaged_paths(exported, tmp_path, True), image)):
        assert_refused_cleanly(result)


def test_exporting_and_predicting_print_no_third_party_noise(exported: Exported, outcomes: Outcomes) -> None:
    """Undamaged files predict (exit 0) and nothing from the runtimes reaches stderr; ``-v`` shows ExecuTorch's
    ``cpuinfo`` lines again."""
    noisy = [line for line in exported.stderr.splitlines() if any(word in line for word in NOISE)]
    assert not noisy, noisy
    assert len(outcomes.clean) == len(AVAILABLE)
    for result in outcomes.clean:
        assert result["code"] == 0, result
        assert "class " in result["stdout"]
        assert result["stderr"] == "", result["stderr"]
    for result in outcomes.verbose:
        assert result["code"] == 0 and "cpuinfo" in result["stderr"], result
