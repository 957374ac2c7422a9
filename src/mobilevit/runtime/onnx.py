"""The onnxruntime runtime: an exported ``.onnx`` file in an onnxruntime CPU session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import Runtime, Signature, check_threads, load_file


def onnx_session(path: str | os.PathLike, threads: int = 0) -> Any:
    """An onnxruntime CPU session for ``path`` (``threads=0``: onnxruntime's default).

    Its worker threads sleep between runs instead of spinning (onnxruntime's default): the predictor and the server
    decode images on the same cores while the model runs. Measured with ``benchmarks/bench_serve.py`` (MobileOne-S0,
    2 cores): one request at a time went from 46.8 to 65.5 req/s, batched throughput at concurrency 32 stayed at 105.
    It matters even more in a benchmark that alternates runtimes in one process: spinning threads take the cores from
    the next runtime's call (mobilevit_xxs at 256 took 16-28 ms beside other spinning sessions, 10 ms without).
    """
    import onnxruntime as ort

    check_threads(threads, "onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # errors only: a Mask R-CNN graph's mask-pasting loop grows a tensor whose shape onnxruntime infers as the first
    # iteration's, and it would warn at every run, once per detection
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntime(Runtime):
    """An ``.onnx`` file run by onnxruntime on the CPU (one input ``[B, 3, H, W]``, the first output the logits).

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime's inference threads (0: its default, one per physical core).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file onnxruntime cannot load, or negative ``threads``.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        check_threads(threads, self.name)
        self.path = Path(path)
        self.session: Any = load_file(path, self.name, lambda p: onnx_session(p, threads))
        inputs, outputs = self.signature()  # the predictor checks them; the first input is the graph's
        self._input = inputs[0][0] if inputs else ""
        self._outputs = [name for name, _ in outputs]

    def run_named(self, batch: Tensor | np.ndarray) -> dict[str, Tensor]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        values = self.session.run(self._outputs, {self._input: x})
        return {name: torch.from_numpy(value) for name, value in zip(self._outputs, values, strict=True)}

    def signature(self) -> tuple[Signature, Signature]:
        def described(values: list[Any]) -> Signature:
            return [(v.name, [d if isinstance(d, int) else None for d in v.shape]) for v in values]

        return described(self.session.get_inputs()), described(self.session.get_outputs())

    def metadata(self) -> dict[str, str]:
        """The file's ``metadata_props``."""
        return dict(self.session.get_modelmeta().custom_metadata_map)
