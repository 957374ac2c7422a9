"""Outputs that are NaN or infinite never become an answer: the predictor and the segmenter refuse them whatever the
backend, the CLI (predict, segment, eval) fails with one line naming the model, and the server answers a JSON 500
logged once without a traceback, with ``/health`` reporting the model as failing until a finite answer."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mobilevit
from mobilevit.cli import main
from mobilevit.predict import Predictor
from mobilevit.segment import Segmenter
from mobilevit.weights.entries import IMAGENET_MEAN, IMAGENET_STD, Preprocess

LABELS = ["ant", "bee", "wasp"]
CLASSIFY = Preprocess((64, 64), 64, 1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "RGB")
SEGMENT = Preprocess((64, 64), 64, 1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "RGB", resize_mode="exact")


@pytest.fixture(scope="module")
def nan_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileOne-S0 with 3 classes whose head gives one NaN logit (the weights of class 1 are NaN), saved."""
    model = mobilevit.create_model("mobileone_s0", num_classes=3).eval()
    with torch.no_grad():
        model.head.fc.weight[1] = float("nan")
    return mobilevit.save_pretrained(model, tmp_path_factory.mktemp("nan") / "classifier", LABELS, CLASSIFY)


@pytest.fixture(scope="module")
def nan_segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepLabV3-MobileOne-S0 with 3 classes whose classifier weights are NaN, saved."""
    model = mobilevit.create_model("deeplabv3_mobileone_s0", num_classes=3).eval()
    with torch.no_grad():
        model.head.classifier.weight.fill_(float("nan"))
    return mobilevit.save_pretrained(model, tmp_path_factory.mktemp("nan") / "segmenter", LABELS, SEGMENT)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree (one PNG per class) that doubles as an ``images/`` + ``masks/`` segmentation set."""
    root = tmp_path_factory.mktemp("data")
    for i, label in enumerate(LABELS):
        (root / "tree" / label).mkdir(parents=True)
        Image.new("RGB", (48, 40), (60 * i, 100, 200)).save(root / "tree" / label / f"{label}.png")
    (root / "seg" / "images").mkdir(parents=True)
    (root / "seg" / "masks").mkdir(parents=True)
    Image.new("RGB", (48, 40), (10, 100, 200)).save(root / "seg" / "images" / "a.png")
    Image.fromarray(np.ones((40, 48), np.uint8)).save(root / "seg" / "masks" / "a.png")
    return root


def one_error_line(err: str, model: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "non-finite" in lines[0] and model in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def predictor(nan_classifier: Path) -> Predictor:
    return Predictor.from_pretrained(str(nan_classifier))


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_predictor_refuses_a_nan_logit(predictor: Predictor, function: str) -> None:
    """One NaN among three logits: a NaN softmax, and a NaN score beside finite ones for sigmoid and none."""
    from mobilevit.errors import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError, match=r"mobileone_s0 .*classifier.*non-finite"):
        predictor.predict(np.zeros((40, 48, 3), np.uint8), top_k=1, function=function)


def test_every_backend_is_checked_where_the_answer_is_made() -> None:
    """The check is in the predictor's top-k and the segmenter's post-processing, not in one runtime: logits made
    non-finite by hand (as any runtime could return them) are refused, including an infinity that sigmoid would map
    to a finite 1.0."""
    from mobilevit.errors import NonFiniteOutputError

    predictor = Predictor(nn.Linear(3, 3), CLASSIFY, LABELS, fold=False)
    for bad in (float("nan"), float("inf"), -float("inf")):
        logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, bad, 2.0]])
        with pytest.raises(NonFiniteOutputError, match="for 1 of 2 images"):
            predictor.topk(logits, 3, "sigmoid")
    assert [p.label for p in predictor.topk(torch.tensor([[0.0, 5.0, 1.0]]), 3)[0]] == ["bee", "wasp", "ant"]


def test_cli_predict_fails_naming_the_model(nan_classifier: Path, images: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["predict", str(images / "tree" / "ant" / "ant.png"), "--model", str(nan_classifier)])
    out, err = capsys.readouterr()
    assert code != 0 and "nan" not in out.lower()
    assert one_error_line(err, str(nan_classifier)).startswith("mobilevit predict: error: mobileone_s0")


def test_cli_eval_fails_instead_of_scoring(nan_classifier: Path, images: Path, capsys: pytest.CaptureFixture) -> None:
    """On main, all-NaN scores sort to the first class, so this reports a top-1 of 1/3: never a score."""
    code = main(["eval", str(images / "tree"), "--model", str(nan_classifier), "--no-progress"])
    out, err = capsys.readouterr()
    assert code != 0 and "top-1" not in out
    one_error_line(err, str(nan_classifier))


def test_cli_segment_and_eval_fail_naming_the_model(
    nan_segmenter: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = images / "seg" / "images" / "a.png"
    code = main(["segment", str(image), "--model", str(nan_segmenter), "--output", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code != 0 and not list((tmp_path / "out").glob("*.png"))
    one_error_line(err, str(nan_segmenter))
    code = main(["eval", str(images / "seg"), "--model", str(nan_segmenter), "--task", "segmentation"])
    out, err = capsys.readouterr()
    assert code != 0 and "mIoU" not in out
    one_error_line(err, str(nan_segmenter))


# ------------------------------------------------------------------------------------------------------ the server


class Flaky(nn.Module):
    """3 classes: the mean of each input channel, all NaN for a bright image (its mean above 0.5)."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean((2, 3))  # [B, 3, H, W] -> [B, 3]
        bright = means.mean(1, keepdim=True) > 0.5
        return torch.where(bright, torch.full_like(means, float("nan")), means)


def wait_loaded(client: object, name: str) -> None:
    """Until the model is loaded (``/health`` gives its task), whatever its health says."""
    deadline = time.monotonic() + 60
    while "task" not in client.get("/health").json()["models"][name]:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.02)


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_server_answers_500_json_and_health_fails_until_a_finite_answer(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from mobilevit.serve import ModelSpec, ServeConfig, create_app

    plain = Preprocess((32, 32), 32, 1.0, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB")
    predictor = Predictor(Flaky(), plain, LABELS, fold=False)
    config = ServeConfig(models=(ModelSpec("flaky", False),), max_wait_ms=0)
    with TestClient(create_app(config, loaders={"flaky": lambda: predictor})) as client:
        wait_loaded(client, "flaky")
        assert client.get("/health").json()["status"] == "ok"
        dark = client.post("/", content=png((10, 20, 30)))
        assert dark.status_code == 200 and [a["label"] for a in dark.json()] == ["wasp", "bee", "ant"]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mobilevit"):
            bright = client.post("/", content=png((250, 250, 250)))
        assert bright.status_code == 500 and bright.headers["content-type"] == "application/json"
        assert "non-finite" in bright.json()["error"] and "flaky" in bright.json()["error"]
        logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(logged) == 1 and logged[0].exc_info is None and "non-finite" in logged[0].getMessage()
        health = client.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "failing" and body["ready"] is False
        assert body["models"]["flaky"]["ready"] is False and "non-finite" in body["models"]["flaky"]["error"]
        assert 'mobilevit_model_ready{model="flaky"} 0.0' in client.get("/metrics").text
        # a finite answer clears it: one odd input does not keep a healthy model out of rotation
        assert client.post("/", content=png((10, 20, 30))).status_code == 200
        assert client.get("/health").status_code == 200


def test_segmentation_server_fails_from_start_up(nan_segmenter: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from mobilevit.serve import ModelSpec, ServeConfig, create_app

    segmenter = Segmenter.from_pretrained(str(nan_segmenter))
    config = ServeConfig(models=(ModelSpec("voc", False),))
    with TestClient(create_app(config, loaders={"voc": lambda: segmenter})) as client:
        wait_loaded(client, "voc")
        assert client.get("/health").json()["status"] == "failing"  # its warm-up forward pass already gave NaN
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mobilevit"):
            answer = client.post("/", content=png((10, 20, 30)))
        assert answer.status_code == 500 and "non-finite" in answer.json()["error"]
        assert not [r for r in caplog.records if r.exc_info is not None]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failing"
