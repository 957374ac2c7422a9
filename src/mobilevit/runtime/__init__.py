"""Runtimes: one classifier run eagerly in PyTorch, or as an exported file: ``.onnx`` in onnxruntime or OpenVINO,
``.pte`` in ExecuTorch, ``.tflite`` in LiteRT, a TorchScript archive (``.pt``, ``.ts``, ``.torchscript``) in PyTorch.

Each is a :class:`Runtime` (``run``: the first output; ``run_named``: every output by name; ``signature``,
``metadata``, ``name``); the predictor
(:class:`~mobilevit.predict.Predictor`) and the parity check of exported files
(:func:`~mobilevit.export.check_export`) run models only through them. :data:`BACKENDS` is the one list of backend
names and :func:`resolve_backend` the one place that picks a backend for a model; :func:`open_runtime` opens an
exported file in a named backend. :data:`FILE_FORMATS` is the one table of export formats (suffixes, backends) and
:class:`ExportMetadata` the record an exported file carries; the exporters (:mod:`mobilevit.export`) read both.

Example::

    from mobilevit.runtime import open_runtime

    runtime = open_runtime("mobilevitv2_050.onnx", "openvino", threads=2)
    logits = runtime.run(batch)  # [B, 3, H, W] float32 -> [B, num_classes]
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from .base import (
    BACKENDS,
    EXPORTED_BACKENDS,
    FILE_BACKENDS,
    Runtime,
    Signature,
    check_runnable,
    exported_suffix,
    is_exported_file,
    is_torchscript_archive,
    resolve_backend,
)
from .eager import TorchRuntime
from .executorch import ExecuTorchRuntime, read_executorch_metadata
from .formats import FILE_FORMATS, FileFormat, format_of_suffix, formats_run_by, suffix_of
from .litert import LiteRTRuntime, read_litert_metadata
from .metadata import ExportMetadata
from .onnx import OnnxRuntime, onnx_session
from .openvino import OpenVINORuntime, openvino_model, read_openvino_metadata
from .torchscript import TorchScriptRuntime, load_torchscript_file

EXPORTED_RUNTIMES: dict[str, type[Runtime]] = {
    "onnxruntime": OnnxRuntime,
    "openvino": OpenVINORuntime,
    "executorch": ExecuTorchRuntime,
    "litert": LiteRTRuntime,
    "torchscript": TorchScriptRuntime,
}


def open_runtime(path: str | os.PathLike, backend: str | None = None, threads: int = 0) -> Runtime:
    """The exported file at ``path`` in ``backend`` (default: the one its suffix implies, see
    :func:`resolve_backend`).

    Args:
        path: an ``.onnx``, ``.pte`` or ``.tflite`` file, or a TorchScript archive (``.pt``, ``.ts``,
            ``.torchscript``).
        backend: one of :data:`EXPORTED_BACKENDS` that runs files of this suffix (:data:`FILE_BACKENDS`).
        threads: the runtime's inference threads (0: its default).
    """
    check_runnable(path)
    if backend is not None and backend not in EXPORTED_RUNTIMES:
        raise UsageError(f"an exported file runs in {' or '.join(EXPORTED_RUNTIMES)}, not {backend!r}")
    if exported_suffix(path) is not None:
        backend = resolve_backend(path, backend)  # a file of a known kind runs only in its own backends
    elif backend is None and Path(path).suffix.lower() == ".pt":
        backend = "torchscript"  # not an archive: TorchScriptRuntime says so
    elif backend is None:
        raise UsageError(f"{path}: cannot tell the runtime from the suffix (expected {', '.join(FILE_BACKENDS)})")
    return EXPORTED_RUNTIMES[backend](path, threads)


__all__ = [
    "BACKENDS",
    "EXPORTED_BACKENDS",
    "FILE_BACKENDS",
    "FILE_FORMATS",
    "ExecuTorchRuntime",
    "ExportMetadata",
    "FileFormat",
    "LiteRTRuntime",
    "OnnxRuntime",
    "OpenVINORuntime",
    "Runtime",
    "Signature",
    "TorchRuntime",
    "TorchScriptRuntime",
    "check_runnable",
    "exported_suffix",
    "format_of_suffix",
    "formats_run_by",
    "is_exported_file",
    "is_torchscript_archive",
    "load_torchscript_file",
    "onnx_session",
    "open_runtime",
    "openvino_model",
    "read_executorch_metadata",
    "read_litert_metadata",
    "read_openvino_metadata",
    "resolve_backend",
    "suffix_of",
]
