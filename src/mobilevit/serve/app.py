"""The HTTP layer: decode the request -> predict (batched) -> encode the answer, plus health, metrics and a page.

Routes: ``POST /`` (the first model) and ``POST /models/{name}`` speak the Hugging Face Inference API for image
classification or, for a segmentation model or a detector, image segmentation or object detection (see
:mod:`mobilevit.serve.protocol`); models of every task can be served side by side. ``GET /health`` (200 when every
model is loaded and its latest outputs were finite, else 503), ``GET /health/live`` (always 200), ``GET /metrics``
(Prometheus), ``GET /docs`` and ``GET /redoc`` (the OpenAPI schema in Swagger UI and ReDoc, their scripts served from
the fastapi-offline package, so they work offline) and ``GET /`` (a page to drop an image on); the ``GET`` routes
answer ``HEAD`` too (health checkers). Only the prediction routes need the bearer token.

A prediction request is checked (token, model, model loaded) before its body is read, reads its body within
``--body-timeout`` (else 408), and only then takes a place in the model's queue: a slow upload delays only itself.
Metrics are labelled with served model names only, so nothing a client sends creates state.

``GET /models/{name}/labels`` gives a loaded model's class labels in index order: the page colours a segmentation
class by its index, with the PASCAL VOC palette of the mask PNGs, and a detector's boxes by their class. ``/health``
gives each loaded model's task and the JSON schema of the request parameters it takes (the page offers a threshold
box for a model that takes one).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from torch import Tensor

from ..data.images import ImageError, UnsupportedFormatError, accepted_formats
from ..errors import NonFiniteOutputError
from ..runner import Runner
from ..segment import load_model
from ..tasks import TASKS
from .config import ServeConfig
from .engine import BatchEngine, OverloadedError, pin_torch_threads
from .page import PAGE
from .protocol import RequestError, clip, parse_request

logger = logging.getLogger(__name__)

Loader = Callable[[], Runner]

UNKNOWN_MODEL = ""  # the metrics label of requests for no served model (a served name is never empty)
DISCONNECTED = 499  # nginx's "client closed request": counted apart from server errors, answered to no one


class ErrorBody(BaseModel):
    error: str


def request_body() -> dict[str, Any]:
    """The OpenAPI schema of a prediction request: raw image bytes, or JSON with the parameters of every task."""
    described = "; ".join(f"{task.title}: {', '.join(sorted(task.parameters))}" for task in TASKS.values())
    properties = {name: schema for task in TASKS.values() for name, schema in task.parameter_schema.items()}
    binary = {"schema": {"type": "string", "format": "binary"}}
    parameters = {"type": "object", "description": described, "properties": properties}
    inputs = {"type": "string", "description": "base64 image (or a data URL)"}
    body = {"type": "object", "required": ["inputs"], "properties": {"inputs": inputs, "parameters": parameters}}
    content = {"image/*": binary, "application/octet-stream": binary, "application/json": {"schema": body}}
    return {"required": True, "content": content}


def answer_schema() -> dict[int | str, dict[str, Any]]:
    """The OpenAPI schema of a prediction's answer: the answer of the served model's task."""
    answers = [task.answer_schema for task in TASKS.values()]
    description = "the answer of the model's task: " + "; ".join(task.hf_task for task in TASKS.values())
    return {200: {"description": description, "content": {"application/json": {"schema": {"oneOf": answers}}}}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # the OpenAPI schema of each error answer
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "not an image, bad base64, bad JSON or parameters",
        401: "bearer token missing or wrong",
        404: "no such model",
        408: "body not received within --body-timeout",
        413: "body larger than --max-body-mb",
        415: f"an image format not accepted (accepted: {accepted_formats()}), or a multipart form upload (send raw "
        "bytes or JSON)",
        500: "the model produced non-finite values (NaN or infinity), or an internal error",
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
        self.ready = Gauge(
            "mobilevit_model_ready",
            "1 when the model is loaded and its latest outputs were finite",
            ["model"],
            registry=self.registry,
        )
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
    """Build the predictor of ``config.models[index]`` (a :class:`~mobilevit.segment.Segmenter` for a segmentation
    model): from its weights (eager) or its exported file (onnxruntime or openvino for ``.onnx``, executorch for
    ``.pte``, litert for ``.tflite``; the task its metadata records)."""
    spec = config.models[index]
    options: dict[str, Any] = {"batch_size": config.max_batch_size, "labels": spec.labels}
    if config.backend != "eager":
        assert isinstance(spec.pretrained, str)  # ServeConfig.validate: every model is an exported file
        path = spec.pretrained
        return lambda: load_model(path, config.backend, threads=config.threads, **options)
    options["allow_random_head"] = spec.allow_random_head
    folder = spec.saved_folder
    if folder is not None:  # a save_pretrained folder served under any name: its config.json names the architecture
        return lambda: load_model(folder, "eager", **options)
    return lambda: load_model(spec.name, "eager", pretrained=spec.pretrained, **options)


def image_error(err: ImageError) -> RequestError:
    """415 for an image in a format the server does not decode (the message lists the accepted ones), else 400."""
    return RequestError(415 if isinstance(err, UnsupportedFormatError) else 400, str(err))


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The body of every error answer: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Routes:
    """What the routes serve: one :class:`BatchEngine` per model, the metrics, the decode threads, and the handlers.

    Args:
        config: validated server configuration.
        loaders: ``{name: () -> Runner}`` overriding how a model is built; default :func:`default_loader`.
        on_fatal: called with the reason when a model fails to load.
    """

    def __init__(
        self, config: ServeConfig, loaders: dict[str, Loader] | None, on_fatal: Callable[[str], None] | None
    ) -> None:
        self.config = config
        self.on_fatal = on_fatal
        self.metrics = Metrics()
        self.retry = {"Retry-After": str(config.retry_after)}
        self.engines: dict[str, BatchEngine] = {}
        for i, spec in enumerate(config.models):
            load = (loaders or {}).get(spec.name) or default_loader(config, i)
            observe = self.metrics.batch_size.labels(spec.name).observe
            engine = BatchEngine(spec.name, load, config.max_batch_size, config.max_wait_ms, config.queue_size, observe)
            self.engines[spec.name] = engine
            self.metrics.watch(engine)
        self.default_model = config.models[0].name
        # Each request is preprocessed by one thread (the pool gives the parallelism across requests): PyTorch ops
        # there would otherwise start an OpenMP team per decode thread, whose spinning workers take the model's cores.
        self.decode_pool = ThreadPoolExecutor(
            config.decode_workers, thread_name_prefix="decode", initializer=pin_torch_threads, initargs=(1,)
        )

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def load_all(self) -> None:
        """Load every model in turn; the first failure goes to ``on_fatal`` and stops the loading."""
        for engine in self.engines.values():
            try:
                await engine.start()
            except Exception as err:
                if self.on_fatal is not None:
                    self.on_fatal(f"{engine.name}: {err}")
                return
        logger.info("ready: %s", ", ".join(self.engines))

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Load the models in the background; on shutdown answer what is queued, then stop the workers."""
        loading = asyncio.create_task(self.load_all())
        try:
            yield
        finally:
            loading.cancel()
            for engine in self.engines.values():
                await engine.stop(drain_timeout=self.config.timeout)
            self.decode_pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------------ one prediction request

    def check_token(self, request: Request) -> None:
        """Raise a 401 unless the request carries the bearer token (when the server has one)."""
        if self.config.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not given.strip():
            raise RequestError(401, "a bearer token is required (Authorization: Bearer <token>)", challenge)
        if not hmac.compare_digest(given.strip().encode(), self.config.token.encode()):
            raise RequestError(401, "invalid token", challenge)

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it exceeds the limit (never buffered beyond it)."""
        limit = self.config.max_body_bytes
        close = {"Connection": "close"}  # the rest of the body is not worth reading
        too_large = RequestError(413, f"request body larger than the limit of {self.config.max_body_mb:g} MB", close)
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

    async def receive(self, request: Request, engine: BatchEngine) -> bytes:
        """The body within ``body_timeout`` (else 408); ``mobilevit_receiving`` counts requests waiting for theirs."""
        receiving = self.metrics.receiving.labels(engine.name)
        receiving.inc()
        try:
            return await asyncio.wait_for(self.read_body(request), self.config.body_timeout)
        except TimeoutError:
            message = f"request body not received within {self.config.body_timeout:g} s (--body-timeout)"
            raise RequestError(408, message, {"Connection": "close"}) from None
        finally:
            receiving.dec()

    def decode(self, data: bytes, engine: BatchEngine) -> tuple[Tensor, Any]:
        """Decode thread: bytes -> upright RGB image -> the weights' preprocessing: ``(the model's input, what the
        task keeps of the image)`` (``config.fast_decode``: large JPEGs decoded DCT-downscaled, unless the task needs
        the image exactly)."""
        assert engine.predictor is not None
        return engine.predictor.load_input(
            data, "image", max_pixels=self.config.max_pixels, fast_decode=self.config.fast_decode
        )

    async def answer(self, request: Request, body: bytes, engine: BatchEngine) -> JSONResponse:
        """One request, the model's task's way: parse its parameters, decode (decode pool), run in the model's batches,
        then post-process and encode the answer (decode pool: the model's thread only runs the model)."""
        runner = engine.predictor
        assert runner is not None
        task = runner.task
        parsed = parse_request(body, request.headers.get("content-type"), task)
        loop = asyncio.get_running_loop()
        try:
            image, context = await loop.run_in_executor(self.decode_pool, self.decode, parsed.image, engine)
        except ImageError as err:
            raise image_error(err) from None
        outputs = await engine.submit(image, lambda row: row)

        def encode() -> Any:
            return task.answer(runner, outputs, context, parsed.options)

        return JSONResponse(await loop.run_in_executor(self.decode_pool, encode))

    async def admitted_answer(self, request: Request, engine: BatchEngine) -> tuple[Response, float]:
        """Check, receive, admit and answer one request for a served model: ``(response, when its body arrived)``."""
        try:
            engine.check_open()  # before reading a body the model could not take
            body = await self.receive(request, engine)
            received = time.perf_counter()
            engine.admit()  # only now, with the body complete: a slow upload never holds a place in the queue
        except OverloadedError as err:
            raise RequestError(503, str(err), self.retry) from None
        try:
            return await asyncio.wait_for(self.answer(request, body, engine), self.config.timeout), received
        except TimeoutError:
            raise RequestError(504, f"no answer within {self.config.timeout:g} s") from None
        except OverloadedError as err:  # shutting down while queued
            raise RequestError(503, str(err), self.retry) from None
        finally:
            engine.release()

    async def handle(self, request: Request, name: str) -> Response:
        """Answer a prediction request for model ``name``: every outcome becomes a response, and is counted."""
        engine = self.engines.get(name)
        label = name if engine is not None else UNKNOWN_MODEL  # never a name the client made up
        received: float | None = None  # when the body was complete
        try:
            self.check_token(request)
            if engine is None:
                raise RequestError(404, f"no model {clip(name)!r}; served: {', '.join(self.engines)}")
            response, received = await self.admitted_answer(request, engine)
            engine.answered()  # the model's outputs made an answer: it is not failing (any more)
        except RequestError as err:
            response = error_response(err.status, err.message, err.headers)
        except ClientDisconnect:  # hung up mid-upload: the client's doing, not a server error
            logger.info("%s: the client hung up before its request body was complete", name)
            response = Response(status_code=DISCONNECTED)
        except NonFiniteOutputError as err:  # the model's fault, not a bug here: one line, and /health says failing
            assert engine is not None
            logger.error("%s: %s", name, err)
            engine.answered("the model produced non-finite values (NaN or infinity) for its latest request")
            message = f"model {name!r} produced non-finite values (NaN or infinity): no answer can be made from them"
            response = error_response(500, message)
        except Exception as err:  # a bug or a failed forward pass: answer 500, keep serving
            logger.exception("%s: request failed", name)
            response = error_response(500, f"internal error: {type(err).__name__}: {err}")
        self.metrics.requests.labels(label, str(response.status_code)).inc()
        if received is not None:
            self.metrics.latency.labels(label).observe(time.perf_counter() - received)
        return response

    # ---------------------------------------------------------------------------------------------- the routes

    async def predict_default(self, request: Request) -> Response:
        return await self.handle(request, self.default_model)

    async def predict_named(self, name: str, request: Request) -> Response:
        return await self.handle(request, name)

    async def health(self) -> JSONResponse:
        """200 ``ok`` when every model is loaded and answering; 503 ``loading`` (with ``Retry-After``) until then, and
        503 ``failing`` while a model's latest outputs were non-finite (its entry's ``error`` says so)."""
        models = {
            name: {
                "ready": e.ready,
                "queue": e.admitted,
                **(
                    {"task": e.predictor.task.name, "parameters": e.predictor.task.parameter_schema}
                    if e.predictor is not None
                    else {}
                ),
                **({"error": e.error or e.failure} if e.error or e.failure else {}),
            }
            for name, e in self.engines.items()
        }
        ready = all(e.ready for e in self.engines.values())
        failing = any(e.failure for e in self.engines.values())
        status = "ok" if ready else "failing" if failing else "loading"
        body = {"status": status, "live": True, "ready": ready, "models": models}
        headers = self.retry if status == "loading" else None  # a failing model is not cured by waiting
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    async def labels(self, name: str) -> JSONResponse:
        """A served model's class labels, index order (404: no such model; 503: not loaded yet)."""
        engine = self.engines.get(name)
        if engine is None:
            return error_response(404, f"no model {clip(name)!r}; served: {', '.join(self.engines)}")
        if engine.predictor is None:
            return error_response(503, f"model {name!r} is not loaded yet", self.retry)
        return JSONResponse({"labels": list(engine.predictor.labels)})

    async def live(self) -> JSONResponse:
        return JSONResponse({"live": True})

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE.replace("__MODEL__", html.escape(self.default_model)))


def add_error_handlers(app: FastAPI) -> None:
    """Every error answer, the framework's (404, 405, ...) and unhandled ones (500), as ``{"error": ...}``."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


def add_routes(app: FastAPI, routes: Routes) -> None:
    """The prediction routes (in the OpenAPI schema with their request body and errors), health, metrics, the page."""
    predict = {
        "responses": {**answer_schema(), **ERROR_RESPONSES},
        "openapi_extra": {"requestBody": request_body()},
    }
    app.add_api_route(
        "/",
        routes.predict_default,
        methods=["POST"],
        summary="Classify (or segment) an image with the default (first) model",
        **predict,
    )
    app.add_api_route(
        "/models/{name}",
        routes.predict_named,
        methods=["POST"],
        summary="Classify an image, or segment it with a segmentation model, with the named model",
        **predict,
    )
    readable: list[tuple[str, Callable[[], Awaitable[Response]], dict[str, Any]]] = [
        (
            "/health",
            routes.health,
            {"summary": "Readiness: 200 when every model is loaded and answering, else 503 (HEAD too)"},
        ),
        ("/health/live", routes.live, {"summary": "Liveness: 200 while the process answers (HEAD too)"}),
        ("/metrics", routes.prometheus, {"summary": "Prometheus metrics"}),
        ("/", routes.page, {"response_class": HTMLResponse, "include_in_schema": False}),
    ]
    for path, endpoint, options in readable:
        app.add_api_route(path, endpoint, methods=["GET"], **options)
    app.add_api_route(
        "/models/{name}/labels",
        routes.labels,
        methods=["GET"],
        summary="The named model's class labels, index order (404: no such model, 503: not loaded yet)",
    )
    # HEAD like GET (uvicorn sends the headers only); out of the schema, where it would repeat the GET operations
    for path, endpoint, _ in readable:
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)


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
        loaders: ``{name: () -> Runner}`` overriding how a model is built (tests); default
            :func:`default_loader`.
        on_fatal: called with the reason when a model fails to load (the CLI stops the server).
    """
    routes = Routes(config, loaders, on_fatal)
    app = FastAPIOffline(  # FastAPI, with /docs and /redoc assets of its own instead of a CDN's
        title="mobilevit serve",
        description="Image classification and segmentation, compatible with the Hugging Face Inference API.",
        lifespan=routes.lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from Swagger's online validator
    )
    app.state.engines = routes.engines
    app.state.metrics = routes.metrics
    app.state.config = config
    add_error_handlers(app)
    add_routes(app, routes)
    return app
