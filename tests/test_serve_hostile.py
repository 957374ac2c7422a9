"""Hostile clients against a real ``mobilevit serve`` process over raw sockets: slow headers, a connection flood
beyond ``--max-connections`` and beyond the open-file limit, malformed HTTP; plus the offline /docs page and the
bounds of every numeric option.

The server runs with random weights (only the HTTP layer is under test), a 1 s header timeout, a cap of 20
connections and an open-file limit of 128, so that a flood of a few hundred connections runs out of file descriptors
in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx2

from mobilevit.cli import main
from mobilevit.serve import ModelSpec, ServeConfig
from test_serve import jpeg_bytes
from test_serve_process import free_port

HEADER_TIMEOUT = 1.0
MAX_CONNECTIONS = 20
OPEN_FILES = 128  # the server's RLIMIT_NOFILE: a few hundred connections at once exhaust it


class Process:
    """``mobilevit serve`` in a subprocess with a low open-file limit; its log goes to a file."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "mobilevit.cli", "serve", "--model", "mobileone_s0", "--random-weights"]
        cmd += ["--port", str(self.port), "--threads", "1", "--header-timeout", str(HEADER_TIMEOUT)]
        cmd += ["--max-connections", str(MAX_CONNECTIONS)]

        def limit_files() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))

        self.proc = subprocess.Popen(
            cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ}, preexec_fn=limit_files
        )
        self.wait_ok("/health", deadline=90)

    def wait_ok(self, path: str, deadline: float = 30) -> httpx2.Response:
        """GET ``path`` until it answers 200 (bounded): while connections are refused or the model loads."""
        end = time.monotonic() + deadline
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()}"
            try:
                response = httpx2.get(self.url + path, timeout=5)
                if response.status_code == 200:
                    return response
            except httpx2.TransportError:
                pass
            assert time.monotonic() < end, f"no 200 from {path}: {self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = Process(tmp_path_factory.mktemp("hostile") / "server.log")
    yield process
    process.stop()


def connect(server: Process) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def parse(answer: bytes) -> tuple[int, dict[str, str], dict]:
    """``(status, headers, JSON body)`` of one HTTP/1.1 answer with a Content-Length."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/json", answer
    return int(status_line.split()[1]), headers, json.loads(body[: int(headers["content-length"])])


def test_slow_headers_are_cut_off_while_others_are_served(server: Process) -> None:
    slow = connect(server)
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60  # 60 bytes, one every 0.2 s: 12 s
    sent = 0
    try:
        for byte in request:
            slow.send(bytes([byte]))
            sent += 1
            if sent == 3:  # the slow client holds its connection: everyone else is served meanwhile
                assert httpx2.get(server.url + "/health/live", timeout=10).json() == {"live": True}
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off
    assert sent < len(request), "the server let a client take 12 s over its headers"
    status, headers, body = parse(read_until_closed(slow))
    assert status == 408 and "--header-timeout" in body["error"] and headers["connection"] == "close"

    # on a keep-alive connection: one request answered, then the next one's headers stall
    keep = connect(server)
    keep.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b'{"live":true}'):
        first += keep.recv(65536)
    keep.sendall(b"GET /health/live HTTP/1.1\r\nHo")
    status, _, body = parse(read_until_closed(keep))
    assert status == 408

    # a body that the route answers without reading, sent one byte every 0.2 s: 12 s
    trickle = connect(server)
    trickle.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n")
    sent = 0
    try:
        for _ in range(60):
            trickle.send(b"a")
            sent += 1
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off
    assert sent < 60, "the server let a client trickle an unread body for 12 s"
    assert read_until_closed(trickle).endswith(b'{"live":true}')  # the answer, then the end


def test_connections_over_the_cap_get_503(server: Process) -> None:
    """Every connection slot is held by an upload in progress; further connections are answered 503 and closed at
    once, and the uploads are not disturbed."""
    image = jpeg_bytes()
    uploads = []
    for _ in range(MAX_CONNECTIONS):
        sock = connect(server)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(image) + image[:100])
        uploads.append(sock)
    try:
        extra = [connect(server) for _ in range(10)]
        for sock in extra:
            status, headers, body = parse(read_until_closed(sock))
            assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
            assert str(MAX_CONNECTIONS) in body["error"]
        refused = httpx2.get(server.url + "/health/live", timeout=10)  # an ordinary client gets the same answer
        assert refused.status_code == 503 and "retry-after" in refused.headers and "error" in refused.json()
        for sock in uploads:  # the uploads go on: each sends the rest of its image and gets its top 5
            sock.sendall(image[100:])
        for sock in uploads:
            status, _, body = parse(read_until_closed_or_answered(sock))
            assert status == 200 and len(body) == 5 and {"label", "score"} == set(body[0])
    finally:
        for sock in uploads:
            sock.close()
    server.wait_ok("/health/live")


def read_until_closed_or_answered(sock: socket.socket) -> bytes:
    """One answer with a Content-Length on a connection the server may keep open."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            if length and len(body) >= int(length.group(1)):
                return data
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk


def test_flood_beyond_the_open_file_limit(server: Process) -> None:
    """300 idle connections queue while the server is stopped, then arrive at once: more than its open-file limit.
    Each gets an answer (503 over the cap, 408 once its header time is up), accept() failures are logged a few
    lines at most, without tracebacks, and ordinary requests are answered afterwards."""
    before = server.log.read_text()
    server.proc.send_signal(signal.SIGSTOP)
    try:
        flood = [connect(server) for _ in range(300)]  # the kernel completes each handshake into the listen backlog
    finally:
        server.proc.send_signal(signal.SIGCONT)
    statuses = [parse(read_until_closed(sock))[0] for sock in flood]
    assert set(statuses) <= {503, 408} and 503 in statuses, statuses  # over the cap, or idle past the deadline
    assert server.wait_ok("/health/live").json() == {"live": True}
    log = server.log.read_text()[len(before) :]
    assert "Traceback" not in log and "Too many open files" in log, log[-3000:]
    assert len(log.splitlines()) <= 10, log  # first failure + one line per 10 s, the same for refusals


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET /health HTTP/1.1\r\n\r\n", 400, "Host"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400, "chunk"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, "Content-Length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\nabc", 400, "Content-Length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501, "chunk"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 400, "header"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n", 431, "16 KB"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "request line"),  # TLS to a plain port
    ],
    ids=["no-host", "bad-chunk", "two-lengths", "negative-length", "gzip-chunked", "nul", "200kb-header", "tls"],
)
def test_protocol_errors_are_json(server: Process, request_bytes: bytes, status: int, reason: str) -> None:
    sock = connect(server)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the 200 KB header: answered before all is read
        sock.sendall(request_bytes)
    got, headers, body = parse(read_until_closed(sock))
    assert got == status and reason in body["error"] and headers["connection"] == "close"


def test_docs_served_without_a_cdn(server: Process) -> None:
    for page in ("/docs", "/redoc"):
        html = server.wait_ok(page).text
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), html
        assets = re.findall(r'(?:src|href|url|spec-url)\s*[=:]\s*["\']([^"\']+)["\']', html)
        assert any(a.endswith(".js") for a in assets), assets
        for asset in assets:
            assert asset.startswith("/"), asset
            response = server.wait_ok(asset)
            assert len(response.content) > 0
    assert "SwaggerUIBundle" in server.wait_ok("/static-offline-docs/swagger-ui-bundle.js").text


BAD_OPTIONS = [
    ("--timeout", "inf"),
    ("--timeout", "nan"),
    ("--timeout", "1e9"),
    ("--body-timeout", "inf"),
    ("--header-timeout", "inf"),
    ("--header-timeout", "0"),
    ("--max-body-mb", "inf"),
    ("--max-body-mb", "1e7"),
    ("--max-wait-ms", "1e9"),
    ("--max-wait-ms", "nan"),
    ("--max-connections", "0"),
    ("--max-pixels", str(10**15)),
    ("--queue-size", str(10**9)),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_numeric_options_bounded(
    option: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import mobilevit.serve

    started: list[ServeConfig] = []
    monkeypatch.setattr(mobilevit.serve, "run", lambda config, **kwargs: started.append(config) or 0)
    argv = ["serve", "--model", "mobileone_s0", "--random-weights", "--port", "0", option, value]
    assert main(argv) == 2 and not started
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mobilevit serve: error: ") and option in err, err


def test_config_bounds() -> None:
    models = (ModelSpec("m"),)
    for field, value in [
        ("timeout", float("inf")),
        ("body_timeout", float("nan")),
        ("header_timeout", -1.0),
        ("max_body_mb", float("inf")),
        ("max_connections", 0),
        ("retry_after", 10**9),
    ]:
        with pytest.raises(ValueError, match=field.replace("_", "-") if field != "retry_after" else field):
            ServeConfig(models=models, **{field: value})
    with pytest.raises(ValueError, match="below --timeout"):
        ServeConfig(models=models, timeout=1.0, max_wait_ms=1000.0)
    assert ServeConfig(models=models, max_connections=5, header_timeout=0.5).max_connections == 5


def test_connection_cap_within_the_open_file_limit() -> None:
    from mobilevit.serve.connections import FILE_HEADROOM, connection_cap

    assert connection_cap(None, 128) == 128 - FILE_HEADROOM  # the default, lowered to what the limit leaves
    assert connection_cap(None, 1_000_000) == 1000
    assert connection_cap(20, 128) == 20
    with pytest.raises(ValueError, match="--max-connections 100 needs more file descriptors"):
        connection_cap(100, 128)
    with pytest.raises(ValueError, match="open-file limit"):
        connection_cap(None, FILE_HEADROOM)
