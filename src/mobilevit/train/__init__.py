"""Training (issue 6): config and recipes, the loop (single process or torchrun), optimizer/schedule/EMA, checkpoints.

Recipes follow the official configs of ml-cvnets (https://github.com/apple/ml-cvnets), apple/ml-fastvit and
apple/ml-mobileone; see :mod:`mobilevit.train.config`.
"""

from .config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    EMAConfig,
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
from .loop import NonFiniteLossError, TrainResult, build_model, train
from .optim import ModelEMA, WarmupCosineSchedule, build_optimizer, param_groups

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "EMAConfig",
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
    "from_dict",
    "from_yaml",
    "list_recipes",
    "load_recipe",
    "param_groups",
    "to_dict",
    "to_yaml",
    "train",
]
