"""Runtimes: one classifier run eagerly in PyTorch, or as an exported ``.onnx`` file in onnxruntime or OpenVINO.

Each is a :class:`Runtime` (``run``, ``signature``, ``metadata``, ``name``); the predictor
(:class:`~mobilevit.predict.Predictor`) and the parity check of exported files
(:func:`~mobilevit.export.check_export`) run models only through them. :data:`BACKENDS` is the one list of backend
names and :func:`resolve_backend` the one place that picks a backend for a model; :func:`open_runtime` opens an
exported file in a named backend.

Example::

    from mobilevit.runtime import open_runtime

    runtime = open_runtime("mobilevitv2_050.onnx", "openvino", threads=2)
    logits = runtime.run(batch)  # [B, 3, H, W] float32 -> [B, num_classes]
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .base import BACKENDS, EXPORTED_BACKENDS, Runtime, Signature, is_onnx_file, resolve_backend
from .eager import TorchRuntime
from .onnx import OnnxRuntime, onnx_session
from .openvino import OpenVINORuntime, openvino_model, read_openvino_metadata

EXPORTED_RUNTIMES: dict[str, type[OnnxRuntime] | type[OpenVINORuntime]] = {
    "onnxruntime": OnnxRuntime,
    "openvino": OpenVINORuntime,
}


def open_runtime(path: str | os.PathLike, backend: str = "onnxruntime", threads: int = 0) -> Runtime:
    """The exported ``.onnx`` file at ``path`` in ``backend`` (``"onnxruntime"`` or ``"openvino"``).

    Args:
        path: the ``.onnx`` file.
        backend: one of :data:`EXPORTED_BACKENDS`.
        threads: the runtime's inference threads (0: its default).
    """
    if backend not in EXPORTED_RUNTIMES:
        raise UsageError(f"an exported file runs in {' or '.join(EXPORTED_RUNTIMES)}, not {backend!r}")
    return EXPORTED_RUNTIMES[backend](path, threads)


__all__ = [
    "BACKENDS",
    "EXPORTED_BACKENDS",
    "OnnxRuntime",
    "OpenVINORuntime",
    "Runtime",
    "Signature",
    "TorchRuntime",
    "is_onnx_file",
    "onnx_session",
    "open_runtime",
    "openvino_model",
    "read_openvino_metadata",
    "resolve_backend",
]
