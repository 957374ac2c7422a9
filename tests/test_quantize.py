"""int8 quantization options (``mobilevit.export.quantize_onnx``): each option shows in the written ONNX graph (nodes
kept in float take float weights, per-tensor weights one scale, symmetric activations zero points of 0, restricted op
types leave the others float), the metadata records what was done, calibration uses every image, channel
equalization keeps the float logits, bias correction moves the int8 mean logits toward the float ones, and bad
values are refused with errors that name them.

References: the exported float graph itself (its node names and op types) run in onnxruntime, and the calibration
images' own pixel range. The accuracy of the defaults on real photos: tests/test_export.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import random_model
from mobilevit.cli import main
from mobilevit.errors import UsageError
from mobilevit.export import export_model, quantize_onnx, read_metadata
from mobilevit.export.quant_fixes import equalize_channels, find_pairs
from mobilevit.export.quantize import calibration_batches

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
numpy_helper = onnx.numpy_helper

SIZE = 64  # calibration and checks at 64x64: the graph is dynamic, and small inputs keep every test at seconds


@pytest.fixture(scope="module")
def s0(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, list[Path]]:
    """A random-weights MobileOne-S0 ONNX file, a 64x64 preprocessing for it and six calibration photos (smooth
    random colour fields, so that activations vary between images)."""
    folder = tmp_path_factory.mktemp("int8")
    path = export_model(random_model("mobileone_s0"), "onnx", folder / "s0.onnx", input_size=(SIZE, SIZE))
    preprocess = dataclasses.replace(
        read_metadata(path).preprocess, input_size=(SIZE, SIZE), resize_size=SIZE, crop_pct=1.0
    )
    rng = np.random.default_rng(0)
    photos = []
    for i in range(6):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        photos.append(folder / f"photo{i}.png")
        Image.fromarray(small).resize((80, 72), Image.BILINEAR).save(photos[-1])
    return path, preprocess, photos


def _quantize(s0: tuple[Path, Any, list[Path]], name: str, **options: Any) -> Path:
    path, preprocess, photos = s0
    return quantize_onnx(path, path.parent / f"{name}.onnx", photos, preprocess=preprocess, **options)


def _float_compute_nodes(path: Path) -> list[str]:
    """Conv/Gemm nodes whose weight is a float initializer (not the output of a DequantizeLinear)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in inits]


def _recorded(path: Path) -> dict[str, Any]:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["quantization"])


def test_first_and_last_layers_stay_float(s0: tuple[Path, Any, list[Path]]) -> None:
    """The default keeps the first Conv (the stem) and the last Gemm (the classifier) of the exported graph in float
    and quantizes every other one; node names also work, and ``()`` quantizes everything."""
    graph = onnx.load(str(s0[0])).graph
    compute = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert graph.node[[n.name for n in graph.node].index(compute[-1])].op_type == "Gemm"
    default = _quantize(s0, "default")
    assert _float_compute_nodes(default) == [compute[0], compute[-1]]
    meta = _recorded(default)
    assert meta["keep_fp32"] == [compute[0], compute[-1]]
    assert meta["equalize"] == 0.75 and meta["bias_correction"] is True and meta["method"] == "minmax"
    assert meta["equalized_pairs"] == len(compute) - 1  # every Conv feeds (through ReLU) a Conv or the classifier
    assert meta["bias_corrected_layers"] == len(compute) - 2
    named = _quantize(s0, "named", keep_fp32=[compute[3]], equalize=None, bias_correction=False)
    assert _float_compute_nodes(named) == [compute[3]]
    assert _recorded(named)["equalize"] is None and _recorded(named)["bias_corrected_layers"] == 0
    assert _float_compute_nodes(_quantize(s0, "all", keep_fp32=(), equalize=None)) == []


def test_options_reach_the_graph(s0: tuple[Path, Any, list[Path]]) -> None:
    """Per-tensor weights have one scale each, symmetric activations a zero point of 0, and ``op_types`` leaves
    the other op types in float."""
    path = _quantize(s0, "options", per_channel=False, symmetric=True, op_types=("Conv",), method="percentile")
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight_scales = [inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_scales and all(s.size == 1 for s in weight_scales)
    activation_zeros = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zeros and all(int(z) == 0 for z in activation_zeros)
    compute = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert _float_compute_nodes(path) == [compute[0], compute[-1]]  # the Gemm: not a Conv, and also the last
    meta = _recorded(path)
    assert meta["per_channel"] is False and meta["activations"] == "symmetric" and meta["op_types"] == ["Conv"]
    assert meta["method"] == "percentile" and meta["calibration_images"] == 6


def test_calibration_uses_every_image(s0: tuple[Path, Any, list[Path]], tmp_path: Path) -> None:
    """The input's int8 range covers the one high-contrast image among 17 flat grey ones, wherever it is in the
    list (onnxruntime's ``CalibMaxIntermediateOutputs=16`` would keep the 17th image only, and fail on 16)."""
    path, preprocess, _ = s0
    contrast = np.zeros((72, 80, 3), np.uint8)
    contrast[:, 40:] = 255  # black and white halves: the preprocessed range's both ends
    Image.fromarray(contrast).save(tmp_path / "a.png")
    for i in range(16):
        Image.new("RGB", (80, 72), (128, 128, 128)).save(tmp_path / f"b{i:02d}.png")
    out = quantize_onnx(path, tmp_path / "q.onnx", tmp_path, preprocess=preprocess, keep_fp32=(), equalize=None)
    x = next(calibration_batches([tmp_path / "a.png"], preprocess))
    graph = onnx.load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quant = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pixel_values")
    covered = float(inits[quant.input[1]]) * 255
    assert covered >= 0.99 * (x.max() - min(x.min(), 0)), (covered, x.min(), x.max())
    sixteen = tmp_path / "sixteen"
    sixteen.mkdir()
    for i in range(16):
        (tmp_path / f"b{i:02d}.png").rename(sixteen / f"b{i:02d}.png")
    assert (
        _recorded(quantize_onnx(path, tmp_path / "q16.onnx", sixteen, preprocess=preprocess))["calibration_images"]
        == 16
    )


def _run(model: Any, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    if outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for name in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs or None, {"pixel_values": x})


def test_equalization_keeps_the_float_logits(s0: tuple[Path, Any, list[Path]], tmp_path: Path) -> None:
    """Equalized, the float graph gives the same logits (onnxruntime, original file as reference) while the channel
    ranges of the activation between two layers are closer to each other."""
    path, preprocess, photos = s0
    batches = list(calibration_batches(photos, preprocess))
    assert equalize_channels(path, tmp_path / "eq.onnx", batches, alpha=1.0) > 0
    before, after = onnx.load(str(path)), onnx.load(str(tmp_path / "eq.onnx"))
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    ref, out = _run(before, x)[0], _run(after, x)[0]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    pair = find_pairs(before.graph)[10]
    tensor = pair.activation
    spread = []
    for model in (before, after):
        acts = np.concatenate([_run(model, b, [tensor])[0] for b in batches])
        peaks = np.abs(acts).max(axis=(0, 2, 3))
        spread.append(peaks.max() / np.median(peaks[peaks > 0]))
    assert spread[1] < 0.5 * spread[0], spread


def test_bias_correction_moves_the_mean_back(s0: tuple[Path, Any, list[Path]]) -> None:
    """Per-tensor weights round coarsely; correcting the biases brings the int8 model's mean logits (over the
    calibration images) closer to the float model's."""
    path, preprocess, photos = s0
    batches = np.concatenate(list(calibration_batches(photos, preprocess)))
    ref = _run(onnx.load(str(path)), batches)[0].mean(axis=0)
    errors = []
    for correct in (False, True):
        q = _quantize(s0, f"bc{correct}", per_channel=False, equalize=None, keep_fp32=(), bias_correction=correct)
        errors.append(np.abs(_run(onnx.load(str(q)), batches)[0].mean(axis=0) - ref).mean())
    assert errors[1] < 0.7 * errors[0], errors


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "fast"}, "mode must be one of static, dynamic; got 'fast'"),
        ({"method": "mse"}, "method must be one of minmax, entropy, percentile; got 'mse'"),
        ({"equalize": 1.5}, "equalize must be None (off) or an alpha between 0 and 1; got 1.5"),
        ({"equalize": True}, "equalize must be None (off) or an alpha between 0 and 1; got True"),
        ({"per_channel": "yes"}, "per_channel must be True or False; got 'yes'"),
        ({"keep_fp32": [""]}, "keep_fp32 takes names (strings); got ['']"),
        ({"keep_fp32": ["middle"]}, "keep_fp32: no node named 'middle' in the graph; give first or last or node"),
        ({"op_types": ["conv"]}, "op_types: 'conv' is not an ONNX operator (did you mean Conv?)"),
        ({"op_types": ["Softmax", "MatMul"]}, "op_types: the graph has no Softmax, MatMul node (it has Conv, Gemm"),
    ],
)
def test_bad_options(s0: tuple[Path, Any, list[Path]], options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as err:
        _quantize(s0, "bad", **options)
    assert message in str(err.value)


@pytest.mark.slow  # default-suite budget: `make test-slow` runs it
def test_cli_int8_flags(s0: tuple[Path, Any, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mobilevit export --quantize int8`` passes its flags through; they are refused without ``--quantize`` and
    the static-only ones with ``--quantize-mode dynamic``."""
    folder = s0[2][0].parent
    out = tmp_path / "s0_int8.onnx"
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "onnx", "--output", str(out)]
    argv += ["--input-size", str(SIZE), str(SIZE), "--quantize", "int8", "--calibration", str(folder)]
    flags = ["--quantize-method", "entropy", "--quantize-weights", "per-tensor", "--keep-fp32", "none"]
    flags += ["--equalize", "off", "--no-bias-correction", "--quantize-activations", "symmetric"]
    assert main([*argv, *flags, "--quantize-ops", "Conv,Gemm"]) == 0
    meta = _recorded(out)
    assert (meta["method"], meta["per_channel"], meta["keep_fp32"], meta["equalize"]) == ("entropy", False, [], None)
    assert (meta["bias_correction"], meta["activations"], meta["op_types"]) == (False, "symmetric", ["Conv", "Gemm"])
    assert _float_compute_nodes(out) == []
    capsys.readouterr()
    assert main([*argv[:8], "--equalize", "0.5"]) == 2
    assert "--equalize is for --quantize int8" in capsys.readouterr().err
    assert main([*argv[:-2], "--quantize-mode", "dynamic", "--equalize", "0.5", "--no-bias-correction"]) == 2
    assert "--equalize, --bias-correction: for --quantize-mode static only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--equalize", "2"])
    assert "expected 'off' or a number between 0 and 1, got '2'" in capsys.readouterr().err
    assert main([*argv, "--keep-fp32", "first,nowhere"]) == 2
    assert "keep_fp32: no node named 'nowhere'" in capsys.readouterr().err
