"""The schema of a weights entry: :class:`WeightsEntry` (where a checkpoint lives, what it expects and what it is
worth), its eval transform :class:`Preprocess` and its published :class:`Metric`. The entries themselves are in
:mod:`.catalog`; looking them up is :mod:`.entries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError

Interpolation = Literal["bilinear", "bicubic"]
ChannelOrder = Literal["RGB", "BGR"]
ResizeBackend = Literal["pil", "opencv"]
CropOffset = Literal["round", "floor"]
ResizeMode = Literal["shorter_side", "exact"]
Task = str  # a task name: the models declare theirs, the registry of mobilevit.tasks holds the task objects
LabelSet = Literal["imagenet-1k", "pascal-voc", "coco", "ade20k"]
Source = Literal["timm", "transformers", "cvnets", "mobilevitv3", "ml-fastvit", "ml-mobileone"]
Format = Literal["timm", "transformers", "cvnets", "ml-fastvit", "ml-mobileone"]

LABEL_SETS: tuple[str, ...] = ("imagenet-1k", "pascal-voc", "coco", "ade20k")
SOURCES: tuple[str, ...] = ("timm", "transformers", "cvnets", "mobilevitv3", "ml-fastvit", "ml-mobileone")
# The converter formats of ``mobilevit.weights.converters.CONVERTERS`` (MobileViTv3 files are cvnets-format).
FORMATS: tuple[str, ...] = ("timm", "transformers", "cvnets", "ml-fastvit", "ml-mobileone")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_MEAN = (0.0, 0.0, 0.0)  # MobileViT: pixels in [0, 1], no mean/std normalization
NO_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Preprocess:
    """The eval transform of one checkpoint.

    Steps, in order: decode to 8-bit ``channel_order`` pixels; resize so the shorter side is ``resize_size`` (the
    longer side becomes ``int(resize_size * long / short)``, aspect kept) with ``interpolation``; center-crop
    ``input_size``; scale to [0, 1]; subtract ``mean`` and divide by ``std`` (both in [0, 1] pixel units, listed in
    ``channel_order``). With ``resize_mode="exact"`` (segmentation) the whole image is resized to ``input_size``
    instead, aspect not kept, and nothing is cropped: every pixel of the image has a place in the mask.

    Attributes:
        input_size: (H, W) of the tensor fed to the model.
        resize_size: the shorter side after resizing, before the center crop. Authoritative; ``crop_pct`` is kept
            for comparison with timm, where ``resize_size == floor(min(input_size) / crop_pct)``.
        crop_pct: ``min(input_size) / resize_size`` as published by the source (timm's convention).
        interpolation: resampling filter of the resize.
        mean: per-channel mean, in [0, 1] pixel units.
        std: per-channel std, in [0, 1] pixel units.
        channel_order: order of the three input channels the weights expect.
        resize_backend: "pil" for PIL / torchvision (antialiased when shrinking, as timm, torchvision and
            transformers do); "opencv" for ``cv2.resize`` without antialiasing, as ml-cvnets v0.1 evaluated.
        crop_offset: how the crop's top/left offset is rounded: "round" is torchvision's
            ``int(round((size - crop) / 2))`` (timm); "floor" is ``(size - crop) // 2`` (ml-cvnets v0.1 and
            transformers). A one-pixel shift moves pixels by up to ~0.09 on real images, far above 1/255.
        resize_mode: "shorter_side" (resize the shorter side to ``resize_size``, then center-crop ``input_size``) or
            "exact" (resize to ``input_size``, no crop; ``resize_size`` is then ``min(input_size)`` and ``crop_pct``
            1), as ml-cvnets v0.1 evaluated its segmentation models.
    """

    input_size: tuple[int, int]
    resize_size: int
    crop_pct: float
    interpolation: Interpolation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: ChannelOrder
    resize_backend: ResizeBackend = "pil"
    crop_offset: CropOffset = "round"
    resize_mode: ResizeMode = "shorter_side"

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shorter_side", "exact"):
            raise UsageError(f"resize_mode must be 'shorter_side' or 'exact', got {self.resize_mode!r}")
        if self.resize_mode == "exact" and (self.resize_size != min(self.input_size) or self.crop_pct != 1.0):
            raise UsageError(
                f"an exact resize to {self.input_size} crops nothing: resize_size must be {min(self.input_size)} and "
                f"crop_pct 1.0, got {self.resize_size} and {self.crop_pct}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise UsageError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.resize_size < min(self.input_size):
            raise UsageError(f"resize_size {self.resize_size} is smaller than the crop {self.input_size}")
        if abs(min(self.input_size) / self.crop_pct - self.resize_size) >= 1.0:
            raise UsageError(f"crop_pct {self.crop_pct} does not match {self.input_size} / {self.resize_size}")


@dataclass(frozen=True)
class Metric:
    """A published result (percent) and where it was published: ImageNet-1k validation top-1 / top-5 for a
    classifier, PASCAL VOC 2012 validation mean IoU (``miou``; ``top1`` and ``top5`` are ``None``) for a segmentation
    model, MS-COCO val2017 box mAP@[0.5:0.95] (``box_map``; ``top1`` and ``top5`` are ``None``) for a detector."""

    top1: float | None
    top5: float | None
    source: str
    note: str = ""
    miou: float | None = None
    box_map: float | None = None


@dataclass(frozen=True)
class WeightsEntry:
    """One official checkpoint.

    Attributes:
        name: ``"arch.tag"``.
        arch: architecture name, as in :func:`mobilevit.list_models`.
        source: who publishes the file.
        format: which converter in ``mobilevit.weights.converters`` reads it.
        preprocess: the eval transform these weights expect (channel order included).
        metrics: published top-1 / top-5, each with where it was published.
        license: license of the weights, with a pointer to its text.
        paper: the paper the architecture comes from.
        hub_repo_id: Hugging Face Hub repository, when the file is on the Hub.
        filename: file inside ``hub_repo_id``; for ``url`` the file name of the download; for a
            ``download_page`` the path inside the released archive. ``None`` for a transformers repository, which
            is a folder (``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``).
        url: direct download URL, when there is one.
        download_page: a page where a human downloads the file when there is no direct URL.
        reparameterized: the file holds the inference (folded) form of a reparameterizable model.
        num_classes: classifier outputs.
        labels: label set; :func:`labels` returns the names.
        task: what the model predicts: "classification" (one label per image), "segmentation" (one per pixel) or
            "detection" (boxes with a label each).
        upstream_preprocess: the source's own published transform when it differs from ``preprocess`` (the
            transformers MobileViTV2 processor flips RGB to BGR for weights trained on RGB); parity tests against the
            upstream pipeline use this one.
        notes: anything a user should know.
        evidence: where the facts in this entry come from (repository + path, or URL).
    """

    name: str
    arch: str
    source: Source
    format: Format
    preprocess: Preprocess
    metrics: tuple[Metric, ...]
    license: str
    paper: str
    hub_repo_id: str | None = None
    filename: str | None = None
    url: str | None = None
    download_page: str | None = None
    reparameterized: bool = False
    num_classes: int = 1000
    labels: LabelSet = "imagenet-1k"
    upstream_preprocess: Preprocess | None = None
    notes: str = ""
    evidence: tuple[str, ...] = ()
    task: Task = "classification"

    def __post_init__(self) -> None:
        if self.labels not in LABEL_SETS:
            raise UsageError(f"{self.name}: unknown label set {self.labels!r}")
        if not self.name.startswith(self.arch + ".") or self.name.count(".") != 1:
            raise UsageError(f"weights name {self.name!r} must be '{self.arch}.<tag>'")
        if self.source not in SOURCES:
            raise UsageError(f"{self.name}: unknown source {self.source!r}")
        if self.format not in FORMATS:
            raise UsageError(f"{self.name}: unknown format {self.format!r}")
        if not (self.hub_repo_id or self.url or self.download_page):
            raise UsageError(f"{self.name}: needs a hub_repo_id, a url or a download_page")

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def top1(self) -> float | None:
        """The first listed published top-1 (the number for this exact file when one was published); ``None`` for a
        segmentation model."""
        return self.metrics[0].top1 if self.metrics else None

    @property
    def miou(self) -> float | None:
        """The first listed published mean IoU of a segmentation model; ``None`` for a classifier."""
        return self.metrics[0].miou if self.metrics else None

    @property
    def box_map(self) -> float | None:
        """The first listed published COCO box mAP of a detector; ``None`` for the other tasks."""
        return self.metrics[0].box_map if self.metrics else None
