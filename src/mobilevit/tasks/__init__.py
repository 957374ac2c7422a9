"""Tasks: what a model's outputs mean, and every policy that follows from it (see :mod:`.base`).

The registry holds image classification (:mod:`.classification`), semantic segmentation (:mod:`.segmentation`),
object detection (:mod:`.detection`) and instance segmentation (:mod:`.instance_segmentation`); :func:`register_task`
adds another.
"""

from .base import TASKS, Task, default_task, get_task, register_task, task_names, task_of, unregister_task
from .classification import CLASSIFICATION, ClassificationTask, Prediction
from .detection import DETECTION, Detection, DetectionTask
from .instance_segmentation import INSTANCE_SEGMENTATION, InstanceSegmentationTask
from .segmentation import SEGMENTATION, Segmentation, SegmentationTask

__all__ = [
    "CLASSIFICATION",
    "DETECTION",
    "INSTANCE_SEGMENTATION",
    "SEGMENTATION",
    "TASKS",
    "ClassificationTask",
    "Detection",
    "DetectionTask",
    "InstanceSegmentationTask",
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
