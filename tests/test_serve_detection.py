"""The server's object-detection task, called by ``huggingface_hub``'s own ``InferenceClient.object_detection`` and
drawn by the page in headless Chromium.

The served model is the stub detector of ``tests/test_detection_task.py`` (it finds each red square exactly, as
"person"), beside a classifier, in a real uvicorn server run in this process (a thread), so that the client and the
browser talk HTTP to it unmodified.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx2
from PIL import Image

import mobilevit
from mobilevit.predict import Predictor
from mobilevit.runner import Runner
from mobilevit.serve import ModelSpec, ServeConfig, create_app
from mobilevit.tasks.detection import box_colour
from test_detection_task import STUB_PREPROCESS, StubDetector, _red_square
from test_serve_process import page_dom_when, serving_in_thread


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    detector = Runner(StubDetector(), STUB_PREPROCESS)
    classifier = Predictor.from_model(mobilevit.create_model("mobileone_s0"), pretrained=False)
    config = ServeConfig(models=(ModelSpec("cls", False), ModelSpec("det", False)), max_batch_size=4, max_wait_ms=2)
    app = create_app(config, loaders={"det": lambda: detector, "cls": lambda: classifier})
    with serving_in_thread(app) as url:
        yield url


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


def test_page_draws_the_boxes_in_headless_chromium(server: str, tmp_path: Path) -> None:
    """The page's demo picture (224x224, red 136/255 but for an orange disc of red 238/255 and radius 70 in its centre
    and a dark bar near its bottom) through the stub detector, at the threshold set on the page, 0.99: of its 4x4 grid
    of 56-pixel cells, only the four in the centre are mostly disc (red mean 0.92, "person" at 0.9998); the others'
    red means are 0.58 at most (0.84), so the default threshold 0.5 would keep eight more. Each box is listed and drawn
    inside its edges in the person's colour of ``mobilevit detect``'s pictures."""
    shot = tmp_path / "page.png"
    url = f"{server}/?demo=1&model=det&threshold=0.99"
    status = 'document.getElementById("status").textContent'
    dom = page_dom_when(tmp_path, url, f'["done", "failed"].includes({status})', screenshot=shot)
    shown = re.findall(r'<p id="(?:status|error)"[^>]*>.*?</p>', dom)  # what the page says when a check fails
    assert '<p id="status">done</p>' in dom, shown or dom[-3000:]
    assert '<label id="threshold-control">' in dom  # shown (not hidden) for a model that takes a threshold
    parameters = {name: model["parameters"] for name, model in httpx2.get(f"{server}/health").json()["models"].items()}
    assert parameters["det"]["threshold"]["default"] == 0.5 and "threshold" not in parameters["cls"]  # what it reads
    rows = re.findall(r'<tr class="detection">.*?<span>([^<]*)</span></td><td>([^<]*)</td><td>([^<]*)</td>', dom)
    found = sorted(tuple(float(v) for v in box.split(", ")) for _, _, box in rows)
    assert found == [(56, 56, 112, 112), (56, 112, 112, 168), (112, 56, 168, 112), (112, 112, 168, 168)], rows
    assert {label for label, _, _ in rows} == {"person"} and all(float(score) > 0.99 for _, score, _ in rows)
    assert 'data-boxes="4"' in dom
    # the screenshot: the picture at its own size (its background colour's extent), each box's edges in its colour
    pixels = Image.open(shot).convert("RGB")
    background = [(x, y) for x in range(pixels.width) for y in range(pixels.height)
                  if pixels.getpixel((x, y)) == (0x88, 0xAA, 0xCC)]  # fmt: skip
    left, top = min(x for x, _ in background), min(y for _, y in background)
    assert (max(x for x, _ in background) - left, max(y for _, y in background) - top) == (223, 223)
    person = box_colour(1)

    def is_person(x: int, y: int) -> bool:  # within a few units: the canvas may round a colour by one
        return max(abs(a - b) for a, b in zip(pixels.getpixel((left + x, top + y)), person, strict=True)) <= 3

    labels = (*range(58, 72), *range(114, 128))  # the rows of the labels' text (12 px, 2 px below the box's top)
    for edge in (56, 57, 110, 111, 112, 113, 166, 167):  # each box's 2-pixel line, inside the box
        for along in range(56, 168):
            assert is_person(along, edge), ("row", edge, along)
            if along not in labels:  # a label is wider than its box
                assert is_person(edge, along), ("column", edge, along)
    for outside in (55, 168):  # just outside the boxes: the picture
        assert not is_person(outside, 140) and not is_person(140, outside)
