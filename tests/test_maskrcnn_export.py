"""Mask R-CNN export: ONNX (TorchScript-based exporter) and TorchScript (traced) files give the eager model's
detections and masks, run through the detection commands, and the on-device formats are refused in one line.

The model: ``maskrcnn_mobileone_s0`` with narrow heads (as tests/test_maskrcnn_model.py), random weights (seed 0; with
the backbone's BatchNorm statistics randomised no proposal survives), the best 20 detections kept whatever their score
(``box_score_thresh=0``) and the box classifier scaled so that the scores are decisive (no near-ties for NMS or the
ordering to break differently), at a 160x160 input.

Tolerances: the traced graphs run torchvision's tracing paths (``torchvision._is_tracing()``: the box decoding,
clipping and the mask pasting loop written for ONNX), which compute in another order than the eager ones: measured
gaps are 0.014 px on boxes (TorchScript 0.0015), 2e-9 on scores, 0.009 on TorchScript's mask probabilities;
torchvision's ONNX mask pasting rounds each box's edges otherwise, so pixels on a mask's border differ by up to 0.38
(0.2% of the masks' pixels cut at 0.5, mean gap 5.4e-6). So the detections are compared in order: labels exactly,
scores within 1e-4, boxes within 0.25 px, masks cut at 0.5 on all but 1% of their union's pixels, mask probabilities
within 1e-4 on average.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import mobilevit
from mobilevit.cli import main
from mobilevit.errors import UsageError
from mobilevit.export import export_model, read_metadata
from mobilevit.runner import Runner, load_runner

SIZE = (160, 160)
TINY = dict(fpn_channels=16, box_convs=(16,), mask_convs=(16,), representation_size=32, mask_predictor_channels=16)
FORMATS = {"onnx": "m.onnx", "torchscript": "m.pt"}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    model = mobilevit.create_model("maskrcnn_mobileone_s0", box_score_thresh=0.0, box_detections_per_img=20, **TINY)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(20)  # decisive scores
    return model.eval()


@pytest.fixture(scope="module")
def exported(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("maskrcnn_export")
    files: dict[str, Path] = {}

    def get(fmt: str) -> Path:
        if fmt not in files:
            files[fmt] = export_model(model, fmt, folder / FORMATS[fmt], input_size=SIZE)
        return files[fmt]

    return get


def assert_same_detections(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert len(want["labels"]) > 0 and len(got["labels"]) == len(want["labels"])
    assert torch.equal(got["labels"], want["labels"])
    assert (got["scores"] - want["scores"]).abs().max() <= 1e-4
    assert (got["boxes"] - want["boxes"]).abs().max() <= 0.25
    assert got["masks"].shape == want["masks"].shape
    ours, theirs = got["masks"] > 0.5, want["masks"] > 0.5
    assert (ours ^ theirs).sum() <= 0.01 * (ours | theirs).sum()
    assert (got["masks"] - want["masks"]).abs().mean() <= 1e-4


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_file_gives_the_eager_detections(model: nn.Module, exported: Callable, fmt: str) -> None:
    """The file's runtime gives one image's boxes, labels, scores and masks (as the eager model's one dict per
    image) and the metadata names them, on an image the export was not traced on."""
    path = exported(fmt)
    meta = read_metadata(path)
    assert meta.task == "instance-segmentation" and meta.per_image and meta.input_size == SIZE
    assert meta.output_names == ("boxes", "labels", "scores", "masks") and meta.dynamic_axes == ()
    runner = load_runner(path)
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = mobilevit.reparameterize_model(model)(x)[0]
    (got,) = runner.forward(x)
    assert_same_detections(got, want)


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_detect_runs_the_file_as_the_eager_model(
    model: nn.Module, exported: Callable, tmp_path: Path, capsys: pytest.CaptureFixture, fmt: str
) -> None:
    """``mobilevit detect --json`` on the file: the eager runner's best detection of the image (same name, box in the
    image's pixels), with its mask."""
    image = tmp_path / "x.png"
    Image.effect_noise((120, 90), 60).convert("RGB").save(image)
    meta = read_metadata(exported(fmt))
    (want,) = Runner(model, meta.preprocess, meta.labels).run(str(image))
    argv = ["detect", str(image), "--model", str(exported(fmt)), "--output", str(tmp_path / fmt), "--json"]
    assert main([*argv, "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])["detections"][0]
    assert row["label"] == want.names[0] and "mask" in row
    box = [row["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
    assert box == pytest.approx(want.boxes[0].tolist(), abs=0.5)


def test_on_device_formats_refuse_it_in_one_line(
    model: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``mobilevit export --format coreml`` says why in one line; ExecuTorch and LiteRT are refused alike."""
    argv = ["export", "--model", "maskrcnn_mobileone_s0", "--random-weights", "--format", "coreml"]
    assert main([*argv, "--output", str(tmp_path / "m.mlpackage")]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert "coreml cannot hold an instance segmentation model" in lines[-1] and "Traceback" not in "".join(lines)
    for fmt, name in (("executorch", "m.pte"), ("tflite", "m.tflite")):
        with pytest.raises(UsageError, match=f"{fmt} cannot hold .* export it as onnx or torchscript"):
            export_model(model, fmt, tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_server_answers_both_tasks_with_the_onnx_file(model: nn.Module, exported: Callable, tmp_path: Path) -> None:
    """``mobilevit serve --model inst=FILE.onnx``: ``object-detection`` gives the eager runner's boxes,
    ``image-segmentation`` one entry per instance with its mask."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from mobilevit.serve import ModelSpec, ServeConfig, create_app
    from test_serve import wait_ready

    image = tmp_path / "x.png"
    Image.effect_noise((120, 90), 60).convert("RGB").save(image)
    meta = read_metadata(exported("onnx"))
    (want,) = Runner(model, meta.preprocess, meta.labels).run(str(image), threshold=0.5)
    config = ServeConfig(models=(ModelSpec.parse(f"inst={exported('onnx')}"),), backend="onnxruntime")
    body = {"inputs": base64.b64encode(image.read_bytes()).decode(), "parameters": {"threshold": 0.5}}
    with TestClient(create_app(config)) as client:
        wait_ready(client)
        boxes = client.post("/models/inst", json=body)
        masks = client.post("/models/inst/pipeline/image-segmentation", json=body)
    assert boxes.status_code == 200 and masks.status_code == 200, boxes.text + masks.text
    assert [row["label"] for row in boxes.json()] == list(want.names) and len(want) > 0
    got = [[row["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for row in boxes.json()]
    assert (torch.tensor(got) - want.boxes).abs().max() <= 1  # the answer's boxes are whole pixels
    assert [row["label"] for row in masks.json()] == list(want.names) and all(row["mask"] for row in masks.json())


def test_eval_scores_the_onnx_file(
    model: nn.Module, exported: Callable, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``mobilevit eval --task detection`` on the ONNX file reports box and mask mAP over the eager model's detections
    of the set's categories (as many; the file's task read from it), on tests/test_instance_segmentation.py's
    COCO-format set with masks."""
    pytest.importorskip("pycocotools")
    from test_instance_segmentation import _write_set

    _write_set(tmp_path / "set")
    images = sorted((tmp_path / "set" / "images").iterdir())
    for image in images:  # noise in the set's sizes: the flat pictures give this random model no detection
        Image.effect_noise(Image.open(image).size, 60).convert("RGB").save(image)
    path = exported("onnx")
    argv = ["eval", str(tmp_path / "set"), "--model", str(path), "--task", "detection", "--json", "--no-progress"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "instance-segmentation" and printed["count"] == 3 and "mask_AP" in printed
    meta = read_metadata(path)
    eager = Runner(model, meta.preprocess, meta.labels).run([str(p) for p in images])
    in_set = [name for d in eager for name in d.names if name in ("person", "car")]  # the set's two categories
    assert printed["detections"] == len(in_set) > 0


def test_box_decoding_traces_for_images_without_proposals(model: nn.Module) -> None:
    """The detector's box decoding, traced on some boxes, also runs on none (torchvision's ``BoxCoder`` traced so
    reshapes 0 rows to ``(0, -1, 4)`` and fails), with torchvision's values."""
    from torchvision.models.detection._utils import BoxCoder

    coder = model.roi_heads.box_coder
    reference = BoxCoder(coder.weights, coder.bbox_xform_clip)
    codes, boxes = torch.randn(3, 8), torch.rand(3, 4) * 10 + torch.tensor([0.0, 0.0, 10.0, 10.0])
    assert torch.equal(coder.decode(codes, [boxes]), reference.decode(codes, [boxes]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(lambda c, b: coder.decode(c, [b]), (codes, boxes))
    assert traced(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 2, 4)
