"""Object detection: SSD raw outputs (per-anchor class logits, box regressions, anchors), boxes in image pixels.

The post-processing is ml-cvnets' SSD (apple/ml-cvnets ``cvnets/models/detection/ssd.py``,
``SingleShotMaskDetector.postprocess_detections``; ``cvnets/matcher_det/ssd_matcher.py``, ``cvnets/misc/box_utils.py``):

- the model returns ``logits`` ``[B, A, C]`` (column 0 the background), ``boxes`` ``[B, A, 4]`` (the regression
  ``t_cx, t_cy, t_w, t_h``) and ``anchors`` ``[A, 4]`` or ``[B, A, 4]`` (normalised ``cx, cy, w, h``);
- boxes are decoded with centre variance 0.1 and size variance 0.2 (:func:`decode_boxes`), the logits turned into
  probabilities by a softmax over all ``C`` columns;
- per class 1..C-1 in order: the anchors whose probability is above the confidence threshold (strict), their
  ``top_k`` best (``torch.topk``); all classes together through ``torchvision.ops.batched_nms`` at IoU 0.5, the first
  ``max_detections`` kept (:func:`detect`);
- the normalised boxes are scaled to the image's pixels and clipped to it (as cvnets' detection eval does).

The image is resized whole to the model's input (no crop). Label ``k`` (1-based) names the ``k``-th of the runner's
labels: COCO's 80 classes in ascending COCO category-id order by default. ``eval`` scores COCO-format data with
pycocotools' ``COCOeval``; the server speaks the Inference API's ``object-detection``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.ops import batched_nms, box_convert

from ..errors import UsageError
from ..weights.entries import Preprocess, segmentation_preprocess
from .base import Runner, Task, check_finite, echo, register_task, shard

logger = logging.getLogger(__name__)

CENTER_VARIANCE = 0.1  # cvnets' SSD box coder (ssd_matcher.py)
SIZE_VARIANCE = 0.2
CONFIDENCE_THRESHOLD = 0.01  # cvnets' argparse default: the detections COCO mAP is measured on
TOP_K = 400  # best anchors kept per class before NMS
NMS_IOU = 0.5
MAX_DETECTIONS = 200  # objects per image
SERVER_THRESHOLD = 0.5  # the Inference API's default ``threshold`` (transformers' object-detection pipeline)


@dataclass(frozen=True)
class Detection:
    """One image's detections, best first.

    Attributes:
        boxes: ``[D, 4]`` float32, ``xmin, ymin, xmax, ymax`` in the input image's pixels.
        labels: ``[D]`` int64 class indices (1-based: 0 is the background).
        scores: ``[D]`` float32 softmax probabilities.
        names: the class name of each detection.
        size: the image's (width, height).
        image: the decoded image (for drawing), when kept.
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    names: tuple[str, ...]
    size: tuple[int, int]
    image: Image.Image | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> Detection:
        """The detections scoring at least ``threshold``."""
        keep = (self.scores >= threshold).nonzero().flatten().tolist()
        return Detection(
            self.boxes[keep], self.labels[keep], self.scores[keep], tuple(self.names[i] for i in keep), self.size,
            self.image,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """``{"detections": [{"label", "index", "score", "box": {"xmin", "ymin", "xmax", "ymax"}}]}``, best first."""
        rows = []
        for box, index, score, name in zip(
            self.boxes.tolist(), self.labels.tolist(), self.scores.tolist(), self.names, strict=True
        ):
            rows.append({"label": name, "index": index, "score": score, "box": dict(zip(BOX_KEYS, box, strict=True))})
        return {"detections": rows}

    def draw(self) -> Image.Image:
        """The image with each box, its label and score drawn on it."""
        if self.image is None:
            raise UsageError("this detection kept no image to draw on")
        canvas = self.image.convert("RGB")
        pen = ImageDraw.Draw(canvas)
        width = max(2, round(min(self.size) / 200))
        for box, name, score, index in zip(
            self.boxes.tolist(), self.names, self.scores.tolist(), self.labels.tolist(), strict=True
        ):
            colour = box_colour(index)
            pen.rectangle(box, outline=colour, width=width)
            text = f"{name} {score:.2f}"
            left, top, right, bottom = pen.textbbox((box[0], box[1]), text)
            pen.rectangle((left, top, right + 2, bottom + 2), fill=colour)
            pen.text((box[0] + 1, box[1] + 1), text, fill=(255, 255, 255))
        return canvas


BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def box_colour(index: int) -> tuple[int, int, int]:
    """Class ``index``'s box colour: distinct per class, dark enough for white text on it (the server's page draws
    boxes in the same colours)."""
    return (37 * index % 200, 91 * index % 200, 157 * index % 200)


def decode_boxes(regression: Tensor, anchors: Tensor) -> Tensor:
    """Normalised ``xyxy`` boxes from SSD regressions ``[..., 4]`` (``t_cx, t_cy, t_w, t_h``) and their anchors
    ``[..., 4]`` (``cx, cy, w, h``): centre ``a_c + t_c * 0.1 * a_size``, size ``exp(t * 0.2) * a_size``, in
    cvnets' order of operations (``convert_locations_to_boxes``). Not clipped."""
    centres = regression[..., :2] * CENTER_VARIANCE * anchors[..., 2:] + anchors[..., :2]
    sizes = torch.exp(regression[..., 2:] * SIZE_VARIANCE) * anchors[..., 2:]
    return box_convert(torch.cat([centres, sizes], dim=-1), "cxcywh", "xyxy")


def encode_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """SSD regression targets ``[..., 4]`` (``t_cx, t_cy, t_w, t_h``) of normalised ``xyxy`` boxes against their
    anchors ``[..., 4]`` (``cx, cy, w, h``): the inverse of :func:`decode_boxes`, ``t_c = (g_c - a_c) / a_size / 0.1``
    and ``t_size = log(g_size / a_size) / 0.2`` (SSD's Eq. 2 as cvnets' ``convert_boxes_to_locations``)."""
    centred = box_convert(boxes, "xyxy", "cxcywh")
    centres = (centred[..., :2] - anchors[..., :2]) / anchors[..., 2:] / CENTER_VARIANCE
    sizes = torch.log(centred[..., 2:] / anchors[..., 2:]) / SIZE_VARIANCE
    return torch.cat([centres, sizes], dim=-1)


def detect(
    logits: Tensor,
    regression: Tensor,
    anchors: Tensor,
    threshold: float = CONFIDENCE_THRESHOLD,
    top_k: int = TOP_K,
    iou: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections from its raw SSD outputs, as cvnets' ``postprocess_detections``.

    Args:
        logits: ``[A, C]`` class logits, column 0 the background.
        regression: ``[A, 4]`` box regressions.
        anchors: ``[A, 4]`` normalised ``cx, cy, w, h``.
        threshold: a class's probability must be above it (strict).
        top_k: best anchors kept per class before NMS.
        iou: the NMS overlap threshold (per class: ``torchvision.ops.batched_nms``).
        max_detections: detections kept after NMS.

    Returns:
        ``(boxes [D, 4] normalised xyxy, labels [D] int64 in 1..C-1, scores [D])``, best first.
    """
    probabilities = logits.float().softmax(-1)  # [A, C]
    boxes = decode_boxes(regression.float(), anchors.float())  # [A, 4]
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(1, probabilities.shape[1]):
        scores = probabilities[:, label]
        mask = scores > threshold
        scores, candidates = scores[mask], boxes[mask]
        if not len(scores):
            continue
        scores, order = scores.topk(min(top_k, len(scores)))
        kept_boxes.append(candidates[order])
        kept_scores.append(scores)
        kept_labels.append(torch.full_like(order, label))
    if not kept_scores:
        return boxes.new_zeros((0, 4)), torch.zeros(0, dtype=torch.int64), probabilities.new_zeros(0)
    boxes, scores, labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
    keep = batched_nms(boxes, scores, labels, iou)[:max_detections]
    return boxes[keep], labels[keep], scores[keep]


def to_pixels(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Normalised ``xyxy`` boxes in the pixels of an image of ``size`` (width, height), clipped to it."""
    width, height = size
    scale = boxes.new_tensor([width, height, width, height])
    return (boxes * scale).clamp_(min=0).clamp_(max=scale)


def label_names(labels: Sequence[str], num_columns: int) -> Sequence[str]:
    """The names of classes 1..C-1 of ``C`` logit columns: the labels, without the background's when they name it."""
    return labels[1:] if len(labels) == num_columns else labels


# ------------------------------------------------------------------------------------------------------ the task


class DetectionTask(Task):
    """Object detection: a :class:`Detection` (boxes, labels, scores in image pixels) per image."""

    name = "detection"
    hf_task = "object-detection"
    title = "object detection"
    model_kind = "an object detection model"
    how_to_run = "detect objects with `mobilevit detect` and score it with `mobilevit eval --task detection`"
    outputs = ("logits", "boxes", "anchors")
    output_axes = ("batch", "anchors", "classes")
    default_label_set = "coco"
    parameter_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": SERVER_THRESHOLD},
    }
    answer_schema: ClassVar[dict[str, Any]] = {  # the Inference API's ObjectDetectionOutputElement, best first
        "type": "array",
        "items": {
            "type": "object",
            "required": ["label", "score", "box"],
            "properties": {
                "label": {"type": "string"},
                "score": {"type": "number"},
                "box": {
                    "type": "object",
                    "required": list(BOX_KEYS),
                    "properties": {key: {"type": "number"} for key in BOX_KEYS},
                },
            },
        },
    }
    exact_decode = True  # boxes in the input's pixels
    # training (mobilevit.train): SSD matching and the multibox loss on COCO-format sets, COCO mAP on the val split
    loss = "multibox"
    train_data = "coco_boxes"
    val_columns = ("val_AP", "val_AP_ema", "val_AP50", "val_AP50_ema", "val_AP75", "val_AP75_ema")
    best_metric = "AP"
    best_metric_title = "AP"
    export_kind = "object detector"
    data_help = "COCO-format data: an image folder and instances.json (DATA/images/ + DATA/annotations/instances.json)"

    def preprocess(self, preprocess: Preprocess) -> Preprocess:
        """The whole image resized to the input size: a crop would lose the objects near the edges."""
        return segmentation_preprocess(preprocess, preprocess.input_size)

    def fixed_size_preprocess(self, preprocess: Preprocess, size: tuple[int, int]) -> Preprocess:
        """The whole image resized to ``size``: a detector's anchors follow its feature maps, so it finds objects at
        any input size, and a file exported at one size (TorchScript, CoreML, ExecuTorch, LiteRT) is fed that size."""
        return segmentation_preprocess(preprocess, size)

    def bench_size(self, preprocess: Preprocess, default: int) -> tuple[int, int]:
        height, width = preprocess.input_size
        return int(height), int(width)

    def labelled_classes(self, num_classes: int) -> int:
        """The classes that labels name, of ``num_classes`` logit columns: all but the background."""
        return num_classes - 1

    def batched(self, outputs: dict[str, Tensor], batch: int) -> dict[str, Tensor]:
        """Anchors shared by the batch (``[A, 4]``) repeated for each image (``[B, A, 4]``)."""
        anchors = outputs["anchors"]
        if anchors.ndim == 2:
            outputs = {**outputs, "anchors": anchors.expand(batch, *anchors.shape)}
        return outputs

    def context(self, image: Image.Image) -> Image.Image:
        """The decoded image: boxes are scaled to its size and drawn on it."""
        return image

    def check_options(self, threshold: float | None = None) -> None:  # type: ignore[override]
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UsageError(f"threshold must be between 0 and 1, got {threshold}")

    def postprocess(
        self, runner: Runner, outputs: Any, context: Any = None, threshold: float | None = None, size: Any = None
    ) -> Detection:
        """One image's :class:`Detection` from its raw outputs (``{"logits", "boxes", "anchors"}``), in the pixels of
        the image (``context``) or of ``size`` (width, height); ``threshold`` keeps the detections scoring at least
        that much (the model's own confidence threshold, 0.01, applies first).

        Raises:
            NonFiniteOutputError: a raw output is NaN or infinite, naming the model.
        """
        for name in ("logits", "boxes"):
            check_finite(outputs[name][None], runner.model_name)
        image = context if isinstance(context, Image.Image) else None
        size = tuple(size) if size is not None else (image.width, image.height)
        boxes, labels, scores = detect(outputs["logits"], outputs["boxes"], outputs["anchors"])
        names = label_names(runner.labels, outputs["logits"].shape[-1])
        detection = Detection(
            to_pixels(boxes, size), labels, scores, tuple(names[i - 1] for i in labels.tolist()), size, image
        )
        return detection.above(threshold) if threshold is not None else detection

    def render(self, result: Detection, stem: Path) -> dict[str, str]:
        """Write ``<stem>_boxes.jpg``: the image with the boxes drawn."""
        path = stem.with_name(f"{stem.name}_boxes.jpg")
        result.draw().save(path, quality=90)
        return {"boxes": str(path)}

    def describe(self, path: str, result: Detection, files: dict[str, str] | None = None) -> tuple[dict, str]:
        files = files or {}
        found = (
            ", ".join(f"{n} {s:.2f}" for n, s in zip(result.names, result.scores.tolist(), strict=True)) or "nothing"
        )
        written = f" -> {', '.join(files.values())}" if files else ""
        return {"file": path, **files, **result.to_dict()}, f"{path}: {found}{written}"

    def evaluate(
        self, runner: Runner, data: str, split: str | None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        from ..data.coco import coco_set, evaluate_detections

        coco, images = coco_set(data, split)
        mine, _ = shard(images)
        category = coco.category_ids(runner.labels)  # the runner's labels name classes 1..C-1

        def load(item: tuple[int, Path]) -> tuple[Tensor, Any, int]:
            x, image = runner.load_input(item[1], str(item[1]))
            return x, image, item[0]

        def answer(loaded: list[tuple[Tensor, Any, int]]) -> list[list[dict[str, Any]]]:
            results = runner.answer([(x, image) for x, image, _ in loaded])
            return [coco_results(d, image_id, category) for d, (_, _, image_id) in zip(results, loaded, strict=True)]

        found: list[dict[str, Any]] = []
        failed: list[dict[str, str]] = []
        for (_, path), result in runner.map_files(mine, load, answer, progress):
            if isinstance(result, Exception):
                failed.append({"file": str(path), "error": str(result)})
            else:
                found += result
        found, failed, world = _gather(found), _gather(failed), len(images)
        scores = evaluate_detections(coco, found, sorted(set(category.values())))
        return {**scores, "categories": len(set(category.values())), "count": world - len(failed), "failed": failed}

    def score_results(self, data: str, results: str, split: str | None = None) -> dict[str, Any]:
        """COCO mAP of a COCO results file, exactly as pycocotools' ``COCOeval`` scores it (every category)."""
        from ..data.coco import coco_set, evaluate_detections

        coco, images = coco_set(data, split)
        return {**evaluate_detections(coco, results), "count": len(images), "failed": []}

    def eval_total(self, data: str, split: str | None) -> int | None:
        from ..data.coco import coco_set

        return len(coco_set(data, split)[1])

    def eval_summary(self, model: str, result: dict[str, Any]) -> str:
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
        return f"{model}: " + ", ".join(f"{key} {result[key]:.4f}" for key in keys) + f" ({result['count']} images)"

    def read_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        threshold = params.get("threshold")
        if threshold is None:
            return {"threshold": SERVER_THRESHOLD}
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            raise UsageError(f"threshold must be a number between 0 and 1, got {echo(threshold)}")
        return {"threshold": float(threshold)}

    def encode(self, result: Detection, options: dict[str, Any]) -> list[dict[str, Any]]:
        """The Inference API answer: ``[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]``, best first."""
        return [{"score": r["score"], "label": r["label"], "box": r["box"]} for r in result.to_dict()["detections"]]


def _gather(rows: list[Any]) -> list[Any]:
    """Every rank's ``rows`` (one process: unchanged)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


def coco_results(detection: Detection, image_id: int, category: dict[int, int]) -> list[dict[str, Any]]:
    """COCO results-format rows (``bbox`` as ``[x, y, w, h]``) of one image's detections, for the classes the data
    has (``category``: label -> category id)."""
    boxes = box_convert(detection.boxes, "xyxy", "xywh").tolist()
    return [
        {"image_id": image_id, "category_id": category[label], "bbox": box, "score": score}
        for box, label, score in zip(boxes, detection.labels.tolist(), detection.scores.tolist(), strict=True)
        if label in category
    ]


def coco_rows(
    logits: Tensor, regression: Tensor, anchors: Tensor, size: tuple[int, int], image_id: int, category: dict[int, int]
) -> list[dict[str, Any]]:
    """COCO results-format rows of one image's raw outputs (``[A, C]``, ``[A, 4]``, ``[A, 4]``) in the pixels of an
    image of ``size`` (width, height): :func:`detect` at the evaluation threshold, then :func:`coco_results`, as
    ``eval`` scores a model."""
    boxes, labels, scores = detect(logits, regression, anchors)
    detection = Detection(to_pixels(boxes, size), labels, scores, ("",) * len(scores), size)
    return coco_results(detection, image_id, category)


DETECTION = register_task(DetectionTask())

__all__ = [
    "DETECTION",
    "Detection",
    "DetectionTask",
    "box_colour",
    "coco_rows",
    "decode_boxes",
    "detect",
    "encode_boxes",
]
