"""Exported segmentation models: ONNX (dynamic batch, height and width), TorchScript, ExecuTorch, LiteRT and CoreML
files of DeepLabV3 give the eager model's logits, record their task, preprocessing and labels, and run through
``mobilevit segment``, ``mobilevit eval --task segmentation`` and the server like the eager model; a classifier file
is refused where a segmentation model is expected, and the other way round.

References: the eager PyTorch model's logits (random weights, BatchNorms randomised so that the folding shows) and its
masks through the eager segmenter; torchvision's PASCAL VOC label list; output stride 16 of the published DeepLabV3
configuration (logits at 1/16 of the input, rounded up). The photos are real PASCAL VOC 2012 ones from
``../shared/data/voc-mini`` and scikit-image's. Default tests use DeepLabV3 on MobileViT-XXS and MobileOne-S0 at
128x160; ``-m slow`` sweeps every DeepLabV3 variant through every format.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mobilevit
from conftest import random_model
from mobilevit.cli import main
from mobilevit.data.segmentation import list_segmentation_set, read_mask
from mobilevit.export import check_export, export_model, read_metadata
from mobilevit.predict import Predictor
from mobilevit.runtime import open_runtime
from mobilevit.segment import Segmenter, load_model, load_segmenter
from mobilevit.weights import model_io
from mobilevit.weights.entries import Preprocess

pytest.importorskip("onnxscript", reason="exporting needs onnxscript (pip install 'mobilevit[export]')")

MODELS = ("deeplabv3_mobilevit_xxs", "deeplabv3_mobileone_s0")
SIZE = (128, 160)  # (H, W): small, not square
OUTPUT_STRIDE = 16  # the published DeepLabV3 checkpoints' (and our default) output stride
TOLERANCE = 1e-4  # of the logit scale
# format -> (suffix, the runtime backends that run it, the modules its toolchain needs, the extra that installs them)
FORMATS = {
    "onnx": (".onnx", ("onnxruntime", "openvino"), ("onnxruntime",), "export"),
    "torchscript": (".pt", (), (), ""),
    "executorch": (".pte", ("executorch",), ("executorch",), "executorch"),
    "tflite": (".tflite", ("litert",), ("litert_torch", "ai_edge_litert"), "litert"),
}
# the model of the metadata checks per format: DeepLabV3-MobileViT-XXS, except for ExecuTorch, whose lowering of
# MobileViT v1 attention takes over a minute; ExecuTorch's files (30 s for MobileOne-S0) are made by slow tests only
CHECKED = {"onnx": MODELS[0], "torchscript": MODELS[0], "executorch": MODELS[1], "tflite": MODELS[0]}
SLOW_FORMATS = ("executorch",)
SLOW_CASES = {(MODELS[1], "tflite")}  # LiteRT's segmentation graph is checked on DeepLabV3-MobileViT-XXS by default
RUNTIME_MODULES = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "executorch": "executorch",
    "litert": "ai_edge_litert",
}


def need(*modules: str, extra: str = "") -> None:
    """Skip, naming the extra, when a package is not installed."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'mobilevit[{extra or module}]')")


def small_preprocess(model: nn.Module, size: tuple[int, int] = SIZE) -> Preprocess:
    """The model's own preprocessing (its backbone's pixels, the whole image resized) at ``size``."""
    return dataclasses.replace(model_io(model).preprocess, input_size=size, resize_size=min(size))


def voc_labels() -> tuple[str, ...]:
    """PASCAL VOC's 21 classes in index order, as torchvision lists them (index 0 spelled "background")."""
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    categories = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    return ("background", *categories[1:])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[nn.Module, Path]]:
    """``exported(arch, format)``: :func:`random_model` and its export at ``SIZE`` with a ``SIZE`` preprocessing, made
    once per module."""
    folder = tmp_path_factory.mktemp("segmentation-exports")
    made: dict[tuple[str, str], tuple[nn.Module, Path]] = {}

    def get(name: str, fmt: str) -> tuple[nn.Module, Path]:
        suffix, _, modules, extra = FORMATS[fmt]
        need(*modules, extra=extra)
        if (name, fmt) not in made:
            model = random_model(name)
            path = export_model(
                model, fmt, folder / f"{name}{suffix}", input_size=SIZE, preprocess=small_preprocess(model)
            )
            made[name, fmt] = model, path
        return made[name, fmt]

    return get


@pytest.fixture(scope="module")
def eager_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepLabV3-MobileViT-XXS with the weights of ``exported``'s, saved with the same ``SIZE`` preprocessing."""
    model = random_model(MODELS[0])
    folder = tmp_path_factory.mktemp("segmentation-eager") / "model"
    mobilevit.save_pretrained(model, folder, preprocess=small_preprocess(model))
    return folder


def voc_photos(shared: Path, count: int) -> list[tuple[Path, Path]]:
    return list_segmentation_set(shared / "data" / "voc-mini")[:count]


def agreement(mask: np.ndarray, reference: np.ndarray) -> float:
    assert mask.shape == reference.shape
    return float((mask == reference).mean())


# ------------------------------------------------------------------------------------------------- logits parity


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        pytest.param(name, fmt, marks=[pytest.mark.slow] if fmt in SLOW_FORMATS or (name, fmt) in SLOW_CASES else [])
        for name in MODELS
        for fmt in FORMATS
    ],
)
def test_logits_match_eager(exported: Callable, name: str, fmt: str) -> None:
    """Each file in its own runtime gives the eager ``[B, 21, h, w]`` logits at the export size, ``h, w`` 1/16 of it."""
    model, path = exported(name, fmt)
    parity = check_export(model, path)
    print(f"{name} {fmt} {parity.input_shape}: {parity.max_rel_diff:.1e} of the logit scale")
    assert parity.max_rel_diff <= TOLERANCE, parity
    with torch.no_grad():
        shape = model(torch.zeros(1, 3, *SIZE)).shape
    assert shape == (1, 21, -(-SIZE[0] // OUTPUT_STRIDE), -(-SIZE[1] // OUTPUT_STRIDE))
    if fmt in ("executorch", "tflite"):
        out = open_runtime(path).run(torch.zeros(1, 3, *SIZE))
        assert tuple(out.shape) == tuple(shape)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_takes_any_batch_and_size(exported: Callable, name: str) -> None:
    """The ONNX graph traced at 128x160 serves other batches and sizes, square and not, on and off the 16-grid."""
    onnx = pytest.importorskip("onnx")
    model, path = exported(name, "onnx")
    proto = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    out_dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[:2] == ["batch", 21] and all(isinstance(d, str) for d in out_dims[2:]), out_dims
    assert read_metadata(path).dynamic_axes == ("batch", "height", "width")
    for size, batch in (((256, 256), 2), ((192, 320), 2), ((97, 131), 1), (SIZE, 3)):
        parity = check_export(model, path, input_size=size, batch_size=batch)
        print(f"{name} onnx {parity.input_shape}: {parity.max_rel_diff:.1e} of the logit scale")
        assert parity.max_rel_diff <= TOLERANCE, (size, parity)


def test_openvino_runs_the_onnx_file(exported: Callable) -> None:
    need("openvino")
    model, path = exported(MODELS[0], "onnx")
    runtime = open_runtime(path, "openvino")
    assert runtime.task == "segmentation"
    x = torch.randn(2, 3, 192, 320, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    got = runtime.run(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= TOLERANCE * expected.abs().max()


# ---------------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    "fmt", [pytest.param(f, marks=[pytest.mark.slow] if f in SLOW_FORMATS else []) for f in FORMATS]
)
def test_metadata_records_the_task(exported: Callable, fmt: str) -> None:
    model, path = exported(CHECKED[fmt], fmt)
    meta = read_metadata(path)
    assert meta.task == "segmentation" and meta.arch == CHECKED[fmt] and meta.labels == voc_labels()
    assert meta.preprocess == small_preprocess(model) and meta.preprocess.resize_mode == "exact"
    assert meta.input_size == SIZE
    for backend in FORMATS[fmt][1]:
        need(RUNTIME_MODULES[backend])
        assert open_runtime(path, backend).task == "segmentation", backend


def test_default_export_records_the_512_exact_resize(exported: Callable, tmp_path: Path) -> None:
    """Without a preprocessing of its own, the file records the model's: the whole image resized to 512x512 (BGR
    pixels in [0, 1] for MobileViT v1, as Apple's DeepLabV3 weights were trained), and the segmenter feeds it so."""
    model, _ = exported(MODELS[0], "torchscript")  # the record is the same in every format: the cheapest one
    path = export_model(model, "torchscript", tmp_path / "default.pt")  # traced at the recorded 512x512
    meta = read_metadata(path)
    pre = meta.preprocess
    assert (pre.input_size, pre.resize_mode, pre.crop_pct, pre.channel_order) == ((512, 512), "exact", 1.0, "BGR")
    assert (pre.mean, pre.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert meta.task == "segmentation" and meta.labels == voc_labels()
    segmenter = load_segmenter(path)
    assert segmenter.preprocess == pre and segmenter.labels == list(voc_labels())
    # a crop is never recorded for a segmentation model: every pixel of the image needs a place in the mask
    s0, _ = exported(MODELS[1], "torchscript")
    cropping = dataclasses.replace(pre, resize_mode="shorter_side", resize_size=584, crop_pct=512 / 584)
    path = export_model(s0, "torchscript", tmp_path / "cropping.pt", input_size=SIZE, preprocess=cropping)
    assert read_metadata(path).preprocess == pre


def test_coreml_segmentation_model(exported: Callable, tmp_path: Path) -> None:
    """CoreML: an image input of the export size and a ``logits`` output ``[1, 21, h, w]`` (no classifier outputs);
    the graph it converts applies the weights' preprocessing and gives the eager logits."""
    need("coremltools")
    from mobilevit.export import validate_coreml
    from mobilevit.export.coreml import coreml_graph_module

    model, _ = exported(MODELS[1], "torchscript")
    path = export_model(model, "coreml", tmp_path / "seg.mlpackage", input_size=SIZE)
    summary = validate_coreml(path)
    assert (summary.input_kind, summary.input_shape, summary.color_layout) == ("image", (1, 3, *SIZE), "RGB")
    assert summary.output_names == ("logits",) and summary.class_labels == ()
    assert summary.output_shape == (1, 21, SIZE[0] // OUTPUT_STRIDE, SIZE[1] // OUTPUT_STRIDE)
    assert summary.num_outputs == 21 and read_metadata(path).task == "segmentation"
    with pytest.raises(ValueError, match="only on macOS"):
        check_export(model, path)
    # what CoreML hands the graph: the pixels / 255 in the weights' channel order (BGR for MobileViT v1)
    xxs, _ = exported(MODELS[0], "torchscript")
    meta = read_metadata(export_model(xxs, "torchscript", tmp_path / "xxs.pt", input_size=SIZE))
    graph = coreml_graph_module(mobilevit.reparameterize_model(xxs), meta, image_input=True, classifier=False)
    pixels = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))  # [0, 1], BGR
    with torch.no_grad():
        expected = xxs(pixels)  # MobileViT v1's preprocessing is [0, 1] BGR pixels, no mean/std
        got = graph(pixels)
    assert got.shape == expected.shape and (got - expected).abs().max() <= TOLERANCE * expected.abs().max()


# ------------------------------------------------------------------------------------- segmenter, CLI, server


@pytest.mark.parametrize(
    "backend", ["onnxruntime", "openvino", pytest.param("executorch", marks=pytest.mark.slow), "litert"]
)
def test_segmenter_over_each_backend_gives_the_eager_masks(
    exported: Callable, eager_folder: Path, backend: str
) -> None:
    """A segmenter over the exported file gives the eager segmenter's masks on real photos (scikit-image's), at each
    photo's own size. (DeepLabV3-MobileViT-XXS: the random MobileOne-S0 gives one class everywhere.)"""
    skimage = pytest.importorskip("skimage")
    need(RUNTIME_MODULES[backend])
    fmt = {"onnxruntime": "onnx", "openvino": "onnx", "executorch": "executorch", "litert": "tflite"}[backend]
    _, path = exported(MODELS[0], fmt)
    segmenter = load_segmenter(path, backend, batch_size=3)
    assert isinstance(segmenter, Segmenter) and segmenter.runtime.name == backend
    eager = Segmenter.from_pretrained(str(eager_folder))
    photos = [Path(skimage.__file__).parent / "data" / n for n in ("chelsea.png", "coffee.png", "astronaut.png")]
    classes = set()
    for got, want in zip(segmenter.segment(photos), eager.segment(photos), strict=True):
        assert agreement(got.mask, want.mask) >= 0.999
        classes |= set(np.unique(want.mask).tolist())
    assert len(classes) >= 2  # the random model's masks are not one class everywhere, so the check means something


def test_cli_segment_exported_onnx_gives_the_eager_mask(
    exported: Callable, eager_folder: Path, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``mobilevit segment`` on the ONNX file writes the mask PNG the eager model writes, on real VOC photos."""
    _, path = exported(MODELS[0], "onnx")
    photos = [image for image, _ in voc_photos(shared, 2)]
    out = {}
    for kind, model in (("onnx", path), ("eager", eager_folder)):
        argv = ["segment", *map(str, photos), "--model", str(model), "--output", str(tmp_path / kind), "--json"]
        assert main([*argv, "--no-progress"]) == 0
        out[kind] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    classes = set()
    for onnx_record, eager_record in zip(out["onnx"], out["eager"], strict=True):
        got, want = np.asarray(Image.open(onnx_record["mask"])), np.asarray(Image.open(eager_record["mask"]))
        assert got.shape == Image.open(onnx_record["file"]).size[::-1]
        assert agreement(got, want) >= 0.999, onnx_record["file"]
        classes |= set(np.unique(want).tolist())
    assert len(classes) >= 2


def test_cli_eval_exported_segmentation(
    exported: Callable, eager_folder: Path, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --task segmentation`` (and ``eval`` with the task read from the file) scores the exported file as the
    eager model is scored, on real VOC images and masks."""
    for sub in ("images", "masks"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    for image, mask in voc_photos(shared, 3):
        (tmp_path / "set" / "images" / image.name).write_bytes(image.read_bytes())
        Image.fromarray(read_mask(mask)).save(tmp_path / "set" / "masks" / mask.name)
    results = {}
    for kind, model, task in (
        ("onnx", exported(MODELS[0], "onnx")[1], ["--task", "segmentation"]),
        ("tflite", exported(MODELS[0], "tflite")[1], []),
        ("eager", eager_folder, ["--task", "segmentation"]),
    ):
        assert main(["eval", str(tmp_path / "set"), "--model", str(model), *task, "--json", "--no-progress"]) == 0
        results[kind] = json.loads(capsys.readouterr().out)
    assert results["onnx"]["backend"] == "onnxruntime" and results["tflite"]["backend"] == "litert"
    for kind in ("onnx", "tflite"):
        assert results[kind]["task"] == "segmentation" and results[kind]["count"] == 3
        assert results[kind]["miou"] == pytest.approx(results["eager"]["miou"], abs=1e-3)
        assert results[kind]["pixel_accuracy"] == pytest.approx(results["eager"]["pixel_accuracy"], abs=1e-3)


def test_tasks_are_not_mixed_up(exported: Callable, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A classifier file is refused for segmentation and a segmentation file for classification, naming the file
    and what to run instead; ``load_model`` picks each file's own task."""
    _, seg = exported(MODELS[1], "onnx")
    classifier = export_model(random_model("mobileone_s0"), "onnx", tmp_path / "s0.onnx", input_size=(64, 64))
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30)).save(image)
    assert main(["segment", str(image), "--model", str(classifier), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{classifier} (mobileone_s0) is an image classification model" in err and "mobilevit predict" in err
    assert main(["eval", str(tmp_path), "--model", str(classifier), "--task", "segmentation"]) == 2
    assert "is an image classification model" in capsys.readouterr().err
    assert main(["predict", str(image), "--model", str(seg)]) == 2
    err = capsys.readouterr().err
    assert f"{seg} (deeplabv3_mobileone_s0) is a semantic segmentation model" in err and "mobilevit segment" in err
    assert main(["eval", str(tmp_path), "--model", str(seg), "--task", "classification"]) == 2
    assert "is a semantic segmentation model" in capsys.readouterr().err
    assert main(["segment", str(image), "--model", str(seg), "--random-weights", "--output", str(tmp_path)]) == 2
    assert "carries its weights" in capsys.readouterr().err
    assert type(load_model(seg)) is Segmenter and type(load_model(classifier)) is Predictor
    with pytest.raises(ValueError, match="image classification model"):
        Segmenter.from_exported(classifier)
    with pytest.raises(ValueError, match="semantic segmentation model"):
        Predictor.from_exported(seg)


def test_server_answers_with_the_exported_file(exported: Callable, eager_folder: Path) -> None:
    """``mobilevit serve --model seg=FILE.onnx`` answers the image-segmentation task with the eager masks."""
    pytest.importorskip("fastapi")
    import base64

    from starlette.testclient import TestClient

    from mobilevit.serve import ModelSpec, ServeConfig, create_app
    from test_serve import photo, wait_ready

    _, path = exported(MODELS[0], "onnx")
    config = ServeConfig(models=(ModelSpec.parse(f"seg={path}"),), backend="onnxruntime", max_batch_size=2)
    buffer = io.BytesIO()
    Image.open(photo("coffee.png")).convert("RGB").resize((150, 100)).save(buffer, "PNG")
    expected = Segmenter.from_pretrained(str(eager_folder)).segment(buffer.getvalue())[0]
    with TestClient(create_app(config)) as client:
        wait_ready(client)
        assert client.get("/health").json()["models"]["seg"]["task"] == "segmentation"
        response = client.post("/models/seg", content=buffer.getvalue())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [s["label"] for s in answer] == [c["label"] for c in sorted(expected.classes(), key=lambda c: c["index"])]
    mask = np.full(expected.size, -1)
    for segment in answer:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(segment["mask"])))) == 255
        mask[pixels] = voc_labels().index(segment["label"])
    assert agreement(mask, expected.mask) >= 0.999


def test_cli_export_prints_the_parity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "seg.onnx"
    argv = ["export", "--model", MODELS[1], "--random-weights", "--format", "onnx", "--output", str(out)]
    assert main([*argv, "--input-size", "64", "96"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (onnx)" in printed and "at (2, 3, 64, 96)" in printed
    assert float(printed.split("diff vs eager ")[1].split()[0]) >= 0  # the parity check ran on the logits map


# ------------------------------------------------------------------------------------------------------- sweep


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [*FORMATS, "coreml"])
@pytest.mark.parametrize("name", mobilevit.list_models(task="segmentation"))
def test_every_variant_every_format(name: str, fmt: str, tmp_path: Path) -> None:
    """Every DeepLabV3 variant in every format at 256x256 (ONNX also at 192x320 and 97x131): the eager logits."""
    model = random_model(name)
    if fmt == "coreml":
        need("coremltools")
        from mobilevit.export import validate_coreml

        path = export_model(model, "coreml", tmp_path / f"{name}.mlpackage", input_size=(256, 256))
        assert validate_coreml(path).output_shape == (1, 21, 16, 16)
        return
    suffix, _, modules, extra = FORMATS[fmt]
    need(*modules, extra=extra)
    pre = small_preprocess(model, (256, 256))
    path = export_model(model, fmt, tmp_path / f"{name}{suffix}", input_size=(256, 256), preprocess=pre)
    sizes = ((256, 256), (192, 320), (97, 131)) if fmt == "onnx" else ((256, 256),)
    for size in sizes:
        parity = check_export(model, path, input_size=size)
        print(f"{name} {fmt} {parity.input_shape}: {parity.max_rel_diff:.1e} of the logit scale")
        assert parity.max_rel_diff <= TOLERANCE, (size, parity)
