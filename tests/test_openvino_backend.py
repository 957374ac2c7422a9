"""The openvino backend: an exported ``.onnx`` file run by OpenVINO's CPU plugin (fp32) gives the eager logits and
answers in the predictor, ``mobilevit predict``/``eval``/``serve`` and ``mobilevit bench``, with clear errors for a file
it cannot run or a missing install.

References: the eager PyTorch model on the same random weights (one variant per family), and the eager predictor's
top-k on a real photo. The runtime is asked for one thread where it can be, to leave the cores to other work.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import EXPORT_FAMILIES
from mobilevit.cli import main
from mobilevit.export import export_model
from mobilevit.predict import BACKENDS, OpenVINOPredictor, Predictor, load_predictor, resolve_backend
from mobilevit.runtime import OpenVINORuntime, openvino_model, read_openvino_metadata
from mobilevit.weights.entries import get_weights, labels

openvino = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'mobilevit[openvino]')")
onnx = pytest.importorskip("onnx", reason="exporting needs onnx (pip install 'mobilevit[export]')")
pytest.importorskip("onnxscript", reason="exporting needs onnxscript (pip install 'mobilevit[export]')")

MOBILEONE = "mobileone_s4"
SIZES = ((128, 128), (192, 128))  # on MobileViT's 64-pixel grid, neither the size MobileViT v1 was traced at


@pytest.fixture(scope="module")
def chelsea() -> Path:
    skimage = pytest.importorskip("skimage")
    return Path(skimage.__file__).parent / "data" / "chelsea.png"


@pytest.fixture(scope="module")
def xxs_eager(onnx_export: Callable[[str], tuple[nn.Module, Path]]) -> Predictor:
    """The eager predictor of the random-init MobileViT-XXS, with its weights entry's preprocessing and labels."""
    entry = get_weights("mobilevit_xxs")
    return Predictor(onnx_export("mobilevit_xxs")[0], entry.preprocess, labels(entry))


@pytest.mark.parametrize("name", EXPORT_FAMILIES)
def test_logits_match_eager(name: str, onnx_export: Callable[[str], tuple[nn.Module, Path]]) -> None:
    model, path = onnx_export(name)
    runtime = OpenVINOPredictor(path, threads=1)
    for size in SIZES:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = model(x)
        out = runtime.logits(x)
        assert out.shape == expected.shape == (2, 1000)
        assert (out - expected).abs().max() <= 1e-5 * expected.abs().max(), (name, size)


def test_runs_fp32_with_the_threads_asked_for(onnx_export: Callable[[str], tuple[nn.Module, Path]]) -> None:
    compiled = OpenVINOPredictor(onnx_export(MOBILEONE)[1], threads=1).runtime.compiled_model
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32  # not bf16, even where the CPU has it
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert compiled.get_property("PERFORMANCE_HINT") == "LATENCY"
    assert compiled.inputs[0].get_partial_shape().to_string() == "[?,3,?,?]"  # the file's dynamic axes


def test_photo_answers_match_eager(
    onnx_export: Callable[[str], tuple[nn.Module, Path]], xxs_eager: Predictor, chelsea: Path
) -> None:
    runtime = load_predictor(onnx_export("mobilevit_xxs")[1], "openvino", threads=1)
    assert isinstance(runtime.runtime, OpenVINORuntime)
    # the preprocessing (BGR, no mean/std) and labels come from the file, and are the weights entry's
    assert runtime.preprocess == xxs_eager.preprocess and runtime.labels == xxs_eager.labels
    for function in ("softmax", "none"):
        answer = runtime.predict(chelsea, function=function)[0]
        reference = xxs_eager.predict(chelsea, function=function)[0]
        assert [p.label for p in answer] == [p.label for p in reference]
        scale = max(abs(p.score) for p in reference)
        assert [p.score for p in answer] == pytest.approx([p.score for p in reference], abs=1e-5 * scale)


def test_calls_from_several_threads(onnx_export: Callable[[str], tuple[nn.Module, Path]]) -> None:
    """One infer request behind a lock: concurrent calls each get their own batch's logits."""
    runtime = OpenVINOPredictor(onnx_export(MOBILEONE)[1], threads=1)
    batches = [torch.randn(n, 3, 64, 64) for n in (1, 2, 3)]
    expected = [runtime.logits(b) for b in batches]
    results: dict[int, list[torch.Tensor]] = {}

    def work(i: int) -> None:
        results[i] = [runtime.logits(batches[i]) for _ in range(5)]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i, outs in results.items():
        assert all(torch.equal(out, expected[i]) for out in outs)


def test_cli_predict_and_eval(
    onnx_export: Callable[[str], tuple[nn.Module, Path]],
    xxs_eager: Predictor,
    chelsea: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = onnx_export("mobilevit_xxs")[1]
    argv = ["predict", str(chelsea), "--model", str(path), "--backend", "openvino", "--threads", "1"]
    assert main([*argv, "--json", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)
    reference = xxs_eager.predict(chelsea)[0]
    assert record["file"] == str(chelsea)
    assert [p["label"] for p in record["predictions"]] == [p.label for p in reference]
    assert [p["score"] for p in record["predictions"]] == pytest.approx([p.score for p in reference], abs=1e-5)
    # eval: the photo labelled with the eager top-1 class is right, and the result names the backend
    (tmp_path / "labels.csv").write_text(f"file,class_index\n{chelsea},{reference[0].index}\n")
    argv = ["eval", str(tmp_path), "--model", str(path), "--backend", "openvino", "--threads", "1"]
    assert main([*argv, "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["backend"], result["count"], result["correct_top1"]) == ("openvino", 1, 1)


def test_bench_row_shares_the_onnx_export(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    import mobilevit.bench
    import mobilevit.export

    exports: list[Path] = []

    def counted(*args: object, **kwargs: object) -> Path:
        exports.append(export_model(*args, **kwargs))
        return exports[-1]

    monkeypatch.setattr(mobilevit.export, "export_model", counted)
    # the peak (seconds of matmuls; tested in test_bench.py) only scales pct_peak
    peak = {"measured_peak_gmacs": 1.0, "measured_peak_gflops": 2.0, "peak_method": "not measured (test)"}
    monkeypatch.setattr(mobilevit.bench, "measure_peak_gmacs", lambda: peak)
    threads = torch.get_num_threads()
    try:
        argv = ["bench", "mobileone_s0", "--backends", "onnxruntime,openvino", "--resolution", "64"]
        assert main([*argv, "--batch-sizes", "1,2", "--repeats", "2", "--threads", "1", "--format", "json"]) == 0
    finally:
        torch.set_num_threads(threads)  # the command sets PyTorch's threads for the process
    report = json.loads(capsys.readouterr().out)
    assert report["header"]["openvino"] and report["header"]["backends"] == "onnxruntime,openvino"
    rows = {(r["backend"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(b, n) for b in ("onnxruntime", "openvino") for n in (1, 2)}
    for row in rows.values():
        assert row["error"] is None and row["median_ms"] > 0 and row["setup_s"] > 0
    assert len(exports) == 1  # one ONNX file per model, run by both runtimes


def test_serve_config_and_loader(onnx_export: Callable[[str], tuple[nn.Module, Path]]) -> None:
    pytest.importorskip("fastapi")
    from mobilevit.serve import ModelSpec, ServeConfig
    from mobilevit.serve.app import default_loader
    from mobilevit.serve.config import BACKENDS as SERVE_BACKENDS

    assert SERVE_BACKENDS == BACKENDS == ("eager", "onnxruntime", "openvino", "executorch", "litert", "torchscript")
    path = onnx_export(MOBILEONE)[1]
    config = ServeConfig(models=(ModelSpec.parse(str(path)),), backend="openvino", max_batch_size=4, threads=1)
    predictor = default_loader(config, 0)()
    assert isinstance(predictor.runtime, OpenVINORuntime) and predictor.batch_size == 4
    assert predictor.runtime.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1
    with pytest.raises(ValueError, match=r"--backend openvino serves exported \.onnx files"):
        ServeConfig(models=(ModelSpec("mobileone_s0"),), backend="openvino")


def test_files_it_cannot_run(
    onnx_export: Callable[[str], tuple[nn.Module, Path]],
    chelsea: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = onnx_export(MOBILEONE)[1]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match=r"junk\.onnx: not an ONNX model openvino can load \(Unable to read the model"):
        OpenVINOPredictor(junk)
    assert main(["predict", str(chelsea), "--model", str(junk), "--backend", "openvino"]) == 2
    assert "not an ONNX model openvino can load" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="No such ONNX file"):
        load_predictor(tmp_path / "missing.onnx", "openvino")
    # an ONNX file from elsewhere: no metadata, so no preprocessing to run it with
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    assert read_openvino_metadata(tmp_path / "foreign.onnx") == {}
    with pytest.raises(ValueError, match=r"records no preprocessing.*preprocess= \(and labels=\) to OpenVINOPredictor"):
        OpenVINOPredictor(tmp_path / "foreign.onnx")
    # a model name is not a file the runtime can run, and the file carries its own weights
    with pytest.raises(ValueError, match=r"--backend openvino runs an exported \.onnx file"):
        resolve_backend("mobileone_s0", "openvino")
    with pytest.raises(ValueError, match="is an ONNX file: run it with --backend onnxruntime or openvino"):
        resolve_backend(path, "eager")
    with pytest.raises(ValueError, match="carries its weights"):
        load_predictor(path, "openvino", pretrained=False)


def test_missing_install_says_which_extra(
    onnx_export: Callable[[str], tuple[nn.Module, Path]],
    chelsea: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = onnx_export(MOBILEONE)[1]
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'mobilevit\[openvino\]'"):
        openvino_model(path)
    assert main(["predict", str(chelsea), "--model", str(path), "--backend", "openvino"]) == 2
    assert "mobilevit[openvino]" in capsys.readouterr().err
