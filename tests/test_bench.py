"""``mobilevit bench``: row arithmetic, the backends compute what eager computes, report formats, CLI and chart.

No timing assertions: the numbers depend on the machine; only their relations are checked.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from timm.utils import reparameterize_model as timm_reparameterize
from torch.utils._python_dispatch import TorchDispatchMode

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.bench import fp32_fma_limit, measure_peak_gmacs
from mobilevit.bench.profile import fp32_fmas_per_cycle, max_clock_ghz
from mobilevit.bench.report import FORMATS, format_report, latency_accuracy_chart, published_top1
from mobilevit.bench.run import COLUMNS, bench_size, bench_table, make_backend, parse_backends
from mobilevit.cli import main

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
PEAK = 50.0  # made-up peak and FMA limit, so the rows fixture does not measure the machine
LIMIT = 80.0
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
            ["mobileone_s0"],
            ["eager", "reparam"],
            (1, 2),
            resolution=64,
            repeats=2,
            warmup=1,
            peak_gmacs=PEAK,
            fma_limit_gmacs=LIMIT,
        )
    finally:
        torch.set_num_threads(threads)


def test_rows_have_every_field(rows: list[dict]) -> None:
    assert [(r["backend"], r["batch"]) for r in rows] == [("eager", 1), ("reparam", 1), ("eager", 2), ("reparam", 2)]
    for r in rows:
        assert set(COLUMNS) <= set(r) and r["error"] is None
        assert (r["model"], r["family"], r["resolution"]) == ("mobileone_s0", "mobileone", 64)
        assert 0 < r["median_ms"] <= r["p90_ms"]


def test_gmacs_are_the_papers_per_image(rows: list[dict]) -> None:
    """MobileOne-S0 folded: 275M MACs at 224x224 (arXiv 2206.04040, Table 8). 224 and 64 are both multiples of the
    stride 32, so at 64x64 every convolution costs (64 / 224)^2 of that, and the 1024x1000 classifier the same."""
    classifier = 1024 * 1000
    expected = ((275e6 - classifier) * (64 / 224) ** 2 + classifier) / 1e9
    folded = [r for r in rows if r["backend"] == "reparam"]
    assert [r["batch"] for r in folded] == [1, 2]
    for r in folded:  # per image, whatever the batch
        assert r["GMACs"] == pytest.approx(expected, rel=0.01)


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


def test_segmentation_models_are_timed_at_their_preprocessing_size() -> None:
    """DeepLabV3 at 512x512, the size its published VOC mIoU was measured at (arXiv 2110.02178); a classifier at the
    default 256; ``--resolution`` sets both."""
    segmentation, classifier = mobilevit.create_model("deeplabv3_mobileone_s0"), mobilevit.create_model("mobileone_s0")
    assert bench_size(segmentation) == (512, 512) and bench_size(classifier) == (256, 256)
    assert bench_size(segmentation, 64) == bench_size(classifier, 64) == (64, 64)


@pytest.mark.slow  # default-suite budget: `make test-slow` runs it
@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_segmentation_model_through_an_exported_backend(tmp_path: Path) -> None:
    """A DeepLabV3 model in the timed onnxruntime session gives the eager ``[B, 21, h, w]`` logits, and its rows are
    complete."""
    ref, out = _eager_and_backend("deeplabv3_mobileone_s0", "onnxruntime", 64, tmp_path)
    assert out.shape == ref.shape == (2, 21, 4, 4)  # output stride 16
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    rows = bench_table(["deeplabv3_mobileone_s0"], ["reparam", "onnxruntime"], (1,), resolution=64, repeats=1)
    assert [(r["backend"], r["error"], r["resolution"], r["family"]) for r in rows] == [
        ("reparam", None, 64, "deeplabv3"),
        ("onnxruntime", None, 64, "deeplabv3"),
    ]
    assert rows[0]["GMACs"] == rows[1]["GMACs"] > 0  # both run the folded model


def test_list_weights_shows_the_published_miou(capsys: pytest.CaptureFixture[str]) -> None:
    """PASCAL VOC 2012 val mIoU of Apple's DeepLabV3-MobileViT weights as the paper publishes them (arXiv
    2110.02178: XXS 73.6, XS 77.1, S 79.1), in their own column beside the classifiers' top-1."""
    assert main(["list", "--weights", "deeplabv3_mobilevit_*", "mobileone_s0.apple_in1k", "--json"]) == 0
    rows = {r["weights"]: r for r in json.loads(capsys.readouterr().out)}
    assert {name: (r["mIoU"], r["top1"]) for name, r in rows.items()} == {
        "deeplabv3_mobilevit_xxs.hf_voc": (73.6, ""),
        "deeplabv3_mobilevit_xs.hf_voc": (77.1, ""),
        "deeplabv3_mobilevit_s.hf_voc": (79.1, ""),
        "mobileone_s0.apple_in1k": ("", 71.4),
    }
    assert main(["list", "--weights", "deeplabv3_mobilevit_xxs*"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()
    assert "mIoU" in header and "73.6" in row
    assert main(["list", "--weights", "mobileone_s0*", "--json"]) == 0  # classifiers only: no empty mIoU column
    assert all("mIoU" not in r for r in json.loads(capsys.readouterr().out))


def test_list_weights_shows_the_published_box_map(capsys: pytest.CaptureFixture[str]) -> None:
    """MS-COCO val box mAP of ml-cvnets' SSDLite-MobileViT weights as its model zoo publishes them (XXS 19.9, XS 24.8,
    S 27.9), in their own column; no detection column for classifiers alone."""
    assert main(["list", "--weights", "ssdlite_mobilevit_*", "mobileone_s0.apple_in1k", "--json"]) == 0
    rows = {r["weights"]: r for r in json.loads(capsys.readouterr().out)}
    assert {name: (r["mAP"], r["top1"]) for name, r in rows.items()} == {
        "ssdlite_mobilevit_xxs.cvnets_coco": (19.9, ""),
        "ssdlite_mobilevit_xs.cvnets_coco": (24.8, ""),
        "ssdlite_mobilevit_s.cvnets_coco": (27.9, ""),
        "mobileone_s0.apple_in1k": ("", 71.4),
    }
    assert main(["list", "--weights", "mobileone_s0*", "--json"]) == 0
    assert all("mAP" not in r for r in json.loads(capsys.readouterr().out))


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


def test_peak_times_dense_kernels_and_reports_the_fastest() -> None:
    products = []

    class RecordProducts(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: object, args: tuple = (), kwargs: dict | None = None) -> Any:
            if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.mm, torch.ops.aten.addmm):
                products.append((func.overloadpacket, tuple(args[1].shape)))
            return func(*args, **(kwargs or {}))

    with RecordProducts():
        peak = measure_peak_gmacs(size=256, repeats=2, warmup=1)
    assert any(op is torch.ops.aten.mm for op, _ in products)
    assert {shape[2:] for op, shape in products if op is torch.ops.aten.convolution} <= {(1, 1), (3, 3)}
    method = peak["peak_method"]
    assert peak["measured_peak_gmacs"] > 0
    assert peak["measured_peak_gflops"] == pytest.approx(2 * peak["measured_peak_gmacs"])
    assert f"{peak['peak_kernel']} ({peak['measured_peak_gmacs']:.1f} GMAC/s)" in method  # the fastest one's rate
    assert f"{torch.get_num_threads()} threads" in method
    assert "wino" not in method.split("left out")[0]
    assert {"fma_limit_gmacs", "fma_limit_method", "measured_pct_of_fma_limit"} <= set(peak)


@pytest.mark.parametrize("onednn_says", [None, ["jit_wino_4x3:avx512_core"]])
def test_a_convolution_not_shown_to_run_direct_never_sets_the_peak(
    onednn_says: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Winograd 3x3 convolution does fewer multiplications than the MACs counted (a run once reported 193 "GMAC/s"
    for it beside a 92 GMAC/s matmul). Stand-in: a 3x3 convolution that returns at once; it must not become the peak,
    whether it leaves no oneDNN log (None) or oneDNN names a Winograd implementation."""
    import mobilevit.bench.profile as profile

    real_conv2d = torch.nn.functional.conv2d
    done: dict[tuple, torch.Tensor] = {}

    def instant_3x3(x: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if weight.shape[-1] != 3:
            return real_conv2d(x, weight, *args, **kwargs)
        key = (tuple(x.shape), tuple(weight.shape))  # padding 1: the output has the input's height and width
        return done.setdefault(key, torch.zeros(x.shape[0], weight.shape[0], *x.shape[2:]))

    monkeypatch.setattr(torch.nn.functional, "conv2d", instant_3x3)
    if onednn_says is not None:
        monkeypatch.setattr(profile, "onednn_convolutions", lambda call: (call(), onednn_says)[1], raising=False)
    peak = measure_peak_gmacs(size=256, repeats=2, warmup=1)
    matmul_or_1x1 = re.findall(r"(?:torch\.mm|conv2d 1x1) [^(]*\(([\d.]+) GMAC/s\)", peak["peak_method"])
    assert f"{peak['measured_peak_gmacs']:.1f}" in matmul_or_1x1, peak["peak_method"]
    assert "3x3" not in peak["peak_kernel"]
    assert "3x3 32->32 on 64x64 left out" in peak["peak_method"]


def test_measured_peak_never_exceeds_the_fma_limit() -> None:
    """The limit is an upper bound by construction: a dense kernel above it means the limit is computed wrong.

    Where the machine hides its maximum clock (VMs), MOBILEVIT_MAX_CLOCK_GHZ supplies it (e.g. from the CPU's data
    sheet)."""
    clock = float(os.environ["MOBILEVIT_MAX_CLOCK_GHZ"]) if os.environ.get("MOBILEVIT_MAX_CLOCK_GHZ") else None
    limit = fp32_fma_limit(clock_ghz=clock)
    if limit["fma_limit_gmacs"] is None:
        pytest.skip(
            f"this machine's fp32 FMA limit cannot be read (set MOBILEVIT_MAX_CLOCK_GHZ): {limit['fma_limit_method']}"
        )
    peak = measure_peak_gmacs(clock_ghz=clock)
    assert peak["fma_limit_gmacs"] == limit["fma_limit_gmacs"]
    assert peak["measured_peak_gmacs"] <= peak["fma_limit_gmacs"], peak["peak_method"]


def _cpuinfo(vendor: str, family: int, model: int, name: str, flags: str, cores: int = 1, smt: int = 1) -> str:
    """/proc/cpuinfo as Linux writes it on x86, one block per logical processor."""
    blocks = []
    for i in range(cores * smt):
        blocks.append(
            f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: {name}\ncpu MHz\t\t: 2596.152\nphysical id\t: 0\ncore id\t\t: {i % cores}\n"
            f"cpu cores\t: {cores}\nflags\t\t: fpu sse sse2 {flags}\n"
        )
    return "\n".join(blocks) + "\n"


ICE_LAKE = _cpuinfo("GenuineIntel", 6, 106, "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "fma avx avx2 avx512f")
COFFEE_LAKE = _cpuinfo("GenuineIntel", 6, 158, "Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz", "fma avx avx2")
SANDY_BRIDGE = _cpuinfo("GenuineIntel", 6, 45, "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", "avx")
GENOA = _cpuinfo("AuthenticAMD", 25, 17, "AMD EPYC", "fma avx avx2 avx512f avx512dq avx512bw avx512vl", cores=2)
MILAN = _cpuinfo("AuthenticAMD", 25, 1, "AMD EPYC 7763 64-Core Processor", "fma avx avx2")
ROME = _cpuinfo("AuthenticAMD", 23, 49, "AMD EPYC 7R32", "fma avx avx2")
NAPLES = _cpuinfo("AuthenticAMD", 23, 1, "AMD EPYC 7601 32-Core Processor", "fma avx avx2")
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n\n"


@pytest.mark.parametrize(
    ("cpuinfo", "fmas"),
    [
        (ICE_LAKE, 32),  # AVX-512, 2 FMA units: 2 x 16 fp32 lanes
        (COFFEE_LAKE, 16),  # AVX2 + FMA, 2 FMA units: 2 x 8
        (GENOA, 16),  # Zen 4: AVX-512 double-pumped over 2 x 256-bit pipes
        (MILAN, 16),  # Zen 3: 2 x 256-bit FMA pipes
        (ROME, 16),  # Zen 2: 2 x 256-bit
        (NAPLES, 8),  # Zen 1: 2 x 128-bit
        (SANDY_BRIDGE, None),  # AVX without FMA
        (GRAVITON, None),  # not x86: width not tabulated
    ],
)
def test_fp32_fmas_per_cycle_of_known_cpus(cpuinfo: str, fmas: int | None) -> None:
    count, why = fp32_fmas_per_cycle(cpuinfo)
    assert count == fmas and why


def _cpufreq(root: Path, max_khz: int | None, driver: str = "amd-pstate", boost: str | None = None) -> Path:
    """A sysfs CPU folder (``/sys/devices/system/cpu``) with cpu0's cpufreq files."""
    (root / "cpu0" / "cpufreq").mkdir(parents=True)
    if max_khz is not None:
        (root / "cpu0" / "cpufreq" / "cpuinfo_max_freq").write_text(f"{max_khz}\n")
        (root / "cpu0" / "cpufreq" / "scaling_driver").write_text(f"{driver}\n")
    if boost is not None:
        (root / "cpufreq").mkdir()
        (root / "cpufreq" / "boost").write_text(f"{boost}\n")
    return root


def test_fma_limit_is_cores_times_lanes_times_max_clock(tmp_path: Path) -> None:
    # 2 Zen 4 cores x 16 fp32 FMA per cycle x 3.7 GHz
    limit = fp32_fma_limit(threads=2, cpuinfo=GENOA, cpu_dir=_cpufreq(tmp_path, 3_700_000))
    assert limit["fma_limit_gmacs"] == pytest.approx(2 * 16 * 3.7)
    assert limit["fma_per_cycle"] == 32
    assert "3.70 GHz" in limit["fma_limit_method"] and "Zen 4" in limit["fma_limit_method"]
    # one thread: one core; more threads than cores (SMT): the cores' FMA units, not the threads'
    assert fp32_fma_limit(1, cpuinfo=GENOA, cpu_dir=tmp_path)["fma_limit_gmacs"] == pytest.approx(16 * 3.7)
    smt = _cpuinfo("GenuineIntel", 6, 106, "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "fma avx2 avx512f", 2, 2)
    assert fp32_fma_limit(4, cpuinfo=smt, cpu_dir=tmp_path)["fma_limit_gmacs"] == pytest.approx(2 * 32 * 3.7)
    # a clock given by the caller (a VM hides it)
    assert fp32_fma_limit(2, 3.0, cpuinfo=COFFEE_LAKE, cpu_dir=tmp_path / "none")["fma_limit_gmacs"] == 48.0


def test_fma_limit_is_not_computed_from_a_clock_that_is_not_the_maximum(tmp_path: Path) -> None:
    """model name GHz and 'cpu MHz' are base or current clocks (here 2.6 GHz on a VM whose matmul needs >= 2.9)."""
    limit = fp32_fma_limit(2, cpuinfo=GENOA, cpu_dir=_cpufreq(tmp_path / "vm", None))
    assert limit["fma_limit_gmacs"] is None and limit["fma_per_cycle"] == 32
    assert "2.60 GHz" in limit["fma_limit_method"] and "cannot be read" in limit["fma_limit_method"]
    assert "2.90 GHz" in fp32_fma_limit(2, cpuinfo=ICE_LAKE, cpu_dir=tmp_path / "vm")["fma_limit_method"]
    # acpi-cpufreq's table ends at the base clock; only with boost off is that the maximum
    boosting = _cpufreq(tmp_path / "acpi", 2_600_000, "acpi-cpufreq", boost="1")
    assert max_clock_ghz(boosting)[0] is None
    assert max_clock_ghz(_cpufreq(tmp_path / "acpi-off", 2_600_000, "acpi-cpufreq", boost="0"))[0] == 2.6
    assert fp32_fma_limit(2, cpuinfo=GRAVITON, cpu_dir=_cpufreq(tmp_path / "arm", 2_500_000))["fma_limit_gmacs"] is None


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
    assert header["fma_limit_method"] and "fma_limit_gmacs" in header  # None where the clock cannot be read
    assert {(r["model"], r["backend"]) for r in data["rows"]} == {
        (m, b) for m in ("mobileone_s0", "mobilevit_xxs") for b in ("eager", "reparam")
    }
    for r in data["rows"]:
        assert r["pct_peak"] == pytest.approx(100 * r["GMAC_per_s"] / header["measured_peak_gmacs"])
        if header["fma_limit_gmacs"]:
            assert r["pct_fma_limit"] == pytest.approx(100 * r["GMAC_per_s"] / header["fma_limit_gmacs"])
        else:
            assert r["pct_fma_limit"] is None
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
