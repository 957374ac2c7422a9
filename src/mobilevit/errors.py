"""The package's own error types: what a user can cause and fix, as opposed to a bug.

The CLI prints these as one line (``mobilevit CMD: error: ...``); anything else is a bug in this package and shows its
traceback. Each type also derives from the built-in exception a Python caller would expect (``ValueError`` for bad
input, ``ImportError`` for a missing optional dependency), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import difflib

# optional dependency (top-level module name) -> the extra that installs it
EXTRAS: dict[str, str] = {
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "coremltools": "export",
    "openvino": "openvino",
    "executorch": "executorch",
    "litert_torch": "litert",
    "ai_edge_litert": "litert",
    "fastapi": "serve",
    "fastapi_offline": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "matplotlib": "bench",
    "cv2": "opencv",
}


class MobileViTError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(MobileViTError, ValueError):
    """A bad argument, input or file, named in the message."""


class NonFiniteOutputError(MobileViTError, RuntimeError):
    """A model produced NaN or infinite outputs (broken weights, most likely): no answer is made from them; the
    message names the model."""


class MissingDependencyError(MobileViTError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    @classmethod
    def for_module(cls, module: str, needed_for: str = "") -> MissingDependencyError:
        top = module.split(".", 1)[0]
        extra = EXTRAS.get(top)
        how = f"pip install 'mobilevit[{extra}]'" if extra else f"pip install {top}"
        what = f" (needed for {needed_for})" if needed_for else ""
        return cls(f"{top} is not installed{what}: {how}")


def missing_optional_dependency(err: ImportError) -> MissingDependencyError | None:
    """The one-line error for a ``ModuleNotFoundError`` of an optional dependency, else ``None`` (a bug)."""
    name = getattr(err, "name", None)
    if isinstance(err, ModuleNotFoundError) and name and name.split(".", 1)[0] in EXTRAS:
        return MissingDependencyError.for_module(name)
    return None


def suggest(word: str, choices: list[str]) -> str:
    """`` Did you mean 'a', 'b'?`` with the closest of ``choices`` to a mistyped ``word``, or ``""``."""
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
