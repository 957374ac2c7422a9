"""The HTTP layer: decode the request -> predict (batched) -> encode the answer, plus health, metrics and a page.

Routes: ``POST /`` (the first model) and ``POST /models/{name}`` speak the Hugging Face Inference API for image
classification (see :mod:`mobilevit.serve.protocol`); ``GET /health`` (200 when every model is loaded, else 503),
``GET /health/live`` (always 200), ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI) and ``GET /`` (a page to
drop an image on); the ``GET`` routes answer ``HEAD`` too (health checkers). Only the prediction routes need the
bearer token.

A prediction request is checked (token, model, model loaded) before its body is read, reads its body within
``--body-timeout`` (else 408), and only then takes a place in the model's queue: a slow upload delays only itself.
Metrics are labelled with served model names only, so nothing a client sends creates state.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from torch import Tensor

from ..data.images import ImageError, open_image
from ..predict import Predictor, load_predictor
from .config import ServeConfig
from .engine import BatchEngine, OverloadedError, pin_torch_threads
from .page import PAGE
from .protocol import RequestError, clip, encode_predictions, parse_request

logger = logging.getLogger(__name__)

Loader = Callable[[], Predictor]

UNKNOWN_MODEL = ""  # the metrics label of requests for no served model (a served name is never empty)
DISCONNECTED = 499  # nginx's "client closed request": counted apart from server errors, answered to no one


class LabelScore(BaseModel):
    """One class of the answer (the Inference API's ImageClassificationOutputElement)."""

    label: str
    score: float


class ErrorBody(BaseModel):
    error: str


_REQUEST_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "inputs": {"type": "string", "description": "base64 image (or a data URL)"},
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "top_k": {"type": "integer", "minimum": 1, "default": 5},
                            "function_to_apply": {"enum": ["softmax", "sigmoid", "none"], "default": "softmax"},
                        },
                    },
                },
            }
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "not an image, bad base64, bad JSON or parameters",
        401: "bearer token missing or wrong",
        404: "no such model",
        408: "body not received within --body-timeout",
        413: "body larger than --max-body-mb",
        415: "multipart form uploads: send raw bytes or JSON",
        503: "queue full or model not loaded yet (see Retry-After)",
        504: "no answer within --timeout",
    }.items()
}


class Metrics:
    """Prometheus metrics of one app (its own registry, so that several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mobilevit_requests",
            "Prediction requests by model (served names; empty: unknown) and HTTP status (499: the client hung up)",
            ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mobilevit_request_duration_seconds",
            "Prediction request latency (body received to answer)",
            ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mobilevit_batch_size",
            "Requests per forward pass",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "mobilevit_queue_depth", "Requests admitted and not yet answered", ["model"], registry=self.registry
        )
        self.ready = Gauge("mobilevit_model_ready", "1 when the model is loaded", ["model"], registry=self.registry)
        self.receiving = Gauge(
            "mobilevit_receiving",
            "Requests whose body is still arriving (not yet admitted to the queue)",
            ["model"],
            registry=self.registry,
        )

    def watch(self, engine: BatchEngine) -> None:
        self.receiving.labels(engine.name)  # the series exists (at 0) from the start
        self.queue_depth.labels(engine.name).set_function(lambda: engine.admitted)
        self.ready.labels(engine.name).set_function(lambda: float(engine.ready))


def default_loader(config: ServeConfig, index: int) -> Loader:
    """Build the predictor of ``config.models[index]``: from its weights (eager) or its ONNX file (onnxruntime or
    openvino)."""
    spec = config.models[index]
    options = {"batch_size": config.max_batch_size, "labels": spec.labels}
    if config.backend != "eager":
        assert isinstance(spec.pretrained, str)  # ServeConfig.validate: every model is an .onnx file
        path = spec.pretrained
        return lambda: load_predictor(path, config.backend, threads=config.threads, **options)
    folder = spec.saved_folder
    if folder is not None:  # a save_pretrained folder served under any name: its config.json names the architecture
        return lambda: load_predictor(folder, "eager", **options)
    return lambda: load_predictor(spec.name, "eager", pretrained=spec.pretrained, **options)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    config: ServeConfig,
    loaders: dict[str, Loader] | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """The ASGI app serving ``config.models``.

    Models load in the background after start-up (``/health`` says when they are ready; predictions get a 503 with
    ``Retry-After`` until then). On shutdown, queued requests are answered before the workers stop.

    Args:
        config: validated server configuration.
        loaders: ``{name: () -> Predictor}`` overriding how a model is built (tests); default
            :func:`default_loader`.
        on_fatal: called with the reason when a model fails to load (the CLI stops the server).
    """
    metrics = Metrics()
    retry = {"Retry-After": str(config.retry_after)}
    engines: dict[str, BatchEngine] = {}
    for i, spec in enumerate(config.models):
        load = (loaders or {}).get(spec.name) or default_loader(config, i)
        hist = metrics.batch_size.labels(spec.name)
        engines[spec.name] = BatchEngine(
            spec.name, load, config.max_batch_size, config.max_wait_ms, config.queue_size, hist.observe
        )
        metrics.watch(engines[spec.name])
    default_model = config.models[0].name
    # Each request is preprocessed by one thread (the pool gives the parallelism across requests): PyTorch ops there
    # would otherwise start an OpenMP team per decode thread, whose spinning workers take the cores from the model.
    decode_pool = ThreadPoolExecutor(
        config.decode_workers, thread_name_prefix="decode", initializer=pin_torch_threads, initargs=(1,)
    )

    async def load_all() -> None:
        for engine in engines.values():
            try:
                await engine.start()
            except Exception as err:
                if on_fatal is not None:
                    on_fatal(f"{engine.name}: {err}")
                return
        logger.info("ready: %s", ", ".join(engines))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(load_all())
        try:
            yield
        finally:
            loading.cancel()
            for engine in engines.values():
                await engine.stop(drain_timeout=config.timeout)
            decode_pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="mobilevit serve",
        description="Image classification, compatible with the Hugging Face Inference API.",
        lifespan=lifespan,
    )
    app.state.engines = engines
    app.state.metrics = metrics
    app.state.config = config

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    def check_token(request: Request) -> None:
        if config.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not given.strip():
            raise RequestError(401, "a bearer token is required (Authorization: Bearer <token>)", challenge)
        if not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise RequestError(401, "invalid token", challenge)

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it exceeds the limit (never buffered beyond it)."""
        limit = config.max_body_bytes
        close = {"Connection": "close"}  # the rest of the body is not worth reading
        too_large = RequestError(413, f"request body larger than the limit of {config.max_body_mb:g} MB", close)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, f"bad Content-Length {clip(declared)!r}", close)
            if int(declared) > limit:
                raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    def decode(data: bytes, engine: BatchEngine) -> Tensor:
        """Decode thread: bytes -> upright RGB image -> the weights' preprocessing."""
        assert engine.predictor is not None
        image = open_image(data, "image", max_pixels=config.max_pixels)
        return engine.predictor.transform(image)

    async def receive(request: Request, engine: BatchEngine) -> bytes:
        """The body within ``body_timeout`` (else 408); ``mobilevit_receiving`` counts requests waiting for theirs."""
        receiving = metrics.receiving.labels(engine.name)
        receiving.inc()
        try:
            return await asyncio.wait_for(read_body(request), config.body_timeout)
        except TimeoutError:
            message = f"request body not received within {config.body_timeout:g} s (--body-timeout)"
            raise RequestError(408, message, {"Connection": "close"}) from None
        finally:
            receiving.dec()

    async def classify(request: Request, body: bytes, engine: BatchEngine) -> JSONResponse:
        parsed = parse_request(body, request.headers.get("content-type"))
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(decode_pool, decode, parsed.image, engine)
        except ImageError as err:
            raise RequestError(400, str(err)) from None
        predictions = await engine.submit(image, parsed.top_k, parsed.function)
        return JSONResponse(encode_predictions(predictions))

    async def handle(request: Request, name: str) -> Response:
        engine = engines.get(name)
        label = name if engine is not None else UNKNOWN_MODEL  # never a name the client made up
        received: float | None = None  # when the body was complete
        try:
            check_token(request)
            if engine is None:
                raise RequestError(404, f"no model {clip(name)!r}; served: {', '.join(engines)}")
            try:
                engine.check_open()  # before reading a body the model could not take
                body = await receive(request, engine)
                received = time.perf_counter()
                engine.admit()  # only now, with the body complete: a slow upload never holds a place in the queue
            except OverloadedError as err:
                raise RequestError(503, str(err), retry) from None
            try:
                response: Response = await asyncio.wait_for(classify(request, body, engine), config.timeout)
            except TimeoutError:
                raise RequestError(504, f"no answer within {config.timeout:g} s") from None
            except OverloadedError as err:  # shutting down while queued
                raise RequestError(503, str(err), retry) from None
            finally:
                engine.release()
        except RequestError as err:
            response = _error(err.status, err.message, err.headers)
        except ClientDisconnect:  # hung up mid-upload: the client's doing, not a server error
            logger.info("%s: the client hung up before its request body was complete", name)
            response = Response(status_code=DISCONNECTED)
        except Exception as err:  # a bug or a failed forward pass: answer 500, keep serving
            logger.exception("%s: request failed", name)
            response = _error(500, f"internal error: {type(err).__name__}: {err}")
        metrics.requests.labels(label, str(response.status_code)).inc()
        if received is not None:
            metrics.latency.labels(label).observe(time.perf_counter() - received)
        return response

    @app.post(
        "/",
        response_model=list[LabelScore],
        responses=_ERRORS,
        openapi_extra={"requestBody": _REQUEST_BODY},
        summary="Classify an image with the default (first) model",
    )
    async def predict_default(request: Request) -> Response:
        return await handle(request, default_model)

    @app.post(
        "/models/{name}",
        response_model=list[LabelScore],
        responses=_ERRORS,
        openapi_extra={"requestBody": _REQUEST_BODY},
        summary="Classify an image with the named model",
    )
    async def predict_named(name: str, request: Request) -> Response:
        return await handle(request, name)

    @app.get("/health", summary="Readiness: 200 when every model is loaded, else 503 (HEAD too)")
    async def health() -> JSONResponse:
        models = {
            name: {"ready": e.ready, "queue": e.admitted, **({"error": e.error} if e.error else {})}
            for name, e in engines.items()
        }
        ready = all(e.ready for e in engines.values())
        body = {"status": "ok" if ready else "loading", "live": True, "ready": ready, "models": models}
        return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else retry)

    @app.get("/health/live", summary="Liveness: 200 while the process answers (HEAD too)")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.replace("__MODEL__", html.escape(default_model)))

    # HEAD like GET (uvicorn sends the headers only); out of the schema, where it would repeat the GET operations
    for path, endpoint in (("/health", health), ("/health/live", live), ("/metrics", prometheus), ("/", page)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    return app
