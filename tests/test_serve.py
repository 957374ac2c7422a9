"""The HTTP server in-process (Starlette's TestClient): the Inference API protocol, every error status, the page,
health, metrics, and configuration errors. A real server process is tested in ``test_serve_process.py``."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("fastapi")
from starlette.testclient import TestClient

from conftest import PROMISED_FORMATS, SHARED, refused_images, spy_on_refused_plugins
from mobilevit.cli import main
from mobilevit.predict import Predictor
from mobilevit.serve import ModelSpec, ServeConfig, create_app

S0_FILE = SHARED / "weights" / "mobileone_s0_reparam.safetensors"
TOKEN = "s3cret"


def photo(name: str = "chelsea.png") -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def jpeg_bytes(size: tuple[int, int] = (320, 240), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (the header CRC is valid, so PIL believes it)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


RANDOM_BYTES = (
    torch.randint(0, 256, (5000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy().tobytes()
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """Apple's MobileOne-S0 when the shared weights are here, else random weights (protocol checks only)."""
    if S0_FILE.exists():
        return Predictor.from_pretrained("mobileone_s0.orig_in1k_reparam", pretrained=str(S0_FILE), batch_size=8)
    return Predictor.from_pretrained("mobileone_s0", pretrained=False, batch_size=8)


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    config = ServeConfig(
        models=(ModelSpec("s0", False), ModelSpec("other", False)),
        token=TOKEN,
        max_batch_size=8,
        max_wait_ms=2,
        max_body_mb=1,
        max_pixels=10_000_000,
    )
    app = create_app(config, loaders={"s0": lambda: predictor, "other": lambda: predictor})
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        wait_ready(c)
        yield c


def expected(predictor: Predictor, data: bytes, top_k: int = 5, function: str = "softmax") -> list[dict]:
    return [{"label": p.label, "score": p.score} for p in predictor.predict(data, top_k=top_k, function=function)[0]]


def assert_same(answer: list[dict], reference: list[dict]) -> None:
    assert [a["label"] for a in answer] == [r["label"] for r in reference]
    assert [a["score"] for a in answer] == pytest.approx([r["score"] for r in reference], abs=1e-4)
    assert [a["score"] for a in answer] == sorted((a["score"] for a in answer), reverse=True)


@pytest.mark.parametrize(
    "content_type", [None, "image/png", "application/octet-stream", "text/plain", "application/x-www-form-urlencoded"]
)
def test_raw_bytes(client: TestClient, predictor: Predictor, content_type: str | None) -> None:
    data = photo().read_bytes()
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/", content=data, headers=headers)
    assert r.status_code == 200, r.text
    assert_same(r.json(), expected(predictor, data))
    if S0_FILE.exists():
        assert "cat" in r.json()[0]["label"]  # chelsea.png is a tabby cat


@pytest.mark.parametrize(("top_k", "function"), [(3, "softmax"), (1, "sigmoid"), (7, "none"), (None, None)])
def test_json_base64(client: TestClient, predictor: Predictor, top_k: int | None, function: str | None) -> None:
    data = photo("coffee.png").read_bytes()
    params = {k: v for k, v in {"top_k": top_k, "function_to_apply": function}.items() if v is not None}
    r = client.post("/models/other", json={"inputs": b64(data), "parameters": params})
    assert r.status_code == 200, r.text
    assert_same(r.json(), expected(predictor, data, top_k or 5, function or "softmax"))


def test_json_variants(client: TestClient, predictor: Predictor) -> None:
    data = jpeg_bytes()
    want = expected(predictor, data)
    for body, headers in [
        (json.dumps({"inputs": "data:image/jpeg;base64," + b64(data)}), {"Content-Type": "application/json"}),
        (json.dumps({"inputs": b64(data), "parameters": None}), {}),  # JSON without a Content-Type
        (json.dumps({"inputs": b64(data), "options": {"wait_for_model": True}}), {"Content-Type": "text/plain"}),
    ]:
        r = client.post("/", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert_same(r.json(), want)


IMG64 = b64(jpeg_bytes())
BAD_REQUESTS: list[tuple[str, Callable[[], dict], int, str]] = [
    ("empty body", lambda: {"content": b""}, 400, "empty"),
    ("random bytes", lambda: {"content": RANDOM_BYTES}, 400, "not an image"),
    ("truncated jpeg", lambda: {"content": photo("rocket.jpg").read_bytes()[:3000]}, 400, "image"),
    ("decompression bomb", lambda: {"content": png_bomb()}, 400, "limit"),
    ("invalid json", lambda: {"content": b'{"inputs": ', "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ("json list", lambda: {"json": [1, 2]}, 400, "object"),
    ("json no inputs", lambda: {"json": {"parameters": {"top_k": 2}}}, 400, "inputs"),
    ("json unknown key", lambda: {"json": {"inputs": IMG64, "image": 1}}, 400, "unknown"),
    ("bad base64", lambda: {"json": {"inputs": "not base64!!"}}, 400, "base64"),
    ("base64 of junk", lambda: {"json": {"inputs": b64(b"hello world")}}, 400, "not an image"),
    ("top_k 0", lambda: {"json": {"inputs": IMG64, "parameters": {"top_k": 0}}}, 400, "top_k"),
    ("top_k string", lambda: {"json": {"inputs": IMG64, "parameters": {"top_k": "3"}}}, 400, "top_k"),
    ("top_k bool", lambda: {"json": {"inputs": IMG64, "parameters": {"top_k": True}}}, 400, "top_k"),
    ("empty inputs", lambda: {"json": {"inputs": "", "parameters": {"function_to_apply": "relu"}}}, 400, "inputs"),
    ("bad function", lambda: {"json": {"inputs": IMG64, "parameters": {"function_to_apply": 1}}}, 400, "func"),
    ("unknown parameter", lambda: {"json": {"inputs": IMG64, "parameters": {"topk": 3}}}, 400, "unknown"),
    ("parameters list", lambda: {"json": {"inputs": IMG64, "parameters": [3]}}, 400, "parameters"),
    ("huge upload", lambda: {"content": b"\0" * (2 * 1024 * 1024)}, 413, "limit"),
    ("huge chunked upload", lambda: {"content": iter([b"\0" * 65536] * 40)}, 413, "limit"),
    ("multipart form", lambda: {"files": {"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}}, 415, "raw"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "fragment"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests(
    client: TestClient, predictor: Predictor, case: str, request_kwargs: Callable[[], dict], status: int, fragment: str
) -> None:
    r = client.post("/", **request_kwargs())
    assert r.status_code == status, r.text
    assert fragment.lower() in r.json()["error"].lower()
    data = jpeg_bytes(color=(10, 90, 200))  # and the server still answers good requests
    ok = client.post("/", content=data)
    assert ok.status_code == 200
    assert_same(ok.json(), expected(predictor, data))


@pytest.mark.parametrize("fmt", ["EPS", "PSD", "ICO"])
def test_image_formats_outside_the_list_get_415(client: TestClient, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw or base64, a format Pillow reads but the server does not decode is a 415 naming it and listing the
    accepted formats; its Pillow plugin (and Ghostscript, for EPS) never sees the bytes."""
    reached = spy_on_refused_plugins(monkeypatch)
    data = refused_images()[fmt]
    for request in ({"content": data}, {"json": {"inputs": b64(data)}}):
        r = client.post("/", **request)
        assert r.status_code == 415, r.text
        error = r.json()["error"]
        assert fmt in error and all(name in error for name in PROMISED_FORMATS), error
    assert reached == []
    described = client.get("/openapi.json").json()["paths"]["/"]["post"]["responses"]["415"]["description"]
    assert all(name in described for name in PROMISED_FORMATS)


def test_token(client: TestClient) -> None:
    data = jpeg_bytes()
    for headers in [{"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]:
        r = client.post("/", content=data, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "token" in r.json()["error"]
    assert client.post("/", content=data).status_code == 200  # the client's default header has the token
    # health, metrics and the page need no token (load balancers and scrapers)
    for path in ("/health", "/health/live", "/metrics", "/"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200


def test_unknown_model_and_route(client: TestClient) -> None:
    r = client.post("/models/nope", content=jpeg_bytes())
    assert r.status_code == 404
    assert "s0" in r.json()["error"]
    assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_health_metrics_docs_page(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["ready"] is True and health["live"] is True
    assert set(health["models"]) == {"s0", "other"}
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in (
        'mobilevit_requests_total{model="s0",status="200"}',
        'mobilevit_requests_total{model="s0",status="400"}',
        "mobilevit_request_duration_seconds_bucket",
        'mobilevit_batch_size_bucket{le="1.0",model="s0"}',
        'mobilevit_queue_depth{model="s0"} 0.0',
        'mobilevit_model_ready{model="other"} 1.0',
    ):
        assert name in text
    schema = client.get("/openapi.json").json()
    assert {"/", "/models/{name}", "/health", "/metrics"} <= set(schema["paths"])
    assert "application/json" in schema["paths"]["/"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "Drop an image" in page.text and "s0" in page.text


class SlowNet(nn.Module):
    """Sleeps in forward: to hold requests in the queue."""

    def __init__(self, seconds: float, started: threading.Event | None = None) -> None:
        super().__init__()
        self.seconds = seconds
        self.started = started
        self.num_classes = 3
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.started is not None and x.shape[0] == 1 and not self.started.is_set() and self.seconds:
            self.started.set()
        time.sleep(self.seconds if x.shape[-1] != 1 else 0)
        return self.head(x.mean((2, 3)))  # [B, 3, H, W] -> [B, 3]


def slow_predictor(seconds: float) -> Predictor:
    from mobilevit.weights.entries import get_weights

    return Predictor(SlowNet(seconds), get_weights("mobileone_s0").preprocess, ["a", "b", "c"], fold=False)


def test_503_until_loaded() -> None:
    release = threading.Event()

    def load() -> Predictor:
        release.wait(30)
        return slow_predictor(0)

    app = create_app(ServeConfig(models=(ModelSpec("m", False),)), loaders={"m": load})
    with TestClient(app) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["ready"] is False
        r = c.post("/", content=jpeg_bytes())
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "not loaded" in r.json()["error"]
        release.set()
        wait_ready(c)
        assert c.post("/", content=jpeg_bytes()).status_code == 200


def test_503_when_queue_full_and_504_on_timeout() -> None:
    config = ServeConfig(models=(ModelSpec("m", False),), max_batch_size=1, queue_size=1, timeout=5)
    app = create_app(config, loaders={"m": lambda: slow_predictor(1.0)})
    with TestClient(app) as c:
        wait_ready(c)
        first: list[int] = []
        t = threading.Thread(target=lambda: first.append(c.post("/", content=jpeg_bytes()).status_code))
        t.start()
        deadline = time.monotonic() + 5
        while c.get("/health").json()["models"]["m"]["queue"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.post("/", content=jpeg_bytes())
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"]
        t.join()
        assert first == [200]
        assert 'mobilevit_requests_total{model="m",status="503"} 1.0' in c.get("/metrics").text

    config = ServeConfig(models=(ModelSpec("m", False),), timeout=0.3)
    with TestClient(create_app(config, loaders={"m": lambda: slow_predictor(1.0)})) as c:
        wait_ready(c)
        r = c.post("/", content=jpeg_bytes())
        assert r.status_code == 504
        assert "0.3" in r.json()["error"]


def test_graceful_shutdown_answers_queued_requests() -> None:
    config = ServeConfig(models=(ModelSpec("m", False),), max_batch_size=2, max_wait_ms=0)
    answers: list[int] = []
    with TestClient(create_app(config, loaders={"m": lambda: slow_predictor(0.3)})) as c:
        wait_ready(c)
        threads = [threading.Thread(target=lambda: answers.append(c.post("/", content=jpeg_bytes()).status_code))]
        threads += [threading.Thread(target=lambda: answers.append(c.post("/", content=jpeg_bytes()).status_code))]
        for t in threads:
            t.start()
        time.sleep(0.1)  # in flight when the app shuts down
        for t in threads:
            t.join()
    assert answers == [200, 200]


class ThreadCountNet(nn.Module):
    """Records PyTorch's intra-op thread count in the thread that runs the model."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return x.mean((2, 3))  # [B, 3, H, W] -> [B, 3]


def test_decoding_is_single_threaded_and_the_model_keeps_its_threads() -> None:
    """Decode threads preprocess with one PyTorch thread each (no OpenMP team spinning beside the model); the model
    keeps the process's thread count even though PyTorch hands a new thread the count some other thread last set."""
    from mobilevit.weights.entries import get_weights

    net = ThreadCountNet()
    predictor = Predictor(net, get_weights("mobileone_s0").preprocess, ["a", "b", "c"], fold=False)
    seen_decoding: list[int] = []
    transform = predictor.transform

    def recording_transform(image: Image.Image) -> torch.Tensor:
        if threading.current_thread().name.startswith("decode"):  # not the warm-up in the model's thread
            seen_decoding.append(torch.get_num_threads())
        return transform(image)

    predictor.transform = recording_transform
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = ServeConfig(models=(ModelSpec("m", False), ModelSpec("late", False)), max_batch_size=1)
        release = threading.Event()

        def late() -> Predictor:  # loads after requests were decoded: its thread starts after the decode threads'
            release.wait(30)
            return predictor

        with TestClient(create_app(config, loaders={"m": lambda: predictor, "late": late})) as c:
            deadline = time.monotonic() + 30
            while not c.get("/health").json()["models"]["m"]["ready"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.post("/models/m", content=jpeg_bytes()).status_code == 200
            release.set()
            wait_ready(c)
            assert c.post("/models/late", content=jpeg_bytes()).status_code == 200
        assert seen_decoding and set(seen_decoding) == {1}
        assert net.seen and set(net.seen) == {2}  # warm-ups and requests, in both models' threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ()}, "at least one"),
        ({"backend": "onnxruntime"}, "onnxruntime"),
        ({"max_batch_size": 0}, "--max-batch-size"),
        ({"max_wait_ms": -1}, "--max-wait-ms"),
        ({"max_body_mb": 0}, "--max-body-mb"),
        ({"timeout": 0}, "--timeout"),
        ({"queue_size": 4, "max_batch_size": 8}, "--queue-size"),
        ({"port": 70000}, "--port"),
        ({"token": " "}, "--token"),
        ({"models": (ModelSpec("m"), ModelSpec("m"))}, "twice"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        ServeConfig(**{"models": (ModelSpec("m"),), **kwargs})


def test_model_spec() -> None:
    assert ModelSpec.parse("mobileone_s0") == ModelSpec("mobileone_s0", True)
    assert ModelSpec.parse("mobileone_s0=/w/s0.safetensors") == ModelSpec("mobileone_s0", "/w/s0.safetensors")
    assert ModelSpec.parse("mobileone_s0", False) == ModelSpec("mobileone_s0", False)
    with pytest.raises(ValueError, match="checkpoint"):
        ModelSpec.parse("mobileone_s0=")
    with pytest.raises(ValueError, match="Unknown model"):
        ModelSpec("mobilone_s0").validate()
    with pytest.raises(ValueError, match="does not exist"):
        ModelSpec("mobileone_s0", "/nonexistent.pth").validate()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "mobileone_s0", "--backend", "onnxruntime"], "onnxruntime"),
        (["--model", "mobilone_s0"], "Unknown model"),
        (["--model", "mobileone_s0", "--max-batch-size", "0"], "--max-batch-size"),
        (["--model", "a", "--model", "b", "--pretrained", "x"], "NAME=CHECKPOINT"),
    ],
)
def test_cli_rejects_bad_config(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


# --- hostile or careless clients -------------------------------------------------------------------------------------

MALFORMED_JSON = [
    ("deeply nested arrays", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("deeply nested parameters", b'{"inputs": "x", "parameters": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001),
    ("top_k of 5000 digits", b'{"inputs": "' + IMG64.encode() + b'", "parameters": {"top_k": ' + b"7" * 5000 + b"}}"),
    ("float of 5000 digits", b'{"inputs": "x", "parameters": {"top_k": 0.' + b"1" * 5000 + b"}}"),
]


@pytest.mark.parametrize("body", [m[1] for m in MALFORMED_JSON], ids=[m[0] for m in MALFORMED_JSON])
def test_malformed_json_is_400(client: TestClient, body: bytes) -> None:
    r = client.post("/", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert "JSON" in message or "top_k" in message
    assert len(message) < 300


def test_echoed_values_are_truncated(client: TestClient) -> None:
    """A 404 (or a 400) names what it refuses without sending a 70 KB name back."""
    name = "n" * 60_000  # httpx refuses URLs over 64 KB
    r = client.post(f"/models/{name}", content=jpeg_bytes())
    assert r.status_code == 404
    message = r.json()["error"]
    assert "nnnnnnnn..." in message and "s0" in message
    assert len(message) < 200
    for params in ({"top_k": "k" * 70_000}, {"function_to_apply": "f" * 70_000}, {"p" * 70_000: 1}):
        r = client.post("/", json={"inputs": IMG64, "parameters": params})
        assert r.status_code == 400
        assert len(r.json()["error"]) < 300


def test_metrics_stay_bounded_for_unknown_names(client: TestClient) -> None:
    """Nothing an unauthenticated (or any) client sends creates a metrics label: only served names are labels."""

    def flood(n: int, seed: int) -> None:
        for i in range(n):
            name = f"{seed}-{i}-" + "x" * 1000
            client.post(f"/models/{name}", content=b"x", headers={"Authorization": ""})  # 401
            client.post(f"/models/{name}", content=b"x", headers={"Authorization": "Bearer wrong"})  # 401
            client.post(f"/models/{name}", content=b"x")  # 404

    flood(2, 0)  # the fixed "unknown model" series exist from here on
    before = len(client.get("/metrics").text)
    flood(150, 1)
    text = client.get("/metrics").text
    assert "x" * 1000 not in text
    assert len(text) < before + 200, f"/metrics grew from {before} to {len(text)} bytes"


@pytest.mark.parametrize("path", ["/health", "/health/live", "/", "/metrics"])
def test_head_is_answered_like_get(client: TestClient, path: str) -> None:
    get = client.get(path, headers={"Authorization": ""})
    head = client.head(path, headers={"Authorization": ""})
    assert head.status_code == get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"]


def test_empty_token_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--token "$TOKEN"`` with TOKEN unset must not silently serve without authentication."""
    import mobilevit.serve

    def started(*args: object, **kwargs: object) -> int:
        raise AssertionError("the server started without authentication")

    monkeypatch.setattr(mobilevit.serve, "run", started)
    for value in ("", " "):
        with pytest.raises(ValueError, match="--token"):
            ServeConfig(models=(ModelSpec("m"),), token=value)
    monkeypatch.delenv("MOBILEVIT_TOKEN", raising=False)
    assert main(["serve", "--model", "mobileone_s0", "--random-weights", "--token", ""]) == 2
    assert "--token" in capsys.readouterr().err
    monkeypatch.setenv("MOBILEVIT_TOKEN", "")
    assert main(["serve", "--model", "mobileone_s0", "--random-weights"]) == 2
    err = capsys.readouterr().err
    assert "MOBILEVIT_TOKEN" in err and "empty" in err


def test_port_in_use_fails_before_loading_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    import mobilevit.serve.app

    def create_app(*args: object, **kwargs: object) -> None:
        raise AssertionError("the app (and its models) was built before the port was checked")

    monkeypatch.setattr(mobilevit.serve.app, "create_app", create_app)
    monkeypatch.delenv("MOBILEVIT_TOKEN", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "mobileone_s0", "--random-weights", "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


def test_body_timeout_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServeConfig(models=(ModelSpec("m"),)).body_timeout > 0
    with pytest.raises(ValueError, match="--body-timeout"):
        ServeConfig(models=(ModelSpec("m"),), body_timeout=0)
    import mobilevit.serve

    seen: list[ServeConfig] = []
    monkeypatch.setattr(mobilevit.serve, "run", lambda config, **kwargs: seen.append(config) or 0)
    monkeypatch.delenv("MOBILEVIT_TOKEN", raising=False)
    assert main(["serve", "--model", "mobileone_s0", "--random-weights", "--body-timeout", "7.5"]) == 0
    assert seen[0].body_timeout == 7.5 and seen[0].timeout == 30


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder written by ``mobilevit.save_pretrained`` (random weights, made-up labels)."""
    import mobilevit

    folder = tmp_path_factory.mktemp("saved") / "my_classifier"
    model = mobilevit.create_model("mobileone_s0")
    mobilevit.save_pretrained(model, folder, labels=[f"thing {i}" for i in range(model.num_classes)])
    return folder


def test_saved_folder_is_served(saved_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--model FOLDER`` and ``--model NAME=FOLDER`` serve a ``save_pretrained`` folder, as ``predict`` does."""
    spec = ModelSpec.parse(str(saved_folder))
    assert spec == ModelSpec("my_classifier", str(saved_folder))
    assert ModelSpec.parse(f"{saved_folder}/", False).name == "my_classifier"
    named = ModelSpec.parse(f"custom={saved_folder}")
    assert named == ModelSpec("custom", str(saved_folder))
    config = ServeConfig(models=(spec, named), max_batch_size=2, queue_size=4)
    config.validate_models()
    with pytest.raises(ValueError, match="save_pretrained"):
        ModelSpec("custom", str(saved_folder.parent)).validate()  # a folder, but not one of ours

    import mobilevit.serve

    seen: list[ServeConfig] = []
    monkeypatch.setattr(mobilevit.serve, "run", lambda config, **kwargs: seen.append(config) or 0)
    monkeypatch.delenv("MOBILEVIT_TOKEN", raising=False)
    assert main(["serve", "--model", str(saved_folder), "--model", f"custom={saved_folder}"]) == 0
    assert [m.name for m in seen[0].models] == ["my_classifier", "custom"]

    with TestClient(create_app(config)) as c:  # the default loaders, from the folder
        wait_ready(c)
        for path in ("/", "/models/my_classifier", "/models/custom"):
            r = c.post(path, content=jpeg_bytes(), params={"top_k": 3})
            assert r.status_code == 200, r.text
            assert all(p["label"].startswith("thing ") for p in r.json())


def test_labels_file_names_a_served_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --labels FILE`` names the outputs of a checkpoint that carries no names (predict's and eval's flag)."""
    import mobilevit
    import mobilevit.serve

    checkpoint = tmp_path / "two.pt"
    torch.save(mobilevit.create_model("mobileone_s0", num_classes=2).state_dict(), checkpoint)
    (tmp_path / "labels.txt").write_text("ants\nbees\n")
    seen: list[ServeConfig] = []
    monkeypatch.setattr(mobilevit.serve, "run", lambda config, **kwargs: seen.append(config) or 0)
    monkeypatch.delenv("MOBILEVIT_TOKEN", raising=False)
    argv = [
        "serve",
        "--model",
        "mobileone_s0",
        "--pretrained",
        str(checkpoint),
        "--labels",
        str(tmp_path / "labels.txt"),
    ]
    assert main(argv) == 0
    assert seen[0].models[0].labels == ("ants", "bees")
    assert main([*argv[:2], "mobileone_s0", "--model", "fastvit_t8", "--labels", "x"]) == 2  # one model only
    with TestClient(create_app(dataclasses.replace(seen[0], max_batch_size=2, queue_size=4))) as c:
        wait_ready(c)
        r = c.post("/", content=jpeg_bytes(), params={"top_k": 2})
        assert r.status_code == 200, r.text
        assert sorted(p["label"] for p in r.json()) == ["ants", "bees"]


def test_connections_have_nagle_off() -> None:
    """The server's own listening socket must give connections with TCP_NODELAY, as uvicorn's would: with Nagle on,
    every answer waited for the client's delayed ACK (40 ms per request at concurrency 1)."""
    import asyncio
    import socket

    from mobilevit.serve.server import bind

    sock = bind("127.0.0.1", 0)
    sock.listen()

    async def nodelay_of_an_accepted_connection() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)  # what uvicorn does with a socket it is given
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
            return value

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0
