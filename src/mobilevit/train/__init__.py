"""Training (issue 6): config and recipes now; the loop, optimizer/schedule/EMA and distributed helpers follow.

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

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "EMAConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SamplerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "from_yaml",
    "list_recipes",
    "load_recipe",
    "to_dict",
    "to_yaml",
]
