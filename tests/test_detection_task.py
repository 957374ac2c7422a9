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

import pytest
import torch
from PIL import Image

from mobilevit.errors import NonFiniteOutputError
from mobilevit.tasks import get_task
from mobilevit.tasks.detection import Detection, decode_boxes, detect
from mobilevit.weights.entries import coco_categories

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
