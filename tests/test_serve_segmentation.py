"""The server's image-segmentation task: a DeepLabV3 model served beside a classifier, in-process (every answer and
error) and as a real ``mobilevit serve`` process called by ``huggingface_hub``'s own ``InferenceClient`` and by the
page in headless Chromium.

The models have random weights (the answers are compared to the same model run directly by a
:class:`~mobilevit.segment.Segmenter`); inputs are 96x128, the photos scikit-image's.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
import httpx2
from starlette.testclient import TestClient

import mobilevit
from mobilevit.data.segmentation import voc_palette
from mobilevit.predict import Predictor
from mobilevit.segment import Segmentation, Segmenter
from mobilevit.serve import ModelSpec, ServeConfig, create_app
from mobilevit.serve.page import PAGE
from mobilevit.weights.entries import VOC_LABELS, Preprocess
from test_serve import photo, wait_ready
from test_serve_process import free_port, page_dom_when

TOKEN = "seg-token"
PREPROCESS = Preprocess(
    (96, 128), 96, 1.0, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB", resize_mode="exact"
)
# names without "background", so that every class is tinted on the page
PAGE_LABELS = [f"thing_{i}" for i in range(21)]


def save_model(folder: Path, labels: list[str]) -> Path:
    """DeepLabV3-MobileOne-S0 with random weights: it gives three classes on any photo (background, sofa, cat with
    these labels); its classifier is scaled down so that their softmax scores differ instead of all rounding to 1."""
    torch.manual_seed(0)
    model = mobilevit.create_model("deeplabv3_mobileone_s0")
    with torch.no_grad():
        model.get_classifier().weight.mul_(1e-4)
    mobilevit.save_pretrained(model, folder, labels=labels, preprocess=PREPROCESS)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_segmentation")
    mobilevit.save_pretrained(mobilevit.create_model("mobileone_s0"), root / "classifier")
    return {
        "seg": save_model(root / "seg", list(VOC_LABELS)),
        "page": save_model(root / "page", PAGE_LABELS),
        "classifier": root / "classifier",
    }


@pytest.fixture(scope="module")
def segmenter(folders: dict[str, Path]) -> Segmenter:
    return Segmenter.from_pretrained(str(folders["seg"]))


@pytest.fixture(scope="module")
def classifier(folders: dict[str, Path]) -> Predictor:
    return Predictor.from_pretrained(str(folders["classifier"]))


@pytest.fixture(scope="module")
def client(segmenter: Segmenter, classifier: Predictor) -> Iterator[TestClient]:
    config = ServeConfig(models=(ModelSpec("seg", False), ModelSpec("cls", False)), max_batch_size=4, max_wait_ms=2)
    app = create_app(config, loaders={"seg": lambda: segmenter, "cls": lambda: classifier})
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def image_bytes(name: str = "coffee.png", size: tuple[int, int] = (150, 100)) -> bytes:
    buffer = io.BytesIO()
    Image.open(photo(name)).convert("RGB").resize(size).save(buffer, "PNG")
    return buffer.getvalue()


def masks(answer: list[dict]) -> dict[str, np.ndarray]:
    decoded = {}
    for segment in answer:
        mask = Image.open(io.BytesIO(base64.b64decode(segment["mask"])))
        assert mask.mode == "L" and mask.format == "PNG"
        decoded[segment["label"]] = np.asarray(mask)
    return decoded


def assert_answer_is(answer: list[dict], expected: Segmentation) -> None:
    """One segment per class present, in class order, each mask 255 exactly where the segmenter gave that class."""
    present = sorted(c["index"] for c in expected.classes())
    assert [s["label"] for s in answer] == [VOC_LABELS[i] for i in present]
    decoded = masks(answer)
    for index in present:
        mask = decoded[VOC_LABELS[index]]
        assert mask.shape == expected.size and set(np.unique(mask).tolist()) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, expected.mask == index)
    assert sum((m == 255).astype(int) for m in decoded.values()).min() == 1  # every pixel in exactly one mask
    assert [s["score"] for s in answer] == pytest.approx([float(expected.scores[i]) for i in present], abs=1e-5)


def test_segmentation_answer(client: TestClient, segmenter: Segmenter) -> None:
    data = image_bytes(size=(150, 100))
    answer = client.post("/models/seg", content=data).json()
    expected = segmenter.segment(data, scores=True)[0]
    assert len(answer) >= 2 and all(set(s) == {"label", "score", "mask"} for s in answer)
    assert_answer_is(answer, expected)
    assert expected.size == (100, 150)  # the image's own size, not the model's 96x128
    # the first model answers POST / too; JSON with base64 inputs and the client's parameters
    payload = {"inputs": base64.b64encode(data).decode(), "parameters": {"subtask": "semantic", "mask_threshold": 0.5}}
    assert client.post("/", json=payload).json() == answer


def test_threshold_leaves_out_low_scores(client: TestClient, segmenter: Segmenter) -> None:
    data = image_bytes("chelsea.png", (120, 120))
    scores = sorted(s["score"] for s in client.post("/models/seg", content=data).json())
    assert len(scores) >= 2
    cut = (scores[0] + scores[1]) / 2
    payload = {"inputs": base64.b64encode(data).decode(), "parameters": {"threshold": cut}}
    kept = client.post("/models/seg", json=payload).json()
    assert sorted(s["score"] for s in kept) == pytest.approx(scores[1:])


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"subtask": "instance"}, "semantic segmentation only"),
        ({"top_k": 3}, "unknown parameters ['top_k'] for image segmentation"),
        ({"threshold": 2}, "threshold must be a number between 0 and 1"),
        ({"mask_threshold": "high"}, "mask_threshold must be a number between 0 and 1"),
    ],
)
def test_bad_segmentation_requests_are_400(client: TestClient, parameters: dict, message: str) -> None:
    payload = {"inputs": base64.b64encode(image_bytes()).decode(), "parameters": parameters}
    response = client.post("/models/seg", json=payload)
    assert response.status_code == 400 and message in response.json()["error"]


def test_bad_image_is_400_and_the_server_keeps_serving(client: TestClient, segmenter: Segmenter) -> None:
    response = client.post("/models/seg", content=b"\x89PNG\r\n\x1a\n not really")
    assert response.status_code == 400 and "image" in response.json()["error"]
    data = image_bytes("rocket.jpg", (90, 140))
    assert_answer_is(client.post("/models/seg", content=data).json(), segmenter.segment(data, scores=True)[0])


def test_classifier_beside_the_segmentation_model(client: TestClient, classifier: Predictor) -> None:
    data = image_bytes()
    answer = client.post("/models/cls", content=data).json()
    assert [a["label"] for a in answer] == [p.label for p in classifier.predict(data)[0]]
    assert all(set(a) == {"label", "score"} for a in answer)
    payload = {"inputs": base64.b64encode(data).decode(), "parameters": {"subtask": "semantic"}}
    response = client.post("/models/cls", json=payload)
    assert response.status_code == 400 and "for image classification" in response.json()["error"]
    health = client.get("/health").json()
    assert {name: m["task"] for name, m in health["models"].items()} == {"seg": "segmentation", "cls": "classification"}
    assert '<select id="models">' in client.get("/").text


def test_model_labels_route(client: TestClient, classifier: Predictor) -> None:
    """``GET /models/NAME/labels``: what the page reads to colour each class by its index."""
    assert client.get("/models/seg/labels").json() == {"labels": list(VOC_LABELS)}
    assert client.get("/models/cls/labels").json() == {"labels": list(classifier.labels)}
    response = client.get("/models/nope/labels")
    assert response.status_code == 404 and "no model 'nope'" in response.json()["error"]


def page_functions(*names: str) -> str:
    """The source of the page script's top-level functions ``names``."""
    found = [re.search(rf"^(?:async )?function {name}\(.*?^}}$", PAGE, re.S | re.M) for name in names]
    missing = [name for name, match in zip(names, found, strict=True) if match is None]
    assert not missing, f"the page script has no function {', '.join(missing)}"
    return "\n".join(match.group(0) for match in found if match is not None)


def test_page_script_colours_classes_by_index_with_the_voc_palette() -> None:
    """The page's own functions, run in Node: class index i takes the VOC palette's colour i (the mask PNGs' and
    ``mobilevit segment``'s), each answer element's index is found from the model's labels in class order (a repeated
    label too), and a class that won too few pixels to show a share reads ``<0.1%``, never ``0.0%``."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = (
        page_functions("vocColour", "classIndices", "shareText")
        + """
    console.log(JSON.stringify({
      palette: Array.from({length: 256}, (_, i) => vocColour(i)),
      wrapped: vocColour(256 + 15),
      indices: classIndices([{label: "b"}, {label: "x"}, {label: "b"}, {label: "zz"}], ["a", "b", "x", "b"]),
      shares: [shareText(1, 1000000), shareText(499, 1000000), shareText(600, 1000000), shareText(1, 3)],
    }));"""
    )
    result = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout)
    assert result["palette"] == voc_palette().tolist()
    assert result["wrapped"] == voc_palette()[15].tolist()  # the PNGs' palette has 256 entries: index & 255
    assert result["indices"] == [1, 2, 3, -1]
    assert result["shares"] == ["<0.1% of the image", "<0.1% of the image", "0.1% of the image", "33.3% of the image"]


# ------------------------------------------------------------------------------------------------- a real process


@pytest.fixture(scope="module")
def served(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``mobilevit serve`` with the segmentation models and the classifier side by side (the classifier first): its
    URL and process id."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_seg_log") / "server.log"
    models = [f"cls={folders['classifier']}", f"seg={folders['seg']}", f"page={folders['page']}"]
    cmd = [sys.executable, "-m", "mobilevit.cli", "serve", *(w for m in models for w in ("--model", m))]
    cmd += ["--port", str(port), "--token", TOKEN, "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"server exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"server not ready: {log.read_text()}"
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    yield url, proc.pid
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(served: tuple[str, int]) -> str:
    return served[0]


def test_huggingface_client(server: str, segmenter: Segmenter, classifier: Predictor, tmp_path: Path) -> None:
    """The real ``InferenceClient.image_segmentation``, unmodified, against the segmentation route."""
    from huggingface_hub import InferenceClient

    path = tmp_path / "photo.jpg"
    Image.open(photo("chelsea.png")).convert("RGB").resize((160, 110)).save(path, quality=95)
    expected = segmenter.segment(path, scores=True)[0]
    client = InferenceClient(base_url=f"{server}/models/seg", api_key=TOKEN)
    answer = client.image_segmentation(path)  # raw bytes
    present = sorted(c["index"] for c in expected.classes())
    assert [a.label for a in answer] == [VOC_LABELS[i] for i in present]
    for element, index in zip(answer, present, strict=True):
        assert isinstance(element.mask, Image.Image) and element.mask.size == (160, 110)
        np.testing.assert_array_equal(np.asarray(element.mask) == 255, expected.mask == index)
        assert element.score == pytest.approx(float(expected.scores[index]), abs=1e-5)
    # with parameters the client sends JSON with base64 inputs
    cut = sorted(a.score for a in answer)[1]
    kept = client.image_segmentation(path.read_bytes(), subtask="semantic", threshold=cut)
    assert [a.label for a in kept] == [a.label for a in answer if a.score >= cut]
    # the classifier, first --model, answers POST / and its own route with the client's classification call
    labels = [p.label for p in classifier.predict(path, top_k=3)[0]]
    assert [
        a.label for a in InferenceClient(base_url=server, api_key=TOKEN).image_classification(path, top_k=3)
    ] == labels
    classify = InferenceClient(base_url=f"{server}/models/cls", api_key=TOKEN).image_classification
    assert [a.label for a in classify(path, top_k=3)] == labels


def memory(pid: int, key: str) -> int:
    """A process's ``VmRSS`` or ``VmHWM`` (its peak) in bytes."""
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{key}:", 1)[1].split("kB", 1)[0]) * 1024


def test_a_long_thin_image_is_answered_in_bounded_memory(served: tuple[str, int]) -> None:
    """A 1,000,000x1 PNG (a few KB) to the real server: 200 with a mask of that size per class, and the server's peak
    resident memory rises by a few tiles of logits, not ``num_classes`` floats per image column (~0.7 GB here)."""
    url, pid = served
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the server's VmHWM := its VmRSS
    except OSError:
        pytest.skip("no /proc/PID/clear_refs to reset the peak resident memory (Linux only)")
    before = memory(pid, "VmRSS")
    stripes = np.zeros((1, 1_000_000, 3), np.uint8)
    stripes[0, :, 0] = np.arange(1_000_000) // 1000 % 2 * 255
    buffer = io.BytesIO()
    Image.fromarray(stripes).save(buffer, "PNG")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx2.post(f"{url}/models/seg", content=buffer.getvalue(), headers=headers, timeout=120)
    growth = memory(pid, "VmHWM") - before
    assert response.status_code == 200, response.text[:500]
    decoded = masks(response.json())
    assert decoded and all(mask.shape == (1, 1_000_000) for mask in decoded.values())
    assert (sum((mask == 255).astype(np.int32) for mask in decoded.values()) == 1).all()  # each pixel in one mask
    assert growth < 256 << 20, f"the server's peak memory rose by {growth >> 20} MB"


def test_page_shows_the_overlay_in_headless_chromium(server: str, tmp_path: Path) -> None:
    url = f"{server}/?demo=1&model=page&token={TOKEN}"
    status = 'document.getElementById("status").textContent'
    dom = page_dom_when(tmp_path, url, f'["done", "failed"].includes({status})', "800,900")
    shown = re.findall(r'<p id="(?:status|error)"[^>]*>.*?</p>', dom)  # what the page says when a check fails
    assert '<p id="status">done</p>' in dom and dom.count('class="segment"') >= 1, shown or dom[-3000:]
    assert 'class="overlay"' in dom, dom[-3000:]
    tinted = int(dom.split('data-tinted="', 1)[1].split('"', 1)[0])
    # the demo picture is 224x224 and no class is called background: every pixel tinted
    assert tinted == 224 * 224, dom[-3000:]
    assert '<option value="seg">seg (segmentation)</option>' in dom, dom[:3000]
    # each class in the colour of its index in the VOC palette, as in the mask PNGs and `mobilevit segment`'s overlays
    rows = re.findall(r'<tr class="segment".*?<span class="swatch" style="background: rgb\((\d+), (\d+), (\d+)\);">'
                      r"</span> <span>([^<]*)</span>", dom)  # fmt: skip
    assert len(rows) == dom.count('class="segment"'), dom[-3000:]
    for *colour, label in rows:
        assert [int(c) for c in colour] == voc_palette()[PAGE_LABELS.index(label)].tolist(), (label, colour)
    assert ">0.0% of the image<" not in dom and dom.count("% of the image</td>") == len(rows)
