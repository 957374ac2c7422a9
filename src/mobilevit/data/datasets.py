"""Labelled image sets: ImageFolder trees and CSV lists, read for training and evaluation, corrupt files skipped.

:func:`read_labelled` reads the layouts: torchvision's ``ImageFolder`` (one sub-folder per class, sorted), or a CSV of
``file, class index`` rows (paths relative to the CSV, optional header), or a folder holding such a ``labels.csv``.
:class:`ImageDataset` decodes the files with :func:`mobilevit.data.images.open_image` (8-bit RGB, EXIF orientation
applied).

A file that cannot be decoded is logged and its sample comes back as ``(None, target)``; :func:`collate_skipping`
drops such samples from the batch and reports how many it dropped, so the training loop can count them per epoch
even when ``DataLoader`` workers (separate processes) do the decoding::

    train = ImageDataset.from_path("data/train")
    loader = DataLoader(MultiScaleDataset(train, skip_none(multi_scale_train_transform)),
                        batch_sampler=sampler, collate_fn=collate_skipping)
    for images, targets, skipped in loader: ...

:class:`SegmentationDataset` reads the ``(image, mask)`` pairs of a segmentation set
(:func:`mobilevit.data.segmentation.list_segmentation_set`) the same way: a file that cannot be read gives
``(None, None)``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from ..errors import UsageError
from .images import IMAGE_SUFFIXES, ImageError, open_image
from .segmentation import list_segmentation_set, read_mask

logger = logging.getLogger(__name__)

__all__ = [
    "ImageDataset",
    "SegmentationDataset",
    "SkipNone",
    "collate_masks",
    "collate_skipping",
    "read_labelled",
    "skip_none",
]

_FILE_COLUMNS = ("file", "filename", "path", "image")
_LABEL_COLUMNS = ("class_index", "label", "target", "class")


def _read_csv(path: Path) -> list[tuple[Path, int]]:
    """Rows of (file, class index); a header naming the columns is optional. Paths are relative to the CSV."""
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    if not rows:
        raise UsageError(f"{path}: empty label file")
    header = [c.strip().lower() for c in rows[0]]
    file_col, label_col, first_row = 0, 1, 1
    if len(header) >= 2 and not header[1].lstrip("-").isdigit():  # a header row
        file_col = next((header.index(c) for c in _FILE_COLUMNS if c in header), 0)
        label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), 1)
        rows, first_row = rows[1:], 2
    samples = []
    for n, row in enumerate(rows, start=first_row):
        try:
            samples.append((path.parent / row[file_col].strip(), int(row[label_col])))
        except (IndexError, ValueError):
            raise UsageError(f"{path}, row {n}: expected a file and an integer class index, got {row}") from None
    return samples


def read_labelled(path: str | os.PathLike) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """Samples ``(file, class index)`` from a CSV file, a folder holding ``labels.csv``, or an ImageFolder tree.

    Returns:
        The samples, and the class names for an ImageFolder tree (sorted sub-folder names, index order), else None.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: an empty or malformed CSV, or a folder with neither ``labels.csv`` nor class sub-folders.
    """
    path = Path(path)
    if path.is_file():
        return _read_csv(path), None
    if not path.is_dir():
        raise FileNotFoundError(f"No such dataset: {path}")
    if (path / "labels.csv").is_file():
        return _read_csv(path / "labels.csv"), None
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise UsageError(f"{path}: neither a labels.csv nor class sub-folders (ImageFolder layout)")
    samples = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((path / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    return samples, classes


class ImageDataset(Dataset):
    """``(image, target)`` pairs from a list of ``(file, class index)``; a corrupt file gives ``(None, target)``.

    Attributes:
        samples: the ``(path, class index)`` list.
        classes: class names in index order (ImageFolder trees), else ``None``.
        transform: applied to each decoded PIL image (not to ``None``); ``None`` returns the PIL image.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike, int]],
        classes: Sequence[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        """Args:
        samples: ``(file, class index)`` pairs.
        classes: class names, index order.
        transform: per-image transform, e.g. an :class:`~mobilevit.data.transforms.EvalTransform`.
        """
        if not samples:
            raise UsageError("the dataset is empty: no image files found")
        self.samples = [(Path(p), int(t)) for p, t in samples]
        self.classes = list(classes) if classes is not None else None
        self.transform = transform

    @classmethod
    def from_path(cls, path: str | os.PathLike, transform: Callable[[Any], Any] | None = None) -> ImageDataset:
        """A CSV file, a folder holding ``labels.csv``, or an ImageFolder tree (see :func:`read_labelled`)."""
        samples, classes = read_labelled(path)
        return cls(samples, classes, transform)

    @property
    def num_classes(self) -> int:
        """Number of classes: the class names when known, else the largest index + 1."""
        return len(self.classes) if self.classes is not None else max(t for _, t in self.samples) + 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        try:
            image = open_image(path)
        except (ImageError, OSError) as err:
            logger.warning("skipping corrupt image %s: %s", path, err)
            return None, target
        return (self.transform(image) if self.transform is not None else image), target


class SkipNone:
    """Wraps a per-image transform so that ``None`` (a corrupt image) passes through untouched; picklable."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        """Args:
        transform: the transform applied to real images.
        """
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        return None if image is None else self.transform(image)


class _SkipNoneFactory:
    """``factory(height, width)`` wrapped in :class:`SkipNone`; picklable for DataLoader workers."""

    def __init__(self, factory: Callable[[int, int], Callable[[Any], Any]]) -> None:
        self.factory = factory

    def __call__(self, height: int, width: int) -> SkipNone:
        return SkipNone(self.factory(height, width))


def skip_none(factory: Callable[[int, int], Callable[[Any], Any]]) -> Callable[[int, int], SkipNone]:
    """A per-size transform factory (for :class:`~mobilevit.data.samplers.MultiScaleDataset`) passing ``None`` on."""
    return _SkipNoneFactory(factory)


def collate_skipping(batch: list[tuple[Any, Any]]) -> tuple[Tensor, Tensor, int]:
    """``default_collate`` of the samples whose image is not ``None``, plus the number dropped.

    Returns:
        ``(images, targets, skipped)``; when every sample was dropped, empty tensors.
    """
    kept = [sample for sample in batch if sample[0] is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(kept)
    return images, targets, skipped


class SegmentationDataset(Dataset):
    """``(image, mask)`` pairs of a segmentation set: an RGB PIL image and its ``[H, W]`` class-index mask (numpy).

    A pair whose image or mask cannot be read gives ``(None, None)`` (logged); a mask of another size than its image
    is an error naming both files. ``transform(image, mask)`` (when given) returns the pair to use.

    Attributes:
        pairs: the ``(image path, mask path)`` list.
        classes: ``None`` (a segmentation set names no classes; the model's labels name them).
        transform: the joint transform, or ``None``.
    """

    classes: list[str] | None = None

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> None:
        """Args:
        pairs: ``(image file, mask file)`` pairs.
        transform: joint transform ``(PIL image, mask array) -> (image, mask)``.
        """
        if not pairs:
            raise UsageError("the segmentation set is empty: no image and mask pairs")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.transform = transform

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> SegmentationDataset:
        """The pairs of ``split`` of a PASCAL VOC folder or an ``images/`` + ``masks/`` folder."""
        return cls(list_segmentation_set(path, split), transform)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_path, mask_path = self.pairs[index]
        try:
            image = open_image(image_path)
            mask = read_mask(mask_path)
        except (ImageError, OSError) as err:
            logger.warning("skipping unreadable pair %s: %s", image_path, err)
            return None, None
        if mask.shape != (image.height, image.width):
            raise UsageError(
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                f"{image.width}x{image.height}: a mask must have its image's size"
            )
        return self.transform(image, mask) if self.transform is not None else (image, mask)


def collate_masks(batch: list[tuple[Any, Any]]) -> tuple[Tensor, list[Tensor], int]:
    """Validation batches of a segmentation set: the images stacked (one size), the masks as a list (each at its
    image's own size), plus the number of unreadable pairs dropped."""
    kept = [sample for sample in batch if sample[0] is not None]
    if not kept:
        return torch.empty(0), [], len(batch)
    return torch.stack([image for image, _ in kept]), [mask for _, mask in kept], len(batch) - len(kept)
