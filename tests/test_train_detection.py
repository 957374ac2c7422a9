"""Detector training in the runner: the SSD matcher and multibox loss against torchvision's SSD, box encoding against
torchvision's BoxCoder and the task's decoding, boxes that move with the pixels, COCO category mapping, exact resume
with COCO mAP in the metrics files, learning on a repeated batch, backbones from Apple's MobileOne-S0, the CLI recipe.

The data is a tiny synthetic COCO-format set made in ``tmp_path``: grey noise with a red (category 3) or blue
(category 7, a non-contiguous id) rectangle and one crowd box that training leaves out. Model: ``ssdlite_mobilevit_xxs``
(random weights) at 96 px, one thread; no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_convert, box_iou

import mobilevit
from mobilevit.cli import main
from mobilevit.data.coco import DetectionDataset
from mobilevit.data.detection_transforms import DetectionTrainTransform, collate_boxes
from mobilevit.errors import UsageError
from mobilevit.evaluate import evaluate_set
from mobilevit.runner import load_runner
from mobilevit.tasks.detection import decode_boxes, encode_boxes
from mobilevit.train import checkpoint as ckpt
from mobilevit.train.build import build_model, new_tensors
from mobilevit.train.config import ModelConfig, TrainConfig, apply_overrides
from mobilevit.train.loop import train
from mobilevit.train.losses import MultiBoxLoss, ssd_match

COLORS = {3: (230, 40, 40), 7: (40, 40, 230)}  # category id -> colour
COMMON = [
    "model.name=ssdlite_mobilevit_xxs",
    "model.num_classes=3",
    "sampler.kind=fixed",
    "sampler.base_size=96",
    "sampler.batch_size=2",
    "data.num_workers=0",
    "data.val_crop=96",
    "schedule.warmup_iters=0",
    "optimizer.lr=0.001",
    "log_every=1",
    "checkpoint_every=100",
]


def make_coco(root: Path, count: int, seed: int) -> None:
    """``count`` images of 80-120 px with one coloured rectangle each (and a crowd box), as ``images/`` +
    ``annotations/instances.json``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(80, 121, 2))
        pixels = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        category = (3, 7)[i % 2]
        bw, bh = int(rng.integers(w // 3, w * 2 // 3)), int(rng.integers(h // 3, h * 2 // 3))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        pixels[y : y + bh, x : x + bw] = COLORS[category]
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": w, "height": h})
        annotations.append({"id": 2 * i + 1, "image_id": 10 + i, "category_id": category, "bbox": [x, y, bw, bh],
                            "area": bw * bh, "iscrowd": 0})  # fmt: skip
        annotations.append({"id": 2 * i + 2, "image_id": 10 + i, "category_id": 3, "bbox": [0, 0, 5, 5],
                            "area": 25, "iscrowd": 1})  # fmt: skip
    categories = [{"id": 3, "name": "red thing"}, {"id": 7, "name": "blue", "coco_name": "blue thing"}]
    (root / "annotations").mkdir()
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_coco(root / "train", 4, seed=0)
    make_coco(root / "val", 2, seed=1)
    return root


def config(coco: Path, out: Path, *extra: str) -> TrainConfig:
    overrides = [*COMMON, f"data.train={coco / 'train'}", f"data.val={coco / 'val'}", f"output_dir={out}", *extra]
    return apply_overrides(TrainConfig(), overrides)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def random_targets(generator: torch.Generator, counts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, ``count`` boxes (normalised xyxy, 5-70% of the side) and labels 1..4."""
    out = []
    for n in counts:
        centre = torch.rand(n, 2, generator=generator) * 0.8 + 0.1
        size = torch.rand(n, 2, generator=generator) * 0.65 + 0.05
        boxes = box_convert(torch.cat([centre, size], 1), "cxcywh", "xyxy").clamp(0, 1)
        out.append((boxes, torch.randint(1, 5, (n,), generator=generator)))
    return out


def test_multibox_loss_matches_torchvision_ssd() -> None:
    """Our matcher and loss against torchvision's ``SSD.compute_loss`` with ``SSDMatcher(0.5)`` and ``BoxCoder``
    weights (10, 10, 5, 5) (= 1 / variances 0.1, 0.2) on the same anchors (a real SSDLite's at 128 px, converted
    to torchvision's xyxy), targets and outputs. Same conventions: background 0, IoU >= 0.5 positive, each box's best
    anchor forced, 3 hard negatives per positive per image, sums divided by the batch's positives; torchvision
    returns the box and class terms apart: their sum is our loss. One image has no boxes."""
    model = mobilevit.create_model("ssdlite_mobilevit_xxs", num_classes=5)
    anchors = model.anchors([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)])[0]  # [A, 4] cxcywh, as at 128 px
    generator = torch.Generator().manual_seed(0)
    targets = random_targets(generator, [3, 1, 0, 7])
    batch, num_anchors = len(targets), anchors.shape[0]
    logits = torch.randn(batch, num_anchors, 5, generator=generator)
    regression = torch.randn(batch, num_anchors, 4, generator=generator)
    padded = collate_boxes([(torch.zeros(3, 2, 2), torch.cat([b, y[:, None].float()], 1)) for b, y in targets])[1]
    ours = MultiBoxLoss()((logits, regression, anchors.expand(batch, -1, -1)), padded)

    corners = box_convert(anchors, "cxcywh", "xyxy")
    matcher = det_utils.SSDMatcher(0.5)
    matched = [
        matcher(box_iou(b, corners)) if len(b) else torch.full((num_anchors,), -1, dtype=torch.int64)
        for b, _ in targets
    ]
    reference = SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=3)
    theirs = SSD.compute_loss(
        reference,
        [{"boxes": b, "labels": labels} for b, labels in targets],
        {"bbox_regression": regression, "cls_logits": logits},
        [corners] * batch,
        matched,
    )
    torch.testing.assert_close(ours, theirs["bbox_regression"] + theirs["classification"], rtol=1e-5, atol=1e-5)
    for (b, labels), their_match in zip(targets, matched, strict=True):  # the matches themselves
        boxes, anchor_labels = ssd_match(b, labels, anchors)
        positive = their_match >= 0
        assert torch.equal(anchor_labels > 0, positive)
        if len(b):
            assert torch.equal(anchor_labels[positive], labels[their_match[positive]])
            assert torch.equal(boxes[positive], b[their_match[positive]])


def test_forced_match_below_the_threshold() -> None:
    """A box that overlaps no anchor by 0.5 still gets its best anchor (IoU by hand: 0.25)."""
    anchors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])  # two quarter squares, cxcywh
    box = torch.tensor([[0.0, 0.0, 0.25, 0.25]])  # a quarter of the first anchor's area
    boxes, labels = ssd_match(box, torch.tensor([2]), anchors)
    assert labels.tolist() == [2, 0] and torch.equal(boxes[0], box[0])
    _, unforced = ssd_match(box, torch.tensor([2]), anchors[1:])  # IoU 0 with the only anchor: still forced
    assert unforced.tolist() == [2]


def test_encoding_inverts_decoding_and_matches_torchvision() -> None:
    """``encode_boxes`` is torchvision's ``BoxCoder((10, 10, 5, 5)).encode_single`` on xyxy anchors, and
    ``decode_boxes`` (the task's) takes it back to the boxes."""
    generator = torch.Generator().manual_seed(1)
    anchors = box_convert(random_targets(generator, [50])[0][0], "xyxy", "cxcywh").clamp(min=0.02)
    boxes = random_targets(generator, [50])[0][0]
    encoded = encode_boxes(boxes, anchors)
    coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(encoded, coder.encode_single(boxes, box_convert(anchors, "cxcywh", "xyxy")))
    torch.testing.assert_close(decode_boxes(encoded, anchors), boxes, rtol=0, atol=1e-6)


def test_train_transform_moves_the_boxes_with_the_pixels() -> None:
    """After the IoU crop, flip and resize, each kept box still bounds its red rectangle (to a pixel); a dropped box
    is one whose rectangle left the crop."""
    pixels = np.full((90, 120, 3), 128, np.uint8)
    pixels[20:60, 30:100] = (255, 0, 0)
    box = torch.tensor([[30.0, 20.0, 100.0, 60.0]])
    kept = 0
    for seed in range(8):
        torch.manual_seed(seed)
        transform = DetectionTrainTransform((64, 80), photometric=0.0)
        x, rows = transform(Image.fromarray(pixels), {"boxes": box, "labels": torch.tensor([1])})
        assert x.shape == (3, 64, 80) and x.dtype == torch.float32 and rows.shape[1] == 5
        red = (x[0] > 0.9) & (x[1] < 0.1)
        if not len(rows):
            assert int(red.sum()) < 0.5 * 40 * 70 * (64 / 90) * (80 / 120)  # most of the rectangle was cut
            continue
        kept += 1
        ys, xs = torch.nonzero(red, as_tuple=True)
        found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        expected = rows[0, :4] * torch.tensor([80, 64, 80, 64])
        assert float((found - expected).abs().max()) <= 1.5 and rows[0, 4] == 1
    assert kept >= 4


def test_dataset_maps_categories_and_back(coco: Path) -> None:
    """COCO ids 3 and 7 are labels 1 and 2 (ascending id), named by coco_name else name; crowd boxes are left out;
    the names map back to the same ids, as ``eval`` maps a trained model's labels."""
    data = DetectionDataset(coco / "train")
    assert data.classes == ["red thing", "blue thing"] and data.category == {1: 3, 2: 7}
    image, target = data[1]
    annotation = json.loads((coco / "train/annotations/instances.json").read_text())["annotations"][2]
    x, y, w, h = annotation["bbox"]
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[x, y, x + w, y + h]]
    assert target["image_id"] == 11 and image.size == (json.loads(
        (coco / "train/annotations/instances.json").read_text())["images"][1]["width"], image.height)  # fmt: skip


def test_resume_continues_exactly_and_logs_coco_map(coco: Path, tmp_path: Path) -> None:
    """Stop after 3 of 4 steps (mid-epoch), resume: the same weights and EMA as one run; every epoch record holds
    COCO mAP fields for the model and its EMA, the CSV has AP columns, and ``final/`` names the set's classes so
    that ``mobilevit eval`` scores it on the val set with the numbers the run logged."""
    extra = ["epochs=2", "schedule.min_lr=0.001", "ema.momentum=0.2"]
    whole = train(config(coco, tmp_path / "whole", *extra))
    part = train(config(coco, tmp_path / "part", *extra, "max_iters=3"))
    assert part.step == 3
    resumed = train(config(coco, tmp_path / "part", *extra), resume=True)
    assert whole.step == resumed.step == 4 and resumed.task == "detection"
    a, b = ckpt.load_checkpoint(tmp_path / "whole" / ckpt.LAST), ckpt.load_checkpoint(tmp_path / "part" / ckpt.LAST)
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    epochs = [r for r in records(tmp_path / "whole") if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):  # -1: no object of that size to score
        assert all(-1.0 <= r[f"val_{key}"] <= 1.0 and -1.0 <= r[f"val_{key}_ema"] <= 1.0 for r in epochs), key
    assert all(0.0 <= r["val_AP"] <= 1.0 and r["val_APs"] == -1.0 for r in epochs)  # objects are a third or more
    assert whole.val_AP == epochs[-1]["val_AP"]
    header = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_AP", "val_AP_ema", "val_AP50", "val_AP75"} <= set(header) and "val_top1" not in header
    best = json.loads((tmp_path / "whole" / "best" / "best.json").read_text())
    highest = max(max(r["val_AP"], r["val_AP_ema"]) for r in epochs)
    assert (best["metric"], best["value"]) == ("AP", highest) and (tmp_path / "whole/best/model.safetensors").is_file()
    saved = json.loads((tmp_path / "whole" / "final" / "config.json").read_text())
    assert saved["labels"] == ["background", "red thing", "blue thing"] and saved["num_classes"] == 3
    scored = evaluate_set(load_runner(tmp_path / "whole" / "final"), str(coco / "val"))
    assert scored["categories"] == 2 and scored["AP50"] == pytest.approx(epochs[-1]["val_AP50"], abs=1e-3)


def test_loss_falls_on_a_repeated_batch(coco: Path) -> None:
    """Eight AdamW steps (lr 5e-3) on one augmented batch at 64 px: the multibox loss falls to well under its start."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="ssdlite_mobilevit_xxs", num_classes=3)).train()
    data = DetectionDataset(coco / "train", DetectionTrainTransform(64))
    images, targets, _ = collate_boxes([data[i] for i in range(2)])
    loss_fn, optimizer = MultiBoxLoss(), torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(8):
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_apple_mobileone_s0_fills_the_backbone(shared: Path) -> None:
    """Apple's real folded S0 file as ``model.pretrained`` of ``ssdlite_mobileone_s0``: each backbone tensor of the
    file is in the detector's backbone (stage0 -> stem, stageN -> stages.N-1), the classifier is dropped and every
    tensor outside the backbone (extras, heads, classifier) starts new."""
    from safetensors.torch import load_file

    path = shared / "weights" / "mobileone_s0_reparam.safetensors"
    apple = load_file(path)
    model = build_model(ModelConfig(name="ssdlite_mobileone_s0", num_classes=3, pretrained=str(path)))
    state = model.state_dict()
    for key, value in apple.items():
        if key.startswith("linear."):
            continue
        stage, rest = key.split(".", 1)
        ours = f"backbone.stem.{rest}" if stage == "stage0" else f"backbone.stages.{int(stage[5:]) - 1}.{rest}"
        assert torch.equal(state[ours], value), key
    new = new_tensors(model, str(path))
    assert new == [k for k in state if not k.startswith("backbone.")] and "classifier.0.weight" in new
    assert mobilevit.weights.model_io(model).preprocess.input_size == (320, 320)


def test_freeze_backbone_trains_the_head_only() -> None:
    model = build_model(ModelConfig(name="ssdlite_mobilevit_xxs", num_classes=3, freeze_backbone=True))
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name.split(".")[0] for name, p in model.named_parameters() if not p.requires_grad}
    assert trainable == {"extras", "heads", "classifier"} and frozen == {"backbone"}


@pytest.mark.slow
def test_cli_trains_a_recipe(coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    code = main(
        ["train", "--recipe", "ssdlite_mobilevit_xxs", "--data", str(coco), "--output", str(out), "--no-progress",
         "--num-classes", "3", "model.pretrained=none", "sampler.base_size=96", "sampler.batch_size=4",
         "data.val_crop=96", "data.num_workers=0", "max_iters=1", "amp=false"]
    )  # fmt: skip
    assert code == 0
    assert "val AP" in capsys.readouterr().out
    model = mobilevit.create_model(out / "final")
    assert model.task == "detection" and model.num_classes == 3
    epoch = next(r for r in records(out) if r["event"] == "epoch")
    assert epoch["val_AP"] is not None  # the val/ set was found by --data alone


def test_bad_detection_setups(coco: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="mixup"):
        train(config(coco, tmp_path / "a", "augment.mixup_alpha=0.2"))
    with pytest.raises(UsageError, match=r"model\.num_classes=3"):
        train(config(coco, tmp_path / "b", "model.num_classes=2"))
    with pytest.raises(UsageError, match=r"no instances\.json"):
        train(config(coco, tmp_path / "c", f"data.train={tmp_path}"))
    with pytest.raises(UsageError, match="applies to segmentation models"):
        build_model(ModelConfig(name="ssdlite_mobilevit_xxs", num_classes=3, classifier_init_std=0.01))


@pytest.mark.slow
def test_torchrun_two_processes_score_the_whole_val_set(coco: Path, tmp_path: Path) -> None:
    """Two CPU ranks each train on half of every batch and detect on half of the val set: the epoch record counts
    both ranks' images and its COCO mAP is the whole val set's, as ``eval`` scores the saved model; only rank 0
    writes."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mobilevit.cli", "train", "--recipe", "ssdlite_mobilevit_xxs", "--data", str(coco),
           "--output", str(out), "--no-progress", "--num-classes", "3", "model.pretrained=none",
           "sampler.base_size=96", "sampler.batch_size=2", "data.val_crop=96", "data.num_workers=0", "epochs=1",
           "amp=false", "ema.warmup=true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 1
    epoch = next(r for r in records(out) if r["event"] == "epoch")
    assert epoch["world_size"] == 2 and epoch["images"] == 4
    scored = evaluate_set(load_runner(out / "final"), str(coco / "val"))
    assert scored["AP50"] == pytest.approx(epoch["val_AP50"], abs=1e-3)


def test_ssdlite_recipes_follow_ml_cvnets() -> None:
    """The numbers of ml-cvnets' config/detection/ssd_coco/mobilevit.yaml and mobilevit_v2.yaml."""
    from mobilevit.train.config import load_recipe

    for name, weight_decay in (("ssdlite_mobilevit_s", 0.01), ("ssdlite_mobilevitv2_200", 0.05)):
        cfg = load_recipe(name)
        assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.betas) == ("adamw", 9e-4, (0.9, 0.999))
        assert (cfg.optimizer.weight_decay, cfg.optimizer.no_decay_norm_bias) == (weight_decay, False)
        assert (cfg.schedule.name, cfg.schedule.warmup_iters, cfg.schedule.warmup_init_lr) == ("cosine", 500, 9e-5)
        assert (cfg.schedule.min_lr, cfg.epochs, cfg.ema.momentum, cfg.amp) == (1e-6, 200, 0.0005, True)
        assert (cfg.sampler.kind, cfg.sampler.base_size, cfg.sampler.batch_size, cfg.data.val_crop) == (
            "fixed", 320, 32, 320)  # fmt: skip
        assert (cfg.detection.iou_threshold, cfg.detection.neg_pos_ratio, cfg.model.num_classes) == (0.5, 3, 81)
        assert cfg.augment.interpolation == "bicubic" and cfg.model.pretrained == f"{name[len('ssdlite_') :]}.orig_in1k"


@pytest.mark.slow
def test_detector_checkpoint_of_other_classes_keeps_all_but_the_classifier(shared: Path) -> None:
    """ml-cvnets' SSDLite-MobileViT-XXS fixture (81 classes) fine-tuned to 4: every tensor but the class predictors
    comes from the checkpoint (as the model of 81 classes loads it)."""
    path = shared / "fixtures" / "ssdlite_mobilevit_xxs" / "ssdlite_mobilevit_xxs.pt"
    model = build_model(ModelConfig(name="ssdlite_mobilevit_xxs", num_classes=4, pretrained=str(path)))
    whole = mobilevit.create_model("ssdlite_mobilevit_xxs", pretrained=str(path)).state_dict()
    new = new_tensors(model, str(path))
    assert new and all(k.startswith("classifier.") for k in new) and model.num_classes == 4
    for key, value in model.state_dict().items():
        if key not in new:
            assert torch.equal(value, whole[key]), key


def test_backbone_weights_name_keeps_their_preprocessing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's ``model.pretrained: mobilevit_xxs.orig_in1k`` (Apple's BGR weights) on ssdlite_mobilevit_xxs: the
    entry's file fills the backbone and the detector is fed BGR, the whole image resized to 320 (the file is a local
    stand-in for the download)."""
    import mobilevit.train.build as build

    classifier = mobilevit.create_model("mobilevit_xxs")
    path = tmp_path / "xxs.pth"
    torch.save(classifier.state_dict(), path)
    monkeypatch.setattr(build, "resolve_weights", lambda entry: path)
    model = build_model(ModelConfig(name="ssdlite_mobilevit_xxs", num_classes=3, pretrained="mobilevit_xxs.orig_in1k"))
    pre = mobilevit.weights.model_io(model).preprocess
    assert pre.channel_order == "BGR" and pre.resize_mode == "exact" and pre.input_size == (320, 320)
    assert torch.equal(model.state_dict()["backbone.stem.conv.weight"], classifier.state_dict()["stem.conv.weight"])
