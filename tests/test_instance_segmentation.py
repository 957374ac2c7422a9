"""The instance segmentation task (Mask R-CNN models): the runner, ``mobilevit detect`` and ``eval --task detection``.

The model is a stub with torchvision's detector output (one dict per image, as many detections as it finds) and known
answers: on a 4x4 grid of its input, each cell whose red mean is above 0.5 is a "person" (score 0.9) and each whose
green mean is, a "car" (0.8), its box the cell and its mask exactly the cell. Images with red and green squares on
grid cells (of sizes whose scale to the 32x32 input keeps the cell edges exact under bilinear resizing) so have known
boxes and masks in image pixels. ``eval`` must then give exactly what pycocotools' ``COCOeval`` gives when run here
directly on those known detections (``bbox`` and ``segm``), against a COCO-format set written here with polygon and
RLE masks. A tiny real Mask R-CNN runs through the same runner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import mobilevit
from mobilevit.cli import main
from mobilevit.errors import UsageError
from mobilevit.runner import Runner
from mobilevit.tasks import DETECTION, INSTANCE_SEGMENTATION, get_task
from mobilevit.weights.entries import coco_categories
from mobilevit.weights.pretrained import PretrainedCfg
from test_toy_task import PREPROCESS

pytest.importorskip("pycocotools", reason="COCO masks and mAP need pycocotools (pip install 'mobilevit[coco]')")
from pycocotools import mask as mask_utils

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
PERSON, CAR = 1, 3  # COCO labels (1-based, ml-cvnets' order): "person", "car"
SCORES = {PERSON: float(torch.tensor(0.9)), CAR: float(torch.tensor(0.8))}  # as float32 gives them


class StubMaskRCNN(nn.Module):
    """torchvision's detector output with known answers (see the module docstring)."""

    task = "instance-segmentation"
    num_classes = 81
    label_set = "coco"
    output_axes = ("detections", "coordinates")

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_cfg = PretrainedCfg("stub_maskrcnn", "", None, PREPROCESS, None)
        self.batches: list[int] = []  # the batch size of each call

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        B, _, H, W = x.shape
        self.batches.append(B)
        cell_h, cell_w = H // 4, W // 4
        means = nn.functional.avg_pool2d(x, (cell_h, cell_w))  # [B, 3, H, W] -> [B, 3, 4, 4]
        found = []
        for b in range(B):
            boxes, labels, scores, masks = [], [], [], []
            for channel, label in ((0, PERSON), (1, CAR)):
                for row, column in (means[b, channel] > 0.5).nonzero().tolist():
                    top, left = row * cell_h, column * cell_w
                    boxes.append([left, top, left + cell_w, top + cell_h])
                    mask = torch.zeros(1, H, W)
                    mask[:, top : top + cell_h, left : left + cell_w] = 1.0
                    labels.append(label)
                    scores.append(SCORES[label])
                    masks.append(mask)
            found.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "masks": torch.stack(masks) if masks else torch.zeros(0, 1, H, W),
            })  # fmt: skip
        return found


def _picture(size: tuple[int, int], red: tuple[int, int] | None, green: tuple[int, int] | None = None) -> Image.Image:
    """A black image of ``size`` (W, H) with a red and a green square on cells (column, row) of its 4x4 grid."""
    image = Image.new("RGB", size)
    w, h = size[0] // 4, size[1] // 4
    for cell, colour in ((red, (255, 0, 0)), (green, (0, 255, 0))):
        if cell is not None:
            image.paste(colour, (cell[0] * w, cell[1] * h, cell[0] * w + w, cell[1] * h + h))
    return image


def _cell(size: tuple[int, int], cell: tuple[int, int]) -> tuple[list[float], np.ndarray]:
    """The box (``x, y, w, h``) and ``[H, W]`` uint8 mask of grid cell (column, row) of an image of ``size``."""
    w, h = size[0] // 4, size[1] // 4
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[cell[1] * h : cell[1] * h + h, cell[0] * w : cell[0] * w + w] = 1
    return [float(cell[0] * w), float(cell[1] * h), float(w), float(h)], mask


def _runner() -> Runner:
    return Runner.from_model(StubMaskRCNN())


def test_the_runner_gives_each_image_its_detections_and_masks() -> None:
    runner = Runner.from_model(StubMaskRCNN(), batch_size=16)
    assert runner.task is INSTANCE_SEGMENTATION and runner.labels == list(coco_categories())
    images = [_picture((64, 48), (1, 2), (3, 0)), _picture((40, 80), (0, 0)), _picture((32, 32), None)]
    first, second, third = runner.run(images)
    assert runner.batch_size == 1 and runner.model.batches == [1, 1, 1]  # one image at a time (batch_limit)
    assert len(runner.forward(torch.zeros(2, 3, 32, 32))) == 2 and runner.model.batches[-2:] == [1, 1]
    assert (len(first), len(second), len(third)) == (2, 1, 0)
    assert first.names == ("person", "car") and first.labels.tolist() == [PERSON, CAR]
    torch.testing.assert_close(first.boxes, torch.tensor([[16.0, 24.0, 32.0, 36.0], [48.0, 0.0, 64.0, 12.0]]))
    torch.testing.assert_close(second.boxes, torch.tensor([[0.0, 0.0, 10.0, 20.0]]))
    for detection, size, cells in ((first, (64, 48), [(1, 2), (3, 0)]), (second, (40, 80), [(0, 0)])):
        assert detection.masks.dtype == torch.bool and detection.masks.shape == (len(cells), size[1], size[0])
        for mask, cell in zip(detection.masks, cells, strict=True):
            assert np.array_equal(mask.numpy(), _cell(size, cell)[1].astype(bool))
    assert third.masks.shape == (0, 32, 32)
    (kept,) = runner.run(images[0], threshold=0.85)
    assert kept.names == ("person",) and kept.masks.shape == (1, 48, 64)
    with pytest.raises(UsageError, match="mask_threshold"):
        runner.run(images[0], mask_threshold=2.0)


def test_masks_are_resized_then_thresholded() -> None:
    """A 2x2 probability map at 0.6 / 0.4 (a soft edge) scaled to 4x4: bilinear (align_corners=False) puts 0.55 on
    the inner pixels of the edge, 0.6 and 0.4 on the outer ones; 0.5 cuts between the two middle columns."""
    outputs = {
        "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]),
        "labels": torch.tensor([PERSON]),
        "scores": torch.tensor([0.7]),
        "masks": torch.tensor([[[[0.6, 0.4], [0.6, 0.4]]]]),
    }
    runner = SimpleNamespace(labels=list(coco_categories()), model_name="stub")
    result = INSTANCE_SEGMENTATION.postprocess(runner, outputs, size=(4, 4))
    torch.testing.assert_close(result.boxes, torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    assert result.masks[0].tolist() == [[True, True, False, False]] * 4
    assert not INSTANCE_SEGMENTATION.postprocess(runner, outputs, size=(4, 4), mask_threshold=0.6).masks.any()


def test_other_runners_refuse_it_and_detection_accepts_it() -> None:
    from mobilevit.predict import Predictor

    with pytest.raises(UsageError, match=r"instance segmentation model.*mobilevit detect"):
        Predictor(StubMaskRCNN(), PREPROCESS)
    assert Runner(StubMaskRCNN(), PREPROCESS, task=DETECTION).task is INSTANCE_SEGMENTATION
    assert get_task("detection").serving("object-detection") is DETECTION
    with pytest.raises(UsageError, match="image-segmentation"):
        DETECTION.serving("image-segmentation")


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' decode, numpy 2
def test_detect_command_draws_masks_and_writes_rle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mobilevit.registry

    real = mobilevit.registry.create_model
    monkeypatch.setattr(
        mobilevit.registry, "create_model", lambda name, **kw: StubMaskRCNN() if name == "stub" else real(name, **kw)
    )
    _picture((64, 48), (1, 2), (3, 0)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "a.png"), "--model", "stub", "--output", str(out), "--json",
                 "--no-progress"]) == 0  # fmt: skip
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    person, car = record["detections"]
    assert (person["label"], car["label"]) == ("person", "car")
    assert [person["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == [16.0, 24.0, 32.0, 36.0]
    for row, cell in ((person, (1, 2)), (car, (3, 0))):
        rle = {"size": row["mask"]["size"], "counts": row["mask"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle), _cell((64, 48), cell)[1])
    drawn = np.asarray(Image.open(record["boxes"]).convert("RGB"), dtype=np.int32)
    assert drawn.shape == (48, 64, 3)
    # inside the person's mask, away from its box's edge and label: the red tinted towards the class colour
    assert abs(drawn[31, 24] - np.array([255, 0, 0])).sum() > 60
    assert abs(drawn[45, 5]).sum() < 30  # the black background untouched


def _write_set(root: Path) -> tuple[Path, list[dict]]:
    """A COCO-format set of three images, its objects' masks as polygons and as RLE; the stub's detections on it in
    COCO's results format, made here from the known answers."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    pictures = [((64, 48), (1, 2), (3, 0)), ((40, 80), (0, 0), None), ((32, 32), None, None)]
    for i, (size, red, green) in enumerate(pictures, start=1):
        _picture(size, red, green).save(images_dir / f"{i}.png")
    person_box, _ = _cell((64, 48), (1, 2))
    _, car_mask = _cell((64, 48), (3, 0))
    car_truth = car_mask.copy()
    car_truth[:, 40:48] = 1  # the true car is wider than the cell the stub finds: box and mask IoU below 1
    car_rle = mask_utils.encode(np.asfortranarray(car_truth))
    x, y, w, h = person_box
    corner = [x + w, y + h / 2, x + w / 2, y + h / 2, x + w / 2, y + h]  # the true person lacks the box's last quarter
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": person_box, "area": w * h,
         "segmentation": [[x, y, x + w, y, *corner, x, y + h]]},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": mask_utils.toBbox(car_rle).tolist(),
         "area": float(mask_utils.area(car_rle)),
         "segmentation": {"size": car_rle["size"], "counts": car_rle["counts"].decode()}},
        # image 2: a person shifted off the found cell (IoU 9/16 of the box); image 3: a person never found
        {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": [0.0, 5.0, 10.0, 20.0], "area": 200.0,
         "segmentation": [[0.0, 5.0, 10.0, 5.0, 10.0, 25.0, 0.0, 25.0]]},
        {"id": 4, "image_id": 3, "category_id": 1, "iscrowd": 0, "bbox": [4.0, 4.0, 8.0, 8.0], "area": 64.0,
         "segmentation": [[4.0, 4.0, 12.0, 4.0, 12.0, 12.0, 4.0, 12.0]]},
    ]  # fmt: skip
    instances = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": s[0], "height": s[1]}
                   for i, (s, _, _) in enumerate(pictures, start=1)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }  # fmt: skip
    (root / "instances.json").write_text(json.dumps(instances))
    found = []
    for image_id, size, cell, category in (
        (1, (64, 48), (1, 2), 1),
        (1, (64, 48), (3, 0), 3),
        (2, (40, 80), (0, 0), 1),
    ):
        box, mask = _cell(size, cell)
        rle = mask_utils.encode(np.asfortranarray(mask))
        found.append({"image_id": image_id, "category_id": category, "bbox": box,
                      "score": SCORES[PERSON if category == 1 else CAR],
                      "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})  # fmt: skip
    return root / "instances.json", found


def _cocoeval(annotations: Path, results: list[dict], iou_type: str) -> list[float]:
    """pycocotools run directly, as its own demo runs it (masks scored without the boxes, so by their own area)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rows = [{k: v for k, v in r.items() if iou_type == "bbox" or k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations))
        evaluation = COCOeval(truth, truth.loadRes(rows), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(x) for x in evaluation.stats]


def test_eval_reports_box_and_mask_ap_as_cocoeval(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mobilevit.registry

    real = mobilevit.registry.create_model
    monkeypatch.setattr(
        mobilevit.registry, "create_model", lambda name, **kw: StubMaskRCNN() if name == "stub" else real(name, **kw)
    )
    annotations, found = _write_set(tmp_path / "set")
    boxes, masks = _cocoeval(annotations, found, "bbox"), _cocoeval(annotations, found, "segm")
    assert 0 < boxes[0] < 1 and 0 < masks[0] < 1 and boxes != masks  # the set tells box from mask scores
    for task in (["--task", "detection"], []):
        assert main(["eval", str(tmp_path / "set"), "--model", "stub", "--json", "--no-progress", *task]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["task"] == "instance-segmentation" and printed["count"] == 3
        assert [printed[key] for key in KEYS] == boxes  # exactly
        assert [printed[f"mask_{key}"] for key in KEYS] == masks
    assert main(["eval", str(tmp_path / "set"), "--model", "stub", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"AP {boxes[0]:.4f}" in text and f"mask AP {masks[0]:.4f}" in text
    # a results file with masks scores the same without a model
    results = tmp_path / "results.json"
    results.write_text(json.dumps(found))
    assert main(["eval", str(tmp_path / "set"), "--task", "instance-segmentation", "--results", str(results),
                 "--json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert [printed[key] for key in KEYS] == boxes and [printed[f"mask_{key}"] for key in KEYS] == masks
    # a set whose annotations are boxes only: the box scores alone
    truth = json.loads(annotations.read_text())
    for annotation in truth["annotations"]:
        del annotation["segmentation"]
    (tmp_path / "set" / "boxes.json").write_text(json.dumps(truth))
    assert main(["eval", str(tmp_path / "set" / "boxes.json"), "--model", "stub", "--json", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [printed[key] for key in KEYS] == boxes and "mask_AP" not in printed


TINY = dict(fpn_channels=16, box_convs=(16,), mask_convs=(16,), representation_size=32, mask_predictor_channels=16)


def test_a_real_mask_rcnn_runs_through_the_runner() -> None:
    """``maskrcnn_mobileone_s0`` (random, narrow heads, every detection kept) at a 64x64 input: its masks and boxes
    come back at the image's size."""
    model = mobilevit.create_model("maskrcnn_mobileone_s0", box_score_thresh=0.0, **TINY)
    full = Runner.from_model(model, pretrained=False, task=DETECTION)
    runner = Runner(full.model, dataclasses.replace(full.preprocess, input_size=(64, 64), resize_size=64), full.labels)
    (result,) = runner.run(Image.new("RGB", (90, 60), (120, 60, 30)))
    assert len(result) > 0 and result.masks.shape == (len(result), 60, 90)
    assert float(result.boxes[:, 2].max()) <= 90 and float(result.boxes[:, 3].max()) <= 60
    assert set(result.names) <= set(coco_categories())


def test_mask_rcnn_reads_images_as_ml_cvnets_evaluates_it(shared: Path) -> None:
    """Without weights of its own, a Mask R-CNN's preprocessing is ml-cvnets' evaluation's (the fixture's options:
    images resized whole to 1024x1024 with bilinear interpolation, read by PIL as RGB, in [0, 1]), also over a
    backbone whose classification weights read BGR."""
    from mobilevit.weights.pretrained import default_preprocess

    info = json.loads((shared / "fixtures" / "maskrcnn_mobilevit_xxs" / "info.json").read_text())
    options = info["options_namespace"]
    assert default_preprocess("mobilevitv3_xxs").channel_order == "BGR"
    for arch in ("maskrcnn_mobilevit_xxs", "maskrcnn_mobilevitv3_xxs"):
        preprocess = INSTANCE_SEGMENTATION.preprocess(default_preprocess(arch))
        assert list(preprocess.input_size) == options["image_augmentation.resize.size"]
        assert preprocess.interpolation == options["image_augmentation.resize.interpolation"]
        assert (preprocess.resize_mode, preprocess.channel_order, preprocess.resize_backend) == ("exact", "RGB", "pil")
        assert preprocess.mean == (0.0,) * 3 and preprocess.std == (1.0,) * 3
