"""Semantic segmentation data: class-index masks, the PASCAL VOC palette, labelled sets, overlays and the IoU metric.

A mask is an ``[H, W]`` array of class indices, one per pixel of its image; in ground truth :data:`IGNORE_INDEX`
(255) marks pixels that count for nothing (VOC's object boundaries). Masks are stored as palette PNGs whose palette
index *is* the class (VOC's ``SegmentationClass/`` files; :func:`mask_image` writes the same) or as 8/16-bit
grayscale PNGs of the indices.

:func:`list_segmentation_set` reads three layouts:

- PASCAL VOC: ``DATA/JPEGImages/<id>.jpg``, ``DATA/SegmentationClass/<id>.png`` and the ids of each split in
  ``DATA/ImageSets/Segmentation/<split>.txt``;
- ADE20K as it ships (``ADEChallengeData2016``): ``DATA/images/<split>/<name>.jpg`` and
  ``DATA/annotations/<split>/<name>.png``, the splits ``training`` and ``validation`` (``train`` and ``val`` name
  them too). Its annotations hold 0 for "other" and 1-150 for the classes: :func:`read_mask` reads a mask of this
  layout as 255 (ignored) for 0 and ``k - 1`` for ``k``, mmsegmentation's ``reduce_zero_label``, so that class 0 is
  the first of the 150 (wall);
- ``DATA/images/<name>.<any image suffix>`` with ``DATA/masks/<name>.png`` (or ``DATA/<split>/images`` and
  ``DATA/<split>/masks``).

The metric is the one of FCN, ml-cvnets and mmsegmentation: pixels are summed over the whole set into a confusion
matrix (:func:`confusion_matrix`), then :func:`segmentation_scores` gives each class's IoU ``TP / (TP + FP + FN)``,
their mean (mIoU) and the pixel accuracy. The mean is over the classes that occur in the ground truth or in the
prediction somewhere in the set (a class absent from both has no IoU, reported as ``None``): mmsegmentation's
``nanmean`` and torchmetrics' ``MulticlassJaccardIndex(average="macro")`` average the same way; ml-cvnets averages
over every class, which is the same number whenever every class occurs, as on the full VOC val set.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UsageError
from ..weights.entries import VOC_LABELS
from .images import IMAGE_SUFFIXES, ImageError

IGNORE_INDEX = 255  # ground-truth pixels that are not scored (VOC's object boundaries and "void")
UNCOLOURED = frozenset({"background"})  # classes an overlay leaves as they are (by label, case aside)
_MASK_MODES = frozenset({"P", "L", "I;16", "I;16B", "I;16L", "I"})
JPEG_MAX_SIDE = 65_500  # the longest width or height libjpeg (so PIL) writes
CHUNK_PIXELS = 1 << 18  # pixels counted or tinted per step: the temporaries stay a few MB whatever the image's size


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: ``[256, 3]`` uint8, the colour of each class index (0 black, 1 dark red, ...).

    The bits of the index are dealt out in turn to red, green and blue, from each channel's highest bit down: index
    ``i`` gets ``r = sum(bit(i, 3k) << (7 - k))``, ``g`` and ``b`` likewise from bits ``3k + 1`` and ``3k + 2``.
    """
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for k in range(8):  # 8 groups of three bits cover indices up to 2**24; 256 needs three of them
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * k + channel)) & 1) << (7 - k)
    return palette.astype(np.uint8)


def read_mask(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """The ``[H, W]`` class indices stored in a palette (P) or grayscale (L, 16-bit) PNG; for an annotation of the
    ADE20K layout (:func:`is_ade20k_annotation`) its labels less one, its 0 ("other") as :data:`IGNORE_INDEX`.

    Raises:
        ImageError: the file is missing, unreadable, or a colour (RGB) image whose colours would need guessing.
    """
    label = name or str(path)
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        raise ImageError(f"{label}: no such mask file") from None
    except Exception as err:  # PIL raises several types for a file it cannot read
        raise ImageError(f"{label}: cannot read the mask ({err})") from None
    if img.mode not in _MASK_MODES:
        raise ImageError(
            f"{label}: a {img.mode} mask; masks must be palette (P) or grayscale PNGs whose values are the class "
            "indices (as VOC's SegmentationClass/ files)"
        )
    arr = np.asarray(img)
    arr = arr.astype(np.int32) if arr.dtype.kind == "i" or arr.dtype.itemsize > 1 else arr
    return reduce_zero_label(arr) if is_ade20k_annotation(path) else arr


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """ADE20K's labels to class indices: 0 ("other") -> :data:`IGNORE_INDEX`, ``k`` -> ``k - 1`` (mmsegmentation's
    ``reduce_zero_label``)."""
    out = mask.astype(np.int32) - 1  # [H, W]
    out[mask == 0] = IGNORE_INDEX
    return out.astype(mask.dtype) if mask.dtype == np.uint8 else out


def is_ade20k_annotation(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a mask of the ADE20K layout: ``DATA/annotations/<split>/<name>.png`` with a
    ``DATA/images/<split>/`` beside it."""
    path = Path(path)
    return path.parent.parent.name == "annotations" and _has_images_beside(path.parent)


@functools.lru_cache(maxsize=64)
def _has_images_beside(split_dir: Path) -> bool:
    return (split_dir.parent.parent / "images" / split_dir.name).is_dir()


def mask_image(mask: np.ndarray) -> Image.Image:
    """A mask as a PNG-ready image: palette (P) with the VOC colours when every index fits in 8 bits, else 16-bit
    grayscale (``I;16``). Either way the stored values are the class indices."""
    if mask.ndim != 2:
        raise UsageError(f"a mask is [H, W] class indices, got shape {tuple(mask.shape)}")
    if mask.size and int(mask.max()) > 255:
        return Image.fromarray(mask.astype(np.uint16))
    img = Image.fromarray(mask.astype(np.uint8))  # "L"; the palette makes it "P", values kept
    img.putpalette(voc_palette().tobytes())
    return img


def _chunks(*arrays: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Arrays of pixels along their first axis (``[N]``, ``[N, 3]``), :data:`CHUNK_PIXELS` pixels at a time (views)."""
    for start in range(0, len(arrays[0]), CHUNK_PIXELS):
        yield tuple(a[start : start + CHUNK_PIXELS] for a in arrays)


def class_fractions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes]`` float64: the fraction of the mask's pixels given to each class."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for (chunk,) in _chunks(mask.reshape(-1)):
        counts += np.bincount(chunk, minlength=num_classes)[:num_classes]
    return counts / max(mask.size, 1)


def share_text(fraction: float) -> str:
    """A class's share of the image as a percentage with one decimal; a share that rounds to 0.0% but is not zero
    (a class that won a few pixels) is ``<0.1%``, so that a class present never reads as absent."""
    shown = f"{fraction:.1%}"
    return "<0.1%" if shown == "0.0%" and fraction > 0 else shown


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font when Pillow has FreeType
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _draw_legend(img: Image.Image, rows: list[tuple[tuple[int, int, int], str]]) -> None:
    """A box in the top-left corner: one colour swatch and text per row (as many rows as fit)."""
    size = max(11, round(min(img.size) / 30))
    font, pad = _font(size), max(2, size // 4)
    line = size + pad
    fits = max(1, (img.height - 2 * pad) // line)
    if len(rows) > fits:
        rows = [*rows[: fits - 1], ((255, 255, 255), f"+{len(rows) - fits + 1} more")]
    draw = ImageDraw.Draw(img, "RGBA")
    width = max(draw.textlength(text, font=font) for _, text in rows) + size + 3 * pad
    draw.rectangle((0, 0, width, len(rows) * line + pad), fill=(255, 255, 255, 190))
    for i, (colour, text) in enumerate(rows):
        top = pad + i * line
        draw.rectangle((pad, top, pad + size, top + size), fill=colour, outline=(0, 0, 0))
        draw.text((2 * pad + size, top), text, fill=(0, 0, 0), font=font)


def overlay_image(
    image: Image.Image, mask: np.ndarray, labels: Sequence[str], alpha: float = 0.5, legend: bool = True
) -> Image.Image:
    """The image with each class's pixels tinted in its VOC colour, and a legend of the classes present.

    Args:
        image: the photo the mask belongs to (resized to the mask's size when it differs).
        mask: ``[H, W]`` class indices.
        labels: class names, index order; classes named ``background`` stay untinted.
        alpha: weight of the class colour, 0 (image only) to 1 (colour only).
        legend: draw the colour, name and share of the image of each tinted class, largest first.
    """
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
    height, width = mask.shape
    img = image.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    palette = voc_palette().astype(np.uint16)
    tinted = np.array([label.casefold() not in UNCOLOURED for label in labels] + [True] * 256, dtype=bool)
    weight = round(alpha * 256)
    out = np.array(img)  # [H, W, 3] uint8, tinted in place a chunk of pixels at a time
    for classes, pixels in _chunks(mask.reshape(-1), out.reshape(-1, 3)):
        blended = (pixels.astype(np.uint16) * (256 - weight) + palette[classes & 0xFF] * weight) >> 8  # [N, 3]
        chosen = tinted[classes]
        pixels[chosen] = blended[chosen]
    result = Image.fromarray(out)
    if legend:
        fractions = class_fractions(mask, len(labels))
        shown = [c for c in np.argsort(-fractions, kind="stable") if fractions[c] > 0 and tinted[c]]
        rows = [(tuple(int(v) for v in palette[c & 0xFF]), f"{labels[c]} {share_text(fractions[c])}") for c in shown]
        if rows:
            _draw_legend(result, rows)  # type: ignore[arg-type]
    return result


def _voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not ids_file.is_file():
        found = sorted(p.stem for p in ids_file.parent.glob("*.txt"))
        splits = ", ".join(found) or "none"
        raise UsageError(f"{root}: no split {split!r} ({ids_file} is missing; splits here: {splits})")
    ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
    return [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]


def _folder_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    files = sorted(f for f in images.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(f, (masks / f.relative_to(images)).with_suffix(".png")) for f in files]
    missing = [str(m) for _, m in pairs if not m.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        count = f"{len(missing)} images under {images} have" if len(missing) > 1 else f"an image under {images} has"
        raise UsageError(f"{count} no mask: {', '.join(missing[:3])}{more}")
    return pairs


_ADE20K_SPLITS = {"train": "training", "val": "validation"}  # the usual split names -> ADE20K's folders


def list_segmentation_set(path: str | os.PathLike, split: str = "val") -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of a VOC-layout folder (the ids of ``split``), of an ADE20K-layout folder (its
    ``split`` folders) or of an ``images/`` + ``masks/`` folder.

    Raises:
        FileNotFoundError: no such folder.
        UsageError: a folder of neither layout, a missing split, images without masks, or no images at all.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"No such dataset folder: {root}")
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        pairs = _voc_pairs(root, split)
    elif (root / "images").is_dir() and (root / "annotations").is_dir():
        folder = _ADE20K_SPLITS.get(split, split)
        if not (root / "images" / folder).is_dir():
            found = ", ".join(sorted(p.name for p in (root / "images").iterdir() if p.is_dir())) or "none"
            raise UsageError(f"{root}: no split {split!r} (images/{folder}/ is missing; splits here: {found})")
        pairs = _folder_pairs(root / "images" / folder, root / "annotations" / folder)
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = _folder_pairs(root / "images", root / "masks")
    elif (root / split / "images").is_dir() and (root / split / "masks").is_dir():
        pairs = _folder_pairs(root / split / "images", root / split / "masks")
    else:
        raise UsageError(
            f"{root}: not a segmentation set: expected JPEGImages/, SegmentationClass/ and "
            "ImageSets/Segmentation/<split>.txt (PASCAL VOC), images/<split>/ and annotations/<split>/ (ADE20K), "
            "or images/ and masks/ (same names, masks as PNG)"
        )
    if not pairs:
        raise UsageError(f"{root}: no images in split {split!r}")
    return pairs


def confusion_matrix(
    prediction: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``[num_classes, num_classes]`` int64 pixel counts: row = ground-truth class, column = predicted class.

    Pixels whose target is ``ignore_index`` are left out.

    Raises:
        UsageError: the shapes differ, or the target holds a class index the model does not have.
    """
    if prediction.shape != target.shape:
        raise UsageError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    for truth, predicted in _chunks(target.reshape(-1), prediction.reshape(-1)):
        truth, predicted = truth.astype(np.int64), predicted.astype(np.int64)
        kept = truth != ignore_index
        truth, predicted = truth[kept], predicted[kept]
        bad = np.unique(truth[(truth < 0) | (truth >= num_classes)])
        if bad.size:
            shown = ", ".join(str(v) for v in bad[:5].tolist())
            raise UsageError(
                f"ground-truth class indices {shown} are outside the model's {num_classes} classes "
                f"(and not the ignore index {ignore_index})"
            )
        counts += np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confmat: np.ndarray, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU, each class's IoU and pixel accuracy of a summed confusion matrix (see the module docstring).

    Returns:
        ``miou`` (mean over the classes that occur, ``nan`` when none does), ``pixel_accuracy`` (correct / scored
        pixels), ``per_class_iou`` (label -> IoU, ``None`` for a class absent from both ground truth and
        prediction), ``classes_scored`` (how many classes the mean is over) and ``pixels`` (scored pixels).
    """
    confmat = np.asarray(confmat, dtype=np.float64)
    num_classes = confmat.shape[0]
    labels = list(labels) if labels is not None else [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise UsageError(f"{len(labels)} labels for a {num_classes}-class confusion matrix")
    true_positive = np.diag(confmat)
    union = confmat.sum(0) + confmat.sum(1) - true_positive
    present = union > 0
    iou = np.divide(true_positive, union, out=np.zeros(num_classes), where=present)
    pixels = confmat.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / pixels) if pixels else float("nan"),
        "per_class_iou": {
            label: float(v) if p else None for label, v, p in zip(labels, iou.tolist(), present.tolist(), strict=True)
        },
        "classes_scored": int(present.sum()),
        "pixels": int(pixels),
    }


__all__ = [
    "IGNORE_INDEX",
    "JPEG_MAX_SIDE",
    "VOC_LABELS",
    "class_fractions",
    "confusion_matrix",
    "is_ade20k_annotation",
    "list_segmentation_set",
    "mask_image",
    "overlay_image",
    "read_mask",
    "reduce_zero_label",
    "segmentation_scores",
    "share_text",
    "voc_palette",
]
