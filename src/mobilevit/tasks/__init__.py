"""Tasks: what a model's outputs mean, and every policy that follows from it (see :mod:`.base`).

The registry holds image classification (:mod:`.classification`) and semantic segmentation (:mod:`.segmentation`);
:func:`register_task` adds another.
"""

from .base import TASKS, Task, default_task, get_task, register_task, task_names, task_of, unregister_task
from .classification import CLASSIFICATION, ClassificationTask, Prediction
from .segmentation import SEGMENTATION, Segmentation, SegmentationTask

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "TASKS",
    "ClassificationTask",
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
