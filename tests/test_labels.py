"""Class names: one rule for every path (ImageNet-1k names for a 1000-class checkpoint without a tag, the user's
``--labels``, names stored by save_pretrained and export), eval's matching of folders to labels, and the CLI's
errors (a user's mistake is one line; a bug in this package shows its traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import ResNet50_Weights

import mobilevit
from mobilevit.cli import main

IMAGENET_NAMES = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])  # torchvision's own copy, a reference


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    for cls in ("ants", "bees"):
        (root / cls).mkdir()
        for i in range(2):
            _image(root / cls / f"{i}.jpg", seed=hash(cls) % 1000 + i)
    return root


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000-class state dict without any name or tag, like Apple's ``mobileone_s0.pth.tar``."""
    path = tmp_path_factory.mktemp("ckpt") / "weights.pth"
    torch.save(mobilevit.create_model("mobileone_s0").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def two_class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned ants/bees model as training writes it (``final/``): save_pretrained with the folder's names."""
    folder = tmp_path_factory.mktemp("final") / "final"
    return mobilevit.save_pretrained(mobilevit.create_model("mobileone_s0", num_classes=2), folder, ["ants", "bees"])


def _predict_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *argv, "--json", "--no-progress"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_1000_class_checkpoint_by_path_answers_imagenet_names(
    plain_checkpoint: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = mobilevit.create_model("mobileone_s0", pretrained=plain_checkpoint)
    assert list(model.pretrained_cfg.labels) == IMAGENET_NAMES
    records = _predict_json(
        capsys, str(images / "ants"), "--model", "mobileone_s0", "--pretrained", str(plain_checkpoint)
    )
    for record in records:
        for p in record["predictions"]:
            assert p["label"] == IMAGENET_NAMES[p["index"]]


def test_random_weights_follow_the_same_rule() -> None:
    from mobilevit.predict import Predictor
    from mobilevit.weights import labels_for

    assert Predictor.from_pretrained("mobileone_s0", pretrained=False).labels == IMAGENET_NAMES
    assert Predictor.from_pretrained("mobilevit_xxs", pretrained=False).labels == IMAGENET_NAMES
    model = mobilevit.create_model("mobileone_s0", num_classes=7)
    assert mobilevit.weights.model_labels(model) == tuple(f"class_{i}" for i in range(7))
    assert labels_for(3, saved=["a", "b", "c"]) == ("a", "b", "c")


@pytest.mark.parametrize("form", ["lines", "json"])
def test_labels_file_names_the_outputs(
    form: str, plain_checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = mobilevit.create_model("mobileone_s0", num_classes=2)
    checkpoint = tmp_path / "two.pt"
    torch.save(model.state_dict(), checkpoint)
    names = ["ants", "bees"]
    labels = tmp_path / "labels.txt"
    labels.write_text(json.dumps(names) if form == "json" else "ants\n\nbees\n")
    argv = [str(images), "--model", "mobileone_s0", "--pretrained", str(checkpoint), "--labels", str(labels)]
    for record in _predict_json(capsys, *argv):
        assert [p["label"] for p in record["predictions"]] == [names[p["index"]] for p in record["predictions"]]
    labels.write_text("ants\nbees\nwasps\n")
    assert main(["predict", *argv, "--no-progress"]) == 2
    assert "3 class names for a model with 2 outputs" in capsys.readouterr().err


def test_fine_tuned_names_travel_to_predict_eval_and_export(
    two_class_folder: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for record in _predict_json(capsys, str(images), "--model", str(two_class_folder)):
        assert {p["label"] for p in record["predictions"]} == {"ants", "bees"}
    assert main(["eval", str(images), "--model", str(two_class_folder), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 4 and result["weights"] == str(two_class_folder)
    onnx_file = tmp_path / "two.onnx"
    assert main(["export", "--model", str(two_class_folder), "--format", "onnx", "--output", str(onnx_file)]) == 0
    for record in _predict_json(capsys, str(images), "--model", str(onnx_file)):
        assert {p["label"] for p in record["predictions"]} == {"ants", "bees"}
    assert main(["eval", str(images), "--model", str(onnx_file), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == str(onnx_file) and "pretrained" not in result and result["count"] == 4


def test_export_records_labels_given_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mobilevit.predict import OnnxPredictor

    checkpoint = tmp_path / "two.pt"
    torch.save(mobilevit.create_model("mobileone_s0", num_classes=2).state_dict(), checkpoint)
    (tmp_path / "labels.json").write_text('["cat", "dog"]')
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", "mobileone_s0", "--pretrained", str(checkpoint), "--format", "onnx"]
    assert main([*argv, "--output", str(out), "--labels", str(tmp_path / "labels.json")]) == 0
    assert OnnxPredictor(out).labels == ["cat", "dog"]


def test_eval_refuses_folders_that_match_no_label(
    images: Path, plain_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(images), "--model", "mobileone_s0", "--pretrained", str(plain_checkpoint), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot be matched" in err and "'ants'" in err and "'bees'" in err


def test_imagenet_subset_folders_match_by_wnid_or_name(shared_or_timm_wnids: list[str]) -> None:
    from mobilevit.evaluate import match_classes
    from mobilevit.weights import labels_for

    names = labels_for(1000)
    wnids = shared_or_timm_wnids
    assert match_classes([wnids[10], wnids[0], wnids[999]], names) == [10, 0, 999]
    assert match_classes(["goldfish", "Great_White_Shark", "tench"], names) == [1, 2, 0]
    with pytest.raises(ValueError, match="several classes"):
        match_classes(["crane"], ["crane", "heron", "Crane"])  # one folder, two classes of that name
    assert match_classes(["x", "y"], ["class_0", "class_1"]) == [0, 1]  # no names known: sorted folder order
    with pytest.raises(ValueError, match="cannot be matched"):
        match_classes(["x", "y", "z"], ["class_0", "class_1"])


@pytest.fixture
def shared_or_timm_wnids() -> list[str]:
    """The ImageNet-1k WordNet ids in index order, from sources independent of ours."""
    from conftest import SHARED

    csv_file = SHARED / "data" / "imagenet-samples-100" / "labels.csv"
    import timm.data

    wnids = list(timm.data.ImageNetInfo().label_names())
    if csv_file.is_file():  # the shared photos' own class_index -> wnid pairs agree with it
        import csv

        for row in csv.DictReader(csv_file.open()):
            assert wnids[int(row["class_index"])] == row["wnid"]
    return wnids


def test_corrupt_config_json_is_named(
    two_class_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(two_class_folder, broken)
    (broken / "config.json").write_text('{"library": "mobilevit", "arch": ')
    assert main(["predict", str(broken / "model.safetensors"), "--model", str(broken), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and str(broken / "config.json") in err


@pytest.mark.parametrize(
    "bug",
    [TypeError("unsupported operand type(s)"), KeyError("missing"), ValueError("operands could not be broadcast")],
    ids=lambda e: type(e).__name__,
)
def test_a_bug_shows_its_traceback(bug: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the package's own error types (which a user can fix) become one line; anything else is a bug."""
    import mobilevit.cli as cli

    def buggy(args: object) -> int:
        raise bug

    monkeypatch.setattr(cli, "cmd_list", buggy)
    with pytest.raises(type(bug)) as raised:
        main(["list"])
    assert raised.value is bug


def test_the_package_errors_are_still_value_errors_for_python_callers() -> None:
    from mobilevit.errors import UsageError

    with pytest.raises(ValueError):
        mobilevit.create_model("mobilevit_xxxs")
    assert issubclass(UsageError, ValueError)


def test_a_missing_optional_dependency_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really")
    _image(tmp_path / "a.png", seed=0)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ModuleNotFoundError
    assert main(["predict", str(tmp_path), "--model", str(model), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "onnxruntime is not installed" in err and "mobilevit[export]" in err and len(err.splitlines()) == 1


def test_train_with_the_progress_bar_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            _image(tmp_path / "data" / cls / f"{i}.png", seed=i + (10 if cls == "b" else 0))
    argv = ["train", "--recipe", "mobileone_s0", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run")]
    overrides = ["epochs=1", "sampler.kind=fixed", "sampler.base_size=32", "sampler.batch_size=4"]
    overrides += ["data.num_workers=0", "data.val_resize=32", "data.val_crop=32", "augment.mixup_alpha=0"]
    assert main([*argv, "--num-classes", "2", *overrides]) == 0  # the progress bar is on (no --no-progress)
    captured = capsys.readouterr()
    assert "train:" in captured.err and "step/s" in captured.err  # the bar goes to stderr only
    assert "step/s" not in captured.out and "\r" not in captured.out
    assert "done: 2 steps" in captured.out
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["labels"] == ["a", "b"]


def test_a_broken_yaml_config_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("model: [\n")
    argv = ["train", "--config", str(tmp_path / "bad.yaml"), "--data", str(tmp_path), "--output", str(tmp_path / "o")]
    assert main([*argv, "--no-progress"]) == 2
    assert "bad.yaml is not valid YAML" in capsys.readouterr().err
