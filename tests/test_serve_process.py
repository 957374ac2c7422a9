"""A real ``mobilevit serve`` process on 127.0.0.1: the real Hugging Face client, curl, a mixed-load burst, a huge
upload, the HTML page in headless Chromium, and graceful shutdown on SIGTERM.

Apple's MobileOne-S0 weights are used when the shared test data is present; otherwise a random-weights checkpoint
written here (the answers are then compared to the same checkpoint run directly, so the checks still hold).
"""

from __future__ import annotations

import asyncio
import base64
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
    import json

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


def test_page_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    url = f"{server.url}/?demo=1&token={TOKEN}"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    flags += ["--window-size=800,800", "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    assert dom.count('class="prediction"') == 5, dom[-2000:]
    assert "done" in dom
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
