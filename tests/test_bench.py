"""``mobilevit bench``: row arithmetic, the backends compute what eager computes, report formats, CLI and chart.

No timing assertions: the numbers depend on the machine; only their relations are checked.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest
import timm
import torch
from timm.utils import reparameterize_model as timm_reparameterize

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.bench import measure_peak_gmacs
from mobilevit.bench.report import FORMATS, format_report, latency_accuracy_chart, published_top1
from mobilevit.bench.run import COLUMNS, bench_table, make_backend, parse_backends
from mobilevit.cli import main

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
PEAK = 50.0  # a made-up peak, so pct_peak is checked against a known number
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _restore_threads() -> object:
    threads = torch.get_num_threads()  # `bench --threads` sets the process-wide count
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bench_table(
            ["mobileone_s0"], ["eager", "reparam"], (1, 2), resolution=64, repeats=2, warmup=1, peak_gmacs=PEAK
        )
    finally:
        torch.set_num_threads(threads)


def test_rows_have_every_field_and_consistent_arithmetic(rows: list[dict]) -> None:
    assert [(r["backend"], r["batch"]) for r in rows] == [("eager", 1), ("reparam", 1), ("eager", 2), ("reparam", 2)]
    for r in rows:
        assert set(COLUMNS) <= set(r) and r["error"] is None
        assert (r["model"], r["family"], r["resolution"]) == ("mobileone_s0", "mobileone", 64)
        assert 0 < r["median_ms"] <= r["p90_ms"]
        assert r["img_per_s"] == pytest.approx(r["batch"] * 1000 / r["median_ms"])
        assert r["GMAC_per_s"] == pytest.approx(r["GMACs"] * r["batch"] / (r["median_ms"] / 1000))
        assert r["pct_peak"] == pytest.approx(100 * r["GMAC_per_s"] / PEAK)
        assert r["setup_s"] >= 0


def test_params_are_those_of_the_form_that_runs(rows: list[dict]) -> None:
    """eager runs the train-time model, reparam the folded one: timm's two forms have the same parameter counts."""
    ref = timm.create_model("mobileone_s0").eval()
    n_train = sum(p.numel() for p in ref.parameters()) / 1e6
    n_folded = sum(p.numel() for p in timm_reparameterize(ref).parameters()) / 1e6
    by_backend = {r["backend"]: r for r in rows if r["batch"] == 1}
    assert by_backend["eager"]["params_M"] == pytest.approx(n_train, rel=1e-9)
    assert by_backend["reparam"]["params_M"] == pytest.approx(n_folded, rel=1e-9)
    assert by_backend["reparam"]["GMACs"] < by_backend["eager"]["GMACs"]  # the folded branches are gone


def test_a_failing_backend_is_reported_in_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(module: torch.nn.Module, **kwargs: object) -> object:
        def forward(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor says no\nsecond line")

        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    out = bench_table(["mobileone_s0"], ["reparam", "compile"], batch_sizes=(1,), resolution=32, repeats=1, warmup=0)
    good, bad = out
    assert good["backend"] == "reparam" and good["error"] is None and good["median_ms"] > 0
    assert bad["backend"] == "compile" and bad["median_ms"] is None
    assert bad["error"] == "RuntimeError: inductor says no"


def test_parse_backends_rejects_unknown_names() -> None:
    assert parse_backends("reparam, eager,reparam") == ["reparam", "eager"]
    with pytest.raises(ValueError, match=r"unknown backend.*tensorrt.*choose from eager, reparam"):
        parse_backends("eager,tensorrt")
    with pytest.raises(ValueError, match="none given"):
        parse_backends(",")


def _eager_and_backend(name: str, backend: str, size: int, workdir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    model = randomize_batchnorm(mobilevit.create_model(name)).eval()
    folded = mobilevit.reparameterize_model(model)
    runner = make_backend(backend, model, folded, (size, size), workdir)
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        return model(x), torch.as_tensor(runner.forward(x))


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_onnxruntime_backend_computes_the_eager_logits(tmp_path: Path) -> None:
    """The timed onnxruntime session (folded, exported) gives the train-time eager model's logits."""
    ref, out = _eager_and_backend("mobileone_s0", "onnxruntime", 64, tmp_path)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "backend"),
    [("mobilevitv2_050", "onnxruntime"), ("fastvit_t8", "onnxruntime"), ("mobileone_s0", "compile")],
)
def test_slow_backends_compute_the_eager_logits(name: str, backend: str, tmp_path: Path) -> None:
    if backend == "onnxruntime" and not HAS_ORT:
        pytest.skip("onnxruntime is not installed")
    ref, out = _eager_and_backend(name, backend, 64 if backend == "compile" else 128, tmp_path)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_peak_is_measured_and_explained() -> None:
    peak = measure_peak_gmacs(size=256, repeats=2, warmup=1)
    assert peak["measured_peak_gmacs"] > 0
    assert peak["measured_peak_gflops"] == pytest.approx(2 * peak["measured_peak_gmacs"])
    assert "torch.mm" in peak["peak_method"] and "conv2d 3x3" in peak["peak_method"]
    assert f"{torch.get_num_threads()} threads" in peak["peak_method"]


def test_report_formats_parse(rows: list[dict]) -> None:
    header = {"torch": torch.__version__, "measured_peak_gmacs": PEAK}
    data = json.loads(format_report(header, rows, "json"))
    assert data["header"] == header and data["rows"] == rows

    parsed = list(csv.DictReader(io.StringIO(format_report(header, rows, "csv"))))
    assert [(r["backend"], int(r["batch"])) for r in parsed] == [(r["backend"], r["batch"]) for r in rows]
    assert [float(r["median_ms"]) for r in parsed] == pytest.approx([r["median_ms"] for r in rows])
    assert all(r["error"] == "" for r in parsed)

    lines = format_report(header, rows, "markdown").splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == list(rows[0])
    assert len(table) == 2 + len(rows) and set(table[1]) <= {"|", "-"}
    assert "- measured_peak_gmacs: 50.0" in lines

    text = format_report(header, rows, "table").splitlines()
    assert text[0] == f"# torch: {torch.__version__}" and text[2].split()[:3] == ["model", "family", "backend"]
    assert len(text) == 3 + len(rows)
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        format_report(header, rows, "xml")
    assert set(FORMATS) == {"table", "json", "csv", "markdown"}


def test_published_top1_follows_the_stated_rule() -> None:
    # MobileOne has 224x224 weights only: their top-1 (MobileOne paper, Table 9: S0 71.4)
    assert published_top1("mobileone_s0", 256) == ("mobileone_s0.apple_in1k", 71.4)
    # FastViT-T8: the plain ImageNet-1k result (76.2), not the distilled one (77.2)
    assert published_top1("fastvit_t8", 256)[1] == 76.2
    # MobileViT v2-2.0 at 256: the ImageNet-1k-only model (81.17 in cvnets' zoo), not the 21k-pretrained or 384 ones
    assert published_top1("mobilevitv2_200", 256)[1] == pytest.approx(81.17)
    assert published_top1("mobilevitv2_200", 384)[1] == pytest.approx(82.17)


def test_cli_writes_json_report_and_chart(tmp_path: Path) -> None:
    report, chart = tmp_path / "bench.json", tmp_path / "chart.png"
    argv = ["bench", "mobileone_s0", "mobilevit_xxs", "--resolution", "64", "--batch-sizes", "1", "--repeats", "2"]
    argv += ["--threads", "1", "--format", "json", "--output", str(report)]
    if HAS_MPL:
        argv += ["--chart", str(chart)]
    assert main(argv) == 0
    data = json.loads(report.read_text())
    header = data["header"]
    assert header["torch"] == torch.__version__ and header["threads"] == 1 and header["measured_peak_gmacs"] > 0
    assert "torch.mm" in header["peak_method"] and header["cpu"]
    assert {(r["model"], r["backend"]) for r in data["rows"]} == {
        (m, b) for m in ("mobileone_s0", "mobilevit_xxs") for b in ("eager", "reparam")
    }
    for r in data["rows"]:
        assert r["pct_peak"] == pytest.approx(100 * r["GMAC_per_s"] / header["measured_peak_gmacs"])
    if HAS_MPL:
        blob = chart.read_bytes()
        assert blob.startswith(PNG_SIGNATURE) and len(blob) > 1000


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_chart_from_rows_is_a_png(rows: list[dict], tmp_path: Path) -> None:
    points = latency_accuracy_chart(rows, tmp_path / "sub" / "c.png", backend="reparam")
    blob = (tmp_path / "sub" / "c.png").read_bytes()
    assert blob.startswith(PNG_SIGNATURE) and len(blob) > 1000
    fastest = min(r["median_ms"] for r in rows if r["batch"] == 1 and r["backend"] == "reparam")
    assert points == [
        {
            "model": "mobileone_s0",
            "backend": "reparam",
            "median_ms": fastest,
            "top1": 71.4,
            "weights": "mobileone_s0.apple_in1k",
        }
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backends", "eager,tvm"], "unknown backend(s) tvm"),
        (["--chart", "x.png", "--batch-sizes", "2"], "include 1 in --batch-sizes"),
    ],
)
def test_cli_bad_options_exit_2(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "mobileone_s0", *extra]) == 2
    assert message in capsys.readouterr().err
