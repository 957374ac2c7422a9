"""Mask R-CNN training in the runner: COCO masks (polygons, uncompressed and compressed RLE) decoded to the drawn
pixels, masks that move with the boxes and pixels through the augmentations, the loss (torchvision's loss dict) falling
on a repeated batch, exact resume with box and mask mAP and each loss term in the metrics files, the recipe.

The data is a tiny synthetic COCO-format set made in ``tmp_path``: grey noise with one red (category 3) or blue
(category 5) rectangle, its mask given as a polygon, an uncompressed RLE written out by hand (column-major runs, as
COCO's format defines them) or a compressed RLE (pycocotools' encoder), in turn. Model: ``maskrcnn_mobilevit_xxs``
(random weights) with narrow heads at 64 px, one thread; no network.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilevit
from mobilevit.data.coco import DetectionDataset
from mobilevit.data.detection_transforms import DetectionTrainTransform, collate_targets
from mobilevit.train import build as train_build
from mobilevit.train import checkpoint as ckpt
from mobilevit.train.build import new_tensors
from mobilevit.train.config import TrainConfig, apply_overrides, load_recipe
from mobilevit.train.loop import train
from mobilevit.train.losses import LossDictSum

pycocotools_mask = pytest.importorskip("pycocotools.mask")

COLORS = {3: (230, 40, 40), 5: (40, 40, 230)}  # category id -> colour
# narrow heads, few proposals: a Mask R-CNN that trains a step in well under a second on one thread
TINY = dict(
    fpn_channels=16,
    box_convs=(16,),
    mask_convs=(16,),
    representation_size=32,
    mask_predictor_channels=16,
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=32,
    box_detections_per_img=10,
)
COMMON = [
    "model.name=maskrcnn_mobilevit_xxs",
    "model.num_classes=3",
    "sampler.kind=fixed",
    "sampler.base_size=64",
    "sampler.batch_size=2",
    "data.num_workers=0",
    "data.val_crop=64",
    "detection.iou_crop=false",
    "schedule.warmup_iters=0",
    "optimizer.lr=0.001",
    "log_every=1",
    "checkpoint_every=100",
]


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a 0/1 mask: run lengths over the pixels in column-major order, starting with 0s."""
    flat = mask.T.reshape(-1)  # column-major
    counts, current, run = [], 0, 0
    for value in flat.tolist():
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def make_coco(root: Path, count: int, seed: int) -> list[np.ndarray]:
    """``count`` images of 64-96 px with one coloured rectangle each, its mask as a polygon, an uncompressed RLE or a
    compressed RLE in turn; ``images/`` + ``annotations/instances.json``. Returns each image's drawn mask."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations, drawn = [], [], []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(64, 97, 2))
        pixels = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        category = (3, 5)[i % 2]
        bw, bh = int(rng.integers(w // 3, w * 2 // 3)), int(rng.integers(h // 3, h * 2 // 3))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        pixels[y : y + bh, x : x + bw] = COLORS[category]
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[y : y + bh, x : x + bw] = 1
        drawn.append(mask)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        if i % 3 == 0:
            segmentation: object = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
        elif i % 3 == 1:
            segmentation = {"size": [h, w], "counts": rle_counts(mask)}
        else:
            encoded = pycocotools_mask.encode(np.asfortranarray(mask))
            segmentation = {"size": [h, w], "counts": encoded["counts"].decode("ascii")}
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": w, "height": h})
        annotations.append({"id": i + 1, "image_id": 10 + i, "category_id": category, "bbox": [x, y, bw, bh],
                            "area": bw * bh, "iscrowd": 0, "segmentation": segmentation})  # fmt: skip
    categories = [{"id": 3, "name": "red thing"}, {"id": 5, "name": "blue thing"}]
    (root / "annotations").mkdir()
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances.json").write_text(json.dumps(data))
    return drawn


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco_masks")
    make_coco(root / "train", 4, seed=0)
    make_coco(root / "val", 2, seed=1)
    return root


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner builds Mask R-CNNs with :data:`TINY` heads."""
    monkeypatch.setattr(train_build, "create_model", functools.partial(train_build.create_model, **TINY))


def config(coco: Path, out: Path, *extra: str) -> TrainConfig:
    overrides = [*COMMON, f"data.train={coco / 'train'}", f"data.val={coco / 'val'}", f"output_dir={out}", *extra]
    return apply_overrides(TrainConfig(), overrides)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_polygons_and_rle_decode_to_the_drawn_masks(tmp_path: Path) -> None:
    """Each annotation's mask is the rectangle drawn: exactly for both RLE forms, to within the polygon's boundary
    pixels (pycocotools rasterizes a polygon's edge its own way) for the polygon."""
    drawn = make_coco(tmp_path, 3, seed=2)
    data = DetectionDataset(tmp_path, masks=True)
    for i, expected in enumerate(drawn):
        _, target = data[i]
        (mask,) = target["masks"]
        assert mask.dtype == torch.uint8 and mask.shape == expected.shape
        if i % 3:
            assert torch.equal(mask, torch.from_numpy(expected)), i
        else:
            inter = int((mask.numpy() & expected).sum())
            union = int((mask.numpy() | expected).sum())
            assert inter / union > 0.9, (i, inter, union)


def test_masks_move_with_boxes_and_pixels(coco: Path) -> None:
    """Through flip (always), photometric distortion and a resize to 80x48: each mask stays bounded by its box (to a
    pixel), covers the pixels of its rectangle's colour, and the flip mirrors it."""
    torch.manual_seed(0)
    transform = DetectionTrainTransform((48, 80), iou_crop=False, photometric=0.0, hflip=1.0, masks=True)
    data = DetectionDataset(coco / "train", masks=True)
    for i in range(len(data)):
        image, target = data[i]
        original = target["masks"][0].numpy()
        out_image, out = transform(image, target)
        assert out_image.shape == (3, 48, 80) and set(out) == {"boxes", "labels", "masks"}
        (mask,) = out["masks"]
        (box,) = out["boxes"].tolist()
        rows, cols = mask.nonzero(as_tuple=True)
        assert box[0] - 1 <= cols.min() and cols.max() + 1 <= box[2] + 1, (box, cols.min(), cols.max())
        assert box[1] - 1 <= rows.min() and rows.max() + 1 <= box[3] + 1, (box, rows.min(), rows.max())
        colour = torch.tensor(COLORS[(3, 5)[i % 2]], dtype=torch.float32) / 255
        inside = (out_image - colour[:, None, None]).abs().amax(0) < 0.1
        assert (inside & mask.bool()).sum() / mask.sum() > 0.9  # the mask sits on the rectangle's pixels
        # mirrored: the original mask's first column is now the last one, in the resized scale
        first = original.nonzero()[1].min() * 80 / original.shape[1]
        assert abs((80 - 1 - cols.max().item()) - first) <= 2
    collated = collate_targets([transform(*data[i]) for i in range(2)])
    assert collated[0].shape == (2, 3, 48, 80) and len(collated[1]) == 2 and collated[2] == 0


def test_loss_falls_on_a_repeated_batch(coco: Path) -> None:
    """Eight AdamW steps (lr 2e-3) on one augmented batch at 64 px: the sum of torchvision's losses falls well under
    its start, and every term is kept."""
    torch.manual_seed(0)
    model = train_build.create_model("maskrcnn_mobilevit_xxs", num_classes=3, **TINY).train()
    data = DetectionDataset(coco / "train", DetectionTrainTransform(64, iou_crop=False, masks=True), masks=True)
    images, targets, _ = collate_targets([data[i] for i in range(2)])
    loss_fn, optimizer = LossDictSum(), torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = loss_fn(model(images, targets), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert set(loss_fn.terms) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert losses[-1] < 0.6 * losses[0], losses


def test_resume_continues_exactly_and_logs_box_and_mask_ap(coco: Path, tmp_path: Path, tiny: None) -> None:
    """Stop after 1 of 2 steps (mid-epoch), resume: the same weights and EMA as one run; every epoch record holds box
    and mask mAP for the model and its EMA and each loss term, the CSV has their columns, best/ is by box AP."""
    extra = ["epochs=1", "schedule.min_lr=0.001", "ema.momentum=0.2"]
    whole = train(config(coco, tmp_path / "whole", *extra))
    part = train(config(coco, tmp_path / "part", *extra, "max_iters=1"))
    assert part.step == 1
    resumed = train(config(coco, tmp_path / "part", *extra), resume=True)
    assert whole.step == resumed.step == 2 and resumed.task == "instance-segmentation"
    a, b = ckpt.load_checkpoint(tmp_path / "whole" / ckpt.LAST), ckpt.load_checkpoint(tmp_path / "part" / ckpt.LAST)
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    same = ("train_loss", "train_loss_mask", "val_AP", "val_mask_AP", "val_mask_AP_ema")
    last_whole, last_part = records(tmp_path / "whole")[-2], records(tmp_path / "part")[-2]
    assert [last_whole[k] for k in same] == [last_part[k] for k in same]  # the resumed epoch's record, exactly
    epochs = [r for r in records(tmp_path / "whole") if r["event"] == "epoch"]
    terms = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
    for r in epochs:
        for key in ("AP", "AP50", "mask_AP", "mask_AP50"):
            assert -1.0 <= r[f"val_{key}"] <= 1.0 and -1.0 <= r[f"val_{key}_ema"] <= 1.0, key
        assert sum(r[f"train_{t}"] for t in terms) == pytest.approx(r["train_loss"], rel=1e-5)
    steps = [r for r in records(tmp_path / "whole") if r["event"] == "step"]
    assert all(sum(r[t] for t in terms) == pytest.approx(r["loss"], rel=1e-5) for r in steps)
    assert whole.val_AP == epochs[-1]["val_AP"] and whole.val_mask_AP == epochs[-1]["val_mask_AP"]
    header = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_AP", "val_AP_ema", "val_mask_AP", "val_mask_AP_ema", "train_loss_mask"} <= set(header)
    best = json.loads((tmp_path / "whole" / "best" / "best.json").read_text())
    assert best["metric"] == "AP" and best["value"] == max(max(r["val_AP"], r["val_AP_ema"]) for r in epochs)
    saved = json.loads((tmp_path / "whole" / "final" / "config.json").read_text())
    assert saved["labels"] == ["background", "red thing", "blue thing"] and saved["num_classes"] == 3


def test_boxes_only_set_is_refused_clearly(tmp_path: Path) -> None:
    """A set whose annotations have no segmentation cannot train a Mask R-CNN: one clear error."""
    make_coco(tmp_path, 1, seed=3)
    notes = tmp_path / "annotations" / "instances.json"
    data = json.loads(notes.read_text())
    for annotation in data["annotations"]:
        del annotation["segmentation"]
    notes.write_text(json.dumps(data))
    with pytest.raises(Exception, match="without a segmentation"):
        DetectionDataset(tmp_path, masks=True)[0]


def test_maskrcnn_recipe_follows_ml_cvnets() -> None:
    """The shipped recipe holds ml-cvnets' Mask R-CNN numbers (config/detection/mask_rcnn_coco/resnet_fpn.yaml and
    examples/range_augment/detection/maskrcnn_mobilevit.yaml): SGD momentum 0.9, weight decay 4e-5 without it on
    norms and biases, lr 0.1 after 500 warmup iterations from 0.001, 100 epochs, 1024 px (512-1280 variable batch),
    EMA 0.0005, the whole image resized to 1024 for validation."""
    cfg = load_recipe("maskrcnn_mobilevit_s")
    assert cfg.model.name == "maskrcnn_mobilevit_s" and cfg.model.num_classes == 81
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("sgd", 0.1, 4e-5)
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.no_decay_norm_bias
    assert (cfg.schedule.warmup_iters, cfg.schedule.warmup_init_lr, cfg.epochs) == (500, 0.001, 100)
    assert (cfg.sampler.base_size, cfg.sampler.min_size, cfg.sampler.max_size) == (1024, 512, 1280)
    assert cfg.data.val_crop == 1024 and cfg.ema.momentum == 0.0005
    assert not cfg.detection.iou_crop and cfg.detection.photometric == 0 and cfg.augment.hflip == 0.5


def test_a_classifier_checkpoint_leaves_pyramid_and_heads_new(tmp_path: Path) -> None:
    """A classification checkpoint of the backbone fills ``backbone.body`` only: the pyramid, RPN and RoI heads are
    the tensors that start new."""
    classifier = mobilevit.create_model("mobilevit_xxs", num_classes=10)
    path = tmp_path / "classifier.pt"
    torch.save(classifier.state_dict(), path)
    model = train_build.create_model("maskrcnn_mobilevit_xxs", pretrained=str(path), num_classes=3, **TINY)
    new = new_tensors(model, str(path))
    assert new and not any(k.startswith("backbone.body.") for k in new)
    assert {k.split(".")[0] for k in new} == {"backbone", "rpn", "roi_heads"} and any("fpn" in k for k in new)
    for name, value in classifier.state_dict().items():
        if f"backbone.body.{name}" in model.state_dict():
            assert torch.equal(model.state_dict()[f"backbone.body.{name}"], value), name
