"""Exported detectors: ONNX, TorchScript, ExecuTorch, LiteRT and CoreML files of SSDLite give the eager model's raw
outputs (``logits``, ``boxes``, ``anchors``), the same detections after the detection task's post-processing (which
runs after the graph, in the runner), record their task, preprocessing, labels and output names, and run through
``mobilevit detect``, ``mobilevit eval --task detection``, the server and ``mobilevit bench`` like the eager model.

References: the eager PyTorch model (random weights, BatchNorms randomised so that the folding shows, class predictors
scaled so that its scores are decisive: a random detector's softmax is ~1/81 everywhere, nearly tied); the anchor
count of ml-cvnets' SSDLite at 320x320 (3232: 6 anchors per location on the 20, 10, 5, 3 and 2 pixel maps, 4 on the
global one); torchvision's COCO category names. The photos are real ones from ``../shared/data/det-mini``. Default
tests: SSDLite-MobileViT-XXS, ONNX traced at 288x320 (above 256 a side, so one graph takes every size) and
TorchScript at 128x160; ExecuTorch, LiteRT and CoreML (over a minute each to convert) are behind ``-m slow``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import mobilevit
from conftest import random_model
from mobilevit.cli import main
from mobilevit.export import check_export, export_model, read_metadata
from mobilevit.runner import Runner, load_runner
from mobilevit.runtime import open_runtime
from mobilevit.tasks import get_task
from mobilevit.tasks.detection import Detection, detect, to_pixels

pytest.importorskip("onnxscript", reason="exporting needs onnxscript (pip install 'mobilevit[export]')")

MODEL = "ssdlite_mobilevit_xxs"
ONNX_SIZE = (288, 320)  # (H, W): every level above 1x1 when traced, so the graph keeps height and width symbolic
FIXED_SIZE = (128, 160)  # the size of the formats that fix it: small, not square
TOLERANCE = 1e-5  # of each raw output's largest value, as the parity with ml-cvnets' fixtures
OUTPUTS = ("logits", "boxes", "anchors")
# format -> (suffix, export size, the modules its toolchain and runtime need, the extra that installs them)
FORMATS = {
    "onnx": (".onnx", ONNX_SIZE, ("onnxruntime",), "export"),
    "torchscript": (".pt", FIXED_SIZE, (), ""),
    "executorch": (".pte", FIXED_SIZE, ("executorch",), "executorch"),
    "tflite": (".tflite", FIXED_SIZE, ("litert_torch", "ai_edge_litert"), "litert"),
}
SLOW_FORMATS = ("executorch", "tflite")  # a minute or more each to lower SSDLite-MobileViT-XXS


def need(*modules: str, extra: str = "") -> None:
    """Skip, naming the extra, when a package is not installed."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'mobilevit[{extra or module}]')")


def by_format(slow: tuple[str, ...] = SLOW_FORMATS) -> list:
    return [pytest.param(f, marks=[pytest.mark.slow] if f in slow else []) for f in FORMATS]


def decisive_detector() -> nn.Module:
    """:func:`random_model` of ``MODEL`` with its class predictors' weights x10 and biases N(0, 3): a few classes score
    high at some anchors, so there is something to detect and float differences do not reorder the detections."""
    model = random_model(MODEL)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conv in model.classifier:
            conv.weight.mul_(10.0)
            conv.bias.copy_(3.0 * torch.randn(conv.bias.shape, generator=g))
    return model


def coco_names() -> tuple[str, ...]:
    """COCO's 80 class names in category-id order, as torchvision lists them (without its "N/A" gaps)."""
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    categories = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"]
    return tuple(c for c in categories[1:] if c != "N/A")


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    return decisive_detector()


@pytest.fixture(scope="module")
def exported(detector: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``exported(format)``: the detector's file in that format, made once per module."""
    folder = tmp_path_factory.mktemp("detection-exports")
    made: dict[str, Path] = {}

    def get(fmt: str) -> Path:
        suffix, size, modules, extra = FORMATS[fmt]
        need(*modules, extra=extra)
        if fmt not in made:
            made[fmt] = export_model(detector, fmt, folder / f"{MODEL}{suffix}", input_size=size)
        return made[fmt]

    return get


@pytest.fixture(scope="module")
def eager_folder(detector: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The detector saved with its own preprocessing (the whole image resized to 320x320, BGR)."""
    folder = tmp_path_factory.mktemp("detection-eager") / "model"
    mobilevit.save_pretrained(detector, folder)
    return folder


@pytest.fixture(scope="module")
def photos(shared: Path) -> list[Path]:
    folder = shared / "data" / "det-mini" / "images"
    if not folder.is_dir():
        pytest.skip(f"no detection photos at {folder}")
    return sorted(folder.glob("*.jpg"))[:3]


# ------------------------------------------------------------------------------------------------ raw outputs


@pytest.mark.parametrize("fmt", by_format())
def test_raw_outputs_match_eager(detector: nn.Module, exported: Callable, fmt: str) -> None:
    """Each file in its own runtime gives the eager logits, boxes and anchors at its export size (batch 2 where the
    batch is dynamic), every value within ``TOLERANCE`` of its output's scale."""
    path = exported(fmt)
    parity = check_export(detector, path)
    print(f"{MODEL} {fmt} {parity.input_shape}: {parity.max_rel_diff:.1e} of the scale; {parity.others}")
    assert parity.max_rel_diff <= TOLERANCE, parity
    runtime = open_runtime(path)
    outputs = runtime.run_named(torch.zeros(1, 3, *FORMATS[fmt][1]))
    assert list(outputs)[1:] == [name for name, _, _ in parity.others]  # check_export names them as the file does
    if fmt != "tflite":  # LiteRT names them serving_default_output_<i>_output, in the same order
        assert tuple(outputs) == OUTPUTS
    logits, boxes, anchors = outputs.values()
    assert logits.shape[2] == 81 and boxes.shape[2] == anchors.shape[2] == 4
    assert logits.shape[1] == boxes.shape[1] == anchors.shape[1]


def test_onnx_takes_any_batch_and_size(detector: nn.Module, exported: Callable) -> None:
    """The ONNX graph traced at 288x320 serves other batches and sizes, its anchors following the feature maps: 3232
    at 320x320 (ml-cvnets' count), and inputs whose small levels are 1x1."""
    onnx = pytest.importorskip("onnx")
    path = exported("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in proto.graph.output] == list(OUTPUTS)
    assert read_metadata(path).dynamic_axes == ("batch", "height", "width")
    for size, batch in (((320, 320), 1), ((128, 160), 2), ((97, 131), 1), ((64, 64), 3)):
        parity = check_export(detector, path, input_size=size, batch_size=batch)
        print(f"{MODEL} onnx {parity.input_shape}: {parity.max_rel_diff:.1e} of the scale")
        assert parity.max_rel_diff <= TOLERANCE, (size, parity)
    anchors = open_runtime(path).run_named(torch.zeros(1, 3, 320, 320))["anchors"]
    assert anchors.shape == (1, 3232, 4)


@pytest.mark.slow  # another ONNX export: 20 s
def test_onnx_below_257_pixels_fixes_the_size(detector: nn.Module, tmp_path: Path) -> None:
    """Traced at 128x160, a level is 1x1, which torch.export fixes: the file keeps the batch dynamic only, records
    its size in the preprocessing, and runs there."""
    path = export_model(detector, "onnx", tmp_path / "small.onnx", input_size=FIXED_SIZE)
    meta = read_metadata(path)
    assert meta.dynamic_axes == ("batch",) and meta.preprocess.input_size == FIXED_SIZE
    assert check_export(detector, path).max_rel_diff <= TOLERANCE


# ------------------------------------------------------------------------------------------------ detections


def assert_same_detections(got: Detection, want: Detection, box_tol: float = 1e-2, score_tol: float = 1e-5) -> None:
    """The same detections: as many, each with a partner of the same label, a score within ``score_tol`` and a box
    within ``box_tol`` pixels. Partners may sit at other places in the order: where two of a class score within float
    noise of each other (a random detector's anchors do), the runtimes' last bits decide which comes first."""
    assert len(got) == len(want)
    assert sorted(got.labels.tolist()) == sorted(want.labels.tolist())
    free = list(range(len(want)))
    for box, label, score in zip(got.boxes, got.labels.tolist(), got.scores, strict=True):
        partner = next(
            (
                j
                for j in free
                if want.labels[j] == label
                and abs(float(want.scores[j] - score)) <= score_tol
                and float((want.boxes[j] - box).abs().max()) <= box_tol
            ),
            None,
        )
        assert partner is not None, (label, float(score), box.tolist())
        free.remove(partner)


def from_rows(rows: list[dict]) -> Detection:
    """A :class:`Detection` of the command line's or the server's answer rows (``label``, ``score``, ``box``)."""
    names = coco_names()
    boxes = torch.tensor([[r["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows]).reshape(-1, 4)
    labels = torch.tensor([names.index(r["label"]) + 1 for r in rows], dtype=torch.int64)
    scores = torch.tensor([r["score"] for r in rows])
    return Detection(boxes, labels, scores, tuple(r["label"] for r in rows), (0, 0))


@pytest.mark.parametrize("fmt", by_format())
def test_detections_match_eager(detector: nn.Module, exported: Callable, photos: list[Path], fmt: str) -> None:
    """``load_runner`` of the file gives, on real photos, exactly the detection task's post-processing of the file's
    raw outputs, and the eager runner's detections (with the file's preprocessing) up to the order of near-ties."""
    runner = load_runner(exported(fmt))
    assert runner.task is get_task("detection") and runner.runtime.name != "eager"
    eager = Runner(detector, runner.preprocess, fold=False)
    loaded = [runner.load_input(photo) for photo in photos]
    raw = runner.logits(torch.stack([x for x, _ in loaded]))  # one batch, as run() runs them
    found = 0
    for i, (got, want) in enumerate(zip(runner.run(photos), eager.run(photos), strict=True)):
        assert_same_detections(got, want)
        found += len(got.above(0.5))
        boxes, labels, scores = detect(*(raw[name][i] for name in OUTPUTS))  # the same raw tensors: exactly
        assert labels.tolist() == got.labels.tolist() and torch.equal(scores, got.scores)
        torch.testing.assert_close(to_pixels(boxes, loaded[i][1].size), got.boxes, rtol=0, atol=0)
    assert found > 0  # the decisive detector finds objects above the server's threshold


@pytest.mark.slow  # OpenVINO compiling the graph: 8 s
def test_openvino_runs_the_onnx_file(detector: nn.Module, exported: Callable, photos: list[Path]) -> None:
    """OpenVINO compiles the same ONNX file: the eager raw outputs at another size, the eager detections."""
    need("openvino")
    path = exported("onnx")
    runtime = open_runtime(path, "openvino")
    assert runtime.task == "detection"
    x = torch.randn(2, 3, 192, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = detector(x)
    got = runtime.run_named(x)
    assert tuple(got) == OUTPUTS
    for want, out in zip(expected, got.values(), strict=True):
        assert out.shape == want.shape and (out - want).abs().max() <= TOLERANCE * want.abs().max()
    runner = load_runner(path, "openvino")
    eager = Runner(detector, runner.preprocess, fold=False)
    for found, want in zip(runner.run(photos[:2]), eager.run(photos[:2]), strict=True):
        assert_same_detections(found, want)


@pytest.mark.parametrize("fmt", by_format())
def test_metadata_records_the_task(exported: Callable, fmt: str) -> None:
    """Task, COCO labels (the background first), output names, and the preprocessing the runner feeds the file: the
    whole image resized (BGR pixels in [0, 1], MobileViT v1's) to 320x320 for the ONNX graph of any size, to the
    export size for a file that fixes it."""
    meta = read_metadata(exported(fmt))
    assert meta.task == "detection" and meta.arch == MODEL
    assert meta.labels[0] == "background" and meta.labels[1:] == coco_names()
    assert meta.output_axes == ("batch", "anchors", "classes")
    assert len(meta.output_names) == 3 and (fmt == "tflite" or meta.output_names == OUTPUTS)
    pre = meta.preprocess
    assert (pre.resize_mode, pre.crop_pct, pre.channel_order, pre.mean, pre.std) == (
        "exact", 1.0, "BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    )  # fmt: skip
    assert pre.input_size == ((320, 320) if fmt == "onnx" else FIXED_SIZE) and meta.input_size == FORMATS[fmt][1]


@pytest.mark.slow  # a CoreML conversion: about a minute
def test_coreml_detector(detector: nn.Module, tmp_path: Path) -> None:
    """CoreML: an image input of the export size and three raw outputs ``logits`` ``[1, A, 81]``, ``boxes`` and
    ``anchors`` ``[1, A, 4]`` (no classifier outputs); the graph it converts gives the eager outputs in PyTorch."""
    need("coremltools")
    from mobilevit.export import validate_coreml
    from mobilevit.export.coreml import coreml_graph_module

    path = export_model(detector, "coreml", tmp_path / "det.mlpackage", input_size=FIXED_SIZE)
    summary = validate_coreml(path)
    assert (summary.input_kind, summary.input_shape, summary.color_layout) == ("image", (1, 3, *FIXED_SIZE), "BGR")
    assert summary.output_names == OUTPUTS and summary.class_labels == () and summary.num_outputs == 81
    meta = read_metadata(path)
    assert meta.task == "detection" and meta.preprocess.input_size == FIXED_SIZE
    graph = coreml_graph_module(mobilevit.reparameterize_model(detector), meta, image_input=True, classifier=False)
    pixels = torch.rand(1, 3, *FIXED_SIZE, generator=torch.Generator().manual_seed(0))  # [0, 1], BGR
    with torch.no_grad():
        expected, got = detector(pixels), graph(pixels)  # MobileViT v1's preprocessing: the pixels as they are
    assert summary.output_shape == tuple(expected.logits.shape)
    for want, out in zip(expected, got, strict=True):
        assert (out - want).abs().max() <= TOLERANCE * want.abs().max()


# ------------------------------------------------------------------------------------- detect, eval, server


def test_cli_detect_exported_gives_the_eager_detections(
    exported: Callable, eager_folder: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``mobilevit detect`` on the ONNX and TorchScript files: the eager folder's boxes for the ONNX file (the same
    320x320 input), and drawn JPEGs of each photo's size."""
    records = {}
    for kind, model in (("onnx", exported("onnx")), ("torchscript", exported("torchscript")), ("eager", eager_folder)):
        argv = ["detect", *map(str, photos[:2]), "--model", str(model), "--output", str(tmp_path / kind), "--json"]
        assert main([*argv, "--threshold", "0.3", "--no-progress"]) == 0
        records[kind] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for got, want in zip(records["onnx"], records["eager"], strict=True):
        assert_same_detections(from_rows(got["detections"]), from_rows(want["detections"]))
    assert sum(len(r["detections"]) for r in records["eager"]) > 0
    for record in records["torchscript"]:
        assert Image.open(record["boxes"]).size == Image.open(record["file"]).size


def _coco_subset(shared: Path, folder: Path, count: int) -> Path:
    """The first ``count`` images of det-mini and their boxes, as a COCO-format set."""
    source = shared / "data" / "det-mini"
    data = json.loads((source / "annotations" / "instances.json").read_text())
    images = sorted(data["images"], key=lambda i: i["id"])[:count]
    ids = {i["id"] for i in images}
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    for image in images:
        shutil.copy(source / "images" / image["file_name"], folder / "images" / image["file_name"])
    subset = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    (folder / "annotations" / "instances.json").write_text(json.dumps(subset))
    return folder


def test_cli_eval_exported_detection(
    exported: Callable, eager_folder: Path, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --task detection`` scores the ONNX file as the eager model is scored (same COCO numbers), and the
    TorchScript file (the task read from it)."""
    pytest.importorskip("pycocotools", reason="COCO mAP needs pycocotools (pip install 'mobilevit[coco]')")
    data = _coco_subset(shared, tmp_path / "set", 3)
    results = {}
    for kind, model, task in (
        ("onnx", exported("onnx"), ["--task", "detection"]),
        ("torchscript", exported("torchscript"), []),
        ("eager", eager_folder, ["--task", "detection"]),
    ):
        assert main(["eval", str(data), "--model", str(model), *task, "--json", "--no-progress"]) == 0
        results[kind] = json.loads(capsys.readouterr().out)
    assert results["onnx"]["backend"] == "onnxruntime" and results["torchscript"]["backend"] == "torchscript"
    for kind in ("onnx", "torchscript"):
        assert results[kind]["task"] == "detection" and results[kind]["count"] == 3
    for key in ("AP", "AP50", "AR100", "detections"):
        assert results["onnx"][key] == pytest.approx(results["eager"][key], abs=1e-6), key


def test_server_answers_with_the_exported_file(exported: Callable, eager_folder: Path, photos: list[Path]) -> None:
    """``mobilevit serve --model det=FILE.onnx`` answers the object-detection task with the eager detections."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from mobilevit.serve import ModelSpec, ServeConfig, create_app
    from test_serve import wait_ready

    config = ServeConfig(models=(ModelSpec.parse(f"det={exported('onnx')}"),), backend="onnxruntime")
    expected = Runner.from_pretrained(str(eager_folder)).run(photos[0], threshold=0.3)[0]
    with TestClient(create_app(config)) as client:
        wait_ready(client)
        assert client.get("/health").json()["models"]["det"]["task"] == "detection"
        body = {"inputs": base64.b64encode(photos[0].read_bytes()).decode(), "parameters": {"threshold": 0.3}}
        response = client.post("/models/det", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer) > 0
    assert_same_detections(from_rows(answer), expected)


# ------------------------------------------------------------------------------------------------------ bench


def test_bench_times_a_detector_at_320(exported: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench`` runs a detector eagerly and through onnxruntime at 320x320, the size of the published COCO
    results (its preprocessing's). The ONNX file is this module's (a graph of any size, exported once): bench's own
    export is replaced by a copy of it, so that the test times nothing twice."""
    import mobilevit.export
    from mobilevit.bench.run import bench_table

    path = exported("onnx")

    def copy(model: nn.Module, fmt: str, output: Path, **options: object) -> Path:
        assert fmt == "onnx" and options["input_size"] == (320, 320)
        return Path(shutil.copy(path, output))

    monkeypatch.setattr(mobilevit.export, "export_model", copy)
    rows = bench_table([MODEL], ["eager", "onnxruntime"], (1,), repeats=1, warmup=0)
    assert [(r["backend"], r["error"], r["resolution"]) for r in rows] == [
        ("eager", None, 320),
        ("onnxruntime", None, 320),
    ]
    assert all(r["median_ms"] > 0 and r["GMACs"] > 0 for r in rows)


def test_cli_export_prints_the_parity_of_every_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``mobilevit export`` of a detector (TorchScript, the cheapest) checks the file and runs ``detect`` with it at
    the size it was exported at."""
    out = tmp_path / "det.pt"
    argv = ["export", "--model", MODEL, "--random-weights", "--format", "torchscript", "--output", str(out)]
    assert main([*argv, "--input-size", "96", "128"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (torchscript)" in printed and "at (2, 3, 96, 128)" in printed
    assert read_metadata(out).preprocess.input_size == (96, 128)
    image = tmp_path / "x.png"
    Image.new("RGB", (50, 40), (120, 30, 200)).save(image)
    assert main(["detect", str(image), "--model", str(out), "--output", str(tmp_path / "o"), "--json"]) == 0
    assert "detections" in json.loads(capsys.readouterr().out.splitlines()[-1])
