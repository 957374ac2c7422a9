"""The ``mobilevit`` command line: list and bench print measured numbers; bad input exits 2 with a clear message."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from mobilevit.cli import main


def test_list_json_counts_match_timm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "mobilevit_xxs", "mobilevitv2_05*", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == ["mobilevit_xxs", "mobilevitv2_050"]
    for name, row in rows.items():
        expected = sum(p.numel() for p in timm.create_model(name).parameters()) / 1e6
        assert row["params_M"] == pytest.approx(expected, rel=1e-9)


def test_list_macs_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "mobilevit_xxs", "--macs"]) == 0
    out = capsys.readouterr().out
    assert "GMACs@256" in out and "mobilevit_xxs" in out
    # the v1 paper gives 0.4 GFLOPs (multiply-adds) for XXS at 256x256
    gmacs = float(out.strip().splitlines()[-1].split("|")[-2])
    assert gmacs == pytest.approx(0.4, rel=0.05)


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "mobilevit_xxs", "--batch-sizes", "1,2", "--repeats", "2", "--resolution", "64"]
    assert main([*argv, "--backends", "eager", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [("mobilevit_xxs", 1), ("mobilevit_xxs", 2)]
    for r in rows:
        assert 0 < r["median_ms"] <= r["p90_ms"]
        assert r["img_per_s"] == pytest.approx(1e3 * r["batch"] / r["median_ms"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "mobilevit_xxx"], "mobilevit_xxs"),
        (["list", "nothing_*"], "No model matches"),
        (["bench", "mobilevitv2_5"], "Unknown model"),
    ],
)
def test_bad_model_names_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_option_is_an_argparse_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mobilevit.cli", "bench", "--batch-sizes", "one"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "comma-separated integers" in proc.stderr


class _Malicious:
    """Unpickling this runs a shell command that creates a marker file: a hostile checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_malicious_pickle_is_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    checkpoint = tmp_path / "evil.pth"
    torch.save({"state_dict": {"stem.conv.weight": torch.zeros(1)}, "x": _Malicious(marker)}, checkpoint)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    argv = ["predict", "--model", "mobileone_s0", "--pretrained", str(checkpoint), str(tmp_path / "a.png")]
    proc = subprocess.run([sys.executable, "-m", "mobilevit.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(checkpoint) in lines[0] and "executable pickled objects" in lines[0]
    assert "will likely succeed" not in proc.stderr
    assert not marker.exists(), "loading the checkpoint ran its payload"
    # control: an unrestricted load does run the payload, so the refusal is what kept it from running
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()
