"""The detection task's post-processing against ml-cvnets' own detections (``../shared/fixtures``).

The fixtures store the raw SSD head outputs (class logits, box regressions, anchors) that ml-cvnets' SSDLite produced
and the detections its ``postprocess_detections`` made of them (``fixtures/DETECTION.md``). Fed the same raw tensors,
our post-processing must give the same detections: same boxes, labels and scores, in the same order (it uses the
same ops: ``torch.topk`` and ``torchvision.ops.batched_nms``). The class names are checked against the fixtures'
``class_names_by_label_index`` (ml-cvnets' COCO names).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from mobilevit.errors import NonFiniteOutputError
from mobilevit.runner import Runner
from mobilevit.runtime import Runtime, Signature
from mobilevit.tasks import get_task
from mobilevit.tasks.detection import Detection, decode_boxes, detect
from mobilevit.weights.entries import coco_categories
from mobilevit.weights.pretrained import PretrainedCfg
from test_toy_task import PREPROCESS

CASES = ("ssdlite_mobilevit_xxs", "ssdlite_mobilevitv2_050")
# the stored raw tensors and the detections the original made of them: (raw suffix, detections prefix)
INPUTS = (("320", "det_{}_320"), ("odd", "fwddet_{}_odd_0"))


def _fixture(shared: Path, case: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    folder = shared / "fixtures" / case
    if not folder.is_dir():
        pytest.skip(f"no fixture {folder}")
    return load_file(folder / "io.safetensors"), json.loads((folder / "info.json").read_text())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("raw", "stored"), INPUTS)
def test_reproduces_the_original_detections(shared: Path, case: str, raw: str, stored: str) -> None:
    io, _ = _fixture(shared, case)
    logits, regression, anchors = (io[f"{name}_{raw}"][0] for name in ("conf_logits", "locations", "anchors"))
    boxes, labels, scores = detect(logits, regression, anchors)
    assert labels.dtype == torch.int64
    torch.testing.assert_close(labels, io[stored.format("labels")], rtol=0, atol=0)
    torch.testing.assert_close(scores, io[stored.format("scores")], rtol=0, atol=0)
    torch.testing.assert_close(boxes, io[stored.format("boxes")], rtol=0, atol=0)


def test_the_task_scales_boxes_to_the_image_and_names_them(shared: Path) -> None:
    """Through the task object: boxes in the image's pixels (normalised x W, y H, clipped, as cvnets' detection eval
    does), labels named by COCO's classes (label k -> the k-th name after the background)."""
    io, info = _fixture(shared, CASES[0])
    outputs = {"logits": io["conf_logits_320"][0], "boxes": io["locations_320"][0], "anchors": io["anchors_320"][0]}
    runner = SimpleNamespace(labels=list(coco_categories()), model_name="ssdlite_test")
    image = Image.new("RGB", (640, 480))
    task = get_task("detection")
    result = task.postprocess(runner, outputs, image)
    assert isinstance(result, Detection) and len(result) == 200
    expected = io["det_boxes_320"] * torch.tensor([640.0, 480.0, 640.0, 480.0])
    for column, side in enumerate((640.0, 480.0, 640.0, 480.0)):
        expected[:, column] = expected[:, column].clamp(0, side)
    torch.testing.assert_close(result.boxes, expected)
    names = info["class_names_by_label_index"]["names"]
    assert list(result.names) == [names[k] for k in io["det_labels_320"].tolist()]
    # the server's answer and the threshold
    answer = task.encode(result.above(0.0125), {})
    assert answer and all(set(row) == {"score", "label", "box"} and row["score"] >= 0.0125 for row in answer)
    assert set(answer[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    assert task.read_parameters({}) == {"threshold": 0.5}
    # a runner with 81 names (background first) names the same classes
    result81 = task.postprocess(SimpleNamespace(labels=names, model_name="m"), outputs, image)
    assert result81.names == result.names


def test_coco_names_are_the_originals(shared: Path) -> None:
    """Our default names (torchvision's COCO categories without its N/A padding) are ml-cvnets' label order."""
    _, info = _fixture(shared, CASES[0])
    names = info["class_names_by_label_index"]["names"]
    assert names[0] == "background"
    assert list(coco_categories()) == names[1:]


def test_decoding_formula() -> None:
    """The documented SSD decoding (centre variance 0.1, size variance 0.2) on hand-computed numbers."""
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    regression = torch.tensor([[1.0, -1.0, 0.0, 5.0 * torch.log(torch.tensor(2.0)).item()]])
    # cx = 0.5 + 0.1 * 0.2 = 0.52; cy = 0.5 - 0.1 * 0.4 = 0.46; w = 0.2; h = 2 * 0.4 = 0.8
    torch.testing.assert_close(decode_boxes(regression, anchors), torch.tensor([[0.42, 0.06, 0.62, 0.86]]))


def test_nothing_above_the_threshold_and_non_finite_outputs() -> None:
    logits = torch.zeros(8, 81)
    logits[:, 0] = 20.0  # every anchor background
    boxes, labels, scores = detect(logits, torch.zeros(8, 4), torch.full((8, 4), 0.5))
    assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)
    task = get_task("detection")
    runner = SimpleNamespace(labels=list(coco_categories()), model_name="broken")
    outputs = {"logits": logits.clone(), "boxes": torch.zeros(8, 4), "anchors": torch.full((8, 4), 0.5)}
    outputs["logits"][3, 5] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="broken"):
        task.postprocess(runner, outputs, size=(10, 10))


# ------------------------------------------------------------------------------------------ through the runner

STUB_PREPROCESS = PREPROCESS  # the toy task's: the whole image resized to 32x32, RGB in [0, 1]


class StubDetector(nn.Module):
    """A detector with SSD's raw outputs and known answers: one anchor per 8x8 cell of the input, each anchor
    exactly its cell; class 1 ("person") wins where the cell's red mean is above 0.5, with no box offset. An image
    with a red square on one cell is so detected as that cell."""

    task = "detection"
    num_classes = 81
    label_set = "coco"
    output_axes = ("batch", "anchors", "classes")

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_cfg = PretrainedCfg("stub_detector", "", None, STUB_PREPROCESS, None)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        red = nn.functional.avg_pool2d(x[:, :1], 8)  # [B, 1, H, W] -> [B, 1, h, w]
        b, _, h, w = red.shape
        red = red.flatten(1)  # [B, 1, h, w] -> [B, h*w]
        logits = torch.full((b, h * w, 81), -20.0)
        logits[..., 0] = 0.0  # background
        logits[..., 1] = 20.0 * (red - 0.5)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        anchors = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h, torch.full((h * w,), 1 / w),
                               torch.full((h * w,), 1 / h)], -1)  # fmt: skip
        return {"logits": logits, "boxes": torch.zeros(b, h * w, 4), "anchors": anchors}


class RenamedOutputs(Runtime):
    """An exported file's runtime whose graph names the outputs by position, with batched anchors."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def run_named(self, batch: Any) -> dict[str, Tensor]:
        out = self.model(torch.as_tensor(batch))
        anchors = out["anchors"].expand(len(batch), *out["anchors"].shape)
        return {"output_0": out["logits"], "output_1": out["boxes"], "output_2": anchors}

    def signature(self) -> tuple[Signature, Signature]:
        return [("pixel_values", [None, 3, 32, 32])], [("output_0", [None, 16, 81])]

    def metadata(self) -> dict[str, str]:
        return {"task": "detection"}


def _red_square(size: tuple[int, int], cell: tuple[int, int]) -> Image.Image:
    """An image of ``size`` (W, H), black but for the red 1/4 x 1/4 of it at grid ``cell`` (column, row)."""
    image = Image.new("RGB", size)
    w, h = size[0] // 4, size[1] // 4
    image.paste((255, 0, 0), (cell[0] * w, cell[1] * h, cell[0] * w + w, cell[1] * h + h))
    return image


def test_the_runner_runs_a_detector_eager_and_exported() -> None:
    eager = Runner(StubDetector(), STUB_PREPROCESS)
    exported = Runner.from_runtime(RenamedOutputs(StubDetector()), STUB_PREPROCESS)
    for runner in (eager, exported):
        assert runner.labels == list(coco_categories())
        images = [_red_square((64, 48), (1, 2)), _red_square((40, 80), (3, 0))]
        first, second = runner.run(images)
        assert first.names == ("person",) and second.names == ("person",)
        torch.testing.assert_close(first.boxes, torch.tensor([[16.0, 24.0, 32.0, 36.0]]))
        torch.testing.assert_close(second.boxes, torch.tensor([[30.0, 0.0, 40.0, 20.0]]))
        assert float(first.scores[0]) > 0.99
        assert len(runner.run(images[0], threshold=1.0)[0]) == 0


def test_classifiers_still_read_their_first_output() -> None:
    from mobilevit import create_model

    model = create_model("mobileone_s0", pretrained=False)
    runner = Runner(model, STUB_PREPROCESS, batch_size=2)
    outputs = runner.logits(torch.zeros(3, 3, 32, 32))
    assert isinstance(outputs, Tensor) and outputs.shape == (3, 1000)


def test_detect_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mobilevit detect``: a drawn JPEG per image and, with ``--json``, boxes in the input's pixels."""
    import mobilevit.registry
    from mobilevit.cli import main

    real = mobilevit.registry.create_model
    monkeypatch.setattr(
        mobilevit.registry, "create_model", lambda name, **kw: StubDetector() if name == "stub" else real(name, **kw)
    )
    _red_square((64, 48), (1, 2)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["detect", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", "stub", "--output", str(out),
                 "--json", "--no-progress"])  # fmt: skip
    assert code == 1  # one input could not be read
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (good,) = [r for r in records if "detections" in r]
    (detection,) = good["detections"]
    assert detection["label"] == "person"
    assert [detection["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == pytest.approx([16, 24, 32, 36])
    drawn = Image.open(good["boxes"])
    assert drawn.format == "JPEG" and drawn.size == (64, 48)
    assert any("error" in r for r in records)
    with pytest.raises(SystemExit):
        main(["detect", str(tmp_path / "a.png"), "--model", "stub"])  # --output is required


def test_names_for_every_output_drop_the_background() -> None:
    """81 names given for 81 outputs (as an exported file may record them): the 80 after the background's."""
    names = ["background", *coco_categories()]
    assert Runner(StubDetector(), STUB_PREPROCESS, names).labels == list(coco_categories())


@pytest.mark.slow  # an ONNX export: several seconds
def test_an_exported_detector_runs_through_the_runner(tmp_path: Path) -> None:
    """ONNX export of the stub detector: its outputs (named by the graph) read in order, its labels COCO's."""
    pytest.importorskip("onnxscript", reason="exporting needs onnxscript (pip install 'mobilevit[export]')")
    from mobilevit.export import export_model
    from mobilevit.runner import load_runner

    runner = load_runner(export_model(StubDetector(), "onnx", tmp_path / "stub.onnx"))
    assert runner.task is get_task("detection") and runner.labels == list(coco_categories())
    (found,) = runner.run(_red_square((64, 48), (1, 2)))
    assert found.names == ("person",)
    torch.testing.assert_close(found.boxes, torch.tensor([[16.0, 24.0, 32.0, 36.0]]))
