"""Instance segmentation: a Mask R-CNN's detections (boxes, labels, scores) and each one's mask, in image pixels.

The model (:mod:`mobilevit.models.maskrcnn`, torchvision's ``MaskRCNN``) post-processes itself: for each image of a
batch it returns a dict of ``boxes`` ``[D, 4]`` (``x1, y1, x2, y2`` in the input's pixels), ``labels`` ``[D]`` (1-based:
0 is the background), ``scores`` ``[D]`` and ``masks`` ``[D, 1, H, W]`` (each detection's mask probabilities, pasted
into the input), best first, ``D`` varying from image to image. This task:

- preprocesses as ml-cvnets evaluates its Mask R-CNN models: the whole image resized to the model's input (1024x1024
  unless the weights say otherwise; no crop), pixels as the weights' entry (or the model) states them: RGB, in [0, 1]
  for MobileViT backbones;
- scales the boxes from the input's pixels to the image's, and the mask probabilities to the image's size
  (bilinear), then thresholds them at ``mask_threshold`` (0.5, torchvision's and pycocotools users' cut);
- answers for object detection too (:attr:`~mobilevit.tasks.Task.also_answers`): ``mobilevit detect`` draws the
  masks and boxes and its ``--json`` gives each mask as COCO's compressed RLE; ``eval --task detection`` reports box
  mAP (``AP``, ``AP50``, ...) and mask mAP (``mask_AP``, ``mask_AP50``, ...) from pycocotools' ``COCOeval``
  (``bbox`` and ``segm``);
- trains through ``mobilevit train`` on COCO-format sets with masks (polygons or RLE): the loss is the sum of
  torchvision's loss dict, each term logged; each epoch validates box and mask mAP, the best checkpoint by box AP
  (as ml-cvnets' Mask R-CNN configs pick it, ``checkpoint_metric: coco_map.bbox``);
- serves the Inference API's ``object-detection`` (boxes) and ``image-segmentation`` (one ``{"label", "score",
  "mask"}`` per instance, ``mask`` a base64 PNG, 8-bit grayscale, 255 inside the instance).
"""

from __future__ import annotations

import base64
import io
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from ..errors import UsageError
from .base import Runner, Task, check_finite, echo, register_task
from .detection import SERVER_THRESHOLD, Detection, DetectionTask
from .segmentation import read_probability

MASK_THRESHOLD = 0.5  # a pixel belongs to the instance where its mask probability is above this
MASK_CHUNK = 16  # masks resized to the image's size at a time (a 12-megapixel photo: 48 MB of floats each)


def scale_masks(masks: Tensor, size: tuple[int, int], threshold: float = MASK_THRESHOLD) -> Tensor:
    """``[D, h, w]`` mask probabilities as ``[D, H, W]`` bool masks at ``size`` (width, height): resized bilinearly
    (``align_corners=False``), then above ``threshold``."""
    width, height = size
    if masks.shape[-2:] == (height, width):
        return masks > threshold
    parts = [
        F.interpolate(part[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        for part in masks.split(MASK_CHUNK)
    ]  # [d, h, w] -> [d, 1, h, w] -> [d, 1, H, W] -> [d, H, W]
    return torch.cat([p > threshold for p in parts]) if parts else masks.new_zeros((0, height, width), dtype=bool)


def mask_png(mask: Tensor) -> str:
    """A ``[H, W]`` bool mask as a base64 PNG, 8-bit grayscale: 255 inside, 0 outside."""
    buffer = io.BytesIO()
    Image.fromarray(mask.numpy().astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class InstanceSegmentationTask(DetectionTask):
    """Instance segmentation: a :class:`~mobilevit.tasks.detection.Detection` with ``masks`` per image. A detector
    (it answers ``detect`` and ``eval --task detection``) whose results also carry masks; its COCO evaluation adds
    mask mAP."""

    name = "instance-segmentation"
    hf_task = "object-detection"  # the server's default answer; image-segmentation at /models/NAME/pipeline/...
    title = "instance segmentation"
    model_kind = "an instance segmentation model"
    how_to_run = (
        "detect and segment objects with `mobilevit detect` and score it with `mobilevit eval --task detection` "
        "(box and mask mAP)"
    )
    outputs = ("detections",)  # one dict per image (boxes, labels, scores, masks), as torchvision's detectors return
    output_axes = ("batch", "detections")
    also_answers = ("detection",)
    image_outputs = ("boxes", "labels", "scores", "masks")  # an exported file's, one image at a time
    # torchvision's RPN, NMS and RoIAlign make shapes that depend on values: only the tracing exporters (ONNX's
    # TorchScript-based one, torch.jit.trace) record them; torch.export, under CoreML, ExecuTorch and LiteRT, cannot
    export_formats = ("onnx", "torchscript")
    # torchvision pastes each detection's mask into the whole input as floats: 100 detections at 1024x1024 are 400 MB
    # per image, so images run one at a time
    batch_limit = 1
    loss = "loss_dict_sum"
    train_data = "coco_masks"
    val_columns = (
        "val_AP",
        "val_AP_ema",
        "val_AP50",
        "val_AP50_ema",
        "val_mask_AP",
        "val_mask_AP_ema",
        "val_mask_AP50",
        "val_mask_AP50_ema",
    )
    # torchvision's Mask R-CNN loss dict, in the order it returns it
    loss_columns = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
    best_metric = "AP"  # box AP, as ml-cvnets picks its Mask R-CNN checkpoints
    best_metric_title = "box AP"
    export_kind = "instance segmentation model"
    data_help = (
        "COCO-format data, masks as polygons or RLE: an image folder and instances.json (DATA/images/ + "
        "DATA/annotations/instances.json)"
    )

    def check_options(  # type: ignore[override]
        self, threshold: float | None = None, mask_threshold: float = MASK_THRESHOLD
    ) -> None:
        super().check_options(threshold)
        if not 0.0 <= mask_threshold <= 1.0:
            raise UsageError(f"mask_threshold must be between 0 and 1, got {mask_threshold}")

    def postprocess(  # type: ignore[override]
        self,
        runner: Runner,
        outputs: dict[str, Tensor],
        context: Any = None,
        threshold: float | None = None,
        size: Any = None,
        mask_threshold: float = MASK_THRESHOLD,
    ) -> Detection:
        """One image's :class:`~mobilevit.tasks.detection.Detection` with masks, from the model's dict for it, in the
        pixels of the image (``context``) or of ``size`` (width, height); ``threshold`` keeps the detections scoring
        at least that much (the model's own score threshold applies first), ``mask_threshold`` cuts the masks.

        Raises:
            NonFiniteOutputError: a box or score is NaN or infinite, naming the model.
        """
        for name in ("boxes", "scores"):
            check_finite(outputs[name][None], runner.model_name)
        image = context if isinstance(context, Image.Image) else None
        size = tuple(size) if size is not None else (image.width, image.height)
        scores = outputs["scores"].float()
        keep = scores >= threshold if threshold is not None else torch.ones_like(scores, dtype=torch.bool)
        masks = outputs["masks"][keep][:, 0]  # [D, 1, h, w] -> [D, h, w], probabilities in the input's pixels
        height, width = masks.shape[-2:]
        scale = torch.tensor([size[0] / width, size[1] / height] * 2)
        boxes = outputs["boxes"][keep].float() * scale
        labels = outputs["labels"][keep]
        named = runner.labels  # classes 1..C-1 (a runner built without labels for this model has none)
        names = tuple(named[k - 1] if k <= len(named) else f"class_{k}" for k in labels.tolist())
        return Detection(boxes, labels, scores[keep], names, size, image, scale_masks(masks, size, mask_threshold))

    def score(self, coco: Any, results: Any, categories: Any = None) -> dict[str, Any]:
        """Box mAP and mask mAP (``mask_AP``, ...) of COCO results rows by ``COCOeval`` (``bbox``, ``segm``)."""
        from ..data.coco import evaluate_instances

        return evaluate_instances(coco, results, categories)

    def eval_summary(self, model: str, result: dict[str, Any]) -> str:
        boxes = super().eval_summary(model, result)
        if "mask_AP" not in result:
            return boxes
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        return f"{boxes}\n{model}: mask " + ", ".join(f"{key} {result[f'mask_{key}']:.4f}" for key in keys)

    @property
    def hf_tasks(self) -> tuple[str, ...]:
        return ("object-detection", "image-segmentation")

    def serving(self, hf_task: str) -> Task:
        """``object-detection`` (boxes, this task) or ``image-segmentation`` (a mask per instance)."""
        return INSTANCE_MASKS if hf_task == INSTANCE_MASKS.hf_task else super().serving(hf_task)


class InstanceMasksAnswer(InstanceSegmentationTask):
    """The server's ``image-segmentation`` answer for instance segmentation models: one entry per instance, best
    first, with the Inference API's ``subtask``, ``threshold`` and ``mask_threshold`` (not a registered task: what
    :meth:`InstanceSegmentationTask.serving` answers with)."""

    hf_task = "image-segmentation"
    parameter_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "subtask": {"enum": ["instance"]},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": SERVER_THRESHOLD},
        "mask_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": MASK_THRESHOLD},
    }
    answer_schema: ClassVar[dict[str, Any]] = {  # the Inference API's ImageSegmentationOutputElement, best first
        "type": "array",
        "items": {
            "type": "object",
            "required": ["label", "score", "mask"],
            "properties": {
                "label": {"type": "string"},
                "score": {"type": "number"},
                "mask": {"type": "string", "description": "base64 PNG, 8-bit grayscale: 255 inside the instance"},
            },
        },
    }

    def serving(self, hf_task: str) -> Task:
        return INSTANCE_SEGMENTATION.serving(hf_task)

    def read_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        subtask = params.get("subtask")
        if subtask not in (None, "instance"):
            raise UsageError(f"this model does instance segmentation: subtask must be 'instance', got {echo(subtask)}")
        threshold = read_probability(params, "threshold")
        mask_threshold = read_probability(params, "mask_threshold")
        return {
            "threshold": SERVER_THRESHOLD if threshold is None else threshold,
            "mask_threshold": MASK_THRESHOLD if mask_threshold is None else mask_threshold,
        }

    def encode(self, result: Detection, options: dict[str, Any]) -> list[dict[str, Any]]:
        """``[{"label", "score", "mask"}]``, one per instance, best first."""
        assert result.masks is not None
        return [
            {"label": name, "score": score, "mask": mask_png(mask)}
            for name, score, mask in zip(result.names, result.scores.tolist(), result.masks, strict=True)
        ]


INSTANCE_SEGMENTATION = register_task(InstanceSegmentationTask())
INSTANCE_MASKS = InstanceMasksAnswer()

__all__ = ["INSTANCE_SEGMENTATION", "InstanceSegmentationTask", "mask_png", "scale_masks"]
