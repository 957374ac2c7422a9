"""COCO-format detection data and COCO mAP, computed by pycocotools' ``COCOeval`` (the evaluator COCO results are
published with), never by our own matching code.

A set is an image folder and an ``instances.json`` (COCO's ``images``, ``annotations`` with ``bbox`` ``[x, y, w,
h]``, ``categories``): ``DATA/instances.json`` or ``DATA/annotations/instances.json``, the images in ``DATA/images/``
or ``DATA/``. COCO's own release layout works as it unpacks: ``DATA/annotations/instances_<split>.json`` (or
``instances_<split>2017.json``) with the images in ``DATA/<split>/`` (``DATA/<split>2017/``), the split ``val``
unless one is named; so does an annotations file given by its path, its images in the folder named after it. A
category may name the COCO class it stands for in ``coco_name``; it is matched by that, else by its ``name``.

:class:`DetectionDataset` reads a set for training: each image with its boxes and 1-based labels (the set's
categories in ascending id order are labels 1..K, named by ``coco_name`` else ``name``, the names
:meth:`CocoSet.category_ids` maps back to the same ids when ``eval`` scores the trained model).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from .images import ImageError, open_image

logger = logging.getLogger(__name__)

# COCOeval.stats, in its order: AP at IoU .50:.95, .50, .75; AP small, medium, large; AR with 1, 10, 100
# detections per image; AR small, medium, large
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _pycocotools() -> Any:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UsageError("COCO mAP needs pycocotools: pip install 'mobilevit[coco]'") from None
    return COCO, COCOeval


@dataclass
class CocoSet:
    """A COCO-format set: pycocotools' ``COCO`` of its annotations and the folder of its images."""

    coco: Any
    images: Path

    def category_ids(self, names: Sequence[str]) -> dict[int, int]:
        """label (1-based index into ``names``) -> the category id whose ``coco_name`` (else ``name``) it is."""
        by_name: dict[str, int] = {}
        for category in self.coco.loadCats(self.coco.getCatIds()):
            by_name.setdefault(category.get("coco_name") or category["name"], category["id"])
        return {k: by_name[name] for k, name in enumerate(names, start=1) if name in by_name}


def annotations_file(data: str | Path, split: str | None = None) -> Path:
    """The ``instances.json`` of a COCO-format set (``split``: which ``instances_<split>.json`` of COCO's release
    layout; default ``val``), or a clear error."""
    data = Path(data)
    if data.is_file():
        return data
    named = split or "val"
    release = [data / "annotations" / f"instances_{name}.json" for name in (named, f"{named}2017")]
    candidates = release if split else [data / "instances.json", data / "annotations" / "instances.json", *release]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c.relative_to(data)) for c in candidates)
    what = "instances.json" if split is None else f"annotations file for split {split!r}"
    raise UsageError(f"{data}: no {what} (looked for {looked})")


def images_folder(annotations: Path, data: str | Path) -> Path:
    """Where the images of the set whose annotations are ``annotations`` (found at ``data``) are."""
    stem = annotations.stem.removeprefix("instances_")
    if annotations.parent.name == "annotations" and stem != annotations.stem:
        release = annotations.parent.parent / stem  # COCO's layout: annotations/instances_val2017.json, val2017/
        if release.is_dir():
            return release
    root = Path(data) if Path(data).is_dir() else annotations.parent
    if root.name == "annotations" and not (root / "images").is_dir():
        root = root.parent
    return root / "images" if (root / "images").is_dir() else root


def load_coco(path: str | Path) -> Any:
    """pycocotools' ``COCO`` of an annotations file (its progress lines kept off stdout)."""
    coco_class, _ = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return coco_class(str(path))
        except (ValueError, KeyError, TypeError, AssertionError) as err:
            raise UsageError(f"{path}: not a COCO annotations file ({err})") from None


def coco_set(data: str | Path, split: str | None = None) -> tuple[CocoSet, list[tuple[int, Path]]]:
    """The set at ``data`` (``split``: see :func:`annotations_file`) and its ``(image id, image file)`` pairs in id
    order."""
    annotations = annotations_file(data, split)
    coco = load_coco(annotations)
    folder = images_folder(annotations, data)
    images = [(i, folder / coco.imgs[i]["file_name"]) for i in sorted(coco.getImgIds())]
    return CocoSet(coco, folder), images


def release_splits(data: str | Path) -> tuple[str, str | None] | None:
    """``(train, val)`` annotations files of a folder in COCO's release layout (``annotations/instances_train2017.json``
    and ``instances_val2017.json``, or without the year), else ``None``."""
    notes = Path(data) / "annotations"
    for year in ("2017", ""):
        train = notes / f"instances_train{year}.json"
        if train.is_file():
            val = notes / f"instances_val{year}.json"
            return str(train), str(val) if val.is_file() else None
    return None


def evaluate_detections(
    coco: CocoSet | Any,
    results: list[dict[str, Any]] | str | Path,
    categories: Sequence[int] | None = None,
    iou_type: str = "bbox",
) -> dict[str, Any]:
    """COCO box (or mask) mAP of ``results`` (COCO results format: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w,
    h]`` or ``segmentation`` (RLE), ``score``; a list or a JSON file) against the set's annotations, by pycocotools'
    ``COCOeval``.

    Args:
        coco: the set (or pycocotools' ``COCO`` of its annotations).
        results: the detections.
        categories: the category ids scored (default: every category of the set).
        iou_type: ``"bbox"`` (boxes) or ``"segm"`` (masks), ``COCOeval``'s ``iouType``.

    Returns:
        ``COCOeval.stats`` by name (:data:`STATS`: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
        ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``; -1 where the set has nothing to score), and ``detections``.
    """
    _, coco_eval = _pycocotools()
    ground_truth = coco.coco if isinstance(coco, CocoSet) else coco
    if not isinstance(results, list):
        results = read_results(results)
    if not results:  # pycocotools cannot load an empty results list: nothing found scores 0
        return {**dict.fromkeys(STATS, 0.0), "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes([dict(row) for row in results])  # loadRes adds keys to the rows it gets
        evaluation = coco_eval(ground_truth, detections, iou_type)
        if categories is not None:
            evaluation.params.catIds = list(categories)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {
        **{key: float(value) for key, value in zip(STATS, evaluation.stats, strict=True)},
        "detections": len(results),
    }


def evaluate_instances(
    coco: CocoSet | Any, results: list[dict[str, Any]] | str | Path, categories: Sequence[int] | None = None
) -> dict[str, Any]:
    """Box and mask mAP of instance segmentation results (rows with both ``bbox`` and ``segmentation``): the box
    scores of :func:`evaluate_detections` (:data:`STATS`) and the mask scores as ``mask_AP``, ``mask_AP50``, ...
    (``"segm"``). The mask pass scores the rows without their ``bbox``, so that an instance's area (small, medium,
    large) is its mask's, as detectron2 scores masks (pycocotools takes a row's area from its box when it has one).
    A set whose annotations are boxes only, or rows without masks, get the box scores only."""
    if not isinstance(results, list):
        results = read_results(results)
    scores = evaluate_detections(coco, results, categories)
    truth = (coco.coco if isinstance(coco, CocoSet) else coco).dataset.get("annotations", [])
    if not all(annotation.get("segmentation") for annotation in truth):
        logger.info("the set's annotations are boxes without masks: no mask mAP")
        return scores
    if not all("segmentation" in row for row in results):
        logger.info("the results have no masks: no mask mAP")
        return scores
    masks = [{key: value for key, value in row.items() if key != "bbox"} for row in results]
    found = evaluate_detections(coco, masks, categories, "segm")
    return {**scores, **{f"mask_{key}": found[key] for key in STATS}}


def encode_masks(masks: Any) -> list[dict[str, Any]]:
    """COCO's compressed RLE (``{"size": [h, w], "counts": str}``) of each of ``[D, H, W]`` boolean masks, by
    pycocotools' ``mask.encode``."""
    import numpy as np

    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise UsageError("COCO RLE masks need pycocotools: pip install 'mobilevit[coco]'") from None
    if len(masks) == 0:
        return []
    columns = np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0))  # [D, H, W] -> [H, W, D]
    return [{"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")} for rle in mask_utils.encode(columns)]


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """A COCO results file: a JSON list of ``{"image_id", "category_id", "bbox", "score"}``."""
    import json

    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read a COCO results file ({err})") from None
    if not isinstance(results, list):
        raise UsageError(f"{path}: a COCO results file is a JSON list of detections")
    return results


class DetectionDataset(Dataset):
    """``(PIL image, target)`` pairs of a COCO-format set, ``target`` holding ``boxes`` (``[N, 4]`` float32 ``xyxy``
    pixels), ``labels`` (``[N]`` int64, 1-based) and ``image_id``; crowd annotations are left out. An image that
    cannot be read gives ``(None, None)`` (logged). ``transform(image, target)`` (when given) returns the pair to use.

    Attributes:
        coco: the set.
        images: its ``(image id, file)`` pairs in id order.
        classes: the name of each label (label ``k`` is ``classes[k - 1]``).
        category: label -> category id, for the results of a model that predicts ``labels`` (see ``__init__``).
        transform: the joint transform, or ``None``.
    """

    def __init__(
        self,
        data: str | Path,
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        labels: Sequence[str] | None = None,
        masks: bool = False,
    ) -> None:
        """Args:
        data: a COCO-format set (see :func:`coco_set`).
        transform: joint transform ``(PIL image, target) -> (image, target)``.
        labels: the names of a model's labels 1..K, which :attr:`category` maps to this set's category ids (a
            validation set scored with the labels of the training set); default: this set's :attr:`classes`.
        masks: also give each annotation's mask (``masks`` ``[N, H, W]`` uint8 in the image's pixels), decoded from
            its polygons or RLE (compressed or not) by pycocotools.
        """
        self.coco, self.images = coco_set(data)
        if not self.images:
            raise UsageError(f"{data}: the COCO-format set lists no images")
        ids = sorted(self.coco.coco.getCatIds())
        categories = self.coco.coco.loadCats(ids)
        self.classes = [c.get("coco_name") or c["name"] for c in categories]
        self._label = {category: label for label, category in enumerate(ids, start=1)}
        self.category = self.coco.category_ids(self.classes if labels is None else labels)  # label -> category id
        self.transform = transform
        self.masks = masks

    def score(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """COCO mAP of ``results`` (COCO results rows) on this set, over the categories :attr:`category` reaches."""
        return evaluate_detections(self.coco, results, sorted(set(self.category.values())))

    def __len__(self) -> int:
        return len(self.images)

    def target(self, image_id: int) -> dict[str, Any]:
        """The boxes, labels and id of image ``image_id`` (and its masks, when the set was read with them)."""
        annotations = [a for a in self.coco.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)  # [N, 4] xywh
        boxes[:, 2:] += boxes[:, :2]  # -> xyxy
        labels = torch.tensor([self._label[a["category_id"]] for a in annotations], dtype=torch.int64)
        target = {"boxes": boxes, "labels": labels, "image_id": image_id}
        if self.masks:
            target["masks"] = self.decode_masks(image_id, annotations)
        return target

    def decode_masks(self, image_id: int, annotations: list[dict[str, Any]]) -> torch.Tensor:
        """``[N, H, W]`` uint8 masks (1 inside) of ``annotations`` of image ``image_id``, by pycocotools'
        ``COCO.annToMask`` (polygons, compressed or uncompressed RLE)."""
        info = self.coco.coco.imgs[image_id]
        if not annotations:
            return torch.zeros(0, info["height"], info["width"], dtype=torch.uint8)
        if not all(a.get("segmentation") for a in annotations):
            raise UsageError(f"{self.images[0][1].parent}: image {image_id} has annotations without a segmentation")
        return torch.stack([torch.from_numpy(self.coco.coco.annToMask(a)) for a in annotations])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_id, path = self.images[index]
        try:
            image = open_image(path)
        except (ImageError, OSError) as err:
            logger.warning("skipping unreadable image %s: %s", path, err)
            return None, None
        target = self.target(image_id)
        return self.transform(image, target) if self.transform is not None else (image, target)
