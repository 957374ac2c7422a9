"""Export (ONNX via torch's dynamo exporter, TorchScript via tracing): the files give the eager logits, carry the
preprocessing and labels, accept a dynamic batch and (ONNX) dynamic height/width, at every size the eager model takes
(MobileViT: also sizes off its patch grid, which the blocks resize), and MobileViT v2's unfold/fold exports without
Col2Im/Im2Col. A static export is checked at its own fixed shape.

The default subset covers every family and block kind (MobileViT v1 / v2 / v3, FastViT RepMixer and attention
stages, MobileOne with SE) at small sizes; every variant, at full sizes, runs with ``-m slow``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mobilevit
from conftest import EXPORT_FAMILIES, random_model
from mobilevit.cli import main
from mobilevit.export import check_export, export_model, read_metadata

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# and at its own size, the one where a Reshape node of a MobileViT v1 graph can break in onnxruntime (off the 64-grid)
RESHAPE_CHECK = {"mobilevit_xxs": ((320, 224),)}
TOLERANCE = 1e-4  # of the logit scale (random-init MobileOne logits reach 1e5; trained models' are ~10)


# Sizes the graph exported at 256x256 must serve. MobileViT: a multiple of 64, sizes whose feature maps are odd at
# some MobileViT block (224 -> 7 at stride 32, 200 -> 25 at stride 8, 97 -> 13, 131 -> 17) so the block resizes, and
# the smallest (32 -> a 1x1 map at stride 32). FastViT and MobileOne: odd sizes.
MOBILEVIT_SIZES = ((320, 192), (320, 224), (200, 288), (97, 131), (64, 64), (32, 32))
# The same kinds of size for the graph exported at 128x128 (96 -> 3 at stride 32, 104 -> 13 at stride 8).
MOBILEVIT_SMALL_SIZES = ((192, 128), (192, 96), (104, 136), (97, 131), (64, 64), (32, 32))


def _sizes(model_name: str, small: bool = False) -> tuple[tuple[int, int], ...]:
    """The other sizes the dynamic graph must serve, beside the one it was traced at."""
    if model_name.startswith("mobilevit"):
        return ((128, 128), *MOBILEVIT_SMALL_SIZES) if small else MOBILEVIT_SIZES
    return ((128, 128), (97, 131)) if small else ((250, 226),)


def _check_onnx(model: torch.nn.Module, path: Path, sizes: tuple[tuple[int, int], ...]) -> None:
    name = path.stem
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"Col2Im", "Im2Col"}, ops
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"], dims
    meta = read_metadata(path)
    assert meta.size_multiple == 1 and meta.dynamic_axes == ("batch", "height", "width")  # every size eager takes
    for size in (meta.input_size, *sizes):
        parity = check_export(model, path, input_size=size, batch_size=2)
        assert parity.input_shape == (2, 3, *size)
        print(f"{name} {size}: max abs diff {parity.max_abs_diff:.2e}, {parity.max_rel_diff:.2e} of the logit scale")
        assert parity.max_rel_diff <= TOLERANCE, f"{name} at {size}: {parity.max_rel_diff:.2e} of the logit scale"
    assert check_export(model, path, batch_size=3).max_rel_diff <= TOLERANCE  # another batch, at the traced size


@pytest.mark.parametrize("name", EXPORT_FAMILIES)
def test_onnx_parity_dynamic(name: str, onnx_export: Callable[[str], tuple[torch.nn.Module, Path]]) -> None:
    """Traced at 128x128 (MobileViT v1 at 104x136, off its patch grid), the graph serves every batch and size."""
    _check_onnx(*onnx_export(name), _sizes(name, small=True) + RESHAPE_CHECK.get(name, ()))


@pytest.mark.slow
@pytest.mark.parametrize("name", mobilevit.list_models(task="classification"))
def test_onnx_parity_every_variant(name: str, tmp_path: Path) -> None:
    model = random_model(name)
    _check_onnx(model, export_model(model, "onnx", tmp_path / f"{name}.onnx", input_size=(256, 256)), _sizes(name))


def test_onnx_metadata(tmp_path: Path) -> None:
    """Preprocessing, labels and sizes round trip through ``metadata_props``."""
    model = random_model("fastvit_t8")
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


def test_static_onnx_is_checked_at_its_fixed_shape(tmp_path: Path) -> None:
    """``dynamic=False`` fixes batch 1 and the size in the graph: the check runs there, and says so when asked for
    another shape (instead of an onnxruntime error)."""
    model = random_model("mobileone_s0")
    path = export_model(model, "onnx", tmp_path / "m.onnx", input_size=(96, 128), dynamic=False)
    parity = check_export(model, path)
    assert parity.input_shape == (1, 3, 96, 128) and parity.max_rel_diff <= TOLERANCE
    with pytest.raises(ValueError, match="fixed batch of 1"):
        check_export(model, path, batch_size=2)
    with pytest.raises(ValueError, match="fixed height of 96"):
        check_export(model, path, input_size=(128, 128))


def test_static_torchscript_is_checked_at_batch_1(tmp_path: Path) -> None:
    model = random_model("mobileone_s0")
    path = export_model(model, "torchscript", tmp_path / "m.pt", input_size=(64, 96), dynamic=False)
    assert read_metadata(path).dynamic_axes == ()
    assert check_export(model, path).input_shape == (1, 3, 64, 96)


def test_cli_export_static(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mobilevit export --static``: the check after the export runs the graph at its fixed batch 1 (batch 2 would
    crash onnxruntime), fp32 and int8."""
    out = tmp_path / "m.onnx"
    argv = [
        "export",
        "--model",
        "mobileone_s0",
        "--random-weights",
        "--format",
        "onnx",
        "--output",
        str(out),
        "--static",
    ]
    assert main([*argv, "--input-size", "96", "128"]) == 0
    assert "at (1, 3, 96, 128)" in capsys.readouterr().out
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 96, 128] and read_metadata(out).dynamic_axes == ()
    argv[7] = str(tmp_path / "int8.onnx")
    assert main([*argv, "--input-size", "64", "64", "--quantize", "int8", "--quantize-mode", "dynamic"]) == 0


@pytest.mark.parametrize("name", ["mobilevitv2_050", "fastvit_sa12", "mobileone_s0"])
def test_torchscript_round_trip(name: str, tmp_path: Path) -> None:
    model = random_model(name)
    path = export_model(model, "torchscript", tmp_path / f"{name}.pt", input_size=(128, 128))
    meta = read_metadata(path)
    assert meta.arch == name and len(meta.labels) == model.num_classes and meta.dynamic_axes == ("batch",)
    parity = check_export(model, path, batch_size=2)
    assert parity.max_rel_diff <= TOLERANCE, parity


def test_export_does_not_modify_the_model(tmp_path: Path) -> None:
    model = random_model("mobileone_s0").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, "torchscript", tmp_path / "m.pt", input_size=(64, 64))
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bad_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(random_model("mobileone_s0"), "tensorrt", tmp_path / "m.plan")  # type: ignore[arg-type]


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s0.onnx"
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "onnx", "--output", str(out)]
    assert main([*argv, "--input-size", "128", "128"]) == 0
    assert "max abs logit diff" in capsys.readouterr().out
    assert read_metadata(out).input_size == (128, 128)


# --- CoreML: conversion succeeds and the saved spec says what the weights need (prediction needs macOS) -------------

COREML_FAST = {  # model, weights entry supplying preprocessing/labels, facts: input size and channel order
    "mobileone_s0": ("mobileone_s0.orig_in1k_reparam", 224, "RGB"),
    "mobilevitv2_050": ("mobilevitv2_050.cvnets_in1k", 256, "RGB"),
    "mobilevit_xxs": ("mobilevit_xxs.orig_in1k", 256, "BGR"),  # Apple's v1 weights were trained on BGR images
}


def _coreml_export(name: str, out: Path, entry: str | None = None, **kwargs: object) -> Path:
    pytest.importorskip("coremltools")
    from mobilevit.weights.entries import get_weights

    pre = get_weights(entry).preprocess if entry else None
    return export_model(random_model(name), "coreml", out / f"{name}.mlpackage", preprocess=pre, **kwargs)


@pytest.mark.parametrize(  # with `-m slow` (6-13 s each); test_segmentation_export checks a CoreML spec by default
    "name", [pytest.param(n, marks=[pytest.mark.slow]) for n in sorted(COREML_FAST)]
)
def test_coreml_spec(name: str, tmp_path: Path) -> None:
    from mobilevit.export import inspect_coreml, validate_coreml

    entry, size, order = COREML_FAST[name]
    path = _coreml_export(name, tmp_path, entry)
    summary = validate_coreml(path)
    assert summary == inspect_coreml(path)
    assert summary.model_type == "mlProgram"
    assert (summary.input_kind, summary.input_name, summary.input_shape) == ("image", "image", (1, 3, size, size))
    assert summary.color_layout == order
    assert summary.output_names == ("classLabel", "classLabel_probs")
    assert summary.num_outputs == 1000 and len(summary.class_labels) == 1000
    assert summary.class_labels[0] == "tench" and summary.class_labels[1] == "goldfish"  # ImageNet-1k order
    assert summary.weight_dtype == "float32"
    meta = read_metadata(path)
    assert meta.arch == name and meta.labels == summary.class_labels and meta.preprocess.channel_order == order
    assert all(summary.metadata[k] == v for k, v in meta.to_dict().items())
    with pytest.raises(ValueError, match="only on macOS"):
        check_export(random_model(name), path)


def test_coreml_float16_tensor_input(tmp_path: Path) -> None:
    from mobilevit.export import validate_coreml

    path = _coreml_export("mobileone_s0", tmp_path, input_size=(128, 160), precision="float16", image_input=False)
    summary = validate_coreml(path)
    assert (summary.input_kind, summary.input_name, summary.input_shape) == ("tensor", "pixel_values", (1, 3, 128, 160))
    assert summary.weight_dtype == "float16" and summary.color_layout == ""


@pytest.mark.parametrize("entry", ["mobilevit_xxs.orig_in1k", "mobileone_s0.orig_in1k_reparam"])
def test_coreml_graph_applies_the_preprocessing(entry: str) -> None:
    """What CoreML feeds the graph (pixels / 255 in the weights' channel order) gives the predictor's answer."""
    skimage = pytest.importorskip("skimage")
    from PIL import Image

    from mobilevit.data.transforms import eval_transform
    from mobilevit.export.coreml import coreml_graph_module
    from mobilevit.export.metadata import model_metadata
    from mobilevit.weights.entries import get_weights

    pre = get_weights(entry).preprocess
    model = random_model(entry.split(".")[0])
    image = Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB")
    transform = eval_transform(pre)
    pixels = transform.pixels(image).float().unsqueeze(0) / 255.0  # what the ImageType gives: [0, 1], channel order
    graph = coreml_graph_module(model, model_metadata(model, preprocess=pre))
    with torch.no_grad():
        expected = model(transform(image).unsqueeze(0)).softmax(-1)
        assert torch.allclose(graph(pixels), expected, atol=1e-6)


def test_coreml_bad_arguments(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    with pytest.raises(ValueError, match="precision must be one of"):
        export_model(random_model("mobileone_s0"), "coreml", tmp_path / "m.mlpackage", precision="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\.mlpackage"):
        from mobilevit.export.coreml import export_coreml
        from mobilevit.export.metadata import model_metadata

        model = random_model("mobileone_s0")
        export_coreml(model, tmp_path / "m.mlmodel", model_metadata(model))


@pytest.mark.slow
@pytest.mark.parametrize("name", mobilevit.list_models(task="classification"))
def test_coreml_every_variant(name: str, tmp_path: Path) -> None:
    from mobilevit.export import validate_coreml

    path = _coreml_export(name, tmp_path)
    summary = validate_coreml(path)
    assert summary.model_type == "mlProgram" and summary.num_outputs == random_model(name).num_classes


def test_cli_export_coreml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("coremltools")
    out = tmp_path / "s0.mlpackage"
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "coreml", "--output", str(out)]
    assert main([*argv, "--input-size", "96", "96", "--precision", "float16"]) == 0
    assert "spec checked" in capsys.readouterr().out
    assert read_metadata(out).input_size == (96, 96)


# --- int8: onnxruntime quantization --------------------------------------------------------------------------------


def test_quantized_s0_keeps_the_fp32_answers(shared: Path, tmp_path: Path) -> None:
    """Real MobileOne-S0 weights, int8 with the default options, calibrated on ``imagenet-calib-100`` (100 photos of
    other classes): on the 100 photos of ``imagenet-samples-100`` it loses at most 1.5 points of top-1 against the
    fp32 file measured here (Apple's code: 77/100), and keeps most top-1 answers."""
    from mobilevit.evaluate import evaluate, read_labelled
    from mobilevit.export import quantize_onnx
    from mobilevit.predict import OnnxPredictor, Predictor

    weights = shared / "weights" / "mobileone_s0_reparam.safetensors"
    photos, calibration = shared / "data" / "imagenet-samples-100", shared / "data" / "imagenet-calib-100"
    if not weights.is_file() or not (photos / "labels.csv").is_file() or not calibration.is_dir():
        pytest.skip(f"real MobileOne-S0 weights, {photos} or {calibration} not found")
    assert not {p.name for p in photos.iterdir()} & {p.name for p in calibration.iterdir() if p.suffix == ".JPEG"}
    eager = Predictor.from_pretrained("mobileone_s0.orig_in1k_reparam", pretrained=weights, batch_size=10)
    fp32 = export_model(eager.model, "onnx", tmp_path / "s0.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "s0_int8.onnx", calibration)
    graph = onnx.load(str(int8)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    inits = {init.name: init for init in graph.initializer}
    weight_scales = [
        inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]  # DequantizeLinear(int8 weight, scale, zero point)
    assert weight_scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales), "not per-channel"
    meta = read_metadata(int8)
    assert meta.arch == "mobileone_s0" and meta.preprocess == eager.preprocess and meta.labels == tuple(eager.labels)
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert json.loads(props["quantization"])["calibration_images"] == 100
    samples, _ = read_labelled(photos)
    reference = evaluate(OnnxPredictor(fp32, batch_size=10), samples)
    result = evaluate(OnnxPredictor(int8, batch_size=10), samples)
    print(
        f"fp32 top-1 {reference['correct_top1']}, top-5 {reference['correct_top5']}; int8 {result['correct_top1']}, "
        f"{result['correct_top5']}"
    )
    assert reference["correct_top1"] == 77  # Apple's own code on these photos
    assert result["correct_top1"] >= reference["correct_top1"] - 1.5, "int8 loses more than 1.5 points of top-1"
    assert result["correct_top5"] >= reference["correct_top5"] - 2
    files = [path for path, _ in samples]
    expected = [answer[0].index for answer in OnnxPredictor(fp32, batch_size=10).predict(files)]
    got = [answer[0].index for answer in OnnxPredictor(int8, batch_size=10).predict(files)]
    agree = sum(a == b for a, b in zip(expected, got, strict=True))
    # measured 95/100 with the defaults, 79/100 with onnxruntime's plain per-channel minmax
    assert agree >= 90, f"int8 top-1 agrees with fp32 on {agree}/100 photos"


def test_cli_export_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "s0_int8.onnx"
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "onnx", "--input-size", "96", "96"]
    argv += ["--output", str(out)]
    assert main([*argv, "--quantize", "int8", "--calibration", str(calib)]) == 0
    assert "int8 static" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    recorded = json.loads(props["quantization"])
    assert recorded == {
        "dtype": "int8",
        "mode": "static",
        "per_channel": True,
        "keep_fp32": recorded["keep_fp32"],  # node names: tests/test_quantize.py checks them
        "op_types": None,
        "format": "QDQ",
        "method": "minmax",
        "activations": "asymmetric",
        "equalize": 0.75,
        "equalized_pairs": recorded["equalized_pairs"],
        "bias_correction": True,
        "bias_corrected_layers": recorded["bias_corrected_layers"],
        "calibration_images": 4,
    }
    assert len(recorded["keep_fp32"]) == 2 and recorded["equalized_pairs"] > 0
    dynamic = tmp_path / "s0_dynamic.onnx"
    argv[-1] = str(dynamic)
    assert main([*argv, "--quantize", "int8", "--quantize-mode", "dynamic"]) == 0
    assert json.loads({p.key: p.value for p in onnx.load(str(dynamic)).metadata_props}["quantization"])["mode"] == (
        "dynamic"
    )
    assert main([*argv, "--quantize", "int8"]) == 2  # static without calibration images
    assert "needs calibration images" in capsys.readouterr().err
    coreml = [*argv[:5], "coreml", "--output", str(tmp_path / "m.mlpackage")]
    assert main([*coreml, "--quantize", "int8"]) == 2
    assert "--quantize applies to --format onnx, executorch and tflite" in capsys.readouterr().err


# --- every file export writes runs; a failed export leaves nothing behind -------------------------------------------


def _small_preprocess(size: int) -> mobilevit.weights.entries.Preprocess:
    """MobileOne-S0's preprocessing, cropping ``size`` (so that a small export takes the predictor's input)."""
    from dataclasses import replace

    from mobilevit.weights.entries import get_weights, resize_size_for

    pre = get_weights("mobileone_s0.orig_in1k_reparam").preprocess
    return replace(pre, input_size=(size, size), resize_size=resize_size_for(size, pre.crop_pct))


def test_cli_predicts_with_the_torchscript_file_export_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mobilevit predict --model FILE.pt`` runs the archive `export --format torchscript` wrote: every logit
    (``--function none``) is the eager model's, on real photos."""
    from mobilevit.predict import Predictor
    from mobilevit.runtime import open_runtime

    skimage = pytest.importorskip("skimage")
    photos = [Path(skimage.__file__).parent / "data" / name for name in ("chelsea.png", "coffee.png")]
    model, pre = random_model("mobileone_s0"), _small_preprocess(64)
    path = export_model(model, "torchscript", tmp_path / "ants.pt", preprocess=pre)
    assert open_runtime(path).name == "torchscript"
    argv = ["predict", *map(str, photos), "--model", str(path), "--function", "none", "--top-k", "1000", "--json"]
    assert main([*argv, "--no-progress"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    eager = Predictor(model, pre)
    for answer, photo in zip(answers, photos, strict=True):
        with torch.no_grad():
            reference = model.eval()(eager.prepare(photo)[None])[0]
        logits = torch.zeros(1000)
        for p in answer["predictions"]:
            logits[p["index"]] = p["score"]
        assert (logits - reference).abs().max() <= 1e-5 * max(1.0, reference.abs().max().item())


def test_a_plain_checkpoint_named_pt_still_loads_as_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ``torch.save`` checkpoint is a zip file too: it stays a checkpoint (``--pretrained``, ``NAME=FILE.pt``), and
    ``--model FILE.pt`` says in CLI terms how to load it."""
    from mobilevit.runtime import is_exported_file, is_torchscript_archive
    from mobilevit.serve.config import ModelSpec

    model = random_model("mobileone_s0")
    checkpoint = tmp_path / "weights.pt"
    torch.save(model.state_dict(), checkpoint)
    assert not is_torchscript_archive(checkpoint) and not is_exported_file(checkpoint)
    loaded = mobilevit.create_model("mobileone_s0", pretrained=str(checkpoint))
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not ModelSpec.parse(f"s0={checkpoint}", True).is_exported
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (80, 60), "red").save(image)
    assert main(["predict", str(image), "--model", str(checkpoint), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model ARCH --pretrained PATH" in err, err


def test_coreml_files_are_refused_in_cli_terms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "s0.mlpackage"
    package.mkdir()
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", str(image), "--model", str(package), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only on Apple devices" in err and "--format onnx" in err, err


def test_cli_export_refuses_a_suffix_of_another_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.tflite"
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "onnx", "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".tflite" in err and "onnx" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure half way through writing, or in the check after it, leaves neither the file nor a temporary one."""
    import mobilevit.export as export

    def half_written(model: torch.nn.Module, output: Path, *args: object) -> Path:
        Path(output).write_bytes(b"PK\x03\x04 half an archive")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "export_torchscript", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(random_model("mobileone_s0"), "torchscript", tmp_path / "m.pt", input_size=(32, 32))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def failed_check(*args: object, **kwargs: object) -> None:
        raise mobilevit.errors.UsageError("the exported file gives other logits")

    monkeypatch.setattr(export, "check_export", failed_check)
    argv = ["export", "--model", "mobileone_s0", "--random-weights", "--format", "torchscript"]
    assert main([*argv, "--output", str(tmp_path / "m.pt"), "--input-size", "32", "32"]) == 2
    assert list(tmp_path.iterdir()) == []
    assert main([*argv, "--output", str(tmp_path / "sub" / "m.pt"), "--input-size", "32", "32"]) == 2
    assert list((tmp_path / "sub").iterdir()) == []
