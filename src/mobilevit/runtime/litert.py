"""The LiteRT runtime: a ``.tflite`` model run by LiteRT's (TensorFlow Lite's) interpreter, XNNPACK on the CPU.

A file written by :func:`~mobilevit.export.export_model` keeps PyTorch's layout: one ``[B, 3, H, W]`` input, already
preprocessed, and ``[B, num_classes]`` logits. Its :class:`~mobilevit.runtime.metadata.ExportMetadata` dictionary is
one JSON string in the flatbuffer's ``metadata`` table under the name ``mobilevit.metadata``, read here with the
flatbuffer accessors of LiteRT's schema (the model is not unpacked). An int8 model takes and returns int8 tensors:
:meth:`LiteRTRuntime.run` quantizes the float batch and dequantizes the logits with the scales the file records, so
callers see float32 either way.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import MissingDependencyError, UsageError
from .base import Runtime, Signature, check_threads, load_file
from .quiet import third_party_output

INSTALL_HINT = "LiteRT is not installed: pip install 'mobilevit[litert]' (or pip install ai-edge-litert)"
METADATA_NAME = "mobilevit.metadata"  # the flatbuffer metadata entry holding the metadata JSON


def _interpreter_class() -> Any:
    try:
        with third_party_output("LiteRT"):
            from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise MissingDependencyError(INSTALL_HINT) from err
    return Interpreter


def read_litert_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata stored in the ``.tflite`` file at ``path`` (``{}`` when it has none).

    Parse it with :meth:`~mobilevit.runtime.metadata.ExportMetadata.from_dict` (a file written by
    :func:`~mobilevit.export.export_model`).

    Raises:
        ImportError: LiteRT is not installed (the ``litert`` extra).
        FileNotFoundError: no file at ``path``.
        ValueError: not a LiteRT flatbuffer, or a ``mobilevit.metadata`` entry that is not a JSON object.
    """
    _interpreter_class()  # the schema module ships with the interpreter
    from ai_edge_litert import schema_py_generated as schema

    raw = load_file(path, "LiteRT", lambda p: p.read_bytes())
    if not schema.Model.ModelBufferHasIdentifier(raw, 0):
        raise UsageError(f"{path}: not a LiteRT (TFLite) model LiteRT can load (no TFL3 identifier)")
    model = schema.Model.GetRootAs(raw, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != METADATA_NAME.encode():
            continue
        buffer = model.Buffers(entry.Buffer())
        # small buffers sit inside the flatbuffer; large ones after it, at an offset from the file's start
        data = (
            buffer.DataAsNumpy().tobytes()
            if buffer.DataLength()
            else raw[buffer.Offset() : buffer.Offset() + buffer.Size()]
        )
        try:
            values = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            values = None
        if not isinstance(values, dict):
            raise UsageError(f"{path}: its {METADATA_NAME} entry is not a JSON object")
        return {str(k): str(v) for k, v in values.items()}
    return {}


class LiteRTRuntime(Runtime):
    """A ``.tflite`` model in a LiteRT interpreter (XNNPACK delegate), one call at a time under a lock.

    Args:
        path: the ``.tflite`` file (one image input, the first output the logits).
        threads: the interpreter's threads (0: LiteRT's default).

    Raises:
        FileNotFoundError: no file at ``path``.
        ImportError: LiteRT is not installed.
        ValueError: a file LiteRT cannot load, or negative ``threads``.
    """

    name = "litert"

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        check_threads(threads, self.name)
        interpreter = _interpreter_class()
        self.path = Path(path)
        with third_party_output("LiteRT"):  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter: Any = load_file(
                path, "LiteRT", lambda p: interpreter(str(p), num_threads=threads or None)
            )
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._outputs = self.interpreter.get_output_details()
        self._metadata = read_litert_metadata(path)
        self._lock = threading.Lock()  # an interpreter runs one inference at a time

    def run_named(self, batch: Tensor | np.ndarray) -> dict[str, Tensor]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            if tuple(x.shape) != tuple(self._input["shape"]):
                self.interpreter.resize_tensor_input(self._input["index"], list(x.shape))
                self.interpreter.allocate_tensors()
                self._input = self.interpreter.get_input_details()[0]
            self.interpreter.set_tensor(self._input["index"], _quantized(x, self._input))
            self.interpreter.invoke()
            return {
                d["name"]: torch.from_numpy(_dequantized(self.interpreter.get_tensor(d["index"]), d))
                for d in self._outputs
            }

    def signature(self) -> tuple[Signature, Signature]:
        def described(details: list[dict[str, Any]]) -> Signature:
            return [(d["name"], [int(s) if s >= 0 else None for s in d["shape_signature"]]) for d in details]

        return described(self.interpreter.get_input_details()), described(self.interpreter.get_output_details())

    def metadata(self) -> dict[str, str]:
        """The file's ``mobilevit.metadata`` entry."""
        return dict(self._metadata)


def _quantized(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """``x`` as the input tensor's type: unchanged for float32, else ``round(x / scale) + zero_point``, clipped."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantized(out: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A copy of the output tensor as float32 (``(q - zero_point) * scale`` for an integer tensor)."""
    if np.dtype(detail["dtype"]) == np.float32:
        return out.copy()
    scale, zero_point = detail["quantization"]
    return (out.astype(np.float32) - zero_point) * np.float32(scale)
