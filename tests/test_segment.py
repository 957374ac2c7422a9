"""Semantic segmentation in use: masks and their files, the IoU metric against torchmetrics, resizing the logits back
to the image, the segmenter, ``mobilevit segment`` and ``mobilevit eval --task segmentation``.

The models are DeepLabV3-MobileOne-S0 with random weights at a 96x128 input (fast); real photos and masks come from
``../shared/data/voc-mini`` (PASCAL VOC 2012), used for smoke runs only: no accuracy is claimed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit.data.images import ImageError
from mobilevit.data.segmentation import (
    IGNORE_INDEX,
    confusion_matrix,
    list_segmentation_set,
    mask_image,
    overlay_image,
    read_mask,
    segmentation_scores,
    voc_palette,
)
from mobilevit.errors import UsageError
from mobilevit.layers import upsample_logits
from mobilevit.segment import segment_logits
from mobilevit.weights.entries import VOC_LABELS

ARCH = "deeplabv3_mobileone_s0"
INPUT_SIZE = (96, 128)  # (H, W): small, and not square


def voc_mini(shared: Path) -> Path:
    return shared / "data" / "voc-mini"


# ---------------------------------------------------------------------------------------------- masks and files


def test_voc_palette_is_the_palette_of_voc_masks(shared: Path) -> None:
    """Our palette is the one stored in PASCAL VOC's own SegmentationClass PNGs (all 256 entries)."""
    for _, mask in list_segmentation_set(voc_mini(shared))[:3]:
        stored = np.asarray(Image.open(mask).getpalette(), dtype=np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(voc_palette(), stored)
    # the colours VOC's devkit documents: person (15) is (192, 128, 128), the boundary (255) is (224, 224, 192)
    assert voc_palette()[15].tolist() == [192, 128, 128] and voc_palette()[255].tolist() == [224, 224, 192]


def test_mask_files_store_the_class_index(tmp_path: Path, shared: Path) -> None:
    mask = np.random.default_rng(0).integers(0, 21, (37, 53)).astype(np.uint8)
    mask[0, :5] = IGNORE_INDEX
    mask_image(mask).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), mask)  # what any reader sees
    # more than 256 classes: a 16-bit grayscale PNG of the indices
    wide = np.arange(300 * 2, dtype=np.int64).reshape(2, 300) % 300
    mask_image(wide).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "wide.png"), wide)
    # a real VOC mask: its values are the classes (VOC's README lists background, aeroplane and person in 2007_000032)
    voc = read_mask(voc_mini(shared) / "SegmentationClass" / "2007_000032.png")
    assert voc.shape == (281, 500) and set(np.unique(voc).tolist()) == {0, 1, 15, 255}
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageError, match=r"rgb\.png: a RGB mask"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(ImageError, match="no such mask file"):
        read_mask(tmp_path / "missing.png")


def test_overlay_tints_classes_and_leaves_background(tmp_path: Path) -> None:
    image = Image.fromarray(np.full((60, 80, 3), 200, np.uint8))
    mask = np.zeros((60, 80), np.uint8)
    mask[30:, 40:] = 15  # person
    labels = VOC_LABELS
    plain = np.asarray(overlay_image(image, mask, labels, alpha=0.5, legend=False)).astype(int)
    assert (plain[:30, :40] == 200).all()  # background untouched
    np.testing.assert_allclose(plain[45, 60], (np.array([200, 200, 200]) + np.array([192, 128, 128])) / 2, atol=1)
    with_legend = np.asarray(overlay_image(image, mask, labels))
    assert (with_legend[:8, :8] != 200).any()  # the legend's box and swatch in the corner
    assert (with_legend[50:, 70:] == plain[50:, 70:]).all()  # the rest is the same tint
    with pytest.raises(UsageError, match="alpha"):
        overlay_image(image, mask, labels, alpha=1.5)


def test_segmentation_set_layouts(tmp_path: Path) -> None:
    voc = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("a\nb\n\n")
    pairs = list_segmentation_set(voc)
    assert pairs == [
        (voc / "JPEGImages/a.jpg", voc / "SegmentationClass/a.png"),
        (voc / "JPEGImages/b.jpg", voc / "SegmentationClass/b.png"),
    ]
    with pytest.raises(UsageError, match=r"no split 'train'.*splits here: val"):
        list_segmentation_set(voc, "train")
    folders = tmp_path / "folders"
    (folders / "images" / "sub").mkdir(parents=True)
    (folders / "masks" / "sub").mkdir(parents=True)
    for name in ("x.jpg", "sub/y.png"):
        Image.new("RGB", (4, 4)).save(folders / "images" / name)
        mask_image(np.zeros((4, 4), np.uint8)).save((folders / "masks" / name).with_suffix(".png"))
    assert list_segmentation_set(folders) == [
        (folders / "images/sub/y.png", folders / "masks/sub/y.png"),
        (folders / "images/x.jpg", folders / "masks/x.png"),
    ]
    Image.new("RGB", (4, 4)).save(folders / "images" / "z.jpg")
    with pytest.raises(UsageError, match=r"an image under .* has no mask: .*z\.png"):
        list_segmentation_set(folders)
    with pytest.raises(UsageError, match="not a segmentation set"):
        list_segmentation_set(tmp_path)
    with pytest.raises(FileNotFoundError):
        list_segmentation_set(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------------ the metric


def test_metric_by_hand() -> None:
    """A 2x4 case worked out by hand: class 0 IoU 1/3, class 1 IoU 2/4, class 2 absent from both (no IoU)."""
    target = np.array([[0, 0, 1, 1], [1, 255, 3, 3]])
    prediction = np.array([[0, 1, 1, 0], [1, 2, 3, 0]])  # the 2 predicted on an ignored pixel does not count
    scores = segmentation_scores(confusion_matrix(prediction, target, 4), ["a", "b", "c", "d"])
    # class 0: TP 1, FP 2 (a 1 and a 3 predicted as 0), FN 1 -> 1/4; class 1: TP 2, FP 1, FN 1 -> 2/4;
    # class 3: TP 1, FN 1 -> 1/2; class 2: only on the ignored pixel -> absent
    assert scores["per_class_iou"] == {"a": 0.25, "b": 0.5, "c": None, "d": 0.5}
    assert scores["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 7) and scores["pixels"] == 7
    assert scores["classes_scored"] == 3
    with pytest.raises(UsageError, match="class indices 7 are outside the model's 4 classes"):
        confusion_matrix(prediction, np.where(target == 3, 7, target), 4)


def test_metric_agrees_with_torchmetrics() -> None:
    """Summed over several images with ignored pixels, a class absent from both prediction and ground truth, one
    only predicted and one only in the ground truth: the same numbers as torchmetrics on the same predictions."""
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    num_classes, rng = 8, np.random.default_rng(1)
    miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX)
    per_class = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX, zero_division=-1.0)
    accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
    total = np.zeros((num_classes, num_classes), np.int64)
    for size in ((31, 17), (20, 40), (5, 9)):
        # 4 and 6 only predicted, 5 only in the ground truth, 7 nowhere
        target = rng.choice([0, 1, 2, 3, 5, IGNORE_INDEX], size=size, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
        prediction = rng.choice([0, 1, 2, 3, 4, 6], size=size)
        total += confusion_matrix(prediction, target, num_classes)
        for metric in (miou, per_class, accuracy):
            metric.update(torch.from_numpy(prediction), torch.from_numpy(target))
    ours = segmentation_scores(total)
    reference = per_class.compute().tolist()
    assert reference[7] == -1.0 and ours["per_class_iou"]["class_7"] is None  # absent from both: no IoU
    assert [v for v in reference if v != -1.0] == pytest.approx(
        [v for v in ours["per_class_iou"].values() if v is not None]
    )
    assert ours["per_class_iou"]["class_5"] == 0.0 and ours["per_class_iou"]["class_4"] == 0.0
    # torchmetrics' macro mean leaves out the classes whose union is empty, as the VOC / mmsegmentation mean does
    assert ours["miou"] == pytest.approx(float(miou.compute()), abs=1e-6)
    assert ours["classes_scored"] == 7
    assert ours["pixel_accuracy"] == pytest.approx(float(accuracy.compute()), abs=1e-6)
    assert torchmetrics.__version__


# ---------------------------------------------------------------------------------------- logits back to the image


@pytest.mark.parametrize(
    ("source", "size", "band"), [((16, 13), (123, 77), 1000), ((8, 8), (64, 64), 1 << 22), ((12, 20), (5, 7), 50)]
)
def test_segment_logits_is_interpolate_then_argmax(source: tuple[int, int], size: tuple[int, int], band: int) -> None:
    logits = torch.randn(21, *source, generator=torch.Generator().manual_seed(3)) * 3
    mask, scores = segment_logits(logits, size, scores=True, band_elements=band)
    full = upsample_logits(logits[None].double(), size)[0]  # the models' documented resize: [C, H, W]
    assert mask.shape == size and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, full.argmax(0).numpy())
    winner = full.softmax(0).max(0).values  # [H, W]
    for c in range(21):
        won = torch.from_numpy(mask == c)
        if won.any():
            assert scores[c] == pytest.approx(float(winner[won].mean()), rel=1e-5)
        else:
            assert np.isnan(scores[c])
