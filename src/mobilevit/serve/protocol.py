"""The Hugging Face Inference API's request format, for the task of the model a request is for.

A request body is either the raw encoded image (any or no ``Content-Type``), or JSON ``{"inputs": "<base64 image>",
"parameters": {...}}`` (what ``huggingface_hub.InferenceClient`` sends when it has parameters). The parameters, and
the answer, are the model's task's (:meth:`mobilevit.tasks.Task.read_parameters`, :meth:`~mobilevit.tasks.Task.encode`):

- image classification: ``{"top_k": N, "function_to_apply": "softmax" | "sigmoid" | "none"}``; the answer is a
  JSON array of ``{"label": str, "score": float}``, best first (:mod:`mobilevit.tasks.classification`);
- image segmentation (semantic): ``{"subtask": "semantic", "threshold": t}``; the answer is a JSON array with one
  ``{"label": str, "score": float, "mask": str}`` per class present in the image, in class order, ``mask`` a base64
  PNG (:mod:`mobilevit.tasks.segmentation`).

Every way a request can be wrong is a :class:`RequestError` carrying its HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..tasks import Task
from ..tasks.base import ECHO_CHARS, echo

# Multipart form uploads are refused (415). curl --data-binary labels raw bytes application/x-www-form-urlencoded,
# so that type is read as raw bytes like any other.
_FORM_TYPES = ("multipart/form-data",)
_TOP_LEVEL_KEYS = {"inputs", "parameters", "options"}  # "options" (wait_for_model, use_cache) is accepted, ignored


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``headers`` extra response headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ParsedRequest:
    """A parsed request: the still-encoded image and the options of the task's answer (its
    :meth:`~mobilevit.tasks.Task.read_parameters`)."""

    image: bytes
    options: dict[str, Any] = field(default_factory=dict)


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (then ``"..."``), for echoing client input in an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json(media: str, body: bytes) -> bool:
    if media == "application/json" or media.endswith("+json"):
        return True
    # No image format starts with "{": a JSON body sent without (or with a generic) Content-Type is still JSON.
    return not media.startswith("image/") and body.lstrip()[:1] == b"{"


def _b64decode(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError(400, "inputs: a data URL must be base64-encoded (data:<type>;base64,<data>)")
    text = "".join(text.split())  # line breaks in wrapped base64
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"inputs is not valid base64 ({err})") from None


def _parameters(params: Any, task: Task) -> dict[str, Any]:
    """The options of ``task``'s answer that the request's ``parameters`` give (its defaults when there are none)."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(400, f"parameters must be a JSON object, got {type(params).__name__}")
    unknown = sorted(set(params) - task.parameters)
    if unknown:
        raise RequestError(
            400, f"unknown parameters {echo(unknown)} for {task.title}; supported: {sorted(task.parameters)}"
        )
    try:
        return task.read_parameters(params)
    except UsageError as err:
        raise RequestError(400, str(err)) from None


def parse_request(body: bytes, content_type: str | None, task: Task) -> ParsedRequest:
    """Parse a request body for a model of ``task``; raise :class:`RequestError` (400 or 415) when it is not a valid
    request."""
    media = _media_type(content_type)
    if media in _FORM_TYPES:
        raise RequestError(
            415, f"Content-Type {media} is not supported: send the raw image bytes, or JSON with base64 'inputs'"
        )
    if not body:
        raise RequestError(400, "empty request body: send the image bytes, or JSON with base64 'inputs'")
    if not _is_json(media, body):
        return ParsedRequest(body, _parameters(None, task))
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"invalid JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "invalid JSON: nested too deeply") from None
    except ValueError as err:  # not UTF-8, or an integer of more than 4300 digits (sys.get_int_max_str_digits)
        reason = "not UTF-8" if isinstance(err, UnicodeDecodeError) else "a number is too long"
        raise RequestError(400, f"invalid JSON: {reason}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"JSON body must be an object with 'inputs', got {type(payload).__name__}")
    unknown = sorted(set(payload) - _TOP_LEVEL_KEYS)
    if unknown:
        raise RequestError(400, f"unknown JSON keys {echo(unknown)}; expected 'inputs' and optional 'parameters'")
    inputs = payload.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise RequestError(400, "'inputs' must be a non-empty base64 string of the image")
    options = _parameters(payload.get("parameters"), task)
    image = _b64decode(inputs)
    if not image:
        raise RequestError(400, "'inputs' decodes to 0 bytes")
    return ParsedRequest(image, options)
