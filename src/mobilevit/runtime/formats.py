"""The one table of export formats: what ``mobilevit export --format`` writes, under which suffixes, and which
runtimes here run it.

Both the runtimes (which backend opens a file, what an error calls it) and the exporters (``--format`` choices, the
suffix an output may have, which exporter writes it: :data:`mobilevit.export.EXPORTERS`, keyed by these names) read
:data:`FILE_FORMATS`; nothing else lists formats or suffixes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FileFormat:
    """One kind of file ``mobilevit export`` writes.

    Attributes:
        name: its ``--format`` (and the key of its exporter).
        kind: what messages call it (``"an ONNX file"``).
        suffixes: the file names it has; the first is the one a new file gets.
        backends: the runtimes here that run it, the default first; empty when none does.
        int8: whether ``export_model`` quantizes it to int8 while exporting (``quantize="int8"``).
        unrunnable: for a format no runtime here runs: per suffix (its own and those of related files it never
            writes), the one line that says where such a file runs instead.
    """

    name: str
    kind: str
    suffixes: tuple[str, ...]
    backends: tuple[str, ...] = ()
    int8: bool = False
    unrunnable: dict[str, str] = field(default_factory=dict)


_ELSEWHERE = (
    "runs only on Apple devices (Core ML, macOS/iOS); on this machine run the same model exported with "
    "`mobilevit export --format onnx` (or executorch, tflite, torchscript)"
)

# in the order `mobilevit export --format` lists them. A .pt file is a TorchScript archive only by its content
# (runtime.base.is_torchscript_archive); otherwise it is a checkpoint.
FILE_FORMATS: dict[str, FileFormat] = {
    f.name: f
    for f in (
        FileFormat("onnx", "ONNX", (".onnx",), ("onnxruntime", "openvino")),
        FileFormat(
            "coreml",
            "CoreML",
            (".mlpackage",),
            unrunnable={".mlpackage": f"a CoreML package {_ELSEWHERE}", ".mlmodel": f"a CoreML model {_ELSEWHERE}"},
        ),
        FileFormat("torchscript", "TorchScript", (".pt", ".ts", ".torchscript"), ("torchscript",)),
        FileFormat("executorch", "ExecuTorch", (".pte",), ("executorch",), int8=True),
        FileFormat("tflite", "LiteRT", (".tflite",), ("litert",), int8=True),
    )
}


def suffix_of(path: str | os.PathLike) -> str:
    """The lower-case suffix of ``path`` (a trailing ``/`` of a package folder ignored)."""
    return Path(str(path).rstrip("/")).suffix.lower()


def format_of_suffix(suffix: str) -> FileFormat | None:
    """The format whose files have ``suffix`` (``".onnx"``), or ``None``."""
    return next((f for f in FILE_FORMATS.values() if suffix.lower() in f.suffixes), None)


def unrunnable_reason(path: str | os.PathLike) -> str | None:
    """Why no runtime here runs the file at ``path`` (a CoreML package), or ``None`` when that is not the reason."""
    suffix = suffix_of(path)
    return next((f.unrunnable[suffix] for f in FILE_FORMATS.values() if suffix in f.unrunnable), None)


def formats_run_by(backend: str) -> list[FileFormat]:
    """The formats ``backend`` runs (``[]`` for eager and for names that are no backend)."""
    return [f for f in FILE_FORMATS.values() if backend in f.backends]
