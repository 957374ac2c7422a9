"""Server configuration: every knob of ``mobilevit serve`` in one frozen dataclass, validated before anything loads.

Batching, queueing, limits and timeouts are server configuration (as in LitServe), so a typo or an impossible value
fails at start-up with a message naming the option, not at the first request.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..runtime import BACKENDS, is_exported_file, resolve_backend

TOKEN_ENV = "MOBILEVIT_TOKEN"  # the environment variable that holds the bearer token when --token is not given
DAY = 86_400.0  # the longest timeout: beyond it a timeout is a mistake (or inf), not a wish


def resolve_token(given: str | None) -> str | None:
    """The bearer token: ``given`` (``--token``) when set, else ``$MOBILEVIT_TOKEN``, else ``None`` (no token).

    An empty value is returned as it is (and refused by :meth:`ServeConfig.validate`), not taken for "no token".
    """
    return given if given is not None else os.environ.get(TOKEN_ENV)


@dataclass(frozen=True)
class ModelSpec:
    """One served model.

    Args:
        name: architecture or ``arch.tag`` (the weights entry supplies preprocessing and labels); also the route
            name, ``POST /models/{name}``. Any name for an exported file or a ``save_pretrained`` folder (its metadata
            or ``config.json`` supplies them).
        pretrained: ``True`` for the weights entry's file, a local checkpoint path, a folder written by
            :func:`mobilevit.save_pretrained`, an exported ``.onnx``, ``.pte`` or ``.tflite`` file (a runtime
            backend), or ``False`` for random weights (protocol tests only).
        labels: class names, one per output, replacing the model's own (a fine-tuned checkpoint without names).
        allow_random_head: serve weights that leave the model's head random (a classification checkpoint given to a
            segmentation model); refused by default, as its answers would mean nothing.
    """

    name: str
    pretrained: bool | str = True
    labels: tuple[str, ...] | None = None
    allow_random_head: bool = False

    @property
    def is_exported(self) -> bool:
        """Whether the model is an exported file (``.onnx``, ``.pte``, ``.tflite``), served by a runtime backend."""
        return isinstance(self.pretrained, str) and is_exported_file(self.pretrained)

    @property
    def saved_folder(self) -> str | None:
        """The ``save_pretrained`` folder (or its ``model.safetensors``) this model is built from, when its name is not
        a registered model (the folder's ``config.json`` names the architecture); else ``None``."""
        if not isinstance(self.pretrained, str) or self.is_exported or _is_registered(self.name):
            return None
        from ..weights.pretrained import read_saved_config

        return self.pretrained if read_saved_config(self.pretrained) is not None else None

    @classmethod
    def parse(cls, text: str, pretrained: bool | str = True) -> ModelSpec:
        """``NAME``, ``NAME=CHECKPOINT`` (the checkpoint path wins over ``pretrained``), an exported ``FILE.onnx``,
        ``.pte`` or ``.tflite`` (named after the file's stem), or a folder written by :func:`mobilevit.save_pretrained`
        (named after the folder; it holds the weights, so it wins over ``pretrained`` too)."""
        text = text.strip() if "=" not in text else text
        if "=" not in text and is_exported_file(text):
            return cls(Path(text).stem, text)
        if "=" not in text and Path(text).is_dir() and not _is_registered(text):
            return cls(Path(text).resolve().name, text)
        name, sep, path = text.partition("=")
        name = name.strip()
        if not name:
            raise UsageError(f"--model {text!r}: expected NAME or NAME=CHECKPOINT")
        if sep and not path:
            raise UsageError(f"--model {text!r}: no checkpoint after '='")
        return cls(name, path if sep else pretrained)

    def validate(self) -> None:
        """Check the name against the registry, that a local checkpoint exists and is made of regular files (a FIFO
        or a device would block the loader after the server started listening), and that a segmentation model's
        weights are not only its backbone's (:func:`~mobilevit.registry.check_head_weights`, which reads them)."""
        from ..registry import check_head_weights, get_config
        from ..weights.entries import get_weights
        from ..weights.load import check_checkpoint_path, require_regular_file

        if isinstance(self.pretrained, str) and not Path(self.pretrained).exists():
            raise UsageError(
                f"{self.name}: {'exported file' if self.is_exported else 'checkpoint'} {self.pretrained!r} does not "
                "exist"
            )
        if isinstance(self.pretrained, str):
            if self.is_exported:
                require_regular_file(self.pretrained, "Exported model file", UsageError)
            else:
                check_checkpoint_path(self.pretrained)
        if self.is_exported or self.saved_folder is not None:
            return  # any route name; the file's metadata (or the folder's config.json) says what it is
        if isinstance(self.pretrained, str) and Path(self.pretrained).is_dir() and not _is_registered(self.name):
            raise UsageError(
                f"{self.name}: {self.pretrained!r} is not a folder written by mobilevit.save_pretrained; for another "
                "checkpoint, name its architecture: --model ARCH=CHECKPOINT"
            )
        get_config(self.name)  # ValueError with suggestions for an unknown architecture
        if "." in self.name:
            try:
                get_weights(self.name)
            except KeyError as err:
                raise UsageError(err.args[0]) from None
        if not self.allow_random_head:
            check_head_weights(self.name, self.pretrained)  # a segmentation model given its backbone's weights


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs; ``validate()`` runs in ``__post_init__``.

    Args:
        models: the served models; ``POST /`` uses the first.
        host: interface to bind; loopback by default, so nothing is exposed unless asked for.
        port: TCP port (0: any free port).
        token: bearer token required on the prediction routes (``None``: no authentication; an empty or blank token
            is refused, as an unset ``$VAR`` in ``--token "$VAR"`` gives one).
        backend: inference runtime: ``"eager"`` (PyTorch, the folded model), or ``"onnxruntime"`` or ``"openvino"``
            (OpenVINO's CPU plugin, fp32) with every model an exported ``.onnx`` file, ``"executorch"`` with ``.pte``
            files, ``"litert"`` with ``.tflite`` files (see :func:`infer_backend`).
        max_batch_size: requests run together in one forward pass (1 turns dynamic batching off).
        max_wait_ms: how long the batcher waits for a batch to fill once it has one request; a few ms trades a
            little latency at low load for much larger batches at high load.
        max_body_mb: largest request body, checked while reading (the upload is never buffered beyond it).
        max_pixels: largest decoded image (width * height), checked from the header before decoding.
        timeout: seconds a request may wait for its answer (decoding, queue and model) once its body has arrived,
            before a 504.
        body_timeout: seconds a client may take to send its request body, before a 408. Separate from ``timeout``:
            a request joins the model's queue only once its body is complete, so a slow upload delays only itself.
        header_timeout: seconds a connection may take to send a request's line and headers (from when it opens, or
            from the first byte of its next request), before a 408 and the connection's end: a client that sends a
            byte now and then cannot hold a connection. An idle keep-alive connection is closed after 5 s (uvicorn's
            ``timeout_keep_alive``).
        max_connections: connections open at once; beyond it a new connection is answered 503 with ``Retry-After``
            and closed. ``None``: 1000, or fewer when the open-file limit leaves less (:mod:`.connections`).
        queue_size: requests admitted per model (being decoded, queued or running; a request is admitted once its
            body has arrived); beyond it a 503 with ``Retry-After`` tells clients to back off.
        decode_workers: threads that decode and preprocess images off the event loop.
        fast_decode: decode JPEGs at least twice the model's resize DCT-downscaled
            (:meth:`~mobilevit.predict.Predictor.prepare`): a 12-megapixel photo costs several times less, with
            top-1/top-5 unchanged within one image in docs/decoding.md's check; other images are answered exactly
            as ``mobilevit predict`` answers them, and ``False`` answers every image so.
        retry_after: seconds suggested in ``Retry-After`` headers.
        threads: intra-op threads: PyTorch's for the process (``mobilevit serve`` sets them), or each onnxruntime
            session's or OpenVINO model's; 0 keeps the runtime's default
            (one per core), which with batching gave the most throughput on an idle 2-core machine (86 vs 68 req/s
            with 1 thread). On cores shared with other work use 1: competing OpenMP threads stall each other
            (measured: 1 s instead of 10 ms per image), and scale out with processes.
    """

    models: tuple[ModelSpec, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    backend: str = "eager"
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_body_mb: float = 16.0
    max_pixels: int = 25_000_000
    timeout: float = 30.0
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_connections: int | None = None
    queue_size: int = 64
    decode_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    fast_decode: bool = True
    retry_after: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        self.validate()

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        if not self.models:
            raise UsageError("at least one --model is required")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"--model given twice for {', '.join(dupes)}; each served name must be unique")
        for spec in self.models:  # one backend runs every model
            resolve_backend(spec.pretrained if spec.is_exported else spec.name, self.backend, "serve")
        ranges: list[tuple[str, float, float, float, str]] = [  # option, value, lowest, highest, unit
            ("--port", self.port, 0, 65535, ""),
            ("--max-batch-size", self.max_batch_size, 1, 1024, ""),
            ("--max-wait-ms", self.max_wait_ms, 0, 10_000, " ms"),
            ("--max-body-mb", self.max_body_mb, 0.001, 4096, " MB"),  # a body is held in memory while it is decoded
            ("--max-pixels", self.max_pixels, 1, 1_000_000_000, ""),
            ("--timeout", self.timeout, 0.001, DAY, " s"),
            ("--body-timeout", self.body_timeout, 0.001, DAY, " s"),
            ("--header-timeout", self.header_timeout, 0.001, DAY, " s"),
            ("--max-connections", 1 if self.max_connections is None else self.max_connections, 1, 1_000_000, ""),
            ("--queue-size", self.queue_size, 1, 1_000_000, ""),
            ("--threads", self.threads, 0, 1024, ""),
            ("decode_workers", self.decode_workers, 1, 1024, ""),
            ("retry_after", self.retry_after, 0, DAY, " s"),
        ]
        for option, value, low, high, unit in ranges:  # NaN and inf fail isfinite; bool is not a count
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{option} must be a finite number in {low:g}..{high:g}{unit}, got {value}")
            if not low <= value <= high:
                raise UsageError(f"{option} must be in {low:g}..{high:g}{unit}, got {value:g}")
        if self.max_wait_ms >= self.timeout * 1000:
            raise UsageError(
                f"--max-wait-ms ({self.max_wait_ms:g}) must be below --timeout ({self.timeout:g} s): every request "
                "would time out waiting for its batch"
            )
        if self.token is not None and self.token.strip() == "":
            raise UsageError(
                f'--token (or ${TOKEN_ENV}) is empty or blank: an unset variable in --token "$VAR"? Give the token, '
                "or leave out both to serve without authentication"
            )
        if self.queue_size < self.max_batch_size:
            raise UsageError(
                f"--queue-size ({self.queue_size}) is smaller than --max-batch-size ({self.max_batch_size}): "
                "batches could never fill"
            )

    def validate_models(self) -> None:
        """Check every model name and checkpoint path (separate: it imports the registry)."""
        for spec in self.models:
            spec.validate()


def _is_registered(name: str) -> bool:
    """Whether ``name`` is an architecture or ``arch.tag`` of the registry (the tag is checked by ``validate``)."""
    from ..registry import get_config

    try:
        get_config(name)
    except ValueError:
        return False
    return True


def infer_backend(models: tuple[ModelSpec, ...]) -> str:
    """The backend of the first exported file among ``models``, else eager (:meth:`ServeConfig.validate` rejects a
    mix), as :func:`~mobilevit.runtime.resolve_backend` infers it."""
    files = [spec.pretrained for spec in models if spec.is_exported]
    return resolve_backend(files[0] if files else "")  # "": no file, a PyTorch model


__all__ = ["BACKENDS", "TOKEN_ENV", "ModelSpec", "ServeConfig", "infer_backend", "resolve_token"]
