"""The ExecuTorch runtime: a ``.pte`` program run by ExecuTorch's Python runtime (its XNNPACK delegate on the CPU).

A program written by :func:`~mobilevit.export.export_model` has two methods: ``forward`` (``[B, 3, H, W]`` float32
in, ``[B, num_classes]`` logits out) and ``mobilevit_metadata``, a constant method that returns the
:class:`~mobilevit.runtime.metadata.ExportMetadata` dictionary as one JSON string. A ``.pte`` file declares only the
upper bound of each input dimension (what its memory was planned for), so which axes may vary comes from that
metadata.

ExecuTorch runs XNNPACK kernels on one thread pool per process: ``threads`` resizes that pool, for every program the
process runs.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import MissingDependencyError, UsageError
from .base import Runtime, Signature, check_threads, load_file, named_outputs
from .quiet import third_party_output

INSTALL_HINT = "ExecuTorch is not installed: pip install 'mobilevit[executorch]' (or pip install executorch)"
METADATA_METHOD = "mobilevit_metadata"  # the constant method holding the metadata JSON
AXES = {0: "batch", 2: "height", 3: "width"}  # input dimension -> the metadata's name for it
# a .pte file starts with a flatbuffer: the root table's offset (uint32), then the schema's file identifier, "ET" and
# its version (ExecuTorch 1.x writes ET12), then ExecuTorch's extended header: "eh00", its length (uint32), the
# program's size, the offset and the size of the data segments after it (uint64 each), all little-endian
IDENTIFIER = re.compile(rb"ET[0-9]{2}")
HEADER_MAGIC = b"eh00"
HEADER_MIN_LENGTH = 24  # magic, length, program size, segment offset (the segment size came later)


def _executorch_runtime() -> Any:
    """ExecuTorch's process-wide ``Runtime``, or an ImportError saying how to install ExecuTorch."""
    # torchao, imported with it, warns about its enums; its Python bindings say that they are experimental
    with third_party_output("ExecuTorch"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This API is experimental")
        try:
            from executorch.runtime import Runtime as ExecuTorch
        except ImportError as err:
            raise MissingDependencyError(INSTALL_HINT) from err
        return ExecuTorch.get()


def load_program(path: str | os.PathLike) -> Any:
    """The ExecuTorch program in the ``.pte`` file at ``path`` (memory-mapped; its methods are loaded on demand).

    Raises:
        ImportError: ExecuTorch is not installed (the ``executorch`` extra).
        FileNotFoundError: no file at ``path``.
        ValueError: a file ExecuTorch cannot load.
    """
    runtime = _executorch_runtime()

    def load(p: Path) -> Any:
        check_program_file(p)
        with third_party_output("ExecuTorch"):
            return runtime.load_program(str(p))

    return load_file(path, "ExecuTorch", load)


def check_program_file(path: Path) -> None:
    """Raise a ``ValueError`` naming what is wrong with a file that cannot be an ExecuTorch program: its identifier,
    or an extended header whose sizes do not fit the file.

    The runtime checks this too, but it logs what it found through Python's ``sys.stderr``, and bytes that are not
    UTF-8 there abort the process (an uncaught C++ exception): a file reaches the runtime only with an ASCII
    identifier and sizes that fit. The runtime then verifies the flatbuffer itself (``InternalConsistency``). What
    it does not verify is the XNNPACK delegate's compiled graph inside a well-formed program: damage there can still
    abort the process while ``forward`` loads.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8 + 32)
    if len(head) < 8 or not IDENTIFIER.fullmatch(head[4:8]):
        raise UsageError("no ExecuTorch program identifier (ET and two digits) at byte 4")
    if head[8:12] != HEADER_MAGIC:
        return  # a program without the extended header (no data segments): the flatbuffer verifier checks it all
    if len(head) < 8 + HEADER_MIN_LENGTH:
        raise UsageError(f"the file ends inside its header ({size} bytes)")
    length = int.from_bytes(head[12:16], "little")
    program_size, segment_offset = (int.from_bytes(head[i : i + 8], "little") for i in (16, 24))
    segment_size = int.from_bytes(head[32:40], "little") if length > HEADER_MIN_LENGTH and len(head) >= 40 else 0
    if length < HEADER_MIN_LENGTH or not 8 < program_size <= size:
        raise UsageError(f"its header does not fit the file ({program_size} program bytes in {size})")
    if segment_offset and not program_size <= segment_offset <= segment_offset + segment_size <= size:
        raise UsageError(f"its header does not fit the file (data at {segment_offset}+{segment_size} in {size} bytes)")


def program_metadata(program: Any, path: str | os.PathLike) -> dict[str, str]:
    """The metadata dictionary of a loaded program (``{}`` for a program without the metadata method)."""
    if METADATA_METHOD not in program.method_names:
        return {}
    try:
        with third_party_output("ExecuTorch"):
            (text,) = program.load_method(METADATA_METHOD).execute([])
        data = json.loads(text)
    except (TypeError, ValueError, RuntimeError):  # not one string (a JSONDecodeError is a ValueError), or not UTF-8
        raise UsageError(f"{path}: its {METADATA_METHOD} method does not return a JSON object") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: its {METADATA_METHOD} method does not return a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def read_executorch_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata stored in the ``.pte`` file at ``path`` (``{}`` when it has none).

    Parse it with :meth:`~mobilevit.runtime.metadata.ExportMetadata.from_dict` (a file written by
    :func:`~mobilevit.export.export_model`).
    """
    return program_metadata(load_program(path), path)


def set_threads(threads: int) -> None:
    """Resize ExecuTorch's process-wide thread pool to ``threads`` (0: leave it as it is, one thread per core)."""
    check_threads(threads, "ExecuTorch")
    if not threads:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This API is experimental")
        from executorch.extension.pybindings import portable_lib

    # the pool is shared by every program of the process: resize it only when the count changes
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


class ExecuTorchRuntime(Runtime):
    """A ``.pte`` program's ``forward`` method run by ExecuTorch, one call at a time under a lock.

    Args:
        path: the ``.pte`` file.
        threads: the size of ExecuTorch's thread pool (0: its default, one per core). The pool is process-wide.

    Raises:
        FileNotFoundError: no file at ``path``.
        ImportError: ExecuTorch is not installed.
        ValueError: a file ExecuTorch cannot load, a program without a ``forward`` method, or negative ``threads``.
    """

    name = "executorch"

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        check_threads(threads, self.name)
        program = load_program(path)
        if "forward" not in program.method_names:
            raise UsageError(f"{path}: the ExecuTorch program has no forward method ({sorted(program.method_names)})")
        set_threads(threads)
        self.path = Path(path)
        try:
            with third_party_output("ExecuTorch"):  # XNNPACK reports what it finds of the CPU
                self.method: Any = program.load_method("forward")
        except RuntimeError as err:
            raise UsageError(f"{path}: ExecuTorch cannot load its forward method ({err})") from None
        self._metadata = program_metadata(program, path)
        # the largest batch the program's memory was planned for (a dynamic batch's upper bound)
        self.max_batch = int(self.method.metadata.input_tensor_meta(0).sizes()[0])
        self._lock = threading.Lock()  # a method holds one set of planned buffers: one execution at a time
        self._output_names = [name for name, _ in self.signature()[1]]

    def run_named(self, batch: Tensor | np.ndarray) -> dict[str, Tensor]:
        """The outputs of ``batch``; a batch larger than the planned one (:attr:`max_batch`) runs in parts."""
        x = torch.as_tensor(batch, dtype=torch.float32).contiguous()
        with self._lock:
            # the outputs live in the method's planned memory, which the next execution overwrites: copy them out
            parts = [
                [out.clone() for out in self.method.execute([part.contiguous()])] for part in x.split(self.max_batch)
            ]
        return named_outputs(self._output_names, [torch.cat(outs) for outs in zip(*parts, strict=True)])

    def signature(self) -> tuple[Signature, Signature]:
        """The planned (largest) shapes, with the axes the metadata declares dynamic as ``None``."""
        meta = self.method.metadata
        dynamic = set(json.loads(self._metadata.get("dynamic_axes", "[]")))

        def shape(info: Any) -> list[int | None]:
            sizes = list(info.sizes())
            return [None if AXES.get(i) in dynamic else s for i, s in enumerate(sizes)]

        outputs = json.loads(self._metadata.get("output_names", "[]"))  # a detector's: every output

        def name(kind: str, i: int) -> str:  # the metadata names the first input and output, or every output
            if kind == "output" and i < len(outputs):
                return outputs[i]
            return self._metadata.get(f"{kind}_name", f"{kind}_{i}") if i == 0 else f"{kind}_{i}"

        inputs = [(name("input", i), shape(meta.input_tensor_meta(i))) for i in range(meta.num_inputs())]
        outputs = [(name("output", i), shape(meta.output_tensor_meta(i))) for i in range(meta.num_outputs())]
        return inputs, outputs

    def metadata(self) -> dict[str, str]:
        """The file's metadata (the ``mobilevit_metadata`` method's JSON)."""
        return dict(self._metadata)
