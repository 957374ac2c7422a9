"""The server's answers for an instance segmentation model, called by ``huggingface_hub``'s own ``InferenceClient``:
``object-detection`` (boxes) at ``/models/NAME`` and ``image-segmentation`` (one entry per instance: label, score,
mask) at ``/models/NAME/pipeline/image-segmentation``, Hugging Face's route for a model of several tasks.

The served model is the stub Mask R-CNN of ``tests/test_instance_segmentation.py`` (a red grid cell is a "person" at
0.9, a green one a "car" at 0.8, each box and mask exactly its cell), beside a classifier, in a real uvicorn server
run in this process (a thread). The openapi schema lists both answers.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("pycocotools")
import httpx2

from mobilevit.runner import Runner
from mobilevit.serve import ModelSpec, ServeConfig, create_app
from test_instance_segmentation import StubMaskRCNN, _cell, _picture
from test_serve_process import serving_in_thread


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    segmenter = Runner.from_model(StubMaskRCNN())
    config = ServeConfig(models=(ModelSpec("inst", False),), max_batch_size=4, max_wait_ms=2)
    app = create_app(config, loaders={"inst": lambda: segmenter})
    with serving_in_thread(app) as url:
        yield url


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    _picture((64, 48), (1, 2), (3, 0)).save(path)
    return path


def test_object_detection(server: str, picture: Path) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=f"{server}/models/inst")
    person, car = client.object_detection(picture)  # raw bytes, the default threshold 0.5
    assert (person.label, car.label) == ("person", "car") and person.score == pytest.approx(0.9)
    assert (person.box.xmin, person.box.ymin, person.box.xmax, person.box.ymax) == (16, 24, 32, 36)
    assert [d.label for d in client.object_detection(picture.read_bytes(), threshold=0.85)] == ["person"]
    same = InferenceClient(base_url=f"{server}/models/inst/pipeline/object-detection").object_detection(picture)
    assert [d.label for d in same] == ["person", "car"]


def test_image_segmentation_one_entry_per_instance(server: str, picture: Path) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=f"{server}/models/inst/pipeline/image-segmentation")
    person, car = client.image_segmentation(picture)  # raw bytes: the defaults
    assert (person.label, car.label) == ("person", "car")
    assert (person.score, car.score) == pytest.approx((0.9, 0.8))
    for found, cell in ((person, (1, 2)), (car, (3, 0))):
        assert found.mask.mode == "L" and found.mask.size == (64, 48)
        assert np.array_equal(np.asarray(found.mask), _cell((64, 48), cell)[1] * 255)
    kept = client.image_segmentation(picture.read_bytes(), threshold=0.85, mask_threshold=0.5, subtask="instance")
    assert [s.label for s in kept] == ["person"]


def test_wrong_pipeline_or_parameters(server: str, picture: Path) -> None:
    body = {"inputs": base64.b64encode(picture.read_bytes()).decode()}
    answer = httpx2.post(f"{server}/models/inst/pipeline/image-classification", json=body, timeout=30)
    assert answer.status_code == 404
    assert answer.json()["error"] == (
        "instance segmentation models answer object-detection and image-segmentation, not 'image-classification'"
    )
    bad = {**body, "parameters": {"subtask": "semantic"}}
    answer = httpx2.post(f"{server}/models/inst/pipeline/image-segmentation", json=bad, timeout=30)
    assert answer.status_code == 400 and "instance" in answer.json()["error"]
    bad = {**body, "parameters": {"mask_threshold": 0.5}}  # an image-segmentation parameter, at object-detection
    assert httpx2.post(f"{server}/models/inst", json=bad, timeout=30).status_code == 400
    assert httpx2.post(f"{server}/models/nothing/pipeline/object-detection", json=body).status_code == 404
    schema = httpx2.get(f"{server}/openapi.json").json()
    answers = schema["paths"]["/models/{name}/pipeline/{hf_task}"]["post"]["responses"]["200"]
    masks = [a for a in answers["content"]["application/json"]["schema"]["anyOf"] if "mask" in str(a)]
    assert any("255 inside the instance" in str(a) for a in masks)
