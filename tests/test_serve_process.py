"""A real ``mobilevit serve`` process on 127.0.0.1: the real Hugging Face client, curl, a mixed-load burst, a huge
upload, the HTML page in headless Chromium, and graceful shutdown on SIGTERM.

Apple's MobileOne-S0 weights are used when the shared test data is present; otherwise a random-weights checkpoint
written here (the answers are then compared to the same checkpoint run directly, so the checks still hold).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
import httpx2
from PIL import Image

from mobilevit.predict import Predictor
from test_serve import RANDOM_BYTES, S0_FILE, jpeg_bytes, photo, png_bomb

TOKEN = "process-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving_in_thread(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free local port in a daemon thread; yields its URL once ``/health`` answers."""
    import uvicorn

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "server not ready"
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    try:
        yield url
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(model name, checkpoint): the real S0 weights, or a random-weights checkpoint."""
    if S0_FILE.exists():
        return "mobileone_s0.orig_in1k_reparam", str(S0_FILE)
    import mobilevit

    folder = tmp_path_factory.mktemp("random_s0")
    mobilevit.save_pretrained(mobilevit.create_model("mobileone_s0"), folder)
    return "mobileone_s0", str(folder)


@pytest.fixture(scope="module")
def direct(weights: tuple[str, str]) -> Predictor:
    return Predictor.from_pretrained(weights[0], pretrained=weights[1])


class Server:
    """``mobilevit serve`` in a subprocess; output goes to a file (a full pipe would block the server)."""

    def __init__(self, weights: tuple[str, str], log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        name, checkpoint = weights
        cmd = [sys.executable, "-m", "mobilevit.cli", "serve", "--model", name, "--pretrained", checkpoint]
        # one PyTorch thread: the test's own clients share the machine's cores with the server
        cmd += ["--port", str(self.port), "--token", TOKEN, "--threads", "1", *extra]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, f"server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"server not ready: {log.read_text()}"
            try:
                if httpx2.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.2)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down cleanly (uvicorn re-raises the signal after its graceful exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        return code in (0, -signal.SIGTERM) and "Traceback" not in self.log.read_text()


@pytest.fixture(scope="module")
def server(weights: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = Server(weights, log, "--max-batch-size", "16", "--max-wait-ms", "5", "--max-body-mb", "2")
    yield srv
    assert srv.stop(), log.read_text()


def labels(answer: list) -> list[str]:
    return [a["label"] if isinstance(a, dict) else a.label for a in answer]


def test_huggingface_client(server: Server, direct: Predictor) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=server.url, api_key=TOKEN)
    path = photo()
    want = direct.predict(path, top_k=5)[0]
    answer = client.image_classification(path)
    assert labels(answer) == labels(want)
    assert [a.score for a in answer] == pytest.approx([p.score for p in want], abs=1e-4)
    answer = client.image_classification(path, top_k=2)  # sent as JSON with base64 "inputs"
    assert labels(answer) == labels(want)[:2]
    answer = client.image_classification(path.read_bytes(), top_k=3, function_to_apply="sigmoid")
    assert labels(answer) == labels(direct.predict(path, top_k=3, function="sigmoid")[0])
    if S0_FILE.exists():
        assert "cat" in answer[0].label


def test_curl(server: Server, direct: Predictor, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    image = tmp_path / "image.jpg"
    Image.open(photo("chelsea.png")).convert("RGB").save(image, quality=90)
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "30", *auth, "--data-binary", f"@{image}", server.url + "/"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert labels(json.loads(out.stdout)) == labels(direct.predict(image)[0])
    no_token = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{image}", server.url + "/"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert no_token.stdout == "401"


def test_huge_upload_is_refused_and_server_keeps_working(server: Server, direct: Predictor) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        r = httpx2.post(server.url + "/", content=b"\0" * (8 * 1024 * 1024), headers=headers, timeout=30)
        assert r.status_code == 413
        assert "limit" in r.json()["error"]
    except httpx2.TransportError:
        pass  # the server may close the connection before the client finished sending: also a refusal
    chunks = iter([b"\0" * 65536] * 64)  # 4 MB without Content-Length: refused while streaming
    try:
        r = httpx2.post(server.url + "/", content=chunks, headers=headers, timeout=30)
        assert r.status_code == 413
    except httpx2.TransportError:
        pass
    data = jpeg_bytes()
    r = httpx2.post(server.url + "/", content=data, headers=headers, timeout=30)
    assert r.status_code == 200
    assert labels(r.json()) == labels(direct.predict(data)[0])


def test_load_burst(server: Server, direct: Predictor) -> None:
    """500 requests at concurrency 32, a quarter of them bad: good ones all right, bad ones all 4xx, no 5xx."""
    goods = [photo(n).read_bytes() for n in ("chelsea.png", "coffee.png", "rocket.jpg")] + [jpeg_bytes()]
    want = [labels(direct.predict(g)[0]) for g in goods]
    bads = [
        (RANDOM_BYTES, {}, 400),
        (png_bomb(), {}, 400),
        (b'{"inputs": "%%%"}', {"Content-Type": "application/json"}, 400),
        (b'{"inputs": "' + base64.b64encode(goods[3]) + b'", "parameters": {"top_k": -1}}', {}, 400),
        (b"", {}, 400),
    ]

    async def burst(n: int) -> list[tuple[int, int, object]]:
        sem = asyncio.Semaphore(32)
        limits = httpx2.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx2.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

            async def one(i: int) -> tuple[int, int, object]:
                async with sem:
                    headers = {"Authorization": f"Bearer {TOKEN}"}
                    if i % 4 == 3:
                        body, extra, _ = bads[i % len(bads)]
                        r = await client.post("/", content=body, headers={**headers, **extra})
                    else:
                        r = await client.post("/", content=goods[i % len(goods)], headers=headers)
                    return i, r.status_code, r.json()

            return await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(burst(64))  # warm-up: allocator pools, thread stacks
    before = server.rss_mb()
    t0 = time.perf_counter()
    results = asyncio.run(burst(500))
    elapsed = time.perf_counter() - t0
    after = server.rss_mb()
    for i, status, body in results:
        if i % 4 == 3:
            assert status == bads[i % len(bads)][2], (i, status, body)
        else:
            assert status == 200, (i, status, body)
            assert labels(body) == want[i % len(goods)], i
    assert after - before < 100, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
    metrics = httpx2.get(server.url + "/metrics").text
    assert "mobilevit_batch_size_bucket" in metrics
    print(f"500 requests in {elapsed:.1f} s; RSS {before:.0f} -> {after:.0f} MB")


def headless_chromium(tmp_path: Path, size: str = "800,800") -> list[str]:
    """The command line of headless Chromium with a fresh profile (the test skips when it is not installed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    return [*flags, f"--window-size={size}", "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}"]


def page_dom_when(
    tmp_path: Path, url: str, ready: str, size: str = "800,800", timeout: float = 90.0, screenshot: Path | None = None
) -> str:
    """The page's DOM once the JavaScript expression ``ready`` is true, in headless Chromium driven over the DevTools
    protocol: the wait is in real time, so a page whose work (a fetch, image decodes) outlasts a loaded machine's
    virtual-time budget is still read when it is done. After ``timeout`` seconds, the DOM as it stands; with
    ``screenshot``, a PNG of the page as it stands then is written there."""
    ws_client = pytest.importorskip("websockets.sync.client")
    flags = [f for f in headless_chromium(tmp_path, size) if not f.startswith("--virtual-time-budget")]
    proc = subprocess.Popen(
        [*flags, "--remote-debugging-port=0", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        port_file, deadline = tmp_path / "profile" / "DevToolsActivePort", time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = [t for t in httpx2.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        with ws_client.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 1 << 30))

            def send(method: str, **params: object) -> dict:
                call = next(calls)
                ws.send(json.dumps({"id": call, "method": method, "params": params}))
                while (answer := json.loads(ws.recv(timeout=timeout))).get("id") != call:
                    pass  # an event, not our answer
                return answer["result"]

            def evaluate(expression: str) -> object:
                return send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            while not evaluate(f"Boolean({ready})") and time.monotonic() < deadline:
                time.sleep(0.2)
            if screenshot is not None:
                screenshot.write_bytes(base64.b64decode(send("Page.captureScreenshot", format="png")["data"]))
            return str(evaluate("document.documentElement.outerHTML"))
    finally:
        proc.kill()
        proc.wait()


def test_page_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/?demo=1&token={TOKEN}"
    flags = headless_chromium(tmp_path)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    assert dom.count('class="prediction"') == 5, dom[-2000:]
    assert '<p id="status">done</p>' in dom
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=90, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (800, 800)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, the drawn picture, the score bars: not a blank page
    green = sum(n for n, (r, g, b) in colors if (r, g, b) == (0x44, 0xAA, 0x77))  # the score bars (#4a7)
    assert green > 50


def test_graceful_shutdown(weights: tuple[str, str], tmp_path: Path) -> None:
    """SIGTERM while requests are queued: every one is answered, then the process exits cleanly."""
    srv = Server(weights, tmp_path / "server.log", "--max-batch-size", "2", "--max-wait-ms", "0")
    statuses: list[int] = []
    data = photo().read_bytes()

    def send() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        statuses.append(httpx2.post(srv.url + "/", content=data, headers=headers, timeout=60).status_code)

    threads = [threading.Thread(target=send) for _ in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while httpx2.get(srv.url + "/health").json()["models"][weights[0]]["queue"] < 8:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert srv.stop(), srv.log.read_text()
    for t in threads:
        t.join()
    assert statuses == [200] * 12


def metric(url: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus series, or None when it does not exist."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx2.get(url + "/metrics", timeout=10).text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == f"{name}{{{want}}}":
            return float(value)
    return None


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


async def read_answer(reader: asyncio.StreamReader, patience: float = 60) -> bytes:
    """What the server sends until it closes the connection, or stays silent for ``patience`` seconds."""
    data = b""
    with contextlib.suppress(TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(65536), patience):
            data += chunk
    return data


def test_startup_message(server: Server, weights: tuple[str, str]) -> None:
    """Without -v, the server still says once where it listens and what it serves (stderr)."""
    log = server.log.read_text()
    assert log.count(f"http://127.0.0.1:{server.port}") == 1, log
    assert weights[0] in log and "eager" in log


def test_head_on_get_routes(server: Server) -> None:
    for path in ("/health", "/health/live", "/", "/metrics"):
        answer = raw_exchange(server.url, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (path, answer[:300])
        assert body == b"", (path, body[:100])


def test_client_hanging_up_is_not_a_server_error(server: Server, weights: tuple[str, str]) -> None:
    """A client that goes away mid-upload is counted as 499, with no traceback in the log."""
    before = metric(server.url, "mobilevit_requests_total", model=weights[0], status="499") or 0.0
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            head = f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n"
            s.sendall(head.encode() + b"\xff" * 100)
    deadline = time.monotonic() + 30
    while (metric(server.url, "mobilevit_requests_total", model=weights[0], status="499") or 0.0) < before + 3:
        assert metric(server.url, "mobilevit_requests_total", model=weights[0], status="500") is None
        assert time.monotonic() < deadline, httpx2.get(server.url + "/metrics").text
        time.sleep(0.1)
    assert "Traceback" not in server.log.read_text()
    assert httpx2.post(server.url + "/", content=jpeg_bytes(), headers={"Authorization": f"Bearer {TOKEN}"}).is_success


def test_slow_uploads_do_not_take_the_queue(weights: tuple[str, str], tmp_path: Path) -> None:
    """Dozens of clients trickling their bodies (slowloris) while normal clients send: every normal request is
    answered 200 (a request joins the model's queue only once its body is complete), and each slow client gets a 408
    after --body-timeout."""
    srv = Server(weights, tmp_path / "server.log", "--queue-size", "4", "--max-batch-size", "4", "--body-timeout", "10")
    slow_clients, normal_requests = 32, 24
    headers = {"Authorization": f"Bearer {TOKEN}"}
    data = jpeg_bytes()

    async def scenario() -> tuple[list[int], list[bytes]]:
        stop = asyncio.Event()

        async def slow() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            head = f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n"
            writer.write(head.encode() + data[:1])
            await writer.drain()
            sent = 1
            try:
                while not stop.is_set() and sent < len(data) - 1:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
                    writer.write(data[sent : sent + 1])
                    await writer.drain()
                    sent += 1
                return await read_answer(reader)  # the server answers (408) and closes
            except ConnectionError:
                return b""  # the server closed while this client was still sending: also a refusal
            finally:
                writer.close()

        slows = [asyncio.create_task(slow()) for _ in range(slow_clients)]
        deadline = time.monotonic() + 30
        async with httpx2.AsyncClient(base_url=srv.url, timeout=60, headers=headers) as client:
            # every slow client is connected and being read (or, before the fix, holding a place in the queue)
            while True:
                receiving = metric(srv.url, "mobilevit_receiving", model=weights[0]) or 0
                queued = (await client.get("/health")).json()["models"][weights[0]]["queue"]
                if receiving == slow_clients or queued == 4:
                    break
                assert time.monotonic() < deadline, (receiving, queued)
                await asyncio.sleep(0.1)
            sem = asyncio.Semaphore(4)  # the normal clients alone never exceed the queue

            async def normal() -> int:
                async with sem:
                    return (await client.post("/", content=data)).status_code

            statuses = await asyncio.gather(*(normal() for _ in range(normal_requests)))
        stop.set()
        return list(statuses), await asyncio.gather(*slows)

    try:
        statuses, slow_answers = asyncio.run(scenario())
    finally:
        stopped = srv.stop()
    assert statuses == [200] * normal_requests
    for answer in slow_answers:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert any(answer.startswith(b"HTTP/1.1 408") for answer in slow_answers)
    assert b"--body-timeout" in next(a for a in slow_answers if a)
    assert stopped, srv.log.read_text()
