"""Accuracy of a model over a labelled set, on one process or sharded under torchrun: the metric of the model's task.

- classification: top-1 / top-5 (:func:`evaluate`) on the sets :func:`mobilevit.data.datasets.read_labelled` reads
  (also importable from here), an ImageFolder tree matched to the model's labels by :func:`match_classes`;
- semantic segmentation: mIoU, per-class IoU and pixel accuracy (:func:`evaluate_segmentation`) on the ``(image,
  mask)`` pairs of :func:`mobilevit.data.segmentation.list_segmentation_set`, each prediction scored at its mask's
  size, ground-truth pixels of 255 ignored, the pixels of the whole set summed into one confusion matrix before any
  ratio is taken;
- any task: :func:`evaluate_set` asks the runner's task (:meth:`mobilevit.tasks.Task.evaluate`).

Under ``torch.distributed`` each rank scores ``samples[rank::world_size]`` and the counts (the confusion matrix) are
summed across ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .data.datasets import read_labelled
from .data.segmentation import list_segmentation_set
from .runner import Runner
from .tasks.classification import check_targets, match_classes
from .tasks.classification import evaluate_classification as evaluate
from .tasks.segmentation import evaluate_segmentation

__all__ = [
    "check_targets",
    "evaluate",
    "evaluate_segmentation",
    "evaluate_set",
    "list_segmentation_set",
    "match_classes",
    "read_labelled",
]


def evaluate_set(
    runner: Runner, data: str, split: str | None = None, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """The metric of ``runner``'s task over the labelled set at ``data`` (``split``: a VOC segmentation set's list),
    with ``count`` (items scored) and ``failed`` (items that could not be read, not scored)."""
    return runner.task.evaluate(runner, data, split, progress)
