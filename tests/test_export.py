"""Export (ONNX via torch's dynamo exporter, TorchScript via tracing): the files give the eager logits, carry the
preprocessing and labels, accept a dynamic batch and (ONNX) dynamic height/width, and MobileViT v2's unfold/fold
exports without Col2Im/Im2Col.

The default subset covers every family and block kind (MobileViT v1 / v2 / v3, FastViT RepMixer and attention
stages, MobileOne with SE); every variant runs with ``-m slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.cli import main
from mobilevit.export import check_export, export_model, read_metadata
from reference_utils import randomize_layer_scales

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FAST = ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_050", "fastvit_sa12"]
FAST_SMALL = ["mobileone_s4"]  # many channels: checked at small sizes only in the default run
TOLERANCE = 1e-4  # of the logit scale (random-init MobileOne logits reach 1e5; trained models' are ~10)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_layer_scales(randomize_batchnorm(mobilevit.create_model(name))).eval()


def _other_size(model_name: str) -> tuple[int, int]:
    """A second size the same graph must serve: non-square multiple of 64 for MobileViT, odd sizes otherwise."""
    return (320, 192) if model_name.startswith("mobilevit") else (250, 226)


def _check_onnx(name: str, tmp_path: Path, sizes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    model = _model(name)
    path = export_model(model, "onnx", tmp_path / f"{name}.onnx", input_size=sizes[0])
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"Col2Im", "Im2Col"}, ops
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"], dims
    assert read_metadata(path).size_multiple == (64 if name.startswith("mobilevit") else 1)
    for size in sizes:
        parity = check_export(model, path, input_size=size, batch_size=2)
        assert parity.input_shape == (2, 3, *size)
        assert parity.max_rel_diff <= TOLERANCE, f"{name} at {size}: {parity.max_rel_diff:.2e} of the logit scale"


@pytest.mark.parametrize("name", FAST)
def test_onnx_parity_dynamic(name: str, tmp_path: Path) -> None:
    _check_onnx(name, tmp_path, ((256, 256), _other_size(name)))


@pytest.mark.parametrize("name", FAST_SMALL)
def test_onnx_parity_dynamic_small(name: str, tmp_path: Path) -> None:
    _check_onnx(name, tmp_path, ((128, 128), (97, 130)))


@pytest.mark.slow
@pytest.mark.parametrize("name", mobilevit.list_models())
def test_onnx_parity_every_variant(name: str, tmp_path: Path) -> None:
    _check_onnx(name, tmp_path, ((256, 256), _other_size(name)))


def test_onnx_metadata(tmp_path: Path) -> None:
    """Preprocessing, labels and sizes round trip through ``metadata_props``."""
    model = _model("fastvit_t8")
    path = export_model(model, "onnx", tmp_path / "m.onnx", input_size=(128, 128), dynamic=False)
    meta = read_metadata(path)
    assert meta.arch == "fastvit_t8" and meta.input_size == (128, 128) and meta.dynamic_axes == ()
    assert len(meta.labels) == model.num_classes
    assert meta.preprocess is not None and meta.preprocess.mean == (0.485, 0.456, 0.406)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["preprocess"])["channel_order"] in ("RGB", "BGR")
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 128, 128]
    assert check_export(model, path, batch_size=1).max_abs_diff <= 1e-4


def test_mobilevit_off_grid_size_keeps_batch_dynamic(tmp_path: Path) -> None:
    """A MobileViT traced at a size off the 64-grid takes its resize path: fixed H/W, still any batch."""
    model = _model("mobilevit_xxs")
    path = export_model(model, "onnx", tmp_path / "m.onnx", input_size=(200, 264))
    assert read_metadata(path).dynamic_axes == ("batch",)
    assert check_export(model, path, batch_size=3).max_rel_diff <= TOLERANCE


@pytest.mark.parametrize("name", ["mobilevitv2_050", "fastvit_sa12", "mobileone_s0"])
def test_torchscript_round_trip(name: str, tmp_path: Path) -> None:
    model = _model(name)
    path = export_model(model, "torchscript", tmp_path / f"{name}.pt", input_size=(256, 256))
    meta = read_metadata(path)
    assert meta.arch == name and len(meta.labels) == model.num_classes and meta.dynamic_axes == ("batch",)
    parity = check_export(model, path, batch_size=2)
    assert parity.max_rel_diff <= TOLERANCE, parity


def test_export_does_not_modify_the_model(tmp_path: Path) -> None:
    model = _model("mobileone_s0").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, "torchscript", tmp_path / "m.pt", input_size=(64, 64))
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bad_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(_model("mobileone_s0"), "tflite", tmp_path / "m.tflite")  # type: ignore[arg-type]


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s0.onnx"
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "onnx", "--output", str(out)]
    assert main([*argv, "--input-size", "128", "128"]) == 0
    assert "max abs logit diff" in capsys.readouterr().out
    assert read_metadata(out).input_size == (128, 128)
