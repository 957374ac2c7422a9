"""Weights entries by name: the lookup, the recommended tag of each architecture and the label names.

The entries are data, in :mod:`.catalog` (their schema in :mod:`.schema`); this module is the policy over them:
``get_weights("arch.tag")`` (a bare architecture name means its :data:`DEFAULT_TAGS` entry), :func:`list_weights`,
the class names a model answers (:func:`labels_for`) and the eval transform of a segmentation model on a classifier's
pixels (:func:`segmentation_preprocess`). Every name of the catalog and the schema that callers use is importable
from here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import MobileViTError, UsageError, suggest
from .catalog import ADE20K_LABELS, SEG_SIZE, VOC_LABELS, WEIGHTS
from .schema import (
    FORMATS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LABEL_SETS,
    NO_MEAN,
    NO_STD,
    SOURCES,
    Metric,
    Preprocess,
    WeightsEntry,
)

# Recommended tag per architecture: timm's default tag where timm has the architecture (a safetensors file on the Hub,
# the same choice as timm.create_model(arch, pretrained=True)); the authors' release for MobileViTv3.
DEFAULT_TAGS: dict[str, str] = {
    **{a: "cvnets_in1k" for a in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")},
    **{f"mobilevitv2_{w}": "cvnets_in1k" for w in ("050", "075", "100", "125", "150", "175", "200")},
    **{f"mobilevitv3_{v}": "orig_in1k" for v in ("xxs", "xs", "s", "050", "075", "100")},
    **{f"fastvit_{v}": "apple_in1k" for v in ("t8", "t12", "s12", "sa12", "sa24", "sa36", "ma36")},
    **{f"mobileone_s{i}": "apple_in1k" for i in range(5)},
    **{f"deeplabv3_{a}": "hf_voc" for a in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_100")},
    **{f"deeplabv3_mobilevitv2_{w}": "orig_voc" for w in ("050", "125", "150")},
    **{f"ssdlite_mobilevit_{v}": "cvnets_coco" for v in ("xxs", "xs", "s")},
    **{f"ssdlite_mobilevitv2_{w}": "cvnets_coco" for w in ("050", "075", "100", "125", "150", "175", "200")},
    **{f"ssdlite_mobilevitv3_{v}": "orig_coco" for v in ("xxs", "xs", "s", "050", "075", "100")},
}


class UnknownWeightsError(MobileViTError, KeyError):
    """No weights entry by that name (a ``KeyError`` whose message prints without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def default_weights(arch: str) -> str:
    """The recommended weights name (``"arch.tag"``) for an architecture."""
    if arch not in DEFAULT_TAGS:
        raise UnknownWeightsError(
            f"No pretrained weights for architecture {arch!r}.{suggest(arch, sorted(DEFAULT_TAGS))}"
        )
    return f"{arch}.{DEFAULT_TAGS[arch]}"


def get_weights(name: str) -> WeightsEntry:
    """The entry for ``"arch.tag"``; a bare architecture name gives its :func:`default_weights`.

    Raises:
        UnknownWeightsError: (a ``KeyError``) unknown name, with the closest known names.
    """
    if "." not in name and name in DEFAULT_TAGS:
        name = default_weights(name)
    if name not in WEIGHTS:
        arch = name.split(".", 1)[0]
        same_arch = sorted(n for n in WEIGHTS if n.startswith(arch + "."))
        hint = f" Weights for {arch!r}: {', '.join(same_arch)}." if same_arch else suggest(name, sorted(WEIGHTS))
        raise UnknownWeightsError(f"Unknown weights {name!r}.{hint} See mobilevit.weights.entries.list_weights().")
    return WEIGHTS[name]


def list_weights(pattern: str | None = None) -> list[str]:
    """Sorted weights names, optionally filtered by a shell-style pattern such as ``"fastvit_*.apple_*"``."""
    names = sorted(WEIGHTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


@functools.cache
def _imagenet_categories() -> tuple[str, ...]:
    # torchvision bundles the ImageNet-1k names in its package (no download); index order is the standard one.
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def labels(entry: WeightsEntry | str) -> list[str]:
    """Class names of a weights entry (or weights name), index-aligned with the classifier outputs."""
    if isinstance(entry, str):
        entry = get_weights(entry)
    if entry.labels not in LABEL_SETS:
        raise UsageError(f"{entry.name}: no label names known for label set {entry.labels!r}")
    names = list(label_set_names(entry.labels))
    if entry.labels in BACKGROUND_FIRST and len(names) + 1 == entry.num_classes:
        names = ["background", *names]  # a detector scores the background as class 0
    assert len(names) == entry.num_classes, (len(names), entry.num_classes)
    return names


def label_set_names(label_set: str) -> tuple[str, ...]:
    """The class names of a label set of :data:`LABEL_SETS`, index order."""
    names = {
        "imagenet-1k": _imagenet_categories,
        "pascal-voc": lambda: VOC_LABELS,
        "coco": coco_categories,
        "ade20k": lambda: ADE20K_LABELS,
    }
    return names[label_set]()


@functools.cache
def coco_categories() -> tuple[str, ...]:
    """The 80 COCO detection classes in ascending COCO category-id order (label k of a detector is the k-th, 1-based;
    0 is the background). torchvision bundles them with its detection weights, padded to the 91 ids with ``N/A``."""
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    names = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"]
    return tuple(name for name in names[1:] if name != "N/A")  # [0] is "__background__"


IMAGENET_1K_CLASSES = 1000
BACKGROUND_FIRST = frozenset({"coco"})  # label sets whose models may score a background before the named classes


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The WordNet ids of the ImageNet-1k classes (``n01440764`` ...), in the standard index order."""
    from importlib import resources

    text = resources.files(__package__).joinpath("imagenet_1k_wnids.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(wnids) == IMAGENET_1K_CLASSES, len(wnids)
    return wnids


def labels_for(
    num_classes: int,
    entry: WeightsEntry | None = None,
    saved: Sequence[str] | None = None,
    label_set: str | None = "imagenet-1k",
) -> tuple[str, ...]:
    """The class names of a model with ``num_classes`` outputs: the one rule every path uses.

    In order: the names the checkpoint (or the user) gives, when there is one per output; the weights entry's, when
    it has as many classes and a known label set; the names of the model's own ``label_set`` (ImageNet-1k for a
    classifier, PASCAL VOC for DeepLabV3) when there are as many (a checkpoint loaded by architecture name or from a
    path without a weights tag, or random weights, as timm does), with ``"background"`` first for a detector that
    scores one more class than a :data:`BACKGROUND_FIRST` set names (COCO's 80 classes and the background); else
    ``class_<i>``.
    """
    if saved is not None and len(saved) == num_classes:
        return tuple(str(x) for x in saved)
    if entry is not None and entry.num_classes == num_classes and entry.labels in LABEL_SETS:
        return tuple(labels(entry))
    if label_set in LABEL_SETS and len(names := label_set_names(label_set)) == num_classes:
        return names
    if label_set in BACKGROUND_FIRST and len(names := label_set_names(label_set)) + 1 == num_classes:
        return ("background", *names)  # a detector scores the background as class 0
    return tuple(f"class_{i}" for i in range(num_classes))


def segmentation_preprocess(backbone: Preprocess, size: tuple[int, int] = SEG_SIZE) -> Preprocess:
    """The eval transform of a dense-prediction model (segmentation, detection) whose backbone's weights expect
    ``backbone``: the same pixels (channel order, normalization, resize filter and backend), the whole image resized
    to ``size``."""
    return dataclasses.replace(
        backbone, input_size=tuple(size), resize_size=min(size), crop_pct=1.0, resize_mode="exact"
    )


def read_labels_file(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a file: a JSON list, or one name per line (blank lines ignored)."""
    import json

    from .load import require_regular_file

    path = Path(path)
    require_regular_file(path, "Labels file", LabelsError)  # a FIFO would block the read
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise LabelsError(f"cannot read the labels file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not a text file of class names (one per line, or a JSON list)") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise LabelsError(f"{path}: not a valid JSON list of class names ({err})") from None
        if not isinstance(names, list) or not all(isinstance(x, str | int) for x in names):
            raise LabelsError(f"{path}: a JSON labels file must be a list of strings")
        names = [str(x) for x in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise LabelsError(f"{path}: no class names in the labels file")
    return tuple(names)


class LabelsError(MobileViTError, ValueError):
    """Class names that cannot be read or do not fit the model."""


def check_labels(names: Sequence[str], num_classes: int, source: str = "labels") -> tuple[str, ...]:
    """``names`` as a tuple, or a clear error when there is not one per output."""
    if len(names) != num_classes:
        raise LabelsError(f"{source}: {len(names)} class names for a model with {num_classes} outputs")
    return tuple(str(x) for x in names)


def resize_size_for(input_size: int, crop_pct: float) -> int:
    """timm's rule for the resize before the center crop: ``floor(input_size / crop_pct)``."""
    return math.floor(input_size / crop_pct)


__all__ = [
    "ADE20K_LABELS",
    "DEFAULT_TAGS",
    "FORMATS",
    "IMAGENET_1K_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL_SETS",
    "NO_MEAN",
    "NO_STD",
    "SEG_SIZE",
    "SOURCES",
    "VOC_LABELS",
    "WEIGHTS",
    "LabelsError",
    "Metric",
    "Preprocess",
    "UnknownWeightsError",
    "WeightsEntry",
    "check_labels",
    "default_weights",
    "get_weights",
    "imagenet_wnids",
    "labels",
    "labels_for",
    "list_weights",
    "read_labels_file",
    "resize_size_for",
    "segmentation_preprocess",
]
