"""What a loaded model knows about its weights (:class:`PretrainedCfg`), and our own self-describing checkpoint folder.

:func:`save_pretrained` writes ``model.safetensors`` (our key names) and ``config.json`` in our schema::

    {
      "library": "mobilevit",            # tells this folder from a transformers one (which has "model_type")
      "format_version": 1,
      "arch": "mobilevit_xxs",
      "num_classes": 10,
      "config": {"drop_path_rate": 0.1},  # fields that differ from the registered arch's config
      "reparameterized": false,          # informative: the loader recognises a folded layout by itself
      "features_only": false,
      "labels": ["ant", "bee", ...],     # or null
      "preprocess": {"input_size": [256, 256], "resize_size": 284, ...},  # or null
      "weights": "mobilevit_xxs.cvnets_in1k"  # the entry the model was initialised from, or null
    }

The same JSON is stored in the safetensors metadata (``mobilevit_config``) so the file alone also loads.
``create_model(folder)`` (or ``mobilevit.from_pretrained(folder)``) needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UsageError
from ..models import ARCHITECTURES, build_model, find_arch, unwrap_model
from .entries import DEFAULT_TAGS, SEG_SIZE, Preprocess, WeightsEntry, get_weights, labels_for, segmentation_preprocess
from .load import (
    CONFIG_METADATA_KEY,
    LIBRARY,
    CheckpointError,
    check_checkpoint_path,
    is_folded_checkpoint,
    is_mobilevit_config,
)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a model's weights came from and how to feed it; ``create_model`` sets it as ``model.pretrained_cfg``.

    ``model.pretrained_cfg`` is ``None`` for a model with random weights.

    Attributes:
        arch: architecture name.
        source: the file or folder the weights were read from.
        entry: the registered weights entry (named ``arch.tag``, or the default of a bare name with
            ``pretrained=True``), if any. Holds the published metrics, license and the upstream preprocessing.
        preprocess: the eval transform these weights expect: the one given (the checkpoint's own config), else the
            entry's; ``None`` when unknown (a bare architecture name with a foreign file).
        labels: class names, index-aligned with the classifier; ``None`` when unknown or when the classifier was
            replaced (a new ``num_classes``).
    """

    arch: str
    source: str
    entry: WeightsEntry | None = None
    preprocess: Preprocess | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.preprocess is None and self.entry is not None:
            object.__setattr__(self, "preprocess", self.entry.preprocess)  # frozen: set once, here

    @property
    def name(self) -> str:
        """The weights name ``arch.tag`` when there is an entry, else the architecture name."""
        return self.entry.name if self.entry is not None else self.arch


# ---------------------------------------------------------------------------------------------- JSON of configs
def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any, like: Any) -> Any:
    """``value`` read from JSON, rebuilt with the Python types of ``like`` (the registered config's value)."""
    if isinstance(value, list):
        item_like = like[0] if isinstance(like, tuple | list) and like else None
        return tuple(_from_json(v, item_like) for v in value)
    if isinstance(value, dict) and dataclasses.is_dataclass(like):
        return type(like)(**{k: _from_json(v, getattr(like, k, None)) for k, v in value.items()})
    return value


def config_diff(cfg: Any, base: Any) -> dict[str, Any]:
    """The fields of config ``cfg`` that differ from ``base`` (``num_classes`` excluded), as JSON values."""
    return {
        f.name: _to_json(getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if f.name != "num_classes" and getattr(cfg, f.name) != getattr(base, f.name, object())
    }


def config_overrides(saved: dict[str, Any], base: Any) -> dict[str, Any]:
    """Config fields stored in our ``config.json`` as keyword overrides of the registered config ``base``."""
    fields = {f.name for f in dataclasses.fields(base)}
    overrides = {k: _from_json(v, getattr(base, k, None)) for k, v in (saved.get("config") or {}).items()}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise CheckpointError(f"config.json: unknown config field(s) {unknown} for {saved.get('arch')!r}")
    if saved.get("num_classes") is not None:
        overrides["num_classes"] = int(saved["num_classes"])
    return overrides


def preprocess_to_json(preprocess: Preprocess) -> dict[str, Any]:
    """The JSON form of a :class:`Preprocess` (read back by :func:`preprocess_from_json`)."""
    return _to_json(preprocess)


def preprocess_from_json(data: dict[str, Any] | None) -> Preprocess | None:
    """A :class:`Preprocess` from its JSON form (``None`` stays ``None``)."""
    if data is None:
        return None
    try:
        return Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: invalid preprocess {data}: {e}") from e


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    labels: list[str] | tuple[str, ...] | None = None,
    preprocess: Preprocess | None = None,
    arch: str | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` so that ``create_model(directory)`` rebuilds the model.

    Args:
        model: a model of this package (a DDP or ``torch.compile`` wrapper is unwrapped), train-time or
            re-parameterized, any ``num_classes``.
        directory: the folder to write (created if needed; the two files are overwritten).
        labels: class names, one per output. Default: ``model.pretrained_cfg.labels`` when their number matches.
        preprocess: the eval transform. Default: ``model.pretrained_cfg.preprocess``, else the preprocessing of the
            architecture's default weights.
        arch: architecture name. Default: ``model.pretrained_cfg.arch``, else the registered architecture whose
            config is closest to ``model.cfg`` (every differing field is stored, so the rebuild is exact either way).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    model = unwrap_model(model)
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"save_pretrained needs a model of this package (with a .cfg), got {type(model).__name__}")
    info: PretrainedCfg | None = getattr(model, "pretrained_cfg", None)
    arch = arch or (info.arch if info is not None else None) or find_arch(cfg)
    if arch not in ARCHITECTURES:
        raise UsageError(f"Unknown architecture {arch!r}")
    num_classes = int(getattr(model, "num_classes", cfg.num_classes))
    features_only = bool(getattr(model, "features_only", False))

    if labels is None and info is not None and info.labels is not None and len(info.labels) == num_classes:
        labels = info.labels
    if labels is not None:
        labels = [str(x) for x in labels]
        if not features_only and len(labels) != num_classes:
            raise UsageError(f"{len(labels)} labels for a model with {num_classes} outputs")
    if preprocess is None:
        preprocess = model_io(model).preprocess

    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config: dict[str, Any] = {
        "library": LIBRARY,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": num_classes,
        "config": config_diff(cfg, ARCHITECTURES[arch][1]),
        "reparameterized": _is_folded(model, arch, num_classes, state_dict),
        "features_only": features_only,
        **({"out_indices": list(model.out_indices)} if features_only else {}),
        "labels": labels,
        "preprocess": preprocess_to_json(preprocess) if preprocess is not None else None,
        "weights": info.entry.name if info is not None and info.entry is not None else None,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2)
    save_file(
        state_dict, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "arch": arch, CONFIG_METADATA_KEY: text}
    )
    (directory / CONFIG_NAME).write_text(text + "\n")
    return directory


def _is_folded(model: nn.Module, arch: str, num_classes: int, state_dict: dict[str, Any]) -> bool:
    """Whether ``model`` (of architecture ``arch``, with weights ``state_dict``) is in its re-parameterized form."""
    features_only = bool(getattr(model, "features_only", False))
    out_indices = tuple(model.out_indices) if features_only else None
    fresh = build_model(arch, model.cfg, features_only, out_indices, num_classes)
    return is_folded_checkpoint(fresh, state_dict)


def model_labels(model: nn.Module) -> tuple[str, ...]:
    """The class names of a model of this package, by the rule of :func:`~mobilevit.weights.labels_for`.

    The checkpoint's own names (``model.pretrained_cfg.labels``) when it has them, else its entry's, else ImageNet-1k's
    for a classifier with 1000 outputs and PASCAL VOC's for a segmentation model with 21 (random weights included),
    else ``class_<i>``.
    """
    info: PretrainedCfg | None = getattr(model, "pretrained_cfg", None)
    num_classes = int(getattr(model, "num_classes", 0))
    entry, saved = (info.entry, info.labels) if info is not None else (None, None)
    return labels_for(num_classes, entry, saved, getattr(model, "label_set", None))


def default_preprocess(arch: str) -> Preprocess:
    """The eval transform of architecture ``arch`` when its weights bring none: its default weights' (every
    classifier has some), else, for a segmentation or detection model without published weights, its backbone's
    pixels with the whole image resized to the model's ``default_input_size`` (512x512 for segmentation, 320x320 for
    detection; :func:`~mobilevit.weights.entries.segmentation_preprocess`), with the settings the model class states
    in ``default_pixels`` instead of the backbone's (Mask R-CNN: RGB, bilinear, as ml-cvnets evaluates it)."""
    if arch in DEFAULT_TAGS:
        return get_weights(arch).preprocess
    model_cls, cfg = ARCHITECTURES[arch]
    backbone = getattr(cfg, "backbone", None)
    if backbone is None:
        raise UsageError(f"{arch!r} has no default weights and no backbone to take its preprocessing from")
    preprocess = segmentation_preprocess(default_preprocess(backbone), dense_input_size(model_cls))
    return dataclasses.replace(preprocess, **getattr(model_cls, "default_pixels", {}))


def dense_input_size(model_cls: type[nn.Module]) -> tuple[int, int]:
    """The input size a dense-prediction model class is evaluated at when its weights say nothing: its
    ``default_input_size`` (SSDLite: 320x320), else segmentation's 512x512."""
    return tuple(getattr(model_cls, "default_input_size", SEG_SIZE))


@dataclass(frozen=True)
class ModelIO:
    """What a model expects and what it answers: the one rule every path (predict, serve, export, train) follows.

    Attributes:
        arch: architecture name.
        preprocess: the eval transform: the checkpoint's own (our saved config), else its weights entry's, else the
            architecture's default weights entry's (random weights too), else the ImageNet-style default.
        labels: class names by :func:`~mobilevit.weights.labels_for`; empty for a ``features_only`` model.
        weights: the weights entry's name (``arch.tag``), or ``None``.
        source: the file or folder the weights came from; ``None`` for random weights.
        task: ``"classification"`` (``[B, num_classes]`` logits) or ``"segmentation"`` (``[B, num_classes, h, w]``
            logits at 1/output stride of the input; the model's ``upsample_logits`` resizes them).
    """

    arch: str
    preprocess: Preprocess
    labels: tuple[str, ...]
    weights: str | None = None
    source: str | None = None
    task: str = "classification"


def model_io(model: nn.Module) -> ModelIO:
    """The :class:`ModelIO` of a model of this package (a DDP or ``torch.compile`` wrapper is unwrapped)."""
    model = unwrap_model(model)
    info: PretrainedCfg | None = getattr(model, "pretrained_cfg", None)
    arch = info.arch if info is not None else find_arch(model.cfg)
    entry = info.entry if info is not None else None
    preprocess = info.preprocess if info is not None else None  # the checkpoint's own, else its entry's
    if preprocess is None:
        preprocess = default_preprocess(arch)
    labels = () if getattr(model, "features_only", False) else model_labels(model)
    return ModelIO(
        arch=arch,
        preprocess=preprocess,
        labels=labels,
        weights=entry.name if entry is not None else None,
        source=info.source if info is not None else None,
        task=getattr(model, "task", "classification"),
    )


def read_saved_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """Our ``config.json`` (or the copy in a safetensors file's metadata) at ``path``, or ``None`` if it has none.

    Raises:
        CheckpointError: ``path``, or a file of the folder, exists but is not a regular file (a FIFO would block).
    """
    path = Path(path)
    check_checkpoint_path(path)
    if path.is_dir():
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            return None
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:  # ours or a transformers folder's: either way, the folder is broken
            reason = err.strerror if isinstance(err, OSError) else str(err)
            raise CheckpointError(f"{config_file} is corrupt: not a readable JSON file ({reason})") from None
        return config if isinstance(config, dict) and is_mobilevit_config(config) else None
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                text = (f.metadata() or {}).get(CONFIG_METADATA_KEY)
            return json.loads(text) if text else None
        except (SafetensorError, OSError, ValueError):
            return None
    return None


__all__ = [
    "ModelIO",
    "PretrainedCfg",
    "config_diff",
    "config_overrides",
    "default_preprocess",
    "model_io",
    "model_labels",
    "preprocess_from_json",
    "preprocess_to_json",
    "read_saved_config",
    "save_pretrained",
]
