"""Image classification: ``[B, num_classes]`` logits, a top-k list of classes per image, top-1/top-5 accuracy.

Preprocessing is the weights' own (resize, centre crop); the answer is :class:`Prediction` rows, best first (softmax,
sigmoid or raw scores); ``eval`` scores an ImageFolder tree or a CSV of ``(file, class index)``; the server speaks the
Hugging Face Inference API's ``image-classification`` (``top_k``, ``function_to_apply``; ``[{"label", "score"}]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..data.datasets import read_labelled
from ..errors import UsageError
from ..weights.entries import IMAGENET_1K_CLASSES, LabelsError, imagenet_wnids, labels_for
from .base import Runner, Task, check_finite, echo, register_task, shard, sum_across_ranks

logger = logging.getLogger(__name__)

Activation = Literal["softmax", "sigmoid", "none"]
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")  # the score functions: the CLI's and the server's
DEFAULT_TOP_K = 5  # as the Inference API


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k answer."""

    label: str
    score: float
    index: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "index": self.index}


def check_activation(function: str) -> None:
    """Raise a clear error for an unknown score function, before any image is decoded."""
    if function not in ACTIVATIONS:
        raise UsageError(f"function must be one of {', '.join(ACTIVATIONS)}; got {function!r}")


def scores_from_logits(logits: Tensor, function: Activation) -> Tensor:
    """Softmax probabilities, independent sigmoid scores, or the raw logits (``"none"``)."""
    if function == "softmax":
        return logits.float().softmax(-1)
    if function == "sigmoid":
        return logits.float().sigmoid()
    if function == "none":
        return logits.float()
    raise UsageError(f"function must be one of {', '.join(ACTIVATIONS)}; got {function!r}")


def topk(
    logits: Tensor, labels: Sequence[str], model: str, top_k: int = 5, function: Activation = "softmax"
) -> list[list[Prediction]]:
    """The ``top_k`` best classes of each row of ``[B, num_classes]`` logits: higher score first, ties by lower class
    index (a stable sort: ``torch.topk`` leaves the order of equal scores unspecified, and it differs between a batch
    of 1 and a batch of 16).

    Raises:
        NonFiniteOutputError: a logit (or score) is NaN or infinite, naming ``model``.
    """
    if top_k < 1:
        raise UsageError(f"top_k must be at least 1, got {top_k}")
    check_finite(logits, model)
    scores = scores_from_logits(logits, function)
    check_finite(scores, model)  # finite logits give finite scores, unless "none" overflows float32
    values, indices = scores.sort(dim=-1, descending=True, stable=True)
    values, indices = values[..., :top_k], indices[..., :top_k]
    return [
        [Prediction(labels[i], float(v), int(i)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
        for vs, ix in zip(values, indices, strict=True)
    ]


# ------------------------------------------------------------------------------------------------------ eval


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
    bad = sorted({t for _, t in samples if not 0 <= t < num_classes})
    if bad:
        raise LabelsError(
            f"{source}: class indices {', '.join(map(str, bad[:5]))} are outside the model's {num_classes} outputs"
        )


def evaluate_classification(
    runner: Runner, samples: list[tuple[Path, int]], progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy (fractions) over ``samples``; unreadable files are counted and listed, not scored.

    Under ``torch.distributed`` each rank scores ``samples[rank::world_size]`` and the counts are summed.
    """
    mine, world = shard(samples)
    targets = {str(p): t for p, t in mine}
    correct1 = correct5 = scored = 0
    failed: list[dict[str, str]] = []

    def answer(loaded: list[tuple[Tensor, Any]]) -> list[list[Prediction]]:
        return topk(runner.logits(torch.stack([x for x, _ in loaded])), runner.labels, runner.model_name)

    for path, result in runner.map_files(
        [p for p, _ in mine], lambda p: runner.load_input(p, str(p)), answer, progress
    ):
        if isinstance(result, Exception):
            failed.append({"file": str(path), "error": str(result)})
            continue
        indices = [p.index for p in result]
        scored += 1
        correct1 += indices[0] == targets[str(path)]
        correct5 += targets[str(path)] in indices
    counts = torch.tensor([correct1, correct5, scored, len(failed)], dtype=torch.float64)
    failed = sum_across_ranks(counts, failed, world)
    correct1, correct5, scored, _ = (int(v) for v in counts.tolist())
    return {
        "top1": correct1 / scored if scored else float("nan"),
        "top5": correct5 / scored if scored else float("nan"),
        "count": scored,
        "correct_top1": correct1,
        "correct_top5": correct5,
        "failed": failed,
    }


def read_eval_set(data: str, labels: Sequence[str]) -> list[tuple[Path, int]]:
    """The ``(image, model output index)`` pairs of a labelled set (see :func:`match_classes`)."""
    samples, classes = read_labelled(data)
    if classes is not None:  # an ImageFolder tree: its folders name the classes, matched to the model's labels
        index = match_classes(classes, labels)
        return [(path, index[target]) for path, target in samples]
    check_targets(samples, len(labels), data)
    return samples


# ------------------------------------------------------------------------------------------------------ the task


class ClassificationTask(Task):
    """Image classification: a top-k list of :class:`Prediction` per image."""

    name = "classification"
    hf_task = "image-classification"
    title = "image classification"
    model_kind = "an image classification model"
    default_label_set = "imagenet-1k"
    how_to_run = (
        "segmentation needs a segmentation model such as deeplabv3_mobilevit_xxs (`mobilevit list 'deeplabv3_*'`); "
        "classify images with `mobilevit predict`"
    )
    parameter_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "top_k": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K},
        "function_to_apply": {"enum": list(ACTIVATIONS), "default": "softmax"},
    }
    answer_schema: ClassVar[dict[str, Any]] = {  # the Inference API's ImageClassificationOutputElement, best first
        "type": "array",
        "items": {
            "type": "object",
            "required": ["label", "score"],
            "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
        },
    }
    classifies_images = True
    export_kind = "image classifier"
    data_help = "ImageFolder tree, a CSV of (file, class index), or a folder with labels.csv"
    val_columns = ("val_top1", "val_top1_ema")
    loss = "cross_entropy"  # on class indices, or the soft targets of mixup and cutmix
    train_data = "labelled_images"
    best_metric = "top1"
    best_metric_title = "top-1"
    mixes_images = True

    def check_options(self, top_k: int = DEFAULT_TOP_K, function: Activation = "softmax") -> None:  # type: ignore[override]
        check_activation(function)

    def postprocess(
        self, runner: Runner, outputs: Tensor, context: Any = None, top_k: int = 5, function: Activation = "softmax"
    ) -> list[Prediction]:
        """The ``top_k`` best classes of one image's ``[num_classes]`` logits (see :func:`topk`)."""
        return topk(outputs[None], runner.labels, runner.model_name, top_k, function)[0]

    def describe(
        self, path: str, result: list[Prediction], files: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], str]:
        record = {"file": path, "predictions": [p.to_dict() for p in result]}
        return record, f"{path}: " + ", ".join(f"{p.label} ({p.score:.3f})" for p in result)

    def evaluate(
        self, runner: Runner, data: str, split: str | None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        if split is not None:
            raise UsageError("--split is for segmentation sets (VOC layout); a classification set is read whole")
        return evaluate_classification(runner, read_eval_set(data, runner.labels), progress)

    def eval_total(self, data: str, split: str | None) -> int | None:
        return len(read_labelled(data)[0])

    def eval_summary(self, model: str, result: dict[str, Any]) -> str:
        return (
            f"{model}: top-1 {result['top1']:.4f} ({result['correct_top1']}/{result['count']}), "
            f"top-5 {result['top5']:.4f} ({result['correct_top5']}/{result['count']})"
        )

    def read_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        top_k = params.get("top_k")
        if top_k is None:
            top_k = DEFAULT_TOP_K
        elif isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UsageError(f"top_k must be a positive integer, got {echo(top_k)}")
        function = params.get("function_to_apply")
        if function is None:
            function = "softmax"
        elif function not in ACTIVATIONS:
            raise UsageError(f"function_to_apply must be one of {', '.join(ACTIVATIONS)}; got {echo(function)}")
        return {"top_k": top_k, "function": function}

    def encode(self, result: list[Prediction], options: dict[str, Any]) -> list[dict[str, Any]]:
        """The Inference API answer: ``[{"label", "score"}]``, best first."""
        return [{"label": p.label, "score": p.score} for p in result]


CLASSIFICATION = register_task(ClassificationTask())
