"""Shared test fixtures: the ``../shared`` data folder (skipped cleanly when absent) and reference helpers.

The suite runs every process on one intra-op thread (PyTorch, OpenMP and MKL here; subprocesses inherit the
environment). The tests' models are small, so extra threads gain little, and on a busy machine an OpenMP team whose
second thread is descheduled waits at every barrier: a 10 ms forward then takes a second. Set ``OMP_NUM_THREADS``
yourself to run the suite with more.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import mobilevit  # noqa: E402
from reference_utils import randomize_layer_scales  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The variants a per-variant sweep checks in the default run, one per family and block kind (MobileViT v1, v2, v3 on
# v1 and on v2, FastViT with RepMixer only and with attention, MobileOne without and with SE); `-m slow` checks all.
REPRESENTATIVES = (
    "mobilevit_xxs",
    "mobilevitv2_050",
    "mobilevitv3_xxs",
    "mobilevitv3_050",
    "fastvit_t8",
    "fastvit_sa12",
    "mobileone_s0",
    "mobileone_s4",
)


def one_per_family(names: list[str]) -> list:
    """``names`` as test parameters, those outside :data:`REPRESENTATIVES` marked slow."""
    return [name if name in REPRESENTATIVES else pytest.param(name, marks=pytest.mark.slow) for name in names]


# One variant of each family and block kind (MobileViT v1, v2, v3 on v2, FastViT with attention stages, MobileOne
# with SE), the set every exported-file test (export parity, onnxruntime, OpenVINO) shares, exported once per session.
# MobileViT v3 on v2 (v2's blocks with v3's fusion: 20 s to export) runs with `-m slow`.
EXPORT_FAMILIES = (
    "mobilevit_xxs",
    "mobilevitv2_050",
    pytest.param("mobilevitv3_050", marks=pytest.mark.slow),
    "fastvit_sa12",
    "mobileone_s4",
)
# The size each is traced at: MobileViT v1 off its 64-pixel patch grid (the graph must still take every size).
EXPORT_SIZES = {"mobilevit_xxs": (104, 136)}

SHARED = Path(os.environ.get("MOBILEVIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "fixtures").is_dir():
        pytest.skip(f"shared test data not found at {SHARED} (set MOBILEVIT_SHARED to its location)")
    return SHARED


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 100) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that conversions of them are visible."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = 1 + 0.1 * torch.randn(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean = 0.1 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)
    return model


def random_model(name: str) -> torch.nn.Module:
    """``name`` with random weights (seed 0), BatchNorm statistics and layer scales randomised so that conversions
    of them show in the logits, in eval mode."""
    torch.manual_seed(0)
    return randomize_layer_scales(randomize_batchnorm(mobilevit.create_model(name))).eval()


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[torch.nn.Module, Path]]:
    """``onnx_export(arch)``: :func:`random_model` and its dynamic ONNX export traced at ``EXPORT_SIZES`` (default
    128x128), exported once per run: pytest-xdist workers share the files through their common temporary folder."""
    pytest.importorskip("onnxscript", reason="exporting needs onnxscript (pip install 'mobilevit[export]')")
    from filelock import FileLock

    from mobilevit.export import export_model

    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "onnx-exports"
    folder.mkdir(exist_ok=True)
    made: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(name: str) -> tuple[torch.nn.Module, Path]:
        if name not in made:
            model, path = random_model(name), folder / f"{name}.onnx"
            with FileLock(f"{path}.lock"):
                if not path.is_file():  # written aside and renamed: a failed export leaves no file behind
                    size = EXPORT_SIZES.get(name, (128, 128))
                    export_model(model, "onnx", folder / f"{name}.partial.onnx", input_size=size).rename(path)
            made[name] = model, path
        return made[name]

    return get


# ------------------------------------------------------------------------ image formats the decoder must not open

# The formats the documentation promises to decode, as the decoder's messages name them.
PROMISED_FORMATS = ("JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF", "AVIF")


def refused_images() -> dict[str, bytes]:
    """Small valid files in formats Pillow reads and the decoder must refuse, by Pillow's format name: EPS (which
    Pillow renders with Ghostscript), PSD and ICO."""
    import io

    from PIL import Image

    eps = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
        b"newpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n"
    )
    # PSD: signature, version 1, 6 reserved bytes, 3 channels, 8x8, 8 bits, RGB; no colour data, resources or
    # layers; raw (uncompressed) planes
    psd = b"8BPS" + (1).to_bytes(2, "big") + bytes(6) + (3).to_bytes(2, "big") + (8).to_bytes(4, "big") * 2
    psd += (8).to_bytes(2, "big") + (3).to_bytes(2, "big") + bytes(12) + bytes(2) + bytes(3 * 8 * 8)
    ico = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(ico, "ICO", sizes=[(16, 16)])
    return {"EPS": eps, "PSD": psd, "ICO": ico.getvalue()}


def spy_on_refused_plugins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every opening of an EPS, PSD or ICO file by Pillow, and every Ghostscript run (which then fails):
    the returned list stays empty while those plugins are never reached."""
    from PIL import EpsImagePlugin, IcoImagePlugin, PsdImagePlugin

    reached: list[str] = []
    for name, cls in (("EPS", EpsImagePlugin.EpsImageFile), ("PSD", PsdImagePlugin.PsdImageFile),
                      ("ICO", IcoImagePlugin.IcoImageFile)):  # fmt: skip
        original = cls._open

        def spy(self: object, name: str = name, original: Callable = original) -> None:
            reached.append(name)
            original(self)

        monkeypatch.setattr(cls, "_open", spy)

    def ghostscript(*args: object, **kwargs: object) -> None:
        reached.append("Ghostscript")
        raise OSError("Ghostscript must not run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return reached
