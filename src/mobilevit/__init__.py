"""mobilevit: Apple's efficient hybrid CNN-Transformer image models in one package."""

from .registry import create_model, from_pretrained, get_config, list_models
from .reparam import reparameterize_model
from .weights import save_pretrained

__all__ = ["create_model", "from_pretrained", "get_config", "list_models", "reparameterize_model", "save_pretrained"]
__version__ = "0.1.0"
