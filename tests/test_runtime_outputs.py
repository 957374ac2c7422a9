"""Every runtime answers with all of a model's outputs by name (``run_named``), the first of them being what ``run``
returns, and the one table of export formats gives the runtimes and the exporters the same suffixes and backends.

References: the eager PyTorch model's logits for the same batch; for a graph with two outputs, the names given to
``torch.onnx.export`` and the values the traced module returns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import mobilevit.runtime
from mobilevit.export import EXPORTERS, SUFFIXES, export_model
from mobilevit.runtime import (
    EXPORTED_BACKENDS,
    FILE_BACKENDS,
    FILE_FORMATS,
    TorchRuntime,
    TorchScriptRuntime,
    open_runtime,
)

SIZE = (64, 64)


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within 1e-5, relative to the logits' scale where they exceed 1."""
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_run_named_holds_the_logits_of_run_and_of_the_eager_model(
    fmt: str, tmp_path: Path, onnx_export: Callable[[str], tuple[nn.Module, Path]]
) -> None:
    pytest.importorskip("onnxruntime")
    model, path = onnx_export("mobilevit_xxs")  # random weights; the session's shared dynamic ONNX export
    if fmt == "torchscript":
        path = export_model(model, "torchscript", tmp_path / "xxs.pt", input_size=SIZE)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(x)
    for runtime in (open_runtime(path), TorchRuntime(model)):
        names = [name for name, _ in runtime.signature()[1]]
        outputs = runtime.run_named(x)
        assert list(outputs) == names == ["logits"]
        assert torch.equal(outputs["logits"], runtime.run(x))
        assert_close(outputs["logits"], eager)


class TwoOutputs(nn.Module):
    """A detector's shape of answer: two outputs of different shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y.mean(dim=(2, 3)), y.amax(dim=1)  # [B, 4], [B, H, W]


# the TorchScript-based exporter makes this tiny graph in a second; torch deprecates it in favour of dynamo's
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.onnx")
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_an_onnx_graph_with_two_outputs_answers_both_by_name(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, path = TwoOutputs().eval(), tmp_path / "two.onnx"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
        torch.onnx.export(
            model, (x,), str(path), input_names=["pixel_values"], output_names=["scores", "heat"], dynamo=False
        )
    runtime = open_runtime(path)
    outputs = runtime.run_named(x)
    assert list(outputs) == ["scores", "heat"]
    assert torch.equal(runtime.run(x), outputs["scores"])
    assert_close(outputs["scores"], want[0])
    assert_close(outputs["heat"], want[1])


@pytest.mark.filterwarnings("ignore::FutureWarning:torch.jit")  # TorchScript is the format under test
def test_a_torchscript_module_with_two_outputs_answers_both(tmp_path: Path) -> None:
    model, path = TwoOutputs().eval(), tmp_path / "two.pt"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
        torch.jit.save(torch.jit.trace(model, (x,)), str(path))
    outputs = TorchScriptRuntime(path).run_named(x)
    assert list(outputs) == ["logits", "output_1"]  # a file without metadata names only its first output
    assert torch.equal(outputs["logits"], want[0]) and torch.equal(outputs["output_1"], want[1])


def test_the_format_table_gives_runtimes_and_exporters_the_same_formats() -> None:
    """The suffixes and backends the documentation states (README "Export", docs/export.md), read from the one
    table by the runtimes and by the exporters alike; every format has its exporter and every backend its runtime."""
    assert FILE_BACKENDS == {
        ".onnx": ("onnxruntime", "openvino"),
        ".pte": ("executorch",),
        ".tflite": ("litert",),
        ".pt": ("torchscript",),
        ".ts": ("torchscript",),
        ".torchscript": ("torchscript",),
    }
    assert SUFFIXES == {
        ".onnx": "onnx",
        ".mlpackage": "coreml",
        ".pt": "torchscript",
        ".ts": "torchscript",
        ".torchscript": "torchscript",
        ".pte": "executorch",
        ".tflite": "tflite",
    }
    assert list(EXPORTERS) == list(FILE_FORMATS) == ["onnx", "coreml", "torchscript", "executorch", "tflite"]
    assert set(mobilevit.runtime.EXPORTED_RUNTIMES) == set(EXPORTED_BACKENDS)
    assert not FILE_FORMATS["coreml"].backends  # CoreML runs only on Apple devices
