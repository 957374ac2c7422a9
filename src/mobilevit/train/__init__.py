"""Training: config and recipes, the loop (single process or torchrun), optimizer/schedule/EMA, checkpoints.

Recipes follow the official configs of ml-cvnets (https://github.com/apple/ml-cvnets), apple/ml-fastvit and
the MobileOne paper; see :mod:`mobilevit.train.config`.
"""

from .build import build_model, build_teacher
from .config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    EMAConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    SamplerConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    from_yaml,
    list_recipes,
    load_recipe,
    to_dict,
    to_yaml,
)
from .loop import NonFiniteLossError, TrainResult, train
from .optim import ModelEMA, WarmupCosineSchedule, build_optimizer, layer_ids, param_groups

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "EMAConfig",
    "LoggingConfig",
    "ModelConfig",
    "ModelEMA",
    "NonFiniteLossError",
    "OptimizerConfig",
    "SamplerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "WarmupCosineSchedule",
    "apply_overrides",
    "build_model",
    "build_optimizer",
    "build_teacher",
    "from_dict",
    "from_yaml",
    "layer_ids",
    "list_recipes",
    "load_recipe",
    "param_groups",
    "to_dict",
    "to_yaml",
    "train",
]
