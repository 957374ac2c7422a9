"""Architecture registry: name -> (model class, config), ``create_model`` and ``list_models``."""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from typing import Any

from torch import Tensor, nn

from .errors import UsageError, suggest
from .models import ARCHITECTURES, architecture
from .reparam import reparameterize_model
from .weights.entries import WeightsEntry, get_weights, labels_for, list_weights, segmentation_preprocess
from .weights.hub import resolve_weights
from .weights.load import (
    CONFIG_METADATA_KEY,
    CheckpointError,
    checkpoint_config,
    convert_checkpoint,
    is_folded_checkpoint,
    is_segmentation_checkpoint,
    load_into,
    read_checkpoint,
)
from .weights.pretrained import PretrainedCfg, default_preprocess, preprocess_from_json, read_saved_config
from .weights.pretrained import config_overrides as saved_overrides

logger = logging.getLogger(__name__)


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Sorted architecture names, optionally filtered by a shell-style ``pattern`` such as ``"mobilevitv2_*"`` and by
    ``task``: ``"classification"`` or ``"segmentation"`` (the ``deeplabv3_*`` models)."""
    if task is not None and task not in (tasks := tuple(dict.fromkeys(c.task for c, _ in ARCHITECTURES.values()))):
        raise UsageError(f"task must be one of {tasks}, got {task!r}")
    names = sorted(n for n, (model_cls, _) in ARCHITECTURES.items() if task is None or model_cls.task == task)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_config(name: str) -> Any:
    """The config dataclass of architecture ``name`` (an ``arch.tag`` weights name also works)."""
    return architecture(name)[1]


def build_config(name: str, **overrides: Any) -> Any:
    """``get_config(name)`` with fields replaced; an unknown field raises with the closest valid names."""
    cfg = get_config(name)
    fields = [f.name for f in dataclasses.fields(cfg)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        hints = "".join(suggest(k, fields) for k in unknown)
        raise TypeError(f"Unknown option(s) {unknown} for {name!r}.{hints} Valid options: {', '.join(sorted(fields))}.")
    return dataclasses.replace(cfg, **overrides)


def _weights_entry(name: str) -> WeightsEntry:
    """The weights entry of ``arch.tag`` (or the default one of a bare architecture), with a helpful error."""
    try:
        return get_weights(name)
    except KeyError as e:
        arch = name.split(".", 1)[0]
        available = list_weights(f"{arch}.*")
        listing = f"Available for {arch}: {', '.join(available)}" if available else f"{arch} has no registered weights"
        raise UsageError(
            f"No pretrained weights {name!r}. {listing}. A local checkpoint also works: "
            f"create_model({arch!r}, pretrained='path/to/checkpoint')."
        ) from e


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
            name and a path, the entry still supplies the preprocessing and labels. A segmentation model
            (``deeplabv3_*``) also takes a classification checkpoint of its backbone (or, with ``True`` and no
            segmentation weights of its own, the backbone's default ImageNet weights): the backbone loads, the head
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
    arch = name.split(".", 1)[0]
    cfg = build_config(name, **config_overrides)
    if pretrained is False or pretrained is None or pretrained == "":
        model = _build(arch, cfg, features_only, out_indices, num_classes)
        model = reparameterize_model(model, inplace=True) if reparameterized else model
        model.pretrained_cfg = None
        return model
    if pretrained is True and not allow_random_head:
        _refuse_unpublished(name)
    path, entry, fmt = _weights_location(name, pretrained)
    raw, info = read_checkpoint(path)
    if ARCHITECTURES[arch][0].task == "segmentation" and not is_segmentation_checkpoint(raw, info):
        return _with_backbone_weights(
            arch, cfg, num_classes, raw, info, str(path), entry, reparameterized, allow_random_head
        )
    state_dict, saved, cfg = _read_weights(raw, info, str(path), arch, cfg, fmt, config_overrides)
    layout = (features_only, out_indices, reparameterized)
    return _with_own_weights(arch, cfg, state_dict, saved, str(path), entry, num_classes, layout, allow_random_head)


def _with_own_weights(
    arch: str,
    cfg: Any,
    state_dict: dict[str, Tensor],
    saved: Any,
    source: str,
    entry: WeightsEntry | None,
    num_classes: int | None,
    layout: tuple[bool, tuple[int, ...] | None, bool],
    allow_random_head: bool,
) -> nn.Module:
    """The model ``arch`` built around a converted checkpoint of its own architecture: the checkpoint's classifier is
    kept when ``num_classes`` fits it (``None``: the checkpoint's), else the head starts fresh (see
    :func:`create_model`'s ``allow_random_head``). ``layout``: ``(features_only, out_indices, reparameterized)``."""
    features_only, out_indices, reparameterized = layout
    classifier_name = ARCHITECTURES[arch][0].classifier_name
    classifier = f"{classifier_name}.weight"
    ckpt_classes = state_dict[classifier].shape[0] if classifier in state_dict else None
    if num_classes is None:
        num_classes = ckpt_classes if ckpt_classes is not None else cfg.num_classes
    model = _build(arch, cfg, features_only, out_indices, num_classes)
    keep_head = num_classes == ckpt_classes
    if not keep_head and any(k.startswith(f"{classifier_name}.") for k in model.state_dict()):
        why = (
            "it holds no classifier"
            if ckpt_classes is None
            else f"its classifier has {ckpt_classes} outputs, the model {num_classes}"
        )
        _random_head(arch, source, [classifier_name], why, allow_random_head)
    _load_weights(model, state_dict, source, keep_head=keep_head, reparameterized=reparameterized)
    labelled = num_classes if keep_head and not features_only else None
    model.pretrained_cfg = _pretrained_cfg(arch, source, entry, saved, labelled, model.task)
    return model


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


def _weights_location(
    name: str, pretrained: bool | str | os.PathLike
) -> tuple[str | os.PathLike, WeightsEntry | None, str | None]:
    """``(path, entry, format)`` of the weights to load.

    ``pretrained=True`` takes the entry's file (cached or downloaded) and its recorded format; a path is read as it
    is, described by the entry only when ``name`` is an ``arch.tag``.
    """
    if pretrained is True:
        entry = _weights_entry(_backbone_if_unpublished(name))
        return resolve_weights(entry), entry, entry.format
    return pretrained, _weights_entry(name) if "." in name else None, None


def _backbone_if_unpublished(name: str) -> str:
    """``name``, or for a bare segmentation architecture without weights of its own, its backbone's name (whose
    default ImageNet weights then initialise the backbone)."""
    arch = name.split(".", 1)[0]
    backbone = getattr(ARCHITECTURES[arch][1], "backbone", None)
    return backbone if "." not in name and backbone and not list_weights(f"{arch}.*") else name


def _with_backbone_weights(
    arch: str,
    cfg: Any,
    num_classes: int | None,
    state_dict: dict[str, Tensor],
    info: dict[str, Any],
    source: str,
    entry: WeightsEntry | None,
    reparameterized: bool,
    allow_random_head: bool,
) -> nn.Module:
    """A segmentation model whose backbone is loaded from a classification checkpoint of ``cfg.backbone`` (its
    classifier and 1x1 expansion dropped) and whose head is fresh. Its preprocessing is the backbone weights' pixels,
    resized whole to 512x512; its labels are the defaults for its number of classes."""
    model = _build(arch, cfg, False, None, num_classes)
    _random_head(arch, source, _head_modules(model), _only_backbone(cfg), allow_random_head)
    backbone = model.backbone
    backbone_entry = entry if entry is not None and entry.arch == cfg.backbone else None
    fmt = backbone_entry.format if backbone_entry else None
    converted = convert_checkpoint(state_dict, info, cfg.backbone, backbone.cfg, source=source, fmt=fmt)
    _load_weights(backbone, converted, source, keep_head=False, reparameterized=False)
    if reparameterized:
        reparameterize_model(model, inplace=True)
    saved = preprocess_from_json((info.get(CONFIG_METADATA_KEY) or {}).get("preprocess"))
    pixels = saved or (backbone_entry.preprocess if backbone_entry else default_preprocess(cfg.backbone))
    model.pretrained_cfg = PretrainedCfg(arch=arch, source=source, preprocess=segmentation_preprocess(pixels))
    return model


_RANDOM_HEAD_ADVICE = (
    ", so its outputs would mean nothing. Fine-tune it first (mobilevit train), or pass --allow-random-head (Python: "
    "allow_random_head=True) to run it anyway"
)


def check_head_weights(name: str, pretrained: bool | str | os.PathLike) -> None:
    """Refuse weights that would leave the head of segmentation model ``name`` random, reading only the checkpoint: one
    that is not a segmentation checkpoint, or ``pretrained=True`` for an architecture without published weights. The
    server checks this before it listens; other misfits show when the model loads.

    Raises:
        CheckpointError: what ``create_model(name, pretrained=pretrained, allow_random_head=False)`` raises for them.
    """
    arch = name.split(".", 1)[0]
    if arch not in ARCHITECTURES or ARCHITECTURES[arch][0].task != "segmentation" or pretrained in (False, None, ""):
        return
    if pretrained is True:
        _refuse_unpublished(name)
        return
    raw, info = read_checkpoint(pretrained)
    if not is_segmentation_checkpoint(raw, info):
        cfg = get_config(name)
        _random_head(
            arch, str(pretrained), _head_modules(_build(arch, cfg, False, None, None)), _only_backbone(cfg), False
        )


def _refuse_unpublished(name: str) -> None:
    """Refuse ``pretrained=True`` for a segmentation architecture whose only weights would be its backbone's."""
    backbone = _backbone_if_unpublished(name)
    if backbone != name:
        raise CheckpointError(
            f"{name.split('.', 1)[0]} has no published weights: pretrained=True would load only its backbone's "
            f"({backbone}) and leave its head random{_RANDOM_HEAD_ADVICE}"
        )


def _head_modules(model: nn.Module) -> list[str]:
    """The modules of a segmentation model's head (``head.aspp``, ``head.classifier``), for messages."""
    return [f"head.{name}" for name, _ in model.head.named_children()]


def _only_backbone(cfg: Any) -> str:
    return f"it is not a segmentation checkpoint: only the backbone ({cfg.backbone}) loads"


def _random_head(arch: str, source: str, modules: list[str], why: str, allowed: bool) -> None:
    """Warn that the head ``modules`` of ``arch`` keep random weights (fine-tuning), or refuse (inference)."""
    if allowed:
        logger.warning(
            "%s: %s left random, not loaded from %s (%s): fine-tune before use",
            arch,
            ", ".join(modules),
            source,
            why,
        )
        return
    raise CheckpointError(
        f"Checkpoint {source} leaves the head of {arch} random ({', '.join(modules)}): {why}{_RANDOM_HEAD_ADVICE}"
    )


def _read_weights(
    state_dict: dict[str, Tensor],
    info: dict[str, Any],
    path: str,
    arch: str,
    cfg: Any,
    fmt: str | None,
    config_overrides: dict[str, Any],
) -> tuple[dict[str, Tensor], dict[str, Any] | None, Any]:
    """Convert a checkpoint read by ``read_checkpoint``: ``(state_dict in our key names, our saved config or None,
    config)``.

    A folder of ours supplies the base config, and so does what a transformers segmentation folder's config states
    (output stride, ASPP); the caller's overrides win over either.
    """
    saved = info.get(CONFIG_METADATA_KEY)
    if saved is not None:
        if saved.get("arch") != arch:
            raise CheckpointError(f"{path} holds weights for {saved.get('arch')!r}, not {arch!r}")
        cfg = build_config(arch, **{**saved_overrides(saved, ARCHITECTURES[arch][1]), **config_overrides})
    elif stated := checkpoint_config(info, cfg):
        cfg = build_config(arch, **{**stated, **config_overrides})
    return convert_checkpoint(state_dict, info, arch, cfg, source=str(path), fmt=fmt), saved, cfg


def _build(
    arch: str, cfg: Any, features_only: bool, out_indices: tuple[int, ...] | None, num_classes: int | None
) -> nn.Module:
    """A fresh model of ``arch`` with config ``cfg``, its ``num_classes`` replaced when one is given."""
    if num_classes is not None:
        cfg = dataclasses.replace(cfg, num_classes=num_classes)
    kwargs: dict[str, Any] = {"features_only": features_only}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    return ARCHITECTURES[arch][0](cfg, **kwargs)


def _load_weights(
    model: nn.Module, state_dict: dict[str, Tensor], source: str, keep_head: bool, reparameterized: bool
) -> None:
    """Load converted weights strictly, into the folded form when the checkpoint has it; fold after if asked."""
    folded = is_folded_checkpoint(model, state_dict)
    if folded:
        reparameterize_model(model, inplace=True)  # a fresh model: folding it only gives it the checkpoint's layout
    load_into(model, state_dict, source=source, keep_head=keep_head)
    if reparameterized and not folded:
        reparameterize_model(model, inplace=True)


def _pretrained_cfg(
    arch: str,
    source: str,
    entry: WeightsEntry | None,
    saved: dict[str, Any] | None,
    labelled: int | None,
    task: str = "classification",
) -> PretrainedCfg:
    """What the loaded weights expect and mean: the checkpoint's own config first, then the entry.

    Args:
        saved: our saved config of the checkpoint, if it has one.
        labelled: the number of classes whose names the checkpoint answers; ``None`` when its classifier was
            replaced or dropped (``features_only``), so that it has no labels.
        task: the model's task, for the default label names.
    """
    saved = saved or {}
    labels = labels_for(labelled, entry, saved.get("labels"), task) if labelled is not None else None
    preprocess = preprocess_from_json(saved.get("preprocess"))  # None: PretrainedCfg takes the entry's
    return PretrainedCfg(arch=arch, source=source, entry=entry, preprocess=preprocess, labels=labels)


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Rebuild a model written by :func:`mobilevit.save_pretrained`: same as ``create_model(path, **kwargs)``.

    Args:
        path: the folder (or its ``model.safetensors``).
        **kwargs: :func:`create_model` arguments, e.g. ``num_classes`` or ``reparameterized=True``.
    """
    return create_model(os.fspath(path), **kwargs)
