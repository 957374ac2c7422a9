"""Pure converters ``state_dict -> state_dict`` from upstream layouts to ours, keyed by (format, config class)."""

from . import from_apple, from_cvnets, from_timm, from_timm_reparam, from_transformers

CONVERTERS = {
    ("timm", "MobileViTConfig"): from_timm.convert_mobilevit,
    ("transformers", "MobileViTConfig"): from_transformers.convert_mobilevit,
    ("cvnets", "MobileViTConfig"): from_cvnets.convert_mobilevit,
    ("timm", "FastViTConfig"): from_timm_reparam.convert_fastvit,
    ("timm", "MobileOneConfig"): from_timm_reparam.convert_mobileone,
    ("ml-fastvit", "FastViTConfig"): from_apple.convert_fastvit,
    ("ml-mobileone", "MobileOneConfig"): from_apple.convert_mobileone,
    ("transformers", "DeepLabV3Config"): from_transformers.convert_deeplabv3,
    ("cvnets", "DeepLabV3Config"): from_cvnets.convert_deeplabv3,
    ("cvnets", "SSDLiteConfig"): from_cvnets.convert_ssdlite,
    ("cvnets", "MaskRCNNConfig"): from_cvnets.convert_maskrcnn,
}

__all__ = ["CONVERTERS"]
