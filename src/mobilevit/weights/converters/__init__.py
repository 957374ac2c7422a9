"""Pure converters ``state_dict -> state_dict`` from upstream layouts to ours, keyed by (format, config class)."""

from . import from_cvnets, from_timm, from_transformers

CONVERTERS = {
    ("timm", "MobileViTConfig"): from_timm.convert_mobilevit,
    ("transformers", "MobileViTConfig"): from_transformers.convert_mobilevit,
    ("cvnets", "MobileViTConfig"): from_cvnets.convert_mobilevit,
}

__all__ = ["CONVERTERS"]
