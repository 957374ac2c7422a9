"""The predictor, ``mobilevit predict`` and ``mobilevit eval``, checked against timm with the same real weights."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilevit
from mobilevit.cli import main
from mobilevit.data.images import ImageError
from mobilevit.evaluate import read_labelled
from mobilevit.predict import Predictor
from mobilevit.weights.entries import get_weights, labels

S0_ENTRY = "mobileone_s0.orig_in1k_reparam"


@pytest.fixture(scope="module")
def s0_weights(shared: Path) -> Path:
    path = shared / "weights" / "mobileone_s0_reparam.safetensors"
    if not path.is_file():
        pytest.skip(f"real MobileOne-S0 weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def predictor(s0_weights: Path) -> Predictor:
    return Predictor.from_pretrained(S0_ENTRY, pretrained=s0_weights, batch_size=4)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    skimage = pytest.importorskip("skimage")
    data = Path(skimage.__file__).parent / "data"
    return [data / name for name in ("chelsea.png", "coffee.png", "astronaut.png", "camera.png")]


def test_matches_timm_with_timms_own_pipeline(predictor: Predictor, s0_weights: Path, photos: list[Path]) -> None:
    """Same real weights in timm (loaded by timm's reparameterized MobileOne) and timm's own transform: same answers."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file
    from timm.data import create_transform, resolve_data_config

    ref = timm.create_model("mobileone_s0")
    ref = timm.utils.reparameterize_model(ref).eval()
    sd = load_file(str(s0_weights))
    # Apple's inference-form names -> timm's folded names (facts: stage0 -> stem, stageN -> stages.N-1, linear -> head)
    renamed = {}
    for k, v in sd.items():
        k = k.replace("stage0.", "stem.").replace("linear.", "head.fc.")
        for n in range(1, 5):
            k = k.replace(f"stage{n}.", f"stages.{n - 1}.")
        renamed[k] = v
    ref.load_state_dict(renamed)
    tf = create_transform(**resolve_data_config({"crop_pct": 224 / 256, "interpolation": "bilinear"}, model=ref))
    ours = predictor.predict(photos, top_k=5)
    with torch.inference_mode():
        probs = ref(torch.stack([tf(Image.open(p).convert("RGB")) for p in photos])).softmax(-1)
    names = labels(S0_ENTRY)
    for answer, p in zip(ours, probs, strict=True):
        top = p.topk(5)
        assert [a.label for a in answer] == [names[i] for i in top.indices.tolist()]
        assert np.allclose([a.score for a in answer], top.values.tolist(), atol=1e-4)
    assert ours[0][0].label in {"tabby", "tiger cat", "Egyptian cat"}  # chelsea is a tabby cat
    assert ours[1][0].label == "espresso"


def test_every_input_kind_gives_the_same_answer(predictor: Predictor, photos: list[Path]) -> None:
    path = photos[0]
    img = Image.open(path).convert("RGB")
    arr = np.asarray(img)
    kinds = [path, str(path), path.read_bytes(), img, arr, arr.transpose(2, 0, 1), torch.from_numpy(arr.copy())]
    answers = [predictor.predict(kind, top_k=3)[0] for kind in kinds]
    for answer in answers[1:]:
        assert [a.index for a in answer] == [a.index for a in answers[0]]
        assert np.allclose([a.score for a in answer], [a.score for a in answers[0]], atol=1e-6)
    gray = predictor.predict(photos[3])[0]  # an 8-bit grayscale photo
    assert len(gray) == 5


def test_scores_functions_and_top_k(predictor: Predictor, photos: list[Path]) -> None:
    soft = predictor.predict(photos[1], top_k=2000)[0]
    assert len(soft) == 1000 and abs(sum(a.score for a in soft) - 1) < 1e-4
    raw = predictor.predict(photos[1], function="none")[0]
    sig = predictor.predict(photos[1], function="sigmoid")[0]
    assert [a.index for a in raw] == [a.index for a in sig] == [a.index for a in soft[:5]]
    assert np.allclose([a.score for a in sig], torch.tensor([a.score for a in raw]).sigmoid().tolist(), atol=1e-6)
    with pytest.raises(ValueError, match="softmax"):
        predictor.predict(photos[1], function="softermax")
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict(photos[1], top_k=0)


def test_bad_files_are_reported_in_place(predictor: Predictor, photos: list[Path], tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    Image.open(photos[0]).convert("RGB").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    files = [photos[0], tmp_path / "text.jpg", photos[1], tmp_path / "missing.png", truncated, photos[2]]
    out = list(predictor.predict_files(files, top_k=1))
    assert [p for p, _ in out] == [str(f) for f in files]
    kinds = [type(a).__name__ for _, a in out]
    assert kinds == ["list", "ImageError", "list", "ImageError", "ImageError", "list"]
    assert "text.jpg" in str(out[1][1]) and "missing.png" in str(out[3][1])
    assert out[2][1][0].label == "espresso"
    with pytest.raises(ImageError, match=r"text\.jpg"):
        predictor.predict(tmp_path / "text.jpg")


def test_cli_predict_json(s0_weights: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    argv = ["predict", str(photos[1]), str(tmp_path / "broken.png"), "--model", S0_ENTRY]
    code = main([*argv, "--pretrained", str(s0_weights), "--json", "--top-k", "2", "--no-progress"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # one input failed
    assert lines[0]["file"] == str(photos[1]) and lines[0]["predictions"][0]["label"] == "espresso"
    assert set(lines[0]["predictions"][0]) == {"label", "score", "index"} and len(lines[0]["predictions"]) == 2
    assert "broken.png" in lines[1]["error"] and "predictions" not in lines[1]


def test_cli_predict_without_weights_says_how_to_supply_them(capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "x.jpg", "--model", "mobilevit_xxs", "--pretrained", "/nonexistent/w.safetensors"]) == 2
    assert "/nonexistent/w.safetensors" in capsys.readouterr().err


def test_cli_eval_reproduces_the_reference(s0_weights: Path, shared: Path, capsys: pytest.CaptureFixture) -> None:
    data = shared / "data" / "imagenet-samples-100"
    argv = ["eval", str(data), "--model", S0_ENTRY, "--pretrained", str(s0_weights), "--json", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    # Apple's own code gets 77/100 top-1 and 93/100 top-5 on these photos
    assert (result["count"], result["correct_top1"], result["correct_top5"]) == (100, 77, 93)
    assert result["top1"] == pytest.approx(0.77) and result["top5"] == pytest.approx(0.93)


@pytest.mark.slow  # default-suite budget: `make test-slow` runs it
def test_eval_under_torchrun_matches(s0_weights: Path, shared: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) shard the images and sum the counts: the same numbers as one process."""
    data = shared / "data" / "imagenet-samples-100"
    # a subset keeps this test short; its expected counts come from the single-process run on the same files
    rows = list(csv.reader((data / "labels.csv").open()))[1:31]
    subset = tmp_path / "subset.csv"
    subset.write_text("file,class_index\n" + "".join(f"{data / r[0]},{r[1]}\n" for r in rows))
    args = ["eval", str(subset), "--model", S0_ENTRY, "--pretrained", str(s0_weights), "--json", "--no-progress"]
    single = subprocess.run([sys.executable, "-m", "mobilevit.cli", *args], capture_output=True, text=True, check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    multi = subprocess.run([*launcher, "-m", "mobilevit.cli", *args], capture_output=True, text=True, env=env)
    assert multi.returncode == 0, multi.stderr[-2000:]
    one = json.loads(single.stdout)
    two = json.loads(multi.stdout.strip().splitlines()[-1])
    assert (two["count"], two["correct_top1"], two["correct_top5"]) == (30, one["correct_top1"], one["correct_top5"])


def test_read_labelled_layouts(tmp_path: Path) -> None:
    for cls, n in (("cat", 2), ("dog", 1)):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / "tree" / cls / f"{i}.png")
    (tmp_path / "tree" / "cat" / "notes.txt").write_text("not an image")
    samples, classes = read_labelled(tmp_path / "tree")
    assert classes == ["cat", "dog"] and [t for _, t in samples] == [0, 0, 1]
    (tmp_path / "plain.csv").write_text("a.png,3\nb.png,7\n")
    samples, _ = read_labelled(tmp_path / "plain.csv")
    assert samples == [(tmp_path / "a.png", 3), (tmp_path / "b.png", 7)]
    (tmp_path / "bad.csv").write_text("file,class_index\na.png,three\n")
    with pytest.raises(ValueError, match=r"bad\.csv, row 2"):
        read_labelled(tmp_path / "bad.csv")


def test_random_weights_predictor_warns(caplog: pytest.LogCaptureFixture) -> None:
    predictor = Predictor.from_pretrained("mobilevit_xxs", pretrained=False)
    assert "random weights" in caplog.text
    assert predictor.preprocess == get_weights("mobilevit_xxs").preprocess
    assert len(predictor.predict(np.zeros((40, 50, 3), np.uint8))[0]) == 5


def test_saved_folder_brings_its_labels_and_preprocessing(tmp_path: Path) -> None:
    """A fine-tuned 3-class model saved with its labels predicts those names, from Python and the CLI."""
    model = mobilevit.create_model("mobilevit_xxs", num_classes=3).eval()
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.copy_(torch.tensor([0.0, 5.0, 1.0]))  # whatever the image, "bee" wins, then "wasp"
    folder = mobilevit.save_pretrained(model, tmp_path / "run", labels=["ant", "bee", "wasp"])
    answer = Predictor.from_pretrained(str(folder), pretrained=True).predict(np.zeros((64, 64, 3), np.uint8))[0]
    assert [a.label for a in answer] == ["bee", "wasp", "ant"]
    expected = torch.tensor([0.0, 5.0, 1.0]).softmax(0)
    assert answer[0].score == pytest.approx(expected[1].item(), abs=1e-5)
    Image.new("RGB", (50, 70)).save(tmp_path / "x.png")
    proc = subprocess.run(
        [sys.executable, "-m", "mobilevit.cli", "predict", str(tmp_path / "x.png"), "--model", str(folder), "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p["label"] for p in json.loads(proc.stdout)["predictions"]] == ["bee", "wasp", "ant"]


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_top_k_order_is_score_then_lower_index_for_any_batch(function: str) -> None:
    from mobilevit.predict import scores_from_logits

    g = torch.Generator().manual_seed(0)
    # many exact ties: 1000 classes drawing from 3 values, one class far ahead (softmax then underflows to 0.0)
    logits = torch.tensor([-1.0, 0.0, 2.5])[torch.randint(0, 3, (16, 1000), generator=g)]
    logits[:, 276] = 200.0
    predictor = Predictor(nn_head(1000), get_weights("mobileone_s0").preprocess)
    scores = scores_from_logits(logits, function)
    for k in (1, 5, 50):
        batched = predictor.topk(logits, k, function)
        for row, answer in enumerate(batched):
            row_scores = scores[row].tolist()
            want = sorted(range(1000), key=lambda i: (-row_scores[i], i))[:k]  # independent of torch's ordering
            assert [p.index for p in answer] == want
            assert [p.index for p in predictor.topk(logits[row : row + 1], k, function)[0]] == want


def nn_head(num_classes: int) -> torch.nn.Module:
    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, num_classes))
    head.num_classes = num_classes
    return head
