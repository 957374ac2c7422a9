"""Pretrained weights by name: the Hugging Face cache, downloads, offline errors, and our own save/load folder.

Nothing here touches the internet. The Hub is stood in for by a cache folder built by hand in the layout huggingface_hub
documents (``models--ORG--NAME/{refs/main, blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>}``) and by a
minimal Hub endpoint on 127.0.0.1; Apple's URLs by a plain HTTP server on 127.0.0.1. Every test points ``HF_ENDPOINT``
at a closed local port first, so an accidental download fails locally instead of reaching out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.weights import (
    CheckpointError,
    PretrainedCfg,
    WeightsUnavailableError,
    cached_weights,
    detect_format,
    hub,
    read_checkpoint,
    resolve_weights,
    save_pretrained,
)
from mobilevit.weights import entries as entries_mod
from mobilevit.weights.entries import get_weights, labels
from reference_utils import randomize_layer_scales
from test_converters import hf_reference, randomize_norms_and_biases

TOL = 1e-4
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------------------------------------- helpers
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture(autouse=True)
def _no_internet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty HF cache and torch hub in tmp_path, offline by default, and a Hub endpoint that refuses at once."""
    for name in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")


def go_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allow downloads (to 127.0.0.1 only): huggingface_hub read HF_HUB_OFFLINE once, at import, so set both."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def put_in_hf_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay ``files`` (name in the repo -> local file) out as huggingface_hub's cache does; returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        try:
            (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
        except OSError:  # no symlinks (Windows without developer mode): huggingface_hub copies then, so do we
            shutil.copy(blob, snapshot / name)
    return snapshot


def save_safetensors(state_dict: dict[str, Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def timm_model(arch: str) -> nn.Module:
    """timm's model with seeded random weights, randomized norms (and MobileViT biases) and FastViT layer scales."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    randomize = randomize_norms_and_biases if arch.startswith("mobilevit") else randomize_batchnorm
    return randomize_layer_scales(randomize(model)).eval()


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def assert_close(ours: Tensor, ref: Tensor, what: str, tol: float = TOL) -> None:
    """Max abs difference <= tol, relative to the logit scale when that exceeds 1 (random deep CNNs such as MobileOne
    with randomized BatchNorms reach logits of 1e15)."""
    assert ours.shape == ref.shape, f"{what}: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    diff = (ours - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert diff <= tol * scale, f"{what}: max abs logit difference {diff:.3g} > {tol} x {scale:.3g}"


def x256(batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(3))


class _Server:
    """An HTTP server on 127.0.0.1 in a thread: ``files`` maps a URL path to bytes; ``hub`` adds the headers of the
    Hugging Face ``/{repo}/resolve/{revision}/{file}`` protocol (commit, ETag, the EntryNotFound error code)."""

    def __init__(self, files: dict[str, bytes], hub: bool = False) -> None:
        self.files, self.hub, self.requests = files, hub, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append((self.command, path))
                data = server.files.get(path)
                if server.hub:  # /{org}/{name}/resolve/{revision}/{file}: any revision serves the same files
                    parts = path.lstrip("/").split("/")
                    if len(parts) >= 5 and parts[2] == "resolve":
                        data = server.files.get("/" + "/".join(parts[:2] + parts[4:]))
                self.send_response(200 if data is not None else 404)
                if server.hub:
                    self.send_header("X-Repo-Commit", COMMIT)
                    if data is None:
                        self.send_header("X-Error-Code", "EntryNotFound")
                    else:
                        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


# ------------------------------------------------------------------------------------------- (a) the HF cache, offline
@pytest.mark.parametrize(
    "name",
    ["mobilevit_xxs.cvnets_in1k", "mobilevitv2_050.cvnets_in1k", "fastvit_t8.apple_in1k", "mobileone_s0.apple_in1k"],
)
def test_timm_entry_from_hf_cache(name: str, tmp_path: Path) -> None:
    """``pretrained=True`` finds the cached timm file offline and gives timm's logits; the entry rides along."""
    entry = get_weights(name)
    ref = timm_model(name.split(".")[0])
    file = save_safetensors(ref.state_dict(), tmp_path / "model.safetensors")
    put_in_hf_cache(tmp_path / "hf", entry.hub_repo_id, {"model.safetensors": file})

    start = time.perf_counter()
    model = mobilevit.create_model(name, pretrained=True).eval()
    assert time.perf_counter() - start < 30
    x = x256()
    assert_close(logits(model, x), logits(ref, x), name)

    info = model.pretrained_cfg
    assert isinstance(info, PretrainedCfg)
    assert info.entry is entry and info.arch == entry.arch and info.name == name
    assert info.preprocess == entry.preprocess
    assert info.labels is not None and len(info.labels) == 1000 and info.labels[0] == labels(entry)[0]
    assert Path(info.source) == cached_weights(entry)
    assert Path(info.source).parent.parent.parent.name == "models--" + entry.hub_repo_id.replace("/", "--")


def test_bare_arch_uses_the_default_entry(tmp_path: Path) -> None:
    ref = timm_model("mobilevit_xxs")
    file = save_safetensors(ref.state_dict(), tmp_path / "model.safetensors")
    put_in_hf_cache(tmp_path / "hf", "timm/mobilevit_xxs.cvnets_in1k", {"model.safetensors": file})
    model = mobilevit.create_model("mobilevit_xxs", pretrained=True).eval()
    assert model.pretrained_cfg.entry.name == "mobilevit_xxs.cvnets_in1k"
    x = x256(1)
    assert_close(logits(model, x), logits(ref, x), "default weights")


def test_pretrained_options_apply_to_cached_weights(tmp_path: Path) -> None:
    """``num_classes`` starts a fresh head (no labels then), ``reparameterized`` folds, ``features_only`` works."""
    ref = timm_model("fastvit_t8")
    file = save_safetensors(ref.state_dict(), tmp_path / "model.safetensors")
    put_in_hf_cache(tmp_path / "hf", "timm/fastvit_t8.apple_in1k", {"model.safetensors": file})
    folded = mobilevit.create_model("fastvit_t8.apple_in1k", pretrained=True, reparameterized=True).eval()
    x = x256(1)
    assert_close(logits(folded, x), logits(ref, x), "folded")
    ten = mobilevit.create_model("fastvit_t8.apple_in1k", pretrained=True, num_classes=10)
    assert ten.num_classes == 10 and ten.pretrained_cfg.labels is None
    assert ten.pretrained_cfg.preprocess == get_weights("fastvit_t8.apple_in1k").preprocess
    feats = mobilevit.create_model("fastvit_t8.apple_in1k", pretrained=True, features_only=True)
    assert feats.pretrained_cfg.labels is None


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_transformers_entry_from_hf_cache(weights_file: str, tmp_path: Path) -> None:
    """A transformers repository (config.json + weights) in the cache is read as a folder and converted."""
    ref = hf_reference("mobilevit_xxs")
    saved = tmp_path / "saved"
    ref.save_pretrained(saved)
    files = {"config.json": saved / "config.json"}
    if weights_file == "model.safetensors":
        files[weights_file] = saved / "model.safetensors"
    else:
        torch.save(ref.state_dict(), tmp_path / weights_file)
        files[weights_file] = tmp_path / weights_file
        # huggingface_hub records a file the repository does not have under .no_exist; such a marker must not matter
        no_exist = tmp_path / "hf" / "models--apple--mobilevit-xx-small" / ".no_exist" / COMMIT
        no_exist.mkdir(parents=True)
        (no_exist / "model.safetensors").touch()
    put_in_hf_cache(tmp_path / "hf", "apple/mobilevit-xx-small", files)

    model = mobilevit.create_model("mobilevit_xxs.hf_in1k", pretrained=True).eval()
    x = x256()
    assert_close(logits(model, x), logits(ref, x), f"transformers ({weights_file})")
    info = model.pretrained_cfg
    assert info.entry.name == "mobilevit_xxs.hf_in1k" and info.preprocess.channel_order == "BGR"
    assert Path(info.source).is_dir() and (Path(info.source) / "config.json").is_file()


def test_ml_fastvit_entry_from_torch_hub_cache(shared: Path) -> None:
    """A URL entry's file placed in the torch hub cache is used offline; Apple's reparameterized file loads folded."""
    entry = get_weights("fastvit_t8.orig_in1k_reparam")
    case = shared / "fixtures" / "fastvit_t8_reparam"
    target = hub.local_weights_path(entry)
    target.parent.mkdir(parents=True)
    shutil.copy(case / "fastvit_t8_reparam.pth.tar", target)

    model = mobilevit.create_model(entry.name, pretrained=True).eval()
    assert any("reparam_conv" in k for k in model.state_dict())
    from safetensors.torch import load_file

    io = load_file(str(case / "io.safetensors"))
    assert_close(logits(model, io["input_256"]), io["logits_256"], "ml-fastvit original logits", tol=1e-5)
    assert model.pretrained_cfg.entry is entry and Path(model.pretrained_cfg.source) == target


def test_ml_mobileone_real_weights_from_torch_hub_cache(shared: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    entry = get_weights("mobileone_s0.orig_in1k_reparam")
    real = shared / "weights" / "mobileone_s0_reparam.safetensors"
    target = hub.local_weights_path(entry)
    target.parent.mkdir(parents=True)
    torch.save(load_file(str(real)), target)  # Apple ships a plain state dict in a .pth.tar
    model = mobilevit.create_model(entry.name, pretrained=True).eval()
    direct = mobilevit.create_model("mobileone_s0", pretrained=real).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    assert torch.equal(logits(model, x), logits(direct, x))
    assert model.pretrained_cfg.preprocess.input_size == (224, 224)


def test_local_path_with_a_weights_name_gets_the_entry(tmp_path: Path) -> None:
    ref = timm_model("mobilevit_xxs")
    file = save_safetensors(ref.state_dict(), tmp_path / "mine.safetensors")
    model = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=file)
    assert model.pretrained_cfg.entry.name == "mobilevit_xxs.cvnets_in1k"
    assert model.pretrained_cfg.source == str(file) and len(model.pretrained_cfg.labels) == 1000
    bare = mobilevit.create_model("mobilevit_xxs", pretrained=file)
    assert bare.pretrained_cfg.entry is None and bare.pretrained_cfg.preprocess is None
    assert mobilevit.create_model("mobilevit_xxs").pretrained_cfg is None  # random weights


# ------------------------------------------------------------------------------ (b) downloads from 127.0.0.1 stand-ins
def test_download_from_a_local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online with an empty cache: huggingface_hub downloads into the standard cache layout; then offline reuses it."""
    ref = timm_model("mobilevit_xxs")
    data = save_safetensors(ref.state_dict(), tmp_path / "model.safetensors").read_bytes()
    go_online(monkeypatch)
    with _Server({"/timm/mobilevit_xxs.cvnets_in1k/model.safetensors": data}, hub=True) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        model = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True).eval()
        assert ("GET", "/timm/mobilevit_xxs.cvnets_in1k/resolve/main/model.safetensors") in server.requests
    snapshot = tmp_path / "hf" / "models--timm--mobilevit_xxs.cvnets_in1k" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").read_bytes() == data
    x = x256(1)
    assert_close(logits(model, x), logits(ref, x), "downloaded")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone: the cache answers
    again = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True).eval()
    assert torch.equal(logits(again, x), logits(model, x))


def test_transformers_download_falls_back_to_pytorch_model_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = hf_reference("mobilevit_xxs")
    ref.save_pretrained(tmp_path / "saved")
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    files = {
        "/apple/mobilevit-xx-small/config.json": (tmp_path / "saved" / "config.json").read_bytes(),
        "/apple/mobilevit-xx-small/pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes(),
    }
    go_online(monkeypatch)
    with _Server(files, hub=True) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder = resolve_weights("mobilevit_xxs.hf_in1k")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    model = mobilevit.create_model("mobilevit_xxs", pretrained=folder).eval()
    x = x256(1)
    assert_close(logits(model, x), logits(ref, x), "transformers .bin")


def test_url_entry_downloads_into_torch_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL-only entry (Apple's servers, here 127.0.0.1) is fetched by torch.hub into TORCH_HOME and reused."""
    ref = timm_model("mobilevit_xxs")
    torch.save(ref.state_dict(), tmp_path / "served.pt")
    name = "mobilevit_xxs.orig_in1k"
    go_online(monkeypatch)
    with _Server({"/ml/mobilevit_xxs.pt": (tmp_path / "served.pt").read_bytes()}) as server:
        # the same entry, pointing at the stand-in server; timm's layout so that timm is the reference
        local = dataclasses.replace(get_weights(name), url=server.url + "/ml/mobilevit_xxs.pt", format="timm")
        monkeypatch.setitem(entries_mod.WEIGHTS, name, local)
        model = mobilevit.create_model(name, pretrained=True).eval()
        assert server.requests == [("GET", "/ml/mobilevit_xxs.pt")]
    target = tmp_path / "torch" / "hub" / "checkpoints" / "mobilevit_xxs.orig_in1k--mobilevit_xxs.pt"
    assert target.is_file() and hub.local_weights_path(local) == target
    assert not list(target.parent.glob("*.partial")) and len(list(target.parent.iterdir())) == 1
    x = x256(1)
    assert_close(logits(model, x), logits(ref, x), "URL entry")
    assert mobilevit.create_model(name, pretrained=True).pretrained_cfg.source == str(target)  # server closed: cache


def test_url_cache_names_are_unique() -> None:
    """ml-cvnets and ml-fastvit reuse file names across folders; the local names must not collide."""
    url_entries = [e for e in entries_mod.WEIGHTS.values() if not e.hub_repo_id]
    paths = {hub.local_weights_path(e) for e in url_entries}
    assert len(paths) == len(url_entries)


# ----------------------------------------------------------------------------------------- (c) failing fast and clearly
def test_offline_empty_cache_fails_fast_and_says_how(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    for part in (
        "mobilevit_xxs.cvnets_in1k",
        "timm/mobilevit_xxs.cvnets_in1k",
        "model.safetensors",
        "HF_HUB_OFFLINE",
        str(tmp_path / "hf" / "models--timm--mobilevit_xxs.cvnets_in1k"),
        "hf download timm/mobilevit_xxs.cvnets_in1k model.safetensors",
        "pretrained='path/to/model.safetensors'",
        "--pretrained",
    ):
        assert part in msg, f"{part!r} missing from: {msg}"
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, FileNotFoundError)


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not offline, but the endpoint refuses: a clear error within seconds, no download attempted."""
    go_online(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"unreachable.*127\.0\.0\.1") as err:
        mobilevit.create_model("mobilevit_xxs.hf_in1k", pretrained=True)
    assert time.perf_counter() - start < 5
    assert "config.json" in str(err.value) and "pretrained='path/to/folder'" in str(err.value)


def test_hanging_dns_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that never answers (a machine without network) costs PROBE_TIMEOUT, not huggingface_hub's retries."""
    release = threading.Event()

    def hang(*args: object, **kwargs: object) -> socket.socket:
        release.wait(30)
        raise OSError("released")

    go_online(monkeypatch)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT", 0.5)
    monkeypatch.setattr(hub.socket, "create_connection", hang)
    try:
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.5 s"):
            resolve_weights("fastvit_t8.apple_in1k")
        assert time.perf_counter() - start < 3
    finally:
        release.set()


def test_url_entry_offline_error(tmp_path: Path) -> None:
    entry = get_weights("mobilevitv2_100.orig_in1k_384")
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(entry)
    msg = str(err.value)
    assert entry.url in msg and str(hub.local_weights_path(entry)) in msg and "curl -L -o" in msg
    assert "pretrained='path/to/mobilevitv2-1.0.pt'" in msg


def test_download_page_entry_says_where_to_get_it() -> None:
    entry = get_weights("mobilevitv3_xxs.orig_in1k")
    with pytest.raises(WeightsUnavailableError) as err:
        mobilevit.create_model(entry.name, pretrained=True)
    msg = str(err.value)
    assert entry.download_page in msg and entry.filename in msg and "pretrained=" in msg


def test_unknown_weights_name_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"mobilevit_xxs\.cvnets_in1k.*mobilevit_xxs\.orig_in1k"):
        mobilevit.create_model("mobilevit_xxs.nope", pretrained=True)


# ------------------------------------------------------------------------------------ (d) save_pretrained round trips
def _round_trip(model: nn.Module, folder: Path, **kwargs: object) -> nn.Module:
    save_pretrained(model, folder, **kwargs)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    return mobilevit.create_model(folder).eval()


def test_round_trip_mobilevit(tmp_path: Path) -> None:
    model = randomize_norms_and_biases(mobilevit.create_model("mobilevit_xxs", drop_path_rate=0.1)).eval()
    loaded = _round_trip(model, tmp_path / "out")
    x = x256(1)
    assert torch.equal(logits(loaded, x), logits(model, x))
    assert loaded.cfg == model.cfg  # non-default fields survive
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["library"] == "mobilevit" and "model_type" not in config
    assert config["arch"] == "mobilevit_xxs" and config["config"] == {"drop_path_rate": 0.1}
    assert config["labels"] is None and config["reparameterized"] is False
    # no entry: the preprocessing defaults to the architecture's default weights
    assert loaded.pretrained_cfg.preprocess == get_weights("mobilevit_xxs").preprocess
    # no names stored, 1000 outputs: ImageNet-1k's names (torchvision's copy), as for any untagged 1000-class checkpoint
    imagenet = tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert loaded.pretrained_cfg.labels == imagenet and loaded.pretrained_cfg.entry is None
    # the other ways in: from_pretrained, the arch with pretrained=folder, the safetensors file alone
    for other in (
        mobilevit.from_pretrained(tmp_path / "out"),
        mobilevit.create_model("mobilevit_xxs", pretrained=tmp_path / "out"),
        mobilevit.create_model(tmp_path / "out" / "model.safetensors"),
    ):
        assert torch.equal(logits(other.eval(), x), logits(model, x))


@pytest.mark.parametrize("folded", [False, True], ids=["train-time", "reparameterized"])
def test_round_trip_fastvit(folded: bool, tmp_path: Path) -> None:
    model = randomize_layer_scales(randomize_norms_and_biases(mobilevit.create_model("fastvit_t8"))).eval()
    if folded:
        model = mobilevit.reparameterize_model(model)
    loaded = _round_trip(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["reparameterized"] is folded
    assert set(loaded.state_dict()) == set(model.state_dict())
    x = x256(1)
    assert_close(logits(loaded, x), logits(model, x), "fastvit round trip", tol=0.0)
    if not folded:  # and the train-time checkpoint still folds on request
        folded_model = mobilevit.create_model(tmp_path / "out", reparameterized=True).eval()
        assert any("reparam_conv" in k for k in folded_model.state_dict())
        assert_close(logits(folded_model, x), logits(model, x), "folded on load")


def test_round_trip_fine_tuned_with_custom_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10-class model fine-tuned from pretrained weights keeps its labels and the entry's preprocessing, and
    reloads with the cache gone."""
    ref = timm_model("mobilevit_xxs")
    file = save_safetensors(ref.state_dict(), tmp_path / "model.safetensors")
    put_in_hf_cache(tmp_path / "hf", "timm/mobilevit_xxs.cvnets_in1k", {"model.safetensors": file})
    model = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True, num_classes=10)
    assert model.pretrained_cfg.labels is None  # a fresh head has no names yet
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 128, 128)), torch.arange(4))
    loss.backward()
    optimizer.step()
    model.eval()
    names = [f"class {c}" for c in "abcdefghij"]

    save_pretrained(model, tmp_path / "ft", labels=names)
    shutil.rmtree(tmp_path / "hf")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    loaded = mobilevit.create_model(tmp_path / "ft").eval()
    assert loaded.num_classes == 10
    assert loaded.pretrained_cfg.labels == tuple(names)
    assert loaded.pretrained_cfg.preprocess == get_weights("mobilevit_xxs.cvnets_in1k").preprocess
    x = x256(1)
    assert torch.equal(logits(loaded, x), logits(model, x))
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["weights"] == "mobilevit_xxs.cvnets_in1k"

    # saved again without arguments, the labels and preprocessing come from the loaded model itself
    again = _round_trip(loaded, tmp_path / "ft2")
    assert again.pretrained_cfg.labels == tuple(names)
    assert again.pretrained_cfg.preprocess == loaded.pretrained_cfg.preprocess
    # a new head drops the labels, the preprocessing stays
    three = mobilevit.create_model(tmp_path / "ft", num_classes=3)
    assert three.pretrained_cfg.labels is None and three.pretrained_cfg.preprocess is not None


def test_round_trip_structural_override_and_custom_preprocess(tmp_path: Path) -> None:
    from mobilevit.weights.entries import Preprocess

    model = mobilevit.create_model("mobileone_s0", in_channels=1, num_classes=2).eval()
    pre = Preprocess((160, 160), 182, 0.88, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "RGB")
    loaded = _round_trip(model, tmp_path / "gray", labels=["no", "yes"], preprocess=pre)
    assert loaded.cfg.in_channels == 1 and loaded.num_classes == 2
    assert loaded.pretrained_cfg.preprocess == pre and loaded.pretrained_cfg.labels == ("no", "yes")
    x = torch.randn(1, 1, 160, 160)
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_save_pretrained_checks_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 labels for a model with 10 outputs"):
        save_pretrained(mobilevit.create_model("mobilevit_xxs", num_classes=10), tmp_path, labels=["a", "b", "c"])


def test_our_folder_for_another_arch_is_refused(tmp_path: Path) -> None:
    save_pretrained(mobilevit.create_model("mobilevit_xxs"), tmp_path / "xxs")
    with pytest.raises(CheckpointError, match="mobilevit_xxs"):
        mobilevit.create_model("mobilevit_xs", pretrained=tmp_path / "xxs")


def test_a_folder_that_is_not_a_checkpoint_is_refused_as_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a registered model nor a folder written by"):
        mobilevit.create_model(tmp_path)


# ------------------------------------------------------------------------- (e) our folder vs a transformers folder
def test_folders_are_told_apart(tmp_path: Path) -> None:
    hf = hf_reference("mobilevit_xxs")
    hf.save_pretrained(tmp_path / "hf_folder")
    state_dict, info = read_checkpoint(tmp_path / "hf_folder")
    assert "hf_config" in info and "mobilevit_config" not in info
    assert detect_format(state_dict) == "transformers"
    model = mobilevit.create_model("mobilevit_xxs", pretrained=tmp_path / "hf_folder").eval()
    x = x256(1)
    assert_close(logits(model, x), logits(hf, x), "transformers folder")

    save_pretrained(model, tmp_path / "ours")
    state_dict, info = read_checkpoint(tmp_path / "ours")
    assert info["mobilevit_config"]["arch"] == "mobilevit_xxs" and "hf_config" not in info
    assert detect_format(state_dict) == "native"

    # a transformers config that happens to carry our "library" key is still a transformers config
    config = json.loads((tmp_path / "hf_folder" / "config.json").read_text())
    (tmp_path / "hf_folder" / "config.json").write_text(json.dumps({**config, "library": "mobilevit"}))
    assert "hf_config" in read_checkpoint(tmp_path / "hf_folder")[1]
    # neither kind: refused with the reason
    (tmp_path / "hf_folder" / "config.json").write_text(json.dumps({"hidden_sizes": [1]}))
    with pytest.raises(CheckpointError, match="neither a transformers config"):
        read_checkpoint(tmp_path / "hf_folder")


def test_the_entry_format_wins_over_detection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """timm MobileOne S0 has exactly our key names (detected as native): the timm entry still loads it silently."""
    ref = timm_model("mobileone_s0")
    file = save_safetensors(ref.state_dict(), tmp_path / "model.safetensors")
    assert detect_format(read_checkpoint(file)[0]) == "native"
    put_in_hf_cache(tmp_path / "hf", "timm/mobileone_s0.apple_in1k", {"model.safetensors": file})
    with caplog.at_level("WARNING"):
        model = mobilevit.create_model("mobileone_s0.apple_in1k", pretrained=True).eval()
    assert not [r for r in caplog.records if "weights entry says" in r.getMessage()]
    x = torch.randn(1, 3, 224, 224)
    assert_close(logits(model, x), logits(ref, x), "timm mobileone")


def test_fifo_in_the_torch_hub_cache_is_refused() -> None:
    """A FIFO where a URL entry's file is cached is named, not opened (reading it would block) nor taken as absent."""
    entry = get_weights("mobileone_s0.orig_in1k_reparam")
    target = hub.local_weights_path(entry)
    target.parent.mkdir(parents=True)
    os.mkfifo(target)
    for call in (lambda: hub.cached_weights(entry), lambda: mobilevit.create_model(entry.name, pretrained=True)):
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(target))} is a FIFO"):
            call()
