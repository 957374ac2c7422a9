"""Paths the loaders open must be regular files: a FIFO given as a checkpoint, a folder's file, a labels file or an
exported model is refused at once, naming it, instead of blocking the reader forever.

A regression must fail, not hang the suite: each FIFO has a watchdog process that opens and closes its write end every
few seconds, which releases a reader blocked on it (even one that holds the GIL, as safetensors' reader does), so the
call then ends with some other error and the test fails on its message.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mobilevit
from mobilevit.cli import main
from mobilevit.predict import load_predictor
from mobilevit.serve import ModelSpec, ServeConfig
from mobilevit.weights import read_labels_file

RELEASE_EVERY = 10  # seconds between the watchdog's releases; refusing takes milliseconds

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture
def make_fifo() -> Iterator[Callable[[Path], Path]]:
    """``make_fifo(path)``: a FIFO at ``path`` with its watchdog, stopped at the end of the test."""
    watchdogs: list[subprocess.Popen] = []

    def make(path: Path) -> Path:
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        # `: > fifo` opens the write end (waiting for a reader) and closes it: the reader sees the end of the file
        script = 'while sleep "$1"; do : > "$2"; done'
        watchdogs.append(subprocess.Popen(["sh", "-c", script, "sh", str(RELEASE_EVERY), str(path)]))
        return path

    yield make
    for watchdog in watchdogs:
        watchdog.kill()
        watchdog.wait()


def _error(call: Callable[[], Any]) -> BaseException:
    """The exception ``call`` raises; the test fails if it raises none."""
    try:
        call()
    except Exception as err:  # handed to the test
        return err
    pytest.fail("no error")


def _saved_folder(tmp_path: Path) -> Path:
    """A folder laid out as ``save_pretrained`` writes it (docs: config.json with ``"library": "mobilevit"`` beside
    model.safetensors); the test turns one of its files into a FIFO."""
    folder = tmp_path / "saved"
    folder.mkdir()
    config = {"library": "mobilevit", "format_version": 1, "arch": "mobileone_s0", "num_classes": 1000, "config": {}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"never read")
    return folder


def _names_fifo(err: BaseException, fifo: Path) -> bool:
    return str(fifo) in str(err) and "FIFO" in str(err)


def test_cli_refuses_a_fifo_as_pretrained(
    tmp_path: Path, make_fifo: Callable[[Path], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = make_fifo(tmp_path / "weights.pth")
    assert main(["predict", "--model", "mobileone_s0", "--pretrained", str(fifo), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and _names_fifo(err, fifo), err


@pytest.mark.parametrize("fifo_name", ["model.safetensors", "config.json"])
def test_saved_folder_with_a_fifo_is_refused(fifo_name: str, tmp_path: Path, make_fifo: Callable[[Path], Path]) -> None:
    folder = _saved_folder(tmp_path)
    fifo = make_fifo(folder / fifo_name)
    for call in (
        lambda: mobilevit.create_model(folder),
        lambda: mobilevit.create_model("mobileone_s0", pretrained=folder),
    ):
        err = _error(call)
        assert isinstance(err, mobilevit.weights.CheckpointError) and _names_fifo(err, fifo), err


def test_device_is_refused_as_a_checkpoint() -> None:
    err = _error(lambda: mobilevit.create_model("mobileone_s0", pretrained="/dev/zero"))
    assert isinstance(err, mobilevit.weights.CheckpointError), err
    assert "/dev/zero" in str(err) and "character device" in str(err)


def test_labels_fifo_is_refused(tmp_path: Path, make_fifo: Callable[[Path], Path]) -> None:
    fifo = make_fifo(tmp_path / "labels.txt")
    err = _error(lambda: read_labels_file(fifo))
    assert isinstance(err, ValueError) and _names_fifo(err, fifo), err


def test_exported_fifo_is_refused(tmp_path: Path, make_fifo: Callable[[Path], Path]) -> None:
    fifo = make_fifo(tmp_path / "model.onnx")
    err = _error(lambda: load_predictor(fifo))
    assert isinstance(err, ValueError) and _names_fifo(err, fifo), err


@pytest.mark.parametrize("kind", ["checkpoint", "exported", "saved folder"])
def test_server_refuses_a_fifo_before_listening(kind: str, tmp_path: Path, make_fifo: Callable[[Path], Path]) -> None:
    if kind == "saved folder":
        folder = _saved_folder(tmp_path)
        spec, fifo = ModelSpec.parse(str(folder)), make_fifo(folder / "model.safetensors")
    else:
        fifo = make_fifo(tmp_path / ("model.onnx" if kind == "exported" else "weights.pth"))
        spec = ModelSpec.parse(f"mobileone_s0={fifo}" if kind == "checkpoint" else str(fifo))
    config = ServeConfig(models=(spec,), backend="onnxruntime" if kind == "exported" else "eager")
    err = _error(config.validate_models)  # what `run` checks before it binds the port
    assert isinstance(err, ValueError) and _names_fifo(err, fifo), err
