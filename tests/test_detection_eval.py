"""``eval --task detection``: COCO mAP by pycocotools' ``COCOeval``, on ``../shared/data/det-mini``.

``--results FILE`` scores the set's shipped results file; the numbers must be exactly the evaluator's own, run here
directly on the same files.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from mobilevit.cli import main

pytest.importorskip("pycocotools", reason="COCO mAP needs pycocotools (pip install 'mobilevit[coco]')")

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(scope="module")
def det_mini(shared: Path) -> Path:
    folder = shared / "data" / "det-mini"
    if not (folder / "annotations" / "instances.json").is_file():
        pytest.skip(f"no detection set at {folder}")
    return folder


def _evaluator_stats(annotations: Path, results: Path) -> list[float]:
    """pycocotools run directly, the way its own demo runs it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations))
        evaluation = COCOeval(truth, truth.loadRes(str(results)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(x) for x in evaluation.stats]


def test_results_file_scores_as_the_evaluator(det_mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = det_mini / "annotations" / "detections_results.json"
    argv = ["eval", str(det_mini), "--task", "detection", "--results", str(results), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = _evaluator_stats(det_mini / "annotations" / "instances.json", results)
    assert [printed[key] for key in KEYS] == expected  # exactly
    assert printed["count"] == 85 and printed["detections"] == 494
    assert main(argv[:-1]) == 0
    assert f"AP {expected[0]:.4f}" in capsys.readouterr().out


def test_coco_release_layout(det_mini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """COCO as it unpacks: ``annotations/instances_<split>2017.json`` with its images in ``<split>2017/``."""
    from mobilevit.data.coco import DetectionDataset, coco_set
    from mobilevit.train.build import data_paths

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).symlink_to(det_mini / "images", target_is_directory=True)
        (root / "annotations" / f"instances_{split}.json").write_bytes(
            (det_mini / "annotations" / "instances.json").read_bytes()
        )
    results = det_mini / "annotations" / "detections_results.json"
    expected = _evaluator_stats(det_mini / "annotations" / "instances.json", results)
    for split in ([], ["--split", "val2017"], ["--split", "val"]):
        assert main(["eval", str(root), "--task", "detection", "--results", str(results), "--json", *split]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert [printed[key] for key in KEYS] == expected
    assert main(["eval", str(root), "--task", "detection", "--results", str(results), "--split", "test"]) != 0
    assert "instances_test2017.json" in capsys.readouterr().err
    _, images = coco_set(root / "annotations" / "instances_val2017.json")
    assert len(images) == 85 and all(path.parent == root / "val2017" and path.is_file() for _, path in images)
    train, val = data_paths(root)
    assert (train, val) == (
        str(root / "annotations" / "instances_train2017.json"),
        str(root / "annotations" / "instances_val2017.json"),
    )
    assert DetectionDataset(train).images[0][1].parent == root / "train2017"


def test_results_needs_the_task_and_no_model(det_mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = str(det_mini / "annotations" / "detections_results.json")
    assert main(["eval", str(det_mini), "--results", results]) != 0
    assert "give --task" in capsys.readouterr().err
    assert main(["eval", str(det_mini), "--task", "classification", "--results", results]) != 0
    assert "not supported for image classification" in capsys.readouterr().err


def test_a_detector_that_finds_every_box_scores_one(tmp_path: Path) -> None:
    """A stub detector that finds exactly each red square (``tests/test_detection_task.py``) on a COCO-format set of
    such images, the boxes their squares: AP and AR@100 are 1 by the evaluator, for the one class it maps (person)."""
    from mobilevit.evaluate import evaluate_set
    from mobilevit.runner import Runner
    from test_detection_task import STUB_PREPROCESS, StubDetector, _red_square

    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for i, (size, cell) in enumerate((((64, 48), (1, 2)), ((40, 80), (3, 0)), ((120, 120), (0, 0))), start=1):
        _red_square(size, cell).save(tmp_path / "images" / f"{i}.png")
        w, h = size[0] / 4, size[1] / 4
        images.append({"id": i, "file_name": f"{i}.png", "width": size[0], "height": size[1]})
        box = [cell[0] * w, cell[1] * h, w, h]
        annotations.append({"id": i, "image_id": i, "category_id": 7, "bbox": box, "area": w * h, "iscrowd": 0})
    categories = [{"id": 7, "name": "human", "coco_name": "person"}, {"id": 9, "name": "door", "coco_name": None}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    result = evaluate_set(Runner(StubDetector(), STUB_PREPROCESS), str(tmp_path))
    assert result["count"] == 3 and result["failed"] == [] and result["categories"] == 1
    assert result["AP"] == pytest.approx(1.0) and result["AR100"] == pytest.approx(1.0)


def test_eval_under_torchrun_matches(det_mini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two CPU processes (gloo) shard the images (4 and 3: six photos of det-mini and a file that is not an image) and
    gather their detections for one COCOeval: the same numbers, every one, as one process.

    The detector is SSDLite-MobileViT-XXS at 128x128 with random weights, its class biases raised for the classes
    these photos show most, so that some of its boxes hit (nonzero AP: the numbers compared are not all zero)."""
    import os
    import subprocess
    import sys

    import torch

    import mobilevit
    from mobilevit.weights.entries import Preprocess, coco_categories

    truth = json.loads((det_mini / "annotations" / "instances.json").read_text())
    photos = sorted(truth["images"], key=lambda image: image["id"])[:6]
    (tmp_path / "images").mkdir()
    for photo in photos:
        (tmp_path / "images" / photo["file_name"]).symlink_to(det_mini / "images" / photo["file_name"])
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    ids = {photo["id"] for photo in photos}
    broken = {"id": max(ids) + 1, "file_name": "broken.jpg", "width": 640, "height": 480}
    subset = {
        "images": [*photos, broken],
        "annotations": [a for a in truth["annotations"] if a["image_id"] in ids],
        "categories": truth["categories"],
    }
    (tmp_path / "instances.json").write_text(json.dumps(subset))

    model = mobilevit.create_model("ssdlite_mobilevit_xxs")
    names = list(coco_categories())
    favoured = [names.index(n) + 1 for n in ("chair", "book", "potted plant", "tv", "cup", "dining table", "couch")]
    with torch.no_grad():
        for conv in model.get_classifier():
            conv.bias.view(-1, len(names) + 1)[:, favoured] += 4.0  # [anchors per location, classes]
    preprocess = Preprocess((128, 128), 128, 1.0, "bilinear", (0.0,) * 3, (1.0,) * 3, "RGB", resize_mode="exact")
    mobilevit.save_pretrained(model, tmp_path / "model", preprocess=preprocess)

    args = ["eval", str(tmp_path), "--model", str(tmp_path / "model"), "--task", "detection", "--json", "--no-progress"]
    assert main(args) == 1  # one file could not be read
    one = json.loads(capsys.readouterr().out)
    assert one["count"] == 6 and one["AP50"] > 0 and one["detections"] > 0
    assert [f["file"] for f in one["failed"]] == [str(tmp_path / "images" / "broken.jpg")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    multi = subprocess.run([*launcher, "-m", "mobilevit.cli", *args], capture_output=True, text=True, env=env)
    assert multi.returncode == 1, multi.stderr[-2000:]
    two = json.loads(multi.stdout.strip().splitlines()[-1])
    assert two == one
