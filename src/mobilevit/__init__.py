"""mobilevit: Apple's efficient hybrid CNN-Transformer image models in one package."""

from .registry import create_model, get_config, list_models
from .reparam import reparameterize_model

__all__ = ["create_model", "get_config", "list_models", "reparameterize_model"]
__version__ = "0.1.0"
