"""The server's object-detection task, called by ``huggingface_hub``'s own ``InferenceClient.object_detection``.

The served model is the stub detector of ``tests/test_detection_task.py`` (it finds each red square exactly, as
"person"), beside a classifier, in a real uvicorn server run in this process (a thread), so that the client talks
HTTP to it unmodified.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx2
import uvicorn

import mobilevit
from mobilevit.predict import Predictor
from mobilevit.runner import Runner
from mobilevit.serve import ModelSpec, ServeConfig, create_app
from test_detection_task import STUB_PREPROCESS, StubDetector, _red_square
from test_serve_process import free_port


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    detector = Runner(StubDetector(), STUB_PREPROCESS)
    classifier = Predictor.from_model(mobilevit.create_model("mobileone_s0"), pretrained=False)
    config = ServeConfig(models=(ModelSpec("cls", False), ModelSpec("det", False)), max_batch_size=4, max_wait_ms=2)
    app = create_app(config, loaders={"det": lambda: detector, "cls": lambda: classifier})
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
    yield url
    uv.should_exit = True
    thread.join(timeout=30)


def test_huggingface_client_object_detection(server: str, tmp_path: Path) -> None:
    from huggingface_hub import InferenceClient

    path = tmp_path / "square.png"
    _red_square((64, 48), (1, 2)).save(path)
    client = InferenceClient(base_url=f"{server}/models/det")
    (found,) = client.object_detection(path)  # raw bytes, the default threshold
    assert found.label == "person" and found.score > 0.99
    box = found.box
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == pytest.approx((16.0, 24.0, 32.0, 36.0), abs=1e-4)
    assert client.object_detection(path.read_bytes(), threshold=1.0) == []  # JSON with base64 and parameters
    assert [d.label for d in client.object_detection(path.read_bytes(), threshold=0.9)] == ["person"]
    # the classifier beside it
    assert len(InferenceClient(base_url=f"{server}/models/cls").image_classification(path, top_k=2)) == 2


def test_bad_threshold_is_400(server: str) -> None:
    import base64
    import io

    buffer = io.BytesIO()
    _red_square((32, 32), (0, 0)).save(buffer, "PNG")
    body = {"inputs": base64.b64encode(buffer.getvalue()).decode(), "parameters": {"threshold": 2}}
    answer = httpx2.post(f"{server}/models/det", json=body, timeout=30)
    assert answer.status_code == 400 and "threshold" in answer.json()["error"]
