"""A model built around its pretrained weights: :func:`load_pretrained`, the one load call of ``create_model``.

The registry says which model was asked for (:class:`ModelRequest`: architecture, config, head, layout); this module
does the rest in one place: it finds the weights (a weights entry's file, cached or downloaded, or a local path), reads
and converts them, lets the checkpoint complete the config (our saved folder's fields, a transformers segmentation
folder's output stride and ASPP, the classifier's size), builds the model, loads it strictly and records what the
weights expect and mean (``model.pretrained_cfg``). A model on a backbone of another architecture (DeepLabV3) also
takes a classification checkpoint of that backbone: the backbone loads, the head starts fresh.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from ..errors import UsageError
from ..models import ARCHITECTURES, build_config, build_model
from ..reparam import reparameterize_model
from .entries import WeightsEntry, get_weights, labels_for, list_weights, segmentation_preprocess
from .hub import resolve_weights
from .load import (
    CONFIG_METADATA_KEY,
    CheckpointError,
    checkpoint_config,
    convert_checkpoint,
    is_folded_checkpoint,
    is_segmentation_checkpoint,
    load_into,
    read_checkpoint,
)
from .pretrained import PretrainedCfg, config_overrides, default_preprocess, dense_input_size, preprocess_from_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRequest:
    """The model ``create_model`` was asked for, before a checkpoint has its say.

    Attributes:
        name: architecture name, or weights name ``arch.tag``.
        cfg: the registered config with the caller's ``overrides`` applied.
        overrides: the caller's config fields; they win over what a checkpoint states about itself.
        num_classes: classifier outputs; ``None`` keeps the checkpoint's.
        features_only: a model whose ``forward`` gives the multi-scale feature maps.
        out_indices: the feature levels of a ``features_only`` model (``None``: all).
        reparameterized: return the inference (folded) form.
    """

    name: str
    cfg: Any
    overrides: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    features_only: bool = False
    out_indices: tuple[int, ...] | None = None
    reparameterized: bool = False

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]


def load_pretrained(
    model: ModelRequest, source: Literal[True] | str | os.PathLike, allow_random_head: bool = True
) -> nn.Module:
    """Build the model ``model`` asks for around its weights (see :func:`mobilevit.create_model`).

    Args:
        model: what was asked for.
        source: ``True`` for the weights entry's file (``arch.tag``, or the architecture's default weights); or the
            path of a local checkpoint in any supported format. With an ``arch.tag`` name and a path, the entry still
            supplies the preprocessing and labels.
        allow_random_head: ``True`` loads a checkpoint that leaves head modules random and logs a warning naming them
            (fine-tuning); ``False`` raises (inference).

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit, or it leaves the head random and
            ``allow_random_head`` is ``False``.
    """
    if source is True and not allow_random_head:
        _refuse_unpublished(model.name)
    path, entry, fmt = _weights_location(model.name, source)
    raw, info = read_checkpoint(path)
    if _takes_backbone(model.cfg) and not is_segmentation_checkpoint(raw, info):
        return _with_backbone_weights(model, raw, info, str(path), entry, allow_random_head)
    state_dict, saved, cfg = _read_weights(raw, info, str(path), model, fmt)
    return _with_own_weights(
        dataclasses.replace(model, cfg=cfg), state_dict, saved, str(path), entry, allow_random_head
    )


def _takes_backbone(cfg: Any) -> bool:
    """Whether a model of config ``cfg`` is built on a classifier of another architecture (DeepLabV3's
    ``backbone``), whose classification checkpoints then fit it."""
    return getattr(cfg, "backbone", None) is not None


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


def _weights_location(
    name: str, source: Literal[True] | str | os.PathLike
) -> tuple[str | os.PathLike, WeightsEntry | None, str | None]:
    """``(path, entry, format)`` of the weights to load.

    ``True`` takes the entry's file (cached or downloaded) and its recorded format; a path is read as it is, described
    by the entry only when ``name`` is an ``arch.tag``.
    """
    if source is True:
        entry = _weights_entry(_backbone_if_unpublished(name))
        return resolve_weights(entry), entry, entry.format
    return source, _weights_entry(name) if "." in name else None, None


def _backbone_if_unpublished(name: str) -> str:
    """``name``, or for a bare segmentation architecture without weights of its own, its backbone's name (whose
    default ImageNet weights then initialise the backbone)."""
    arch = name.split(".", 1)[0]
    backbone = getattr(ARCHITECTURES[arch][1], "backbone", None)
    return backbone if "." not in name and backbone and not list_weights(f"{arch}.*") else name


# ---------------------------------------------------------------------------------------------- a checkpoint of its own
def _read_weights(
    state_dict: dict[str, Tensor], info: dict[str, Any], path: str, model: ModelRequest, fmt: str | None
) -> tuple[dict[str, Tensor], dict[str, Any] | None, Any]:
    """Convert a checkpoint read by ``read_checkpoint``: ``(state_dict in our key names, our saved config or None,
    config)``.

    A folder of ours supplies the base config, and so does what a transformers segmentation folder's config states
    (output stride, ASPP); the caller's overrides win over either.
    """
    arch, cfg = model.arch, model.cfg
    saved = info.get(CONFIG_METADATA_KEY)
    if saved is not None:
        if saved.get("arch") != arch:
            raise CheckpointError(f"{path} holds weights for {saved.get('arch')!r}, not {arch!r}")
        cfg = build_config(arch, **{**config_overrides(saved, ARCHITECTURES[arch][1]), **model.overrides})
    elif stated := checkpoint_config(info, cfg):
        cfg = build_config(arch, **{**stated, **model.overrides})
    converted = convert_checkpoint(state_dict, info, arch, cfg, source=str(path), fmt=fmt)
    shown = getattr(ARCHITECTURES[arch][0], "config_from_checkpoint", None)  # widths its tensors show (Mask R-CNN)
    if shown is not None:
        found = {k: v for k, v in shown(converted, cfg).items() if k not in model.overrides}
        cfg = dataclasses.replace(cfg, **found)
    return converted, saved, cfg


def _with_own_weights(
    model: ModelRequest,
    state_dict: dict[str, Tensor],
    saved: dict[str, Any] | None,
    source: str,
    entry: WeightsEntry | None,
    allow_random_head: bool,
) -> nn.Module:
    """The model built around a converted checkpoint of its own architecture: the checkpoint's classifier is kept when
    ``model.num_classes`` fits it (``None``: the checkpoint's), else the head starts fresh (``allow_random_head``)."""
    arch, cfg, num_classes = model.arch, model.cfg, model.num_classes
    model_cls = ARCHITECTURES[arch][0]
    classifier_name = model_cls.classifier_name
    ckpt_classes = _checkpoint_classes(model_cls, state_dict, cfg)
    if num_classes is None:
        num_classes = ckpt_classes if ckpt_classes is not None else cfg.num_classes
    built = build_model(arch, cfg, model.features_only, model.out_indices, num_classes)
    keep_head = num_classes == ckpt_classes
    if not keep_head and any(k.startswith(f"{classifier_name}.") for k in built.state_dict()):
        why = (
            "it holds no classifier"
            if ckpt_classes is None
            else f"its classifier has {ckpt_classes} outputs, the model {num_classes}"
        )
        _random_head(arch, source, [classifier_name], why, allow_random_head)
    _load_weights(built, state_dict, source, keep_head=keep_head, reparameterized=model.reparameterized)
    labelled = num_classes if keep_head and not model.features_only else None
    built.pretrained_cfg = _pretrained_cfg(arch, source, entry, saved, labelled, getattr(built, "label_set", None))
    return built


def _checkpoint_classes(model_cls: type[nn.Module], state_dict: dict[str, Tensor], cfg: Any) -> int | None:
    """The number of classes a converted checkpoint's classifier predicts (the model class says where to read it when
    it has its own ``checkpoint_classes``, as a detector whose class convs are per level); ``None`` without one."""
    counter = getattr(model_cls, "checkpoint_classes", None)
    if counter is not None:
        return counter(state_dict, cfg)
    classifier = f"{model_cls.classifier_name}.weight"
    return state_dict[classifier].shape[0] if classifier in state_dict else None


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
    label_set: str | None = None,
) -> PretrainedCfg:
    """What the loaded weights expect and mean: the checkpoint's own config first, then the entry.

    Args:
        saved: our saved config of the checkpoint, if it has one.
        labelled: the number of classes whose names the checkpoint answers; ``None`` when its classifier was
            replaced or dropped (``features_only``), so that it has no labels.
        label_set: the model's own label set, for the default label names.
    """
    saved = saved or {}
    labels = labels_for(labelled, entry, saved.get("labels"), label_set) if labelled is not None else None
    preprocess = preprocess_from_json(saved.get("preprocess"))  # None: PretrainedCfg takes the entry's
    return PretrainedCfg(arch=arch, source=source, entry=entry, preprocess=preprocess, labels=labels)


# ---------------------------------------------------------------------------------------------- a backbone's checkpoint
def _with_backbone_weights(
    model: ModelRequest,
    state_dict: dict[str, Tensor],
    info: dict[str, Any],
    source: str,
    entry: WeightsEntry | None,
    allow_random_head: bool,
) -> nn.Module:
    """A segmentation model whose backbone is loaded from a classification checkpoint of ``cfg.backbone`` (its
    classifier and 1x1 expansion dropped) and whose head is fresh. Its preprocessing is the backbone weights' pixels,
    resized whole to 512x512; its labels are the defaults for its number of classes."""
    arch, cfg = model.arch, model.cfg
    built = build_model(arch, cfg, False, None, model.num_classes)
    _random_head(arch, source, _head_modules(built), _only_backbone(cfg), allow_random_head)
    backbone = built.get_submodule(getattr(built, "backbone_module", "backbone"))  # Mask R-CNN: backbone.body
    backbone_entry = entry if entry is not None and entry.arch == cfg.backbone else None
    fmt = backbone_entry.format if backbone_entry else None
    converted = convert_checkpoint(state_dict, info, cfg.backbone, backbone.cfg, source=source, fmt=fmt)
    _load_weights(backbone, converted, source, keep_head=False, reparameterized=False)
    if model.reparameterized:
        reparameterize_model(built, inplace=True)
    saved = preprocess_from_json((info.get(CONFIG_METADATA_KEY) or {}).get("preprocess"))
    pixels = saved or (backbone_entry.preprocess if backbone_entry else default_preprocess(cfg.backbone))
    preprocess = segmentation_preprocess(pixels, dense_input_size(type(built)))
    built.pretrained_cfg = PretrainedCfg(arch=arch, source=source, preprocess=preprocess)
    return built


# ---------------------------------------------------------------------------------------------- a head left random
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
    if arch not in ARCHITECTURES or not _takes_backbone(ARCHITECTURES[arch][1]) or pretrained in (False, None, ""):
        return
    if pretrained is True:
        _refuse_unpublished(name)
        return
    raw, info = read_checkpoint(pretrained)
    if not is_segmentation_checkpoint(raw, info):
        cfg = build_config(name)
        _random_head(arch, str(pretrained), _head_modules(build_model(arch, cfg)), _only_backbone(cfg), False)


def _refuse_unpublished(name: str) -> None:
    """Refuse ``pretrained=True`` for a segmentation architecture whose only weights would be its backbone's."""
    backbone = _backbone_if_unpublished(name)
    if backbone != name:
        raise CheckpointError(
            f"{name.split('.', 1)[0]} has no published weights: pretrained=True would load only its backbone's "
            f"({backbone}) and leave its head random{_RANDOM_HEAD_ADVICE}"
        )


def _head_modules(model: nn.Module) -> list[str]:
    """The modules of a dense-prediction model's head (``head.aspp``, ``head.classifier``; a detector's ``extras``,
    ``heads``, ``classifier``), for messages."""
    if isinstance(getattr(model, "head", None), nn.Module):
        return [f"head.{name}" for name, _ in model.head.named_children()]
    return [name for name, _ in model.named_children() if name != "backbone"]  # a detector: extras, heads, classifier


def _only_backbone(cfg: Any) -> str:
    return f"it holds no head of this model (a classification checkpoint?): only the backbone ({cfg.backbone}) loads"


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


__all__ = ["ModelRequest", "check_head_weights", "load_pretrained"]
