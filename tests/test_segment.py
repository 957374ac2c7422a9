"""Semantic segmentation in use: masks and their files, the IoU metric against torchmetrics, resizing the logits back
to the image, the segmenter, ``mobilevit segment`` and ``mobilevit eval --task segmentation``.

The models are DeepLabV3-MobileOne-S0 with random weights at a 96x128 input (fast); real photos and masks come from
``../shared/data/voc-mini`` (PASCAL VOC 2012), used for smoke runs only: no accuracy is claimed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.cli import main
from mobilevit.data.images import ImageError
from mobilevit.data.segmentation import (
    IGNORE_INDEX,
    confusion_matrix,
    list_segmentation_set,
    mask_image,
    overlay_image,
    read_mask,
    segmentation_scores,
    share_text,
    voc_palette,
)
from mobilevit.errors import UsageError
from mobilevit.evaluate import evaluate_segmentation
from mobilevit.layers import upsample_logits
from mobilevit.predict import Predictor
from mobilevit.segment import Segmenter, segment_logits
from mobilevit.weights.entries import VOC_LABELS, Preprocess

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


def test_a_class_present_never_reads_as_absent() -> None:
    """The share written in ``segment``'s output and the overlay's legend: one decimal, and ``<0.1%`` for a class
    that won a few pixels, as on the server's page."""
    assert share_text(1 / 3) == "33.3%" and share_text(0.0006) == "0.1%" and share_text(1.0) == "100.0%"
    assert share_text(1 / 1_000_000) == "<0.1%" and share_text(0.0004) == "<0.1%" and share_text(0.0) == "0.0%"


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


@pytest.mark.parametrize(
    ("source", "size", "budget"),
    [
        ((12, 16), (1, 5000), 21 * 7),  # one row, in pieces of 7 columns
        ((12, 16), (2500, 1), 21 * 3),  # one column, 3 rows at a time
        ((12, 16), (2, 999), 5),  # a budget under one pixel's logits: one pixel at a time
        ((7, 9), (1001, 3), 21 * 50),
        ((64, 64), (31, 47), 21 * 100),  # fewer pixels than logits: each tile reads two source rows per row
        ((5, 3), (333, 1201), 1 << 20),
    ],
)
def test_segment_logits_in_tiles_any_aspect_ratio(source: tuple[int, int], size: tuple[int, int], budget: int) -> None:
    """Tiles of rows and columns, down to one pixel, on odd sizes and extreme aspect ratios: the mask of PyTorch's own
    float32 resize of the whole map, except where its two best classes tie to float32 rounding (its compiled kernel
    rounds the last bit its own way), and each class's score from the float64 resize."""
    logits = torch.randn(21, *source, generator=torch.Generator().manual_seed(5)) * 3
    mask, scores = segment_logits(logits, size, scores=True, band_elements=budget)
    full = torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    top2 = full.topk(2, dim=0).values  # [2, H, W]
    differ = mask != full.argmax(0).numpy()
    assert not (differ & (top2[0] - top2[1] > 1e-5).numpy()).any() and differ.sum() <= differ.size * 1e-5
    winner = upsample_logits(logits[None].double(), size)[0].softmax(0).max(0).values  # [H, W]
    present = np.unique(mask)
    expected = [float(winner[torch.from_numpy(mask == c)].mean()) for c in present]
    assert scores[present] == pytest.approx(expected, rel=1e-5)
    assert np.isnan(np.delete(scores, present)).all()


def hwm_growth(action: Callable[[], object]) -> int:
    """How far (bytes) this process's peak resident memory rose above its resident memory while ``action`` ran:
    Linux's VmHWM, reset to the current VmRSS first (``/proc/self/clear_refs``)."""

    def status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(text.split(f"{key}:", 1)[1].split("kB", 1)[0]) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        pytest.skip("no /proc/self/clear_refs to reset the peak resident memory (Linux only)")
    before = status("VmRSS")
    action()
    return status("VmHWM") - before


# ------------------------------------------------------------------------------------------------------ the segmenter

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESS = Preprocess(INPUT_SIZE, 96, 1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "RGB", resize_mode="exact")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepLabV3-MobileOne-S0, random weights and BatchNorm statistics, saved with VOC labels and a 96x128 input."""
    torch.manual_seed(0)
    model = randomize_batchnorm(mobilevit.create_model(ARCH))
    folder = tmp_path_factory.mktemp("segmentation") / "model"
    mobilevit.save_pretrained(model, folder, labels=list(VOC_LABELS), preprocess=PREPROCESS)
    return folder


@pytest.fixture(scope="module")
def segmenter(model_folder: Path) -> Segmenter:
    return Segmenter.from_pretrained(str(model_folder), batch_size=4)


def photos(shared: Path, n: int = 4) -> list[Path]:
    return [image for image, _ in list_segmentation_set(voc_mini(shared))[:n]]


def reference_logits(model: torch.nn.Module, image: Image.Image) -> torch.Tensor:
    """The model's logits for ``image`` by hand: PIL's resize of the whole image, ToTensor and Normalize."""
    height, width = INPUT_SIZE
    pixels = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    x = torch.from_numpy(pixels / 255.0).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.inference_mode():
        return model.eval()(x[None].float())[0]  # [C, h, w]


def test_segmenter_matches_the_model_run_by_hand(segmenter: Segmenter, model_folder: Path, shared: Path) -> None:
    """The unfolded model on a hand-made input, its logits resized to the photo: the same mask, except where the
    two best classes are within 1e-4 (folding the model moves logits by ~1e-6)."""
    model = mobilevit.create_model(str(model_folder))
    images = [Image.open(p) for p in photos(shared, 3)] + [
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (61, 203, 3), dtype=np.uint8))
    ]
    results = segmenter.segment(images, scores=True)
    seen = set()
    for image, result in zip(images, results, strict=True):
        logits = reference_logits(model, image)
        full = upsample_logits(logits[None], (image.height, image.width))[0]  # [C, H, W]
        top2 = full.topk(2, dim=0).values
        differ = result.mask != full.argmax(0).numpy()
        assert result.mask.shape == (image.height, image.width)
        assert not (differ & (top2[0] - top2[1] > 1e-4).numpy()).any()
        assert differ.mean() < 1e-3
        assert result.fractions.sum() == pytest.approx(1.0)
        seen |= {c["label"] for c in result.classes()}
    assert len(seen) >= 2  # the random model's masks are not one class everywhere, so the check means something


def test_every_input_kind_gives_the_same_mask(segmenter: Segmenter, shared: Path) -> None:
    path = photos(shared, 1)[0]
    image = Image.open(path)
    kinds = [
        path,
        str(path),
        path.read_bytes(),
        image,
        np.asarray(image.convert("RGB")),
        torch.from_numpy(np.asarray(image.convert("RGB")).copy()),
    ]
    masks = [r.mask for r in segmenter.segment(kinds)]
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])
    result = segmenter.segment(path)[0]
    rows = result.classes()
    assert [r["fraction"] for r in rows] == sorted((r["fraction"] for r in rows), reverse=True)
    assert {"index", "label", "fraction"} == set(rows[0]) and rows[0]["label"] == VOC_LABELS[rows[0]["index"]]


def test_bad_files_are_reported_in_place(segmenter: Segmenter, shared: Path, tmp_path: Path) -> None:
    good = photos(shared, 2)
    (tmp_path / "text.jpg").write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:2000])
    files = [good[0], tmp_path / "text.jpg", tmp_path / "missing.png", truncated, good[1]]
    out = list(segmenter.segment_files(files))
    assert [p for p, _ in out] == [str(f) for f in files]
    assert [type(r).__name__ for _, r in out] == [
        "Segmentation",
        "ImageError",
        "ImageError",
        "ImageError",
        "Segmentation",
    ]
    assert "text.jpg" in str(out[1][1]) and "missing.png" in str(out[2][1])
    assert out[4][1].size == Image.open(good[1]).size[::-1]
    with pytest.raises(ImageError, match=r"text\.jpg"):
        segmenter.segment(tmp_path / "text.jpg")


def long_thin_png(width: int, height: int) -> bytes:
    """A PNG of stripes (encoded in memory): a few KB for a million pixels."""
    stripes = np.zeros((height, width, 3), np.uint8)
    stripes.reshape(-1, 3)[:, 0] = np.arange(width * height) // 1000 % 2 * 255
    buffer = io.BytesIO()
    Image.fromarray(stripes).save(buffer, "PNG")
    return buffer.getvalue()


def test_mask_making_memory_is_bounded_for_any_aspect_ratio(segmenter: Segmenter, tmp_path: Path) -> None:
    """A 1,000,000x1 and a 1x1,000,000 image (PNGs of a few KB) segmented with scores, classes, binary masks, mask
    PNG and overlay, and scored by ``evaluate_segmentation`` against a mask of their size: the peak memory stays within
    a few tiles and chunks (under 128 MB), not ``num_classes`` floats per column or row of the image."""
    wide, tall = long_thin_png(1_000_000, 1), long_thin_png(1, 1_000_000)
    root = tmp_path / "set"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    (root / "images" / "tall.png").write_bytes(tall)
    mask_image((np.arange(1_000_000) % 21).astype(np.uint8).reshape(1_000_000, 1)).save(root / "masks" / "tall.png")
    results = []

    def make_masks() -> None:
        for data in (wide, tall):
            result = segmenter.segment(data, scores=True)[0]
            for row in result.classes():
                result.binary_mask(row["index"]).save(io.BytesIO(), "PNG")
            result.mask_image()
            result.overlay()
            results.append(result)
        results.append(evaluate_segmentation(segmenter, list_segmentation_set(root)))

    assert hwm_growth(make_masks) < 128 << 20
    assert results[0].size == (1, 1_000_000) and results[1].size == (1_000_000, 1)
    assert results[2]["count"] == 1 and results[2]["pixels"] == 1_000_000


def test_cli_segment_overlay_beyond_jpeg_side(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An image taller than JPEG's 65,500 pixels gets its overlay as a PNG (the mask as always): both at its size."""
    image = tmp_path / "tall.png"
    image.write_bytes(long_thin_png(3, 70_000))
    argv = ["segment", str(image), "--model", str(model_folder), "--output", str(tmp_path / "out"), "--json"]
    assert main([*argv, "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert Path(record["overlay"]).name == "tall_overlay.png" and Path(record["mask"]).name == "tall_mask.png"
    for name in ("overlay", "mask"):
        assert Image.open(record[name]).size == (3, 70_000)


def test_each_task_runs_in_its_own_class(model_folder: Path, segmenter: Segmenter) -> None:
    with pytest.raises(UsageError, match=r"deeplabv3_mobileone_s0 is a semantic segmentation model.*mobilevit segment"):
        Predictor.from_pretrained(str(model_folder))
    with pytest.raises(UsageError, match=r"mobileone_s0 is an image classification model.*mobilevit predict"):
        Segmenter.from_pretrained("mobileone_s0", pretrained=False)
    with pytest.raises(UsageError, match="segment"):
        segmenter.predict(np.zeros((32, 32, 3), np.uint8))
    # a preprocessing that crops is made an exact resize: every pixel of the image gets a prediction
    cropping = dataclasses.replace(PREPROCESS, resize_mode="shorter_side", resize_size=110, crop_pct=96 / 110)
    assert Segmenter(segmenter.model, cropping).preprocess == PREPROCESS


# ------------------------------------------------------------------------------------------------ the command line


def test_cli_segment(
    model_folder: Path, segmenter: Segmenter, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Files, a folder and a glob; a broken file reported in place (exit 1); one mask and one overlay per image, named
    after it, the second of a repeated stem numbered; the mask PNG holds the segmenter's classes at the image size."""
    first, second = photos(shared, 2)
    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    (folder / first.name).write_bytes(first.read_bytes())  # the same stem as `first`
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    argv = ["segment", str(first), str(tmp_path / "in"), str(second.parent / f"{second.stem}.*"), "--model"]
    code = main([*argv, str(model_folder), "--output", str(out), "--json", "--no-progress"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [r["file"] for r in lines] == [
        str(first),
        str(tmp_path / "in" / "broken.png"),
        str(folder / first.name),
        str(second),
    ]
    assert "broken.png" in lines[1]["error"] and "mask" not in lines[1]
    assert [Path(r["mask"]).name for r in (lines[0], lines[2], lines[3])] == [
        f"{first.stem}_mask.png",
        f"{first.stem}_2_mask.png",
        f"{second.stem}_mask.png",
    ]
    for record in (lines[0], lines[3]):
        image = Image.open(record["file"])
        mask, overlay = Image.open(record["mask"]), Image.open(record["overlay"])
        assert mask.mode == "P" and mask.size == image.size and overlay.size == image.size and overlay.format == "JPEG"
        expected = segmenter.segment(record["file"])[0]
        np.testing.assert_array_equal(np.asarray(mask), expected.mask)
        assert (record["height"], record["width"]) == (image.height, image.width)
        assert {c["label"]: c["fraction"] for c in record["classes"]} == pytest.approx(
            {c["label"]: c["fraction"] for c in expected.classes()}
        )
        assert sum(c["fraction"] for c in record["classes"]) == pytest.approx(1.0)
    # text output: the shares and the two files
    assert main(["segment", str(first), "--model", str(model_folder), "--output", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{first}: ") and f"{first.stem}_overlay.jpg" in text and "%" in text


def test_cli_refuses_a_model_of_the_other_task(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30)).save(image)
    assert main(["predict", str(image), "--model", str(model_folder)]) == 2
    assert "is a semantic segmentation model: segment images with `mobilevit segment`" in capsys.readouterr().err
    assert (
        main(["segment", str(image), "--model", "mobileone_s0", "--random-weights", "--output", str(tmp_path / "o")])
        == 2
    )
    assert "mobileone_s0 is an image classification model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--model", "mobileone_s0", "--random-weights", "--task", "segmentation"]) == 2
    assert "image classification model" in capsys.readouterr().err
    assert main(["segment", str(image), "--model", str(tmp_path / "s0.onnx"), "--output", str(tmp_path / "o")]) == 2
    assert "No such ONNX file" in capsys.readouterr().err


def voc_subset(shared: Path, root: Path, count: int) -> Path:
    """The first ``count`` val pairs of voc-mini as an images/ + masks/ folder."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for image, mask in list_segmentation_set(voc_mini(shared))[:count]:
        (root / "images" / image.name).write_bytes(image.read_bytes())
        (root / "masks" / mask.name).write_bytes(mask.read_bytes())
    return root


def test_cli_eval_agrees_with_torchmetrics(
    model_folder: Path, segmenter: Segmenter, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --task segmentation`` on real VOC masks (255 boundaries, classes absent from some images) gives the
    numbers torchmetrics computes from the segmenter's masks of the same images."""
    pytest.importorskip("torchmetrics")
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    data = voc_subset(shared, tmp_path / "set", 6)
    argv = ["eval", str(data), "--model", str(model_folder), "--task", "segmentation", "--json", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    miou = MulticlassJaccardIndex(21, average="macro", ignore_index=IGNORE_INDEX)
    per_class = MulticlassJaccardIndex(21, average="none", ignore_index=IGNORE_INDEX, zero_division=-1.0)
    accuracy = MulticlassAccuracy(21, average="micro", ignore_index=IGNORE_INDEX)
    for image, mask in list_segmentation_set(data):
        prediction = torch.from_numpy(segmenter.segment(image)[0].mask.astype(np.int64))
        target = torch.from_numpy(read_mask(mask).astype(np.int64))
        for metric in (miou, per_class, accuracy):
            metric.update(prediction, target)
    assert result["count"] == 6 and result["task"] == "segmentation" and result["failed"] == []
    assert result["miou"] == pytest.approx(float(miou.compute()), abs=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(float(accuracy.compute()), abs=1e-6)
    reference = dict(zip(VOC_LABELS, per_class.compute().tolist(), strict=True))
    assert result["per_class_iou"] == pytest.approx({k: None if v == -1.0 else v for k, v in reference.items()})
    # an unreadable image and a mask with a class the model lacks are listed and not scored; exit status 1
    (data / "images" / "zz_broken.jpg").write_text("no")
    (data / "masks" / "zz_broken.png").write_bytes(next((data / "masks").iterdir()).read_bytes())
    Image.new("RGB", (20, 10)).save(data / "images" / "zz_odd.png")
    mask_image(np.full((10, 20), 40, np.uint8)).save(data / "masks" / "zz_odd.png")
    assert main(argv) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 6 and [Path(f["file"]).name for f in result["failed"]] == ["zz_broken.jpg", "zz_odd.png"]
    assert "class indices 40 are outside the model's 21 classes" in result["failed"][1]["error"]


def test_cli_eval_voc_layout(model_folder: Path, shared: Path, capsys: pytest.CaptureFixture) -> None:
    """The VOC folder itself, both splits (a smoke run: random weights, no accuracy claimed); the model's task picks
    segmentation when --task is not given."""
    for split, count in (("val", 22), ("train", 26)):
        argv = ["eval", str(voc_mini(shared)), "--model", str(model_folder), "--split", split, "--no-progress"]
        assert main(argv) == 0
        text = capsys.readouterr().out
        assert f"({count} images, split {split})" in text and "mIoU 0." in text and "  background " in text
    assert main(["eval", str(voc_mini(shared)), "--model", str(model_folder), "--split", "test"]) == 2
    assert "no split 'test'" in capsys.readouterr().err


@pytest.mark.slow  # default-suite budget: `make test-slow` runs it
def test_cli_eval_under_torchrun_matches(model_folder: Path, shared: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) shard the images and sum the confusion matrix: the same numbers as one process."""
    data = voc_subset(shared, tmp_path / "set", 5)
    args = ["eval", str(data), "--model", str(model_folder), "--task", "segmentation", "--json", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "mobilevit.cli", *args], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    multi = subprocess.run([*launcher, "-m", "mobilevit.cli", *args], capture_output=True, text=True, env=env)
    assert multi.returncode == 0, multi.stderr[-2000:]
    one, two = json.loads(single.stdout), json.loads(multi.stdout.strip().splitlines()[-1])
    assert (two["count"], two["pixels"]) == (5, one["pixels"])
    assert two["miou"] == one["miou"] and two["per_class_iou"] == one["per_class_iou"]


# ------------------------------------------------------------------- a classification checkpoint is not a segmenter
@pytest.fixture(scope="module")
def classification_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileOne-S0 classifier (random weights) saved as a plain state dict: a backbone for DeepLabV3-MobileOne-S0,
    with nothing for its ASPP and classifier."""
    path = tmp_path_factory.mktemp("classifier") / "mobileone_s0.pth"
    torch.save(mobilevit.create_model("mobileone_s0").state_dict(), path)
    return path


def test_cli_refuses_a_classification_checkpoint_unless_allowed(
    classification_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    argv = ["segment", str(image), "--model", ARCH, "--pretrained", str(classification_checkpoint), "--no-progress"]
    assert main([*argv, "--output", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(classification_checkpoint) in err and ARCH in err and "head.classifier" in err and "head.aspp" in err
    assert "--allow-random-head" in err
    assert not (tmp_path / "refused" / "x_mask.png").exists()

    assert main([*argv, "--output", str(tmp_path / "out"), "--allow-random-head"]) == 0
    assert Image.open(tmp_path / "out" / "x_mask.png").size == (40, 30)


def test_python_loaders_refuse_a_classification_checkpoint_unless_allowed(classification_checkpoint: Path) -> None:
    from mobilevit.segment import load_model, load_segmenter
    from mobilevit.weights import CheckpointError

    def served(**kwargs: bool) -> Segmenter:
        pytest.importorskip("fastapi")
        from mobilevit.serve import ModelSpec, ServeConfig
        from mobilevit.serve.app import default_loader

        config = ServeConfig(models=(ModelSpec(ARCH, str(classification_checkpoint), **kwargs),))
        config.validate_models()  # what the server checks before it listens
        return default_loader(config, 0)()  # what it loads

    loaders = {
        "load_segmenter": lambda **kwargs: load_segmenter(
            ARCH, pretrained=classification_checkpoint, fold=False, **kwargs
        ),
        "load_model": lambda **kwargs: load_model(ARCH, pretrained=classification_checkpoint, **kwargs),
        "serve": served,
    }
    for name, load in loaders.items():
        with pytest.raises(CheckpointError, match=r"head of deeplabv3_mobileone_s0 random \(head\.aspp"):
            load()
        if name != "load_model":  # the server's loader is load_model: once allowed is enough
            assert isinstance(load(allow_random_head=True), Segmenter), name
