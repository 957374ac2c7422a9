"""Tasks: what a model's outputs mean, and every policy that follows from it (see :mod:`.base`).

The registry holds image classification (:mod:`.classification`), semantic segmentation (:mod:`.segmentation`) and
object detection (:mod:`.detection`); :func:`register_task` adds another.
"""

from .base import TASKS, Task, default_task, get_task, register_task, task_names, task_of, unregister_task
from .classification import CLASSIFICATION, ClassificationTask, Prediction
from .detection import DETECTION, Detection, DetectionTask
from .segmentation import SEGMENTATION, Segmentation, SegmentationTask

__all__ = [
    "CLASSIFICATION",
    "DETECTION",
    "SEGMENTATION",
    "TASKS",
    "ClassificationTask",
    "Detection",
    "DetectionTask",
    "Prediction",
    "Segmentation",
    "SegmentationTask",
    "Task",
    "default_task",
    "get_task",
    "register_task",
    "task_names",
    "task_of",
    "unregister_task",
]
