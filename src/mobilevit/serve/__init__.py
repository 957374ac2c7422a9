"""HTTP inference server compatible with the Hugging Face Inference API (image classification).

``mobilevit serve --model NAME`` runs :func:`run`; :func:`create_app` gives the ASGI app for tests or another ASGI
server. Needs the ``serve`` extra: ``pip install mobilevit[serve]``.
"""

from .app import create_app
from .config import ModelSpec, ServeConfig
from .server import run

__all__ = ["ModelSpec", "ServeConfig", "create_app", "run"]
