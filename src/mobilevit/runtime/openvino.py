"""The OpenVINO runtime: an exported ONNX file compiled for OpenVINO's CPU plugin, in fp32.

OpenVINO reads the ``.onnx`` file written by :func:`~mobilevit.export.export_model` directly (its ONNX frontend; no
conversion step and no ``.xml`` file), keeps the dynamic batch/height/width of the file, and puts the file's
``metadata_props`` (preprocessing, labels) in the model's ``rt_info["framework"]``.

The precision is fixed to fp32: on a CPU with bf16 (AVX512-BF16, AMX) the CPU plugin may otherwise run in bf16, which
changes the answers. The performance hint is ``LATENCY`` (one stream: every thread on one inference at a time, as the
predictor and the server call it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import MissingDependencyError
from .base import Runtime, Signature, check_threads, load_file

INSTALL_HINT = "OpenVINO is not installed: pip install 'mobilevit[openvino]' (or pip install openvino)"


def _read(path: str | os.PathLike) -> tuple[Any, Any]:
    """``(openvino.Core(), the model read from the ONNX file)``, or an ImportError saying how to install OpenVINO."""
    try:
        import openvino
    except ImportError as err:
        raise MissingDependencyError(INSTALL_HINT) from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such ONNX file: {path}")
    core = openvino.Core()
    try:
        return core, core.read_model(str(path))
    except RuntimeError as err:  # keep OpenVINO's reason, drop its "Exception from src/...cpp:84:" lines
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip() and " src/" not in line)
        raise RuntimeError(reason or str(err)) from None


def openvino_model(path: str | os.PathLike, threads: int = 0) -> Any:
    """The ONNX file at ``path`` compiled for OpenVINO's CPU plugin, in fp32 (an ``openvino.CompiledModel``).

    Args:
        path: an ``.onnx`` file (dynamic axes stay dynamic).
        threads: inference threads (0: OpenVINO's default, one per physical core of a socket).

    Returns:
        The compiled model. Calling it reuses one infer request, which is not safe from several threads at once: use
        one ``create_infer_request()`` per thread, or a lock (:class:`OpenVINORuntime`).

    Raises:
        ValueError: negative ``threads``.
        ImportError: OpenVINO is not installed (the ``openvino`` extra).
        FileNotFoundError: no file at ``path``.
        RuntimeError: OpenVINO cannot read or compile the file.
    """
    check_threads(threads, "OpenVINO")
    core, model = _read(path)
    import openvino
    import openvino.properties as props
    import openvino.properties.hint as hints

    config: dict[str, Any] = {
        hints.inference_precision: openvino.Type.f32,  # not bf16, even where the CPU has it
        hints.performance_mode: hints.PerformanceMode.LATENCY,
    }
    if threads:
        config[props.inference_num_threads] = threads
    return core.compile_model(model, "CPU", config)


def read_openvino_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as OpenVINO reads them (``{}`` when it has none).

    Parse them with :meth:`~mobilevit.runtime.metadata.ExportMetadata.from_dict` (a file written by
    :func:`~mobilevit.export.export_model`).
    """
    rt_info = _read(path)[1].get_rt_info()  # an RTMap: no .get()
    if "framework" not in rt_info:
        return {}
    return {key: value.astype(str) for key, value in rt_info["framework"].items()}


class OpenVINORuntime(Runtime):
    """An ``.onnx`` file compiled by :func:`openvino_model`, run through one infer request under a lock.

    An infer request is not safe to run from two threads at once; the server calls :meth:`run` from one model thread,
    and with the LATENCY hint OpenVINO runs one inference at a time anyway (one stream).

    Args:
        path: the ``.onnx`` file.
        threads: OpenVINO's inference threads (0: its default).

    Raises:
        FileNotFoundError: no file at ``path``.
        ImportError: OpenVINO is not installed.
        ValueError: a file OpenVINO cannot load, or negative ``threads``.
    """

    name = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        check_threads(threads, self.name)
        self.path = Path(path)
        self.compiled_model: Any = load_file(path, self.name, lambda p: openvino_model(p, threads))
        self._metadata = read_openvino_metadata(path)  # reads the file again: tens of ms, once
        self._request = self.compiled_model.create_infer_request()
        self._lock = threading.Lock()
        inputs, outputs = self.signature()
        self._input = inputs[0][0] if inputs else ""
        self._outputs = [name for name, _ in outputs]

    def run_named(self, batch: Tensor | np.ndarray) -> dict[str, Tensor]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:  # an infer request runs one inference at a time; its outputs are copied out before release
            result = self._request.infer({self._input: x})
            return {name: torch.from_numpy(result[name]) for name in self._outputs}

    def signature(self) -> tuple[Signature, Signature]:
        def described(values: list[Any]) -> Signature:
            return [
                (v.get_any_name(), [d.get_length() if d.is_static else None for d in v.get_partial_shape()])
                for v in values
            ]

        return described(self.compiled_model.inputs), described(self.compiled_model.outputs)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)
