"""Architecture registry: name -> (model class, config), ``create_model`` and ``list_models``.

The registry says which model is asked for; building it is :func:`mobilevit.models.build_model`, and a model with
pretrained weights is built and loaded by the weights layer in one call (:func:`mobilevit.weights.load_pretrained`).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from torch import nn

from .errors import UsageError
from .models import ARCHITECTURES, architecture, build_config, build_model
from .reparam import reparameterize_model
from .weights.loader import ModelRequest, check_head_weights, load_pretrained
from .weights.pretrained import read_saved_config


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Sorted architecture names, optionally filtered by a shell-style ``pattern`` such as ``"mobilevitv2_*"`` and by
    ``task``: ``"classification"``, ``"segmentation"`` (the ``deeplabv3_*`` models), ``"detection"`` (the
    ``ssdlite_*`` models) or ``"instance-segmentation"`` (the ``maskrcnn_*`` models)."""
    if task is not None and task not in (tasks := tuple(dict.fromkeys(c.task for c, _ in ARCHITECTURES.values()))):
        raise UsageError(f"task must be one of {tasks}, got {task!r}")
    names = sorted(n for n, (model_cls, _) in ARCHITECTURES.items() if task is None or model_cls.task == task)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_config(name: str) -> Any:
    """The config dataclass of architecture ``name`` (an ``arch.tag`` weights name also works)."""
    return architecture(name)[1]


def _is_checkpoint_path(name: str) -> bool:
    return name.split(".", 1)[0] not in ARCHITECTURES and os.path.exists(name)


def create_model(
    name: str | os.PathLike,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    reparameterized: bool = False,
    allow_random_head: bool = True,
    **config_overrides: Any,
) -> nn.Module:
    """Build a model by architecture or weights name, optionally loading weights.

    The model's :class:`~mobilevit.weights.PretrainedCfg` (weights entry, preprocessing, labels) is
    ``model.pretrained_cfg``; it is ``None`` when the weights are random.

    Args:
        name: architecture name from :func:`list_models` (``"mobilevit_xxs"``), weights name ``"arch.tag"`` from
            :func:`mobilevit.weights.entries.list_weights` (``"mobilevit_xxs.cvnets_in1k"``), or the path of a folder
            (or its ``model.safetensors``) written by :func:`mobilevit.save_pretrained`, which needs no other input.
        pretrained: ``False`` for random weights; ``True`` for the weights entry's file (``arch.tag``, or the
            architecture's default weights), taken from the Hugging Face / torch hub cache or downloaded into it
            (see :func:`mobilevit.weights.resolve_weights`); or the path of a local checkpoint in any supported format
            (safetensors, ``.pt``, ``.pth``, ``.pth.tar``, a transformers folder with ``config.json``, or a folder
            written by :func:`mobilevit.save_pretrained`). The format is detected and converted. With an ``arch.tag``
            name and a path, the entry still supplies the preprocessing and labels. A segmentation or detection model
            (``deeplabv3_*``, ``ssdlite_*``) also takes a classification checkpoint of its backbone (or, with
            ``True`` and no weights of its own, the backbone's default ImageNet weights): the backbone loads, the head
            starts fresh, for fine-tuning (see ``allow_random_head``).
        num_classes: classifier outputs. ``None`` keeps the checkpoint's (or the config's) head; a different number
            keeps the pretrained backbone and starts a fresh head.
        features_only: return a model whose ``forward`` gives the multi-scale feature maps (see ``feature_info``).
        out_indices: feature levels to return with ``features_only`` (default: all of them, see ``feature_info``).
        reparameterized: return the inference form (:func:`mobilevit.reparameterize_model`: re-parameterizable
            branches and BatchNorms folded). A checkpoint saved from such a model is recognised and loaded into this
            form whatever this flag says; a train-time checkpoint is loaded, then folded.
        allow_random_head: what to do when the checkpoint leaves head modules with random weights (a classification
            checkpoint in a segmentation model, a classifier of another ``num_classes``, a checkpoint without a
            classifier): ``True`` loads it and logs a warning naming them, which is right for fine-tuning; ``False``
            raises, which is right for inference (:class:`~mobilevit.predict.Predictor` and
            :class:`~mobilevit.segment.Segmenter` pass ``False`` unless told otherwise).
        **config_overrides: fields of the architecture's config dataclass, e.g. ``drop_path_rate=0.1``,
            ``in_channels=1``.

    Returns:
        The model, in train mode like torchvision and timm models.

    Raises:
        mobilevit.weights.WeightsUnavailableError: ``pretrained=True`` and the file is neither cached nor
            downloadable now; the message says how to supply it.
        mobilevit.weights.CheckpointError: the checkpoint cannot be read or does not fit the architecture, or it
            leaves the head random and ``allow_random_head`` is ``False``.
    """
    name = os.fspath(name)
    if _is_checkpoint_path(name):
        saved = _saved_folder_config(name, pretrained)
        if out_indices is None and saved.get("out_indices") is not None:
            out_indices = tuple(saved["out_indices"])
        features_only = features_only or bool(saved.get("features_only"))
        name, pretrained = saved["arch"], name
    cfg = build_config(name, **config_overrides)
    if pretrained is False or pretrained is None or pretrained == "":
        model = build_model(name.split(".", 1)[0], cfg, features_only, out_indices, num_classes)
        model = reparameterize_model(model, inplace=True) if reparameterized else model
        model.pretrained_cfg = None
        return model
    request = ModelRequest(name, cfg, config_overrides, num_classes, features_only, out_indices, reparameterized)
    return load_pretrained(request, pretrained, allow_random_head)


def _saved_folder_config(path: str, pretrained: bool | str | os.PathLike) -> dict[str, Any]:
    """Our config of a folder written by :func:`mobilevit.save_pretrained`, named as the model itself."""
    saved = read_saved_config(path)
    if saved is None or pretrained not in (False, True):
        raise UsageError(
            f"{path!r} is neither a registered model nor a folder written by mobilevit.save_pretrained; for "
            "another checkpoint, name the architecture: --model ARCH --pretrained PATH (in Python: "
            "create_model('ARCH', pretrained='PATH'))"
        )
    return saved


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Rebuild a model written by :func:`mobilevit.save_pretrained`: same as ``create_model(path, **kwargs)``.

    Args:
        path: the folder (or its ``model.safetensors``).
        **kwargs: :func:`create_model` arguments, e.g. ``num_classes`` or ``reparameterized=True``.
    """
    return create_model(os.fspath(path), **kwargs)


__all__ = ["build_config", "check_head_weights", "create_model", "from_pretrained", "get_config", "list_models"]
