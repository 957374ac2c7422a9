"""A new task is a task object and a model: nothing else in the package changes.

The throwaway "mean colour" task below (a model that averages each channel's pixels, its typed result, a mean absolute
error metric for ``eval``, a JSON answer for the server) is defined and registered here, as ``docs/architecture.md``
describes, and then runs through the runner (eager and exported), ``eval`` (the library and the command line),
``serve`` and ONNX export without any other change. The expected values are facts of the inputs: an image of one
colour ``(r, g, b)``, scaled to [0, 1] with no mean or std and resized (which keeps a uniform image uniform), averages
to ``(r, g, b) / 255``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient
from torch import Tensor, nn

from mobilevit.cli import main
from mobilevit.errors import UsageError
from mobilevit.evaluate import evaluate_set
from mobilevit.export import export_model
from mobilevit.runner import Runner, load_runner
from mobilevit.serve import ModelSpec, ServeConfig
from mobilevit.serve.app import create_app
from mobilevit.tasks import Task, register_task, unregister_task
from mobilevit.tasks.base import shard, sum_across_ranks
from mobilevit.weights.entries import Preprocess
from mobilevit.weights.pretrained import PretrainedCfg

COLOURS = [(255, 0, 0), (0, 128, 255), (10, 200, 30), (90, 90, 90)]
PREPROCESS = Preprocess(
    input_size=(32, 32),
    resize_size=32,
    crop_pct=1.0,
    interpolation="bilinear",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    channel_order="RGB",
    resize_mode="exact",
)


@dataclass(frozen=True)
class MeanColour:
    """The result: each channel's mean, in [0, 1]."""

    red: float
    green: float
    blue: float

    def to_dict(self) -> dict[str, float]:
        return {"red": self.red, "green": self.green, "blue": self.blue}


class MeanColourTask(Task):
    name = "mean_colour"
    hf_task = "image-feature-extraction"
    title = "mean colour"
    model_kind = "a mean colour model"
    output_axes = ("batch", "channels")
    parameter_schema: ClassVar[dict[str, dict[str, Any]]] = {"percent": {"type": "boolean", "default": False}}
    answer_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {c: {"type": "number"} for c in ("red", "green", "blue")},
    }
    data_help = "a folder of images named <r>_<g>_<b>.png"

    def postprocess(self, runner: Any, outputs: Tensor, context: Any = None, percent: bool = False) -> MeanColour:
        scale = 100.0 if percent else 1.0
        return MeanColour(*(float(v) * scale for v in outputs))

    def evaluate(
        self, runner: Any, data: str, split: str | None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        files, world = shard(sorted(Path(data).glob("*.png")))
        errors = []
        for path, result in runner.run_files(files, progress):
            truth = np.array([int(x) for x in Path(path).stem.split("_")]) / 255.0
            errors.append(np.abs(np.array(list(result.to_dict().values())) - truth).mean())
        counts = torch.tensor([float(sum(errors)), float(len(errors))], dtype=torch.float64)
        sum_across_ranks(counts, [], world)
        return {"mae": float(counts[0] / counts[1]), "count": int(counts[1]), "failed": []}

    def eval_summary(self, model: str, result: dict[str, Any]) -> str:
        return f"{model}: mean absolute error {result['mae']:.6f} ({result['count']} images)"

    def read_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        percent = params.get("percent", False)
        if not isinstance(percent, bool):
            raise UsageError(f"percent must be true or false, got {percent!r}")
        return {"percent": percent}

    def encode(self, result: MeanColour, options: dict[str, Any]) -> dict[str, float]:
        return result.to_dict()


class MeanColourModel(nn.Module):
    """Averages each channel's pixels: ``[B, 3, H, W] -> [B, 3]``."""

    task = "mean_colour"
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_cfg = PretrainedCfg("mean_colour", "", None, PREPROCESS, ("red", "green", "blue"))

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3))  # [B, 3, H, W] -> [B, 3]


@pytest.fixture(scope="module")
def task() -> Iterator[MeanColourTask]:
    yield register_task(MeanColourTask())
    unregister_task("mean_colour")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("colours")
    for r, g, b in COLOURS:
        Image.new("RGB", (40, 24), (r, g, b)).save(folder / f"{r}_{g}_{b}.png")
    return folder


@pytest.fixture(scope="module")
def exported(task: MeanColourTask, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(MeanColourModel(), "onnx", tmp_path_factory.mktemp("onnx") / "mean.onnx")


def expected(colour: tuple[int, int, int], scale: float = 1.0) -> list[float]:
    return [c / 255.0 * scale for c in colour]


def test_the_runner_runs_it_eager_and_exported(task: MeanColourTask, images: Path, exported: Path) -> None:
    eager = Runner(MeanColourModel(), PREPROCESS, ("red", "green", "blue"))
    from_file = load_runner(exported)
    assert eager.task is task and from_file.task is task and type(from_file) is Runner
    for runner in (eager, from_file):
        for path, result in runner.run_files(sorted(images.glob("*.png"))):
            colour = tuple(int(x) for x in Path(path).stem.split("_"))
            assert list(result.to_dict().values()) == pytest.approx(expected(colour), abs=1e-6)
        percent = runner.run(Image.new("RGB", (8, 8), COLOURS[1]), percent=True)[0]
        assert list(percent.to_dict().values()) == pytest.approx(expected(COLOURS[1], 100.0), abs=1e-4)


def test_export_records_the_task(exported: Path) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert props["task"] == "mean_colour" and json.loads(props["labels"]) == ["red", "green", "blue"]


def test_eval_scores_it(task: MeanColourTask, images: Path, exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = evaluate_set(load_runner(exported), str(images))
    assert result["count"] == len(COLOURS) and result["mae"] == pytest.approx(0.0, abs=1e-6)
    assert main(["eval", str(images), "--model", str(exported), "--json", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "mean_colour" and printed["count"] == len(COLOURS) and printed["mae"] < 1e-6


def test_serve_answers_it(task: MeanColourTask, exported: Path) -> None:
    config = ServeConfig(models=(ModelSpec("toy", False),), max_batch_size=2, max_wait_ms=2)
    app = create_app(config, loaders={"toy": lambda: load_runner(exported, batch_size=2)})
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), COLOURS[2]).save(buffer, "PNG")
    with TestClient(app) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            __import__("time").sleep(0.05)
        assert client.get("/health").json()["models"]["toy"]["task"] == "mean_colour"
        answer = client.post("/models/toy", content=buffer.getvalue()).json()
        assert [answer[k] for k in ("red", "green", "blue")] == pytest.approx(expected(COLOURS[2]), abs=1e-6)
        body = {"inputs": __import__("base64").b64encode(buffer.getvalue()).decode(), "parameters": {"percent": True}}
        answer = client.post("/models/toy", json=body).json()
        assert answer["green"] == pytest.approx(200 / 255 * 100, abs=1e-4)
        bad = client.post("/models/toy", json={**body, "parameters": {"top_k": 3}})
        assert bad.status_code == 400 and "unknown parameters" in bad.json()["error"]
