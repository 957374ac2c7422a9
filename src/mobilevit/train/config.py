"""Training configuration: typed, frozen dataclasses that round-trip to YAML, dotted overrides, shipped recipes.

The recipes follow the official training configs of ml-cvnets (https://github.com/apple/ml-cvnets,
``config/classification/imagenet/``: MobileViT v1 arXiv 2110.02178, v2 arXiv 2206.02680, v3 arXiv 2209.15159) and
apple/ml-fastvit (arXiv 2303.14189) and the MobileOne paper (arXiv 2206.04040); each recipe's header names its source
and the values it chooses where the source gives none. A recipe may extend another file of the recipes folder with a
``base: FILE.yaml`` key: the base is merged in deeply and the recipe's own values win. Files named ``_*.yaml`` are
family bases, not recipes.

    cfg = load_recipe("mobilevit_xxs")
    cfg = apply_overrides(cfg, ["optimizer.lr=0.002", "epochs=5"])
    text = to_yaml(cfg); assert from_yaml(text) == cfg

Every field is type-checked when read from YAML or an override: an unknown key raises with the closest valid names,
a wrong type raises naming the dotted field.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ..errors import MobileViTError, suggest

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DetectionConfig",
    "DistillConfig",
    "EMAConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SamplerConfig",
    "ScheduleConfig",
    "SegmentationConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "from_yaml",
    "list_recipes",
    "load_recipe",
    "to_dict",
    "to_yaml",
]


class ConfigError(MobileViTError, ValueError):
    """A config that does not match the schema: unknown key, wrong type, bad override."""


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train; ``None`` rates keep the architecture's defaults."""

    name: str = "mobilevit_xxs"  # any mobilevit.list_models() name
    num_classes: int = 1000
    pretrained: str | None = None  # weights name ("arch.tag") or checkpoint path to start from (fine-tuning)
    drop_rate: float | None = None  # dropout before the classifier (cvnets "classifier_dropout")
    proj_drop_rate: float | None = None  # MobileViT transformer dropout (cvnets "dropout")
    drop_path_rate: float | None = None  # stochastic depth (FastViT recipes)
    freeze_backbone: bool = False  # fine-tuning: train the new head only
    # segmentation: draw a new classifier's weights from N(0, std) with zero bias (mmsegmentation's 0.01) instead of
    # the architecture's ml-cvnets init, whose Kaiming fan-out scale gives logits of std ~9 with 3 classes;
    # None: keep the architecture's init
    classifier_init_std: float | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how validation reads them."""

    # classification: an ImageFolder root or CSV list; segmentation: a PASCAL VOC folder or an images/ + masks/ folder
    # (mobilevit.data.segmentation.list_segmentation_set), whose split segmentation.train_split / val_split is read;
    # detection: a COCO-format set (an image folder and instances.json, mobilevit.data.coco.coco_set)
    train: str | None = None
    val: str | None = None
    num_workers: int = 4
    # the validation transform; None: the model's weights entry's (mobilevit.weights.model_io)
    val_resize: int | None = None  # resize the short side (MobileViT eval: 288 -> 256); not for segmentation
    val_crop: int | None = None  # segmentation, detection: the square the whole image is resized to (VOC 512, COCO 320)
    val_interpolation: Literal["bilinear", "bicubic"] | None = None


@dataclass(frozen=True)
class SamplerConfig:
    """The batch sampler (mobilevit.data.samplers): cvnets' variable-batch, fixed-batch multi-scale, or one size."""

    kind: Literal["variable_batch", "multi_scale", "fixed"] = "variable_batch"
    base_size: int = 256  # the base crop; the fixed sampler's only size
    batch_size: int = 128  # per process, at base_size (official runs: 128 per GPU x 8 GPUs)
    min_size: int = 160
    max_size: int = 320
    num_scales: int = 5
    divisor: int = 32  # every size a multiple of this


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (MobileViT, FastViT) or SGD with momentum (MobileOne); ``lr`` is the peak learning rate of the schedule."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    eps: float = 1e-8  # AdamW
    momentum: float = 0.9  # SGD
    nesterov: bool = False  # SGD
    weight_decay: float = 0.01
    no_decay_norm_bias: bool = True  # no weight decay on normalization parameters and biases
    # fine-tuning: the head trains at lr, the layer before it (final conv, else the last stage) at lr * layer_decay,
    # each earlier stage one more factor, the stem the smallest (BEiT / timm "layer_decay"); None: one lr for all
    layer_decay: float | None = None
    # a segmentation or detection model: its backbone trains at lr * backbone_lr_scale (the new head at lr); None: 1
    backbone_lr_scale: float | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    """Per-iteration linear warmup from ``warmup_init_lr`` to the optimizer's ``lr``, then cosine (or poly) decay to
    ``min_lr``."""

    name: Literal["cosine", "poly"] = "cosine"
    power: float = 0.9  # poly: lr = min_lr + (peak - min_lr) * (1 - progress) ** power (DeepLab's 0.9)
    warmup_iters: int = 0  # cvnets counts warmup in iterations ...
    warmup_epochs: float = 0.0  # ... FastViT in epochs; the trainer uses whichever is non-zero (both: the longer)
    warmup_init_lr: float = 1e-6
    min_lr: float = 2e-4
    # MobileOne anneals weight decay with the same cosine (1e-4 -> 1e-5); None keeps optimizer.weight_decay constant
    min_weight_decay: float | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation (torchvision v2) and label smoothing."""

    rrc_scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range
    rrc_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    hflip: float = 0.5
    randaugment: bool = False
    randaugment_num_ops: int = 2
    randaugment_magnitude: int = 9  # level on timm's 0-10 scale ("rand-m9"); torchvision bin = 3 * level of 31
    randaugment_magnitude_std: float = 0.0  # timm's "mstd": std of a per-op random magnitude
    random_erase: float = 0.0  # probability
    mixup_alpha: float = 0.0  # 0 disables
    cutmix_alpha: float = 0.0  # 0 disables
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class SegmentationConfig:
    """Semantic segmentation (a model whose ``task`` is ``"segmentation"``, e.g. ``deeplabv3_*``).

    Each training image and its mask are resized together so that the shorter side is ``s`` times the crop size
    (``sampler.base_size``), ``s`` uniform in ``scale_range`` (torchvision's DeepLabV3 reference: 0.5-2.0 of its
    520 base before a 480 crop), padded where smaller than the crop (image 0, mask ``ignore_index``), randomly
    cropped and flipped (``augment.hflip``); the image is resampled with ``augment.interpolation``, the mask with
    nearest neighbour. The loss is cross-entropy over the pixels whose mask is not ``ignore_index``, on the logits
    resized to the crop (``augment.label_smoothing``); validation scores mIoU at each mask's own size.
    """

    scale_range: tuple[float, float] = (0.5, 2.0)
    ignore_index: int = 255  # PASCAL VOC's boundary / void label
    train_split: str = "train"  # the split read from data.train (VOC: ImageSets/Segmentation/<split>.txt)
    val_split: str = "val"  # the split read from data.val


@dataclass(frozen=True)
class DetectionConfig:
    """Object detection (a model whose ``task`` is ``"detection"``, e.g. ``ssdlite_*``), as ml-cvnets' SSD recipes.

    Each training image and its boxes go through SSD's random IoU-constrained crop (``iou_crop``), a photometric
    distortion (each of its ops with probability ``photometric``), a horizontal flip (``augment.hflip``) and a resize
    to ``sampler.base_size`` (:mod:`mobilevit.data.detection_transforms`). The loss matches anchors to boxes at
    ``iou_threshold`` and keeps ``neg_pos_ratio`` hard negatives per positive
    (:class:`~mobilevit.train.losses.MultiBoxLoss`); validation scores COCO mAP with pycocotools. A Mask R-CNN
    (``maskrcnn_*``) reads ``iou_crop`` and ``photometric`` too (its recipes: both off), not the matcher settings.
    """

    iou_threshold: float = 0.5  # cvnets' recipes' matcher.ssd.iou_threshold
    neg_pos_ratio: int = 3
    iou_crop: bool = True
    photometric: float = 0.5  # torchvision's RandomPhotometricDistort p


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the weights: ``ema = (1 - momentum) * ema + momentum * model``.

    cvnets' momentum 0.0005 is timm's / FastViT's decay 0.9995. With ``warmup`` the n-th update (from 0) uses
    ``max(momentum, 9 / (10 + n))`` (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``): the average
    forgets the starting weights within a short run (at 0.0005 it still holds 86% of them after 300 steps), and from
    about 18 000 steps on it is the plain average.
    """

    enabled: bool = True
    momentum: float = 0.0005
    warmup: bool = False


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a frozen teacher (the FastViT recipe: hard, RegNetY-160, alpha 0.5, tau 1).

    ``teacher`` is one of: a weights name ``arch.tag`` (or an architecture name: its default weights); a folder or
    ``model.safetensors`` written by ``mobilevit.save_pretrained`` (e.g. ``runs/x/final``); a checkpoint file of
    another format together with ``teacher_arch``; or ``timm:<name>`` for a timm model with its pretrained weights
    (needs timm installed; FastViT's teacher is ``timm:regnety_160``). It must have ``model.num_classes`` outputs.
    """

    teacher: str | None = None  # None disables distillation
    teacher_arch: str | None = None  # architecture of a teacher checkpoint file that does not record it
    kind: Literal["hard", "soft"] = "hard"
    alpha: float = 0.5  # weight of the distillation loss
    tau: float = 1.0  # temperature (soft)


@dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go besides ``metrics.jsonl``: ``metrics.csv`` (one row per epoch) and TensorBoard."""

    csv: bool = True
    tensorboard: bool = False  # needs the tensorboard package; skipped with one log line when it is missing


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``mobilevit train`` reads it from a recipe plus overrides."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    epochs: int = 300
    max_iters: int | None = None  # stop early after this many optimizer steps
    clip_grad: float | None = None  # max gradient norm; None: no clipping
    accumulation_steps: int = 1
    amp: bool = False
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    channels_last: bool = False
    checkpoint_every: int = 1000  # optimizer steps between checkpoints (and one at each epoch end)
    log_every: int = 50
    seed: int = 0
    output_dir: str = "runs/train"


C = TypeVar("C")

# PyYAML follows YAML 1.1, which reads "2e-4" (no dot) as a string; accept such numbers for float fields.
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and lightly coerced to) type ``tp``; raises ConfigError naming ``where``."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_mapping(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        return _convert_tuple(value, typing.get_args(tp), where)
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    raise TypeError(f"{where}: unsupported field type {tp!r}")  # a schema bug, not a user error


def _convert_union(value: Any, tp: Any, where: str) -> Any:
    """``value`` as the first member of union ``tp`` that takes it (``None`` for an optional field)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _convert_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    """``value`` as a tuple of the item types ``args`` (``(T, ...)``: any number of ``T``)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
    return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def _to_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _to_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_SCALARS: dict[type, Callable[[Any, str], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _from_mapping(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = str(unknown[0])
        full = f"{where}.{key}" if where else key
        raise ConfigError(f"Unknown config key {full!r}.{suggest(key, names)} Valid keys: {', '.join(names)}.")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any], cls: type[C] = TrainConfig) -> C:  # type: ignore[assignment]
    """A config from a (possibly partial) nested mapping; missing keys take their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}")
    return _from_mapping(cls, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The nested mapping of ``cfg`` with tuples as lists (plain YAML types)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Any, path: str | Path | None = None) -> str:
    """YAML text of ``cfg`` in field order (also written to ``path`` when given)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def from_yaml(source: str | Path, cls: type[C] = TrainConfig) -> C:  # type: ignore[assignment]
    """A config from YAML text or a ``.yaml``/``.yml`` file path; type-checked, unknown keys raise."""
    if isinstance(source, Path) or (
        isinstance(source, str) and source.endswith((".yaml", ".yml")) and "\n" not in source
    ):
        where = str(source)
        source = Path(source).read_text()
    else:
        where = "the YAML config"
    return from_dict(_read_mapping(source, where), cls)


def _read_mapping(text: str, where: str) -> dict[str, Any]:
    """The mapping of YAML ``text`` (empty text: ``{}``); ``where`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    return {} if data is None else data


def _parse_value(text: str, tp: Any, where: str) -> Any:
    """An override value: strings stay raw for str fields, others go through YAML then the type check."""
    if tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp))):
        return _convert(text, tp, where)
    if text.strip().lower() in ("none", "null", "~"):
        return _convert(None, tp, where)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot parse {text!r}: {err}") from None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if (
        isinstance(value, str)
        and "," in value
        and (origin is tuple or any(typing.get_origin(a) is tuple for a in args))
    ):
        value = [yaml.safe_load(v) for v in value.split(",")]  # "0.9,0.95" as well as "[0.9, 0.95]"
    return _convert(value, tp, where)


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """``cfg`` with dotted ``key=value`` overrides applied, e.g. ``["optimizer.lr=0.002", "epochs=5"]``.

    Values are parsed for the field's type (``none`` clears an optional field; tuples as ``[a, b]`` or ``a,b``).
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optimizer.lr=0.002)")
        cfg = _override(cfg, key.strip().split("."), text.strip(), "")
    return cfg


def _override(cfg: Any, path: list[str], text: str, where: str) -> Any:
    name, rest = path[0], path[1:]
    names = [f.name for f in dataclasses.fields(cfg)]
    full = f"{where}.{name}" if where else name
    if name not in names:
        raise ConfigError(f"Unknown config key {full!r}.{suggest(name, names)} Valid keys: {', '.join(names)}.")
    current = getattr(cfg, name)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{full} is a value, not a section: cannot set {full}.{'.'.join(rest)}")
        return dataclasses.replace(cfg, **{name: _override(current, rest, text, full)})
    tp = _hints(type(cfg))[name]
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{full} is a section; set one of its fields, e.g. {full}.{dataclasses.fields(tp)[0].name}")
    return dataclasses.replace(cfg, **{name: _parse_value(text, tp, full)})


_RECIPES = "recipes"
BASE_KEY = "base"  # a recipe's key naming the file of the recipes folder it extends


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``src/mobilevit/train/recipes/*.yaml`` except the ``_*.yaml`` bases), sorted."""
    folder = resources.files(__package__).joinpath(_RECIPES)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml") and p.name[0] != "_")


def load_recipe(name: str) -> TrainConfig:
    """The shipped recipe ``name`` (see :func:`list_recipes`) as a :class:`TrainConfig`, its bases merged in."""
    names = list_recipes()
    if name not in names:
        raise ConfigError(f"Unknown recipe {name!r}.{suggest(name, names)} Available: {', '.join(names)}.")
    return from_dict(_recipe_mapping(f"{name}.yaml"))


def _recipe_mapping(file: str, extended_by: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping of recipe file ``file`` over the mapping of its ``base`` (recursively); ``extended_by``: the files
    that extend it, to refuse a cycle."""
    if file in extended_by:
        raise ConfigError(f"recipe bases form a cycle: {' -> '.join((*extended_by, file))}")
    resource = resources.files(__package__).joinpath(_RECIPES, file)
    if not resource.is_file():
        raise ConfigError(f"{extended_by[-1]}: base {file!r} is not a file of the recipes folder")
    data = _read_mapping(resource.read_text(), file)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{file}: {BASE_KEY} must be a file name such as _mobilevit.yaml, got {base!r}")
    return _merge(_recipe_mapping(base, (*extended_by, file)), data)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: sections merge key by key, any other value of ``override`` replaces."""
    merged = dict(base)
    for key, value in override.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_sections else value
    return merged
