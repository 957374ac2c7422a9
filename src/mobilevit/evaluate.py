"""Accuracy of a model over a labelled image set, on one process or sharded under torchrun.

- classification: top-1 / top-5 of a :class:`~mobilevit.predict.Predictor` (:func:`evaluate`) on the sets
  :func:`mobilevit.data.datasets.read_labelled` reads (also importable from here);
- semantic segmentation: mIoU, per-class IoU and pixel accuracy of a :class:`~mobilevit.segment.Segmenter`
  (:func:`evaluate_segmentation`) on the ``(image, mask)`` pairs of
  :func:`mobilevit.data.segmentation.list_segmentation_set`. Each prediction is scored at its mask's size (the logits
  are resized to the mask), ground-truth pixels of 255 are ignored, and the pixels of the whole set are summed into
  one confusion matrix before any ratio is taken (the metric: :mod:`mobilevit.data.segmentation`).

Under ``torch.distributed`` each rank scores ``samples[rank::world_size]`` and the counts (the confusion matrix) are
summed across ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .data.datasets import read_labelled
from .data.segmentation import confusion_matrix, list_segmentation_set, read_mask, segmentation_scores
from .errors import UsageError
from .predict import Predictor
from .segment import Segmenter

logger = logging.getLogger(__name__)

__all__ = [
    "check_targets",
    "evaluate",
    "evaluate_segmentation",
    "list_segmentation_set",
    "match_classes",
    "read_labelled",
]


def _normalized(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").casefold().split())


def match_classes(classes: Sequence[str], labels: Sequence[str]) -> list[int]:
    """The model output index of each data class (an ImageFolder sub-folder name), matched by name.

    A folder matches the label of the same name (case, ``_`` and ``-`` aside) or, for an ImageNet-1k classifier, its
    WordNet id (``n01440764``), so an ImageNet subset folder scores against the right outputs. A model whose labels
    are only ``class_<i>`` placeholders takes the folders in sorted order, as training on the folder assigned them,
    when there are as many folders as outputs.

    Raises:
        LabelsError: some folders match no label (or several), naming them.
    """
    from .weights.entries import IMAGENET_1K_CLASSES, LabelsError, imagenet_wnids, labels_for

    by_name: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        for key in dict.fromkeys((label, _normalized(label))):
            by_name.setdefault(key, []).append(i)
    if len(labels) == IMAGENET_1K_CLASSES and tuple(labels) == labels_for(IMAGENET_1K_CLASSES):
        for i, wnid in enumerate(imagenet_wnids()):
            by_name[wnid] = [i]
    found = [by_name.get(c) or by_name.get(_normalized(c)) or [] for c in classes]
    if all(len(hits) == 1 for hits in found):
        return [hits[0] for hits in found]
    placeholders = list(labels) == [f"class_{i}" for i in range(len(labels))]
    if placeholders and len(classes) == len(labels):
        logger.info("the model's labels are class_<i>: the %d folders are taken in sorted order", len(classes))
        return list(range(len(classes)))
    unmatched = [c for c, hits in zip(classes, found, strict=True) if len(hits) != 1]
    ambiguous = [c for c, hits in zip(classes, found, strict=True) if len(hits) > 1]
    more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
    shown = ", ".join(repr(c) for c in unmatched[:5]) + more
    example = ", ".join(repr(x) for x in list(labels)[:3])
    why = f" ({', '.join(repr(c) for c in ambiguous[:3])} name several classes)" if ambiguous else ""
    raise LabelsError(
        f"the data's classes cannot be matched to the model's {len(labels)} labels: {len(unmatched)} of "
        f"{len(classes)} folders ({shown}) match no label by name{why}; the model's labels are {example}, ... "
        "(name the folders by class name, or WordNet id for ImageNet, or give the model's class names with --labels)"
    )


def check_targets(samples: Sequence[tuple[Path, int]], num_classes: int, source: str) -> None:
    """Every class index of a CSV is one of the model's outputs, else a clear error."""
    from .weights.entries import LabelsError

    bad = sorted({t for _, t in samples if not 0 <= t < num_classes})
    if bad:
        raise LabelsError(
            f"{source}: class indices {', '.join(map(str, bad[:5]))} are outside the model's {num_classes} outputs"
        )


def evaluate(
    predictor: Predictor,
    samples: list[tuple[Path, int]],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy (fractions) over ``samples``; unreadable files are counted and listed, not scored.

    Under ``torch.distributed`` each rank scores ``samples[rank::world_size]`` and the counts are summed.
    """
    mine, world = _shard(samples)
    targets = {str(p): t for p, t in mine}
    correct1 = correct5 = scored = 0
    failed: list[dict[str, str]] = []
    for path, answer in predictor.predict_files([p for p, _ in mine], top_k=5, progress=progress):
        if isinstance(answer, Exception):
            failed.append({"file": path, "error": str(answer)})
            continue
        indices = [p.index for p in answer]
        scored += 1
        correct1 += indices[0] == targets[path]
        correct5 += targets[path] in indices
    counts = torch.tensor([correct1, correct5, scored, len(failed)], dtype=torch.float64)
    failed = _sum_across_ranks(counts, failed, world)
    correct1, correct5, scored, _ = (int(v) for v in counts.tolist())
    return {
        "top1": correct1 / scored if scored else float("nan"),
        "top5": correct5 / scored if scored else float("nan"),
        "count": scored,
        "correct_top1": correct1,
        "correct_top5": correct5,
        "failed": failed,
    }


def _shard(samples: list[Any]) -> tuple[list[Any], int]:
    """This rank's share of ``samples`` (every ``world_size``-th from its rank) and the world size."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    return samples[rank::world], world


def _sum_across_ranks(counts: Tensor, failed: list[dict[str, str]], world: int) -> list[dict[str, str]]:
    """Sum ``counts`` over the ranks in place and return every rank's failures (one process: unchanged)."""
    if world == 1:
        return failed
    dist.all_reduce(counts)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, failed)
    return [f for part in gathered for f in part]


def evaluate_segmentation(
    segmenter: Segmenter,
    pairs: list[tuple[Path, Path]],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of ``segmenter`` over ``(image, mask)`` pairs (see the module docstring).

    An image or mask that cannot be read, or a mask with a class index the model does not have, is listed in
    ``failed`` and not scored.

    Returns:
        :func:`~mobilevit.data.segmentation.segmentation_scores` (``miou``, ``pixel_accuracy``, ``per_class_iou``,
        ``classes_scored``, ``pixels``) with ``count`` (images scored) and ``failed``.
    """
    mine, world = _shard(pairs)
    num_classes = len(segmenter.labels)

    def load(pair: tuple[Path, Path]) -> tuple[Tensor, np.ndarray, Path]:
        image, mask = pair
        return segmenter.prepare(image, str(image)), read_mask(mask), mask

    def answer(loaded: list[tuple[Tensor, np.ndarray, Path]]) -> list[np.ndarray | UsageError]:
        logits = segmenter.logits(torch.stack([x for x, _, _ in loaded]))  # [B, C, h, w]
        confusions: list[np.ndarray | UsageError] = []
        for row, (_, target, path) in zip(logits, loaded, strict=True):
            predicted = segmenter.postprocess(row, target.shape).mask  # at the mask's size
            try:
                confusions.append(confusion_matrix(predicted, target, num_classes))
            except UsageError as err:
                confusions.append(UsageError(f"{path}: {err}"))
        return confusions

    confmat = np.zeros((num_classes, num_classes), dtype=np.int64)
    failed: list[dict[str, str]] = []
    for (image, _), result in segmenter.map_files(mine, load, answer, progress):
        if isinstance(result, Exception):
            failed.append({"file": str(image), "error": str(result)})
        else:
            confmat += result
    counts = torch.from_numpy(np.append(confmat.ravel(), len(mine) - len(failed)))  # int64: exact pixel counts
    failed = _sum_across_ranks(counts, failed, world)
    scored = int(counts[-1])
    confmat = counts[:-1].reshape(num_classes, num_classes).numpy()
    return {**segmentation_scores(confmat, segmenter.labels), "count": scored, "failed": failed}
