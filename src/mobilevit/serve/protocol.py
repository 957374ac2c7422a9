"""The Hugging Face Inference API's request and answer formats for image classification and image segmentation.

A request body is either the raw encoded image (any or no ``Content-Type``), or JSON ``{"inputs": "<base64 image>",
"parameters": {...}}`` (what ``huggingface_hub.InferenceClient`` sends when it has parameters). The parameters and
the answer depend on the model's task:

- image classification: ``{"top_k": N, "function_to_apply": "softmax" | "sigmoid" | "none"}``; the answer is a
  JSON array of ``{"label": str, "score": float}``, best first;
- image segmentation (semantic): ``{"subtask": "semantic", "threshold": t}`` (``mask_threshold`` and
  ``overlap_mask_area_threshold``, which the Inference API defines for instance and panoptic segmentation, are
  accepted and have no effect); the answer is a JSON array with one ``{"label": str, "score": float, "mask": str}``
  per class present in the image, in class order, as transformers' ``image-segmentation`` pipeline answers:
  ``mask`` is a base64 PNG, 8-bit grayscale at the image's size, 255 where the class won and 0 elsewhere (what
  ``InferenceClient.image_segmentation`` decodes into a PIL image). ``score`` is the class's mean probability over
  its pixels (the pipeline sends ``null``); ``threshold`` leaves out the classes scoring below it.

Every way a request can be wrong is a :class:`RequestError` carrying its HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import reprlib
from dataclasses import dataclass
from typing import Any

from ..predict import ACTIVATIONS, Activation, Prediction
from ..segment import Segmentation

DEFAULT_TOP_K = 5  # as the Inference API
# Multipart form uploads are refused (415). curl --data-binary labels raw bytes application/x-www-form-urlencoded,
# so that type is read as raw bytes like any other.
_FORM_TYPES = ("multipart/form-data",)
_TOP_LEVEL_KEYS = {"inputs", "parameters", "options"}  # "options" (wait_for_model, use_cache) is accepted, ignored
_PARAMETERS = {"top_k", "function_to_apply"}
_SEGMENTATION_PARAMETERS = {"subtask", "threshold", "mask_threshold", "overlap_mask_area_threshold"}
ECHO_CHARS = 64  # an error message quotes at most this much of what the client sent
_echo = reprlib.Repr()  # repr() bounded in length and depth: a value from the body can be 16 MB or deeply nested
_echo.maxstring = _echo.maxother = _echo.maxlong = ECHO_CHARS
_echo.maxlevel = 3


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``headers`` extra response headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ClassifyRequest:
    """A parsed request: the still-encoded image and how to score it."""

    image: bytes
    top_k: int = DEFAULT_TOP_K
    function: Activation = "softmax"


@dataclass(frozen=True)
class SegmentRequest:
    """A parsed segmentation request: the still-encoded image and the score below which classes are left out."""

    image: bytes
    threshold: float | None = None


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (then ``"..."``), for echoing client input in an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def echo(value: Any) -> str:
    """A short repr of a value taken from the request, for an error message."""
    return _echo.repr(value)


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


def _check_names(params: Any, supported: set[str], task: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(400, f"parameters must be a JSON object, got {type(params).__name__}")
    unknown = sorted(set(params) - supported)
    if unknown:
        raise RequestError(400, f"unknown parameters {echo(unknown)} for {task}; supported: {sorted(supported)}")
    return params


def _parameters(params: Any) -> tuple[int, Activation]:
    params = _check_names(params, _PARAMETERS, "image classification")
    top_k = params.get("top_k")
    if top_k is None:
        top_k = DEFAULT_TOP_K
    elif isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise RequestError(400, f"top_k must be a positive integer, got {echo(top_k)}")
    function = params.get("function_to_apply")
    if function is None:
        function = "softmax"
    elif function not in ACTIVATIONS:
        raise RequestError(400, f"function_to_apply must be one of {', '.join(ACTIVATIONS)}; got {echo(function)}")
    return top_k, function


def _probability(params: dict[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise RequestError(400, f"{name} must be a number between 0 and 1, got {echo(value)}")
    return float(value)


def _segmentation_parameters(params: Any) -> float | None:
    params = _check_names(params, _SEGMENTATION_PARAMETERS, "image segmentation")
    subtask = params.get("subtask")
    if subtask not in (None, "semantic"):
        raise RequestError(
            400, f"this model does semantic segmentation only: subtask must be 'semantic', got {echo(subtask)}"
        )
    for name in ("mask_threshold", "overlap_mask_area_threshold"):  # checked, without effect on semantic masks
        _probability(params, name)
    return _probability(params, "threshold")


def parse_request(
    body: bytes, content_type: str | None, task: str = "classification"
) -> ClassifyRequest | SegmentRequest:
    """Parse a request body for a model of ``task`` (``"classification"`` or ``"segmentation"``); raise
    :class:`RequestError` (400 or 415) when it is not a valid request."""
    media = _media_type(content_type)
    if media in _FORM_TYPES:
        raise RequestError(
            415, f"Content-Type {media} is not supported: send the raw image bytes, or JSON with base64 'inputs'"
        )
    if not body:
        raise RequestError(400, "empty request body: send the image bytes, or JSON with base64 'inputs'")
    if not _is_json(media, body):
        return SegmentRequest(body) if task == "segmentation" else ClassifyRequest(body)
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
    if task == "segmentation":
        threshold = _segmentation_parameters(payload.get("parameters"))
    else:
        top_k, function = _parameters(payload.get("parameters"))
    image = _b64decode(inputs)
    if not image:
        raise RequestError(400, "'inputs' decodes to 0 bytes")
    return SegmentRequest(image, threshold) if task == "segmentation" else ClassifyRequest(image, top_k, function)


def encode_predictions(predictions: list[Prediction]) -> list[dict[str, Any]]:
    """The Inference API answer: ``[{"label", "score"}]``, best first."""
    return [{"label": p.label, "score": p.score} for p in predictions]


def encode_segments(segmentation: Segmentation, threshold: float | None = None) -> list[dict[str, Any]]:
    """The Inference API answer for image segmentation: one ``{"label", "score", "mask"}`` per class present, in
    class order, ``mask`` a base64 PNG (8-bit grayscale, 255 = the class); classes scoring below ``threshold`` left
    out (see the module docstring)."""
    answer = []
    scores = segmentation.scores
    for row in sorted(segmentation.classes(), key=lambda r: r["index"]):
        score = float(scores[row["index"]]) if scores is not None else None
        if threshold is not None and score is not None and score < threshold:
            continue
        buffer = io.BytesIO()
        segmentation.binary_mask(row["index"]).save(buffer, format="PNG")
        mask = base64.b64encode(buffer.getvalue()).decode("ascii")
        answer.append(
            {"label": row["label"], "score": None if score is None or math.isnan(score) else score, "mask": mask}
        )
    return answer
