"""ExecuTorch (``.pte``) and LiteRT (``.tflite``) files: written by ``export_model``, run in their own Python runtimes
they give the eager logits, carry the metadata, and through the predictor, ``mobilevit predict/eval`` and
``mobilevit bench`` give the eager answers.

References: the eager PyTorch model's logits (random weights, BatchNorms and layer scales randomised so the folding
shows), the eager predictor's labels and scores on real photos, and Apple's own result for the real MobileOne-S0
weights on ``imagenet-samples-100`` (77/100 top-1, 93/100 top-5 with Apple's code).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import mobilevit
from conftest import SHARED, random_model
from mobilevit.cli import main
from mobilevit.evaluate import read_labelled
from mobilevit.export import check_export, export_model, read_metadata
from mobilevit.export.metadata import model_metadata
from mobilevit.predict import Predictor, load_predictor, resolve_backend
from mobilevit.runtime import open_runtime
from mobilevit.weights.entries import get_weights, labels, resize_size_for

# architecture -> the formats whose lowering runs only with `-m slow`. The default run lowers MobileOne-S0 to both
# formats (MobileViT v1 attention reaches LiteRT in the default run as DeepLabV3, tests/test_segmentation_export.py);
# MobileViT v2 (25-45 s), FastViT and the v1-style unfold/fold graphs of MobileViT v1 and v3 (1-3 minutes each on 2
# cores) are the slow ones.
FAMILIES = {
    "mobilevit_xxs": ("executorch", "tflite"),
    "mobilevitv2_050": ("executorch", "tflite"),
    "mobilevitv3_xxs": ("executorch", "tflite"),
    "fastvit_t8": ("executorch", "tflite"),
    "mobileone_s0": (),
}
SIZE = (128, 128)  # small, to keep the conversions fast
# export format -> (suffix, runtime backend, the modules its toolchain needs, the extra that installs them)
FORMATS = {
    "executorch": (".pte", "executorch", ("executorch",), "executorch"),
    "tflite": (".tflite", "litert", ("litert_torch", "ai_edge_litert"), "litert"),
}

CASES = [
    pytest.param(name, fmt, marks=[pytest.mark.slow] if fmt in slow else [], id=f"{name}-{fmt}")
    for name, slow in FAMILIES.items()
    for fmt in FORMATS
]
S0_ENTRY = "mobileone_s0.orig_in1k_reparam"
S0_FILE = SHARED / "weights" / "mobileone_s0_reparam.safetensors"
SAMPLES = SHARED / "data" / "imagenet-samples-100"
CALIBRATION = SHARED / "data" / "imagenet-calib-100"


def need_toolchain(fmt: str) -> None:
    """Skip, naming the extra, when the export format's packages are not installed."""
    _, _, modules, extra = FORMATS[fmt]
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'mobilevit[{extra}]')")


def small_preprocess(name: str) -> mobilevit.weights.entries.Preprocess:
    """The architecture's default preprocessing, cropping ``SIZE`` (so the predictor can feed the small exports)."""
    pre = get_weights(name).preprocess
    return dataclasses.replace(pre, input_size=SIZE, resize_size=resize_size_for(SIZE[0], pre.crop_pct))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[nn.Module, Path]]:
    """``exported(arch, format)``: :func:`random_model` and its export at ``SIZE`` with a ``SIZE`` preprocessing,
    made once per module."""
    folder = tmp_path_factory.mktemp("ondevice")
    made: dict[tuple[str, str], tuple[nn.Module, Path]] = {}

    def get(name: str, fmt: str) -> tuple[nn.Module, Path]:
        need_toolchain(fmt)
        if (name, fmt) not in made:
            model = random_model(name)
            path = folder / f"{name}{FORMATS[fmt][0]}"
            made[name, fmt] = model, export_model(model, fmt, path, input_size=SIZE, preprocess=small_preprocess(name))
        return made[name, fmt]

    return get


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    skimage = pytest.importorskip("skimage")
    data = Path(skimage.__file__).parent / "data"
    return [data / name for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]


def expected_axes(name: str, fmt: str) -> tuple[str, ...]:
    """ExecuTorch keeps the batch dynamic except for MobileViT v2's PatchLayerNorm (and FastViT's attention stages,
    not in ``FAMILIES``); LiteRT fixes every axis."""
    return ("batch",) if fmt == "executorch" and name != "mobilevitv2_050" else ()


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_logits_match_eager(exported: Callable, name: str, fmt: str) -> None:
    model, path = exported(name, fmt)
    parity = check_export(model, path)  # the file in its own runtime against the eager model
    assert parity.max_rel_diff <= 1e-4, parity
    dynamic = "batch" in expected_axes(name, fmt)
    assert parity.input_shape == ((2 if dynamic else 1), 3, *SIZE)
    if dynamic:  # another batch than the traced one, and one beyond the planned upper bound (run in parts)
        for batch in (3, 17):
            assert check_export(model, path, batch_size=batch).max_rel_diff <= 1e-4


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_metadata_round_trip(exported: Callable, name: str, fmt: str) -> None:
    model, path = exported(name, fmt)
    meta = read_metadata(path)
    want = model_metadata(mobilevit.reparameterize_model(model), SIZE, expected_axes(name, fmt), small_preprocess(name))
    assert dataclasses.replace(meta, input_name=want.input_name, output_name=want.output_name) == want
    assert meta.labels[:2] == ("tench", "goldfish") and len(meta.labels) == 1000
    runtime = open_runtime(path)  # the backend follows the suffix
    assert runtime.name == FORMATS[fmt][1]
    inputs, outputs = runtime.signature()
    batch = None if expected_axes(name, fmt) else 1
    assert inputs == [(meta.input_name, [batch, 3, *SIZE])] and outputs == [(meta.output_name, [batch, 1000])]


def assert_same_answers(answer: list, reference: list) -> None:
    """Same top-k labels in the same order, scores within 1e-4."""
    assert [p.label for p in answer] == [p.label for p in reference]
    assert [p.score for p in answer] == pytest.approx([p.score for p in reference], abs=1e-4)


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_predictor_gives_the_eager_answers(exported: Callable, photos: list[Path], name: str, fmt: str) -> None:
    model, path = exported(name, fmt)
    eager = Predictor(model, small_preprocess(name), labels(get_weights(name)), batch_size=3)
    runtime = load_predictor(path, batch_size=3)  # 4 photos: a batch of 3, then 1
    assert runtime.preprocess == eager.preprocess and runtime.labels == eager.labels
    assert runtime.fixed_batch == (None if expected_axes(name, fmt) else 1)
    for answer, reference in zip(runtime.predict(photos), eager.predict(photos), strict=True):
        assert_same_answers(answer, reference)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_predict_gives_the_eager_answers(
    exported: Callable, photos: list[Path], fmt: str, capsys: pytest.CaptureFixture
) -> None:
    model, path = exported("mobileone_s0", fmt)  # exported once for the parity tests above
    files = [str(p) for p in photos]
    backend = FORMATS[fmt][1]
    assert main(["predict", *files, "--model", str(path), "--backend", backend, "--json", "--no-progress"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    eager = Predictor(model, small_preprocess("mobileone_s0"), labels(get_weights("mobileone_s0")))
    assert [a["file"] for a in answers] == files
    for answer, reference in zip(answers, eager.predict(photos), strict=True):
        assert [p["label"] for p in answer["predictions"]] == [p.label for p in reference]
        assert [p["score"] for p in answer["predictions"]] == pytest.approx([p.score for p in reference], abs=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_server_answers_like_eager(exported: Callable, photos: list[Path], fmt: str) -> None:
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from mobilevit.serve import ModelSpec, ServeConfig, create_app
    from mobilevit.serve.config import infer_backend

    model, path = exported("mobileone_s0", fmt)
    models = (ModelSpec.parse(str(path)),)
    assert models[0] == ModelSpec(path.stem, str(path)) and infer_backend(models) == FORMATS[fmt][1]
    config = ServeConfig(models=models, backend=FORMATS[fmt][1], max_batch_size=4, max_wait_ms=2, threads=1)
    eager = Predictor(model, small_preprocess("mobileone_s0"), labels(get_weights("mobileone_s0")))
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = client.post(f"/models/{path.stem}", content=photos[1].read_bytes())
        assert r.status_code == 200, r.text
        reference = eager.predict(photos[1])[0]
        assert [a["label"] for a in r.json()] == [p.label for p in reference]
        assert [a["score"] for a in r.json()] == pytest.approx([p.score for p in reference], abs=1e-4)


@pytest.mark.slow  # two more conversions; tests/test_bench.py times exported files in the default run
@pytest.mark.parametrize("fmt", FORMATS)
def test_bench_times_the_file_beside_eager(fmt: str) -> None:
    """``mobilevit bench --backends reparam,executorch,litert`` makes the file and times it with the others."""
    need_toolchain(fmt)
    from mobilevit.bench.run import bench_table

    rows = bench_table(["mobileone_s0"], ["reparam", FORMATS[fmt][1]], batch_sizes=[2], resolution=64, repeats=2)
    assert [(r["backend"], r["error"]) for r in rows] == [("reparam", None), (FORMATS[fmt][1], None)]
    assert rows[1]["median_ms"] > 0 and rows[1]["GMACs"] == rows[0]["GMACs"]  # the folded model's MACs


# --------------------------------------------------------------------------------------------------- bad input


def test_backend_follows_the_suffix_and_mismatches_are_refused() -> None:
    assert resolve_backend("m.pte") == "executorch" and resolve_backend("m.tflite") == "litert"
    assert resolve_backend("m.onnx") == "onnxruntime" and resolve_backend("mobileone_s0") == "eager"
    with pytest.raises(ValueError, match=r"m\.pte is an ExecuTorch file: run it with --backend executorch"):
        resolve_backend("m.pte", "onnxruntime")
    with pytest.raises(ValueError, match=r"is a LiteRT file: run it with --backend litert \(eager runs"):
        resolve_backend("m.tflite", "eager")
    with pytest.raises(ValueError, match=r"--backend litert runs an exported \.tflite file .*--format tflite"):
        resolve_backend("mobileone_s0", "litert")
    with pytest.raises(ValueError, match=r"--backend executorch serves exported \.pte files"):
        resolve_backend("mobileone_s0", "executorch", "serve")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_files_are_refused_clearly(fmt: str, tmp_path: Path) -> None:
    need_toolchain(fmt)
    suffix, backend, _, _ = FORMATS[fmt]
    kind = {"executorch": "an ExecuTorch", "tflite": "a LiteRT"}[fmt]
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ValueError, match=f"not {kind} model {'ExecuTorch' if fmt == 'executorch' else 'LiteRT'}"):
        load_predictor(junk)
    with pytest.raises(ValueError, match="not"):
        read_metadata(junk)
    with pytest.raises(FileNotFoundError, match=f"No such {kind.split()[1]} file"):
        load_predictor(tmp_path / f"missing{suffix}")
    with pytest.raises(ValueError, match="carries its weights"):
        load_predictor(junk, backend, pretrained=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_without_our_metadata_needs_a_preprocessing(fmt: str, tmp_path: Path) -> None:
    """A file converted by the toolchain directly (no mobilevit metadata): read_metadata and the predictor say so."""
    need_toolchain(fmt)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x = torch.rand(1, 3, 32, 32)
    path = tmp_path / f"plain{FORMATS[fmt][0]}"
    if fmt == "executorch":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        program = to_edge_transform_and_lower(
            torch.export.export(model.eval(), (x,)), partitioner=[XnnpackPartitioner()]
        )
        path.write_bytes(program.to_executorch().buffer)
    else:
        import litert_torch

        litert_torch.convert(model.eval(), (x,)).export(str(path))
    with pytest.raises(ValueError, match="not a file exported by mobilevit"):
        read_metadata(path)
    with pytest.raises(ValueError, match=r"records no preprocessing.*preprocess="):
        load_predictor(path)
    pre = dataclasses.replace(small_preprocess("mobileone_s0"), input_size=(32, 32), resize_size=36)
    predictor = Predictor.from_exported(path, preprocess=pre)
    assert predictor.labels == [f"class_{i}" for i in range(10)]
    with torch.no_grad():
        ref = model(x)
    assert (predictor.logits(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


def block(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import module`` (and of any of its submodules, loaded or not) raise ImportError."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    ("module", "fmt", "extra"), [("executorch", "executorch", "executorch"), ("litert_torch", "tflite", "litert")]
)
def test_a_missing_toolchain_names_the_extra(
    module: str, fmt: str, extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block(module, monkeypatch)
    with pytest.raises(ImportError, match=rf"pip install 'mobilevit\[{extra}\]'"):
        export_model(mobilevit.create_model("mobileone_s0"), fmt, tmp_path / f"m{FORMATS[fmt][0]}", input_size=SIZE)
    runtime_module = {"executorch": "executorch", "tflite": "ai_edge_litert"}[fmt]
    block(runtime_module, monkeypatch)
    (tmp_path / f"m{FORMATS[fmt][0]}").write_bytes(b"x")
    with pytest.raises(ImportError, match=rf"pip install 'mobilevit\[{extra}\]'"):
        load_predictor(tmp_path / f"m{FORMATS[fmt][0]}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--format", "torchscript", "--quantize", "int8"],
            "--quantize applies to --format onnx, executorch and tflite",
        ),
        (["--format", "tflite", "--quantize", "int8", "--quantize-mode", "dynamic"], "quantizes statically only"),
        (["--format", "executorch", "--quantize", "int8"], "needs calibration images"),
    ],
)
def test_export_cli_int8_errors(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--output", str(tmp_path / "m.bin")]
    assert main(["export", "--model", "mobileone_s0", "--random-weights", *argv, *out]) == 2
    assert message in capsys.readouterr().err


def test_export_model_int8_errors(tmp_path: Path) -> None:
    model = mobilevit.create_model("mobileone_s0")
    with pytest.raises(ValueError, match=r"applies to executorch and tflite \(ONNX: quantize_onnx\)"):
        export_model(model, "onnx", tmp_path / "m.onnx", quantize="int8", calibration=tmp_path)
    with pytest.raises(ValueError, match="no calibration images found"):
        export_model(model, "tflite", tmp_path / "m.tflite", quantize="int8", calibration=tmp_path)


# ------------------------------------------------------------------------------------- real MobileOne-S0 weights


@pytest.fixture(scope="module")
def s0_model() -> nn.Module:
    if not S0_FILE.is_file():
        pytest.skip(f"real MobileOne-S0 weights not found at {S0_FILE}")
    if not (SAMPLES / "labels.csv").is_file():
        pytest.skip(f"imagenet-samples-100 not found at {SAMPLES}")
    return mobilevit.create_model(S0_ENTRY, pretrained=str(S0_FILE))


# one export at 224x224 and 100 photos: 9 s (LiteRT), 15 s (ExecuTorch, with `-m slow`) on 2 cores
@pytest.mark.parametrize("fmt", [pytest.param("executorch", marks=pytest.mark.slow), "tflite"])
def test_s0_eval_reproduces_the_reference(
    s0_model: nn.Module, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    need_toolchain(fmt)
    path = export_model(s0_model, fmt, tmp_path / f"s0{FORMATS[fmt][0]}")
    argv = ["eval", str(SAMPLES), "--model", str(path), "--threads", "2", "--json", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == FORMATS[fmt][1]  # from the suffix
    # Apple's own code gets 77/100 top-1 and 93/100 top-5 on these photos
    assert (result["count"], result["correct_top1"], result["correct_top5"]) == (100, 77, 93)


@pytest.mark.slow  # an fp32 and an int8 export at 224x224, 100 calibration images, 100 photos
@pytest.mark.parametrize("fmt", FORMATS)
def test_s0_int8_keeps_the_fp32_answers(s0_model: nn.Module, fmt: str, tmp_path: Path) -> None:
    need_toolchain(fmt)
    if not CALIBRATION.is_dir():
        pytest.skip(f"imagenet-calib-100 not found at {CALIBRATION}")
    suffix = FORMATS[fmt][0]
    fp32 = load_predictor(export_model(s0_model, fmt, tmp_path / f"s0{suffix}"), batch_size=16)
    int8_path = export_model(s0_model, fmt, tmp_path / f"s0_int8{suffix}", quantize="int8", calibration=CALIBRATION)
    int8 = load_predictor(int8_path, batch_size=16)
    how = json.loads(int8.runtime.metadata()["quantization"])
    assert how["calibration_images"] == 100
    assert how["keep_fp32"] == ["stem.reparam_conv", "head.fc"] and how["equalized_pairs"] == 43
    samples = read_labelled(SAMPLES)[0]
    photos = [path for path, _ in samples]
    top1 = [a[0].index for a in fp32.predict(photos, top_k=1)]
    top1_int8 = [a[0].index for a in int8.predict(photos, top_k=1)]
    agree = sum(a == b for a, b in zip(top1, top1_int8, strict=True)) / len(photos)
    assert agree >= 0.9, f"int8 top-1 agrees with fp32 on {agree:.0%} of the photos"
    correct = [sum(p == label for p, (_, label) in zip(t, samples, strict=True)) for t in (top1, top1_int8)]
    assert correct[0] == 77  # Apple's own code
    assert correct[1] >= correct[0] - 1.5, f"int8 top-1 {correct[1]}/100 against fp32's {correct[0]}/100"


# ---------------------------------------------------------------------------------------------- every variant


@pytest.mark.slow  # 28 variants x 2 conversions of 10-90 s each
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", mobilevit.list_models(task="classification"))
def test_every_variant_matches_eager(name: str, fmt: str, tmp_path: Path) -> None:
    need_toolchain(fmt)
    model = random_model(name)
    path = export_model(model, fmt, tmp_path / f"{name}{FORMATS[fmt][0]}", input_size=SIZE)
    # a fixed batch where ExecuTorch gets a symbolic one wrong: MobileViT v2's patch layer norm (v2, v3 on v2) and
    # FastViT's attention stages (SA, MA)
    fixed = name.startswith(("mobilevitv2", "mobilevitv3_0", "mobilevitv3_1", "fastvit_sa", "fastvit_ma"))
    dynamic = fmt == "executorch" and not fixed
    assert read_metadata(path).dynamic_axes == (("batch",) if dynamic else ())
    for batch in (1, 3) if dynamic else (1,):
        parity = check_export(model, path, batch_size=batch)
        assert parity.max_rel_diff <= 1e-4, parity
