"""FastViT and MobileOne against their references: timm (architecture, parameters, features, state dicts), the
ml-fastvit fixtures (logits of the original code, unfused and re-parameterized) and Apple's real MobileOne-S0 weights
(ImageNet accuracy on 100 photos)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.bench import count_macs, count_params
from mobilevit.weights import CheckpointError, detect_format
from mobilevit.weights.converters import CONVERTERS
from reference_utils import max_rel_diff, randomize_layer_scales

FASTVIT = mobilevit.list_models("fastvit_*")
MOBILEONE = mobilevit.list_models("mobileone_*")
BIG = {"fastvit_sa36", "fastvit_ma36"}  # compared at batch 1
# Against timm: a square size and one whose maps are odd from stride 8 on; every variant at the small pair by
# default, at the full-size pair with -m slow.
SIZES = [(256, 256), (200, 264)]
SMALL_SIZES = [(128, 128), (104, 136)]

# ml-fastvit's own constructor arguments of the fastvit_custom_sa fixture, in our config's terms
CUSTOM_SA = dict(
    depths=(1, 1, 1, 1),
    token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
    pos_embs=(False, False, False, True),
)


def test_registered_variants() -> None:
    assert [f"fastvit_{v}" for v in ("ma36", "s12", "sa12", "sa24", "sa36", "t12", "t8")] == FASTVIT
    assert [f"mobileone_s{i}" for i in range(5)] == MOBILEONE


@pytest.fixture(scope="module")
def timm_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's model (randomized norms and layer scales, eval mode) and ours built fresh, built once per architecture
    (``name`` has module scope in the tests that use it, so pytest runs them grouped by architecture)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = randomize_layer_scales(randomize_batchnorm(timm.create_model(name))).eval()
    return ref, mobilevit.create_model(name).eval()


@pytest.mark.parametrize("name", FASTVIT + MOBILEONE, scope="module")
def test_architecture_matches_timm(name: str, timm_pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """Same parameter count and the same tensors with the same shapes as timm's model (after the key rename)."""
    ref, model = timm_pair
    assert count_params(model) == count_params(ref)
    converted = CONVERTERS[("timm", type(model.cfg).__name__)](ref.state_dict(), model.cfg)
    ours = model.state_dict()
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}


def test_train_time_branches_follow_the_paper() -> None:
    """MobileOne-S0 trains with 4 kxk branches per block, S1-S4 with 1; S4 alone has squeeze-excitation."""
    for name in MOBILEONE:
        model = mobilevit.create_model(name)
        blocks = [m for m in model.stages.modules() if type(m).__name__ == "MobileOneBlock"]
        assert {len(b.conv_kxk) for b in blocks} == ({4} if name == "mobileone_s0" else {1})
        with_se = [b for b in blocks if not isinstance(b.se, torch.nn.Identity)]
        assert (len(with_se) > 0) == (name == "mobileone_s4")


def _compare_with_timm(name: str, pair: tuple[torch.nn.Module, torch.nn.Module], sizes: list[tuple[int, int]]) -> None:
    ref, model = pair
    model.load_state_dict(CONVERTERS[("timm", type(model.cfg).__name__)](ref.state_dict(), model.cfg), strict=True)
    batch = 1 if name in BIG else 2
    for size in sizes:
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            diff = max_rel_diff(model(x), ref(x))
        assert diff <= 1e-4, f"{name} at {size}: {diff:.2e} of the logit scale"


# MobileOne paper (arXiv 2206.04040), Table 8: parameters (M) and FLOPs (M, i.e. MACs) at 224x224, inference form
MOBILEONE_PAPER = {
    "mobileone_s0": (2.1, 275), "mobileone_s1": (4.8, 825), "mobileone_s2": (7.8, 1299),
    "mobileone_s3": (10.1, 1896), "mobileone_s4": (14.8, 2978),
}  # fmt: skip


@pytest.mark.parametrize("name", MOBILEONE)
def test_folded_mobileone_matches_paper(name: str) -> None:
    model = mobilevit.create_model(name, reparameterized=True)
    params_m, mmacs = MOBILEONE_PAPER[name]
    assert round(count_params(model) / 1e6, 1) == params_m
    assert abs(count_macs(model, (224, 224)) / 1e6 - mmacs) <= 0.01 * mmacs


@pytest.mark.parametrize("name", FASTVIT + MOBILEONE, scope="module")
def test_timm_state_dict_gives_timm_logits(name: str, timm_pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    _compare_with_timm(name, timm_pair, SMALL_SIZES)


@pytest.mark.slow
@pytest.mark.parametrize("name", FASTVIT + MOBILEONE, scope="module")
def test_timm_state_dict_gives_timm_logits_full_size(
    name: str, timm_pair: tuple[torch.nn.Module, torch.nn.Module]
) -> None:
    _compare_with_timm(name, timm_pair, SIZES)


@pytest.mark.parametrize("name", ["fastvit_sa12", "mobileone_s4"])
def test_features_match_timm(name: str) -> None:
    """Feature levels: the strides and channels of timm's ``feature_info``, and the maps they describe."""
    timm = pytest.importorskip("timm")
    ref = timm.create_model(name)
    full = mobilevit.create_model(name).eval()
    feat = mobilevit.create_model(name, features_only=True).eval()
    wanted = feat.state_dict().keys()
    feat.load_state_dict({k: v for k, v in full.state_dict().items() if k in wanted}, strict=True)
    expected = [(f["reduction"], f["num_chs"]) for f in ref.feature_info]
    if name.startswith("mobileone"):  # timm names the last level after its (identity) final_conv
        expected[-1] = (32, full.num_features)
    assert [(f["stride"], f["num_channels"]) for f in feat.feature_info] == expected
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        maps = feat(x)
    for info, fmap in zip(feat.feature_info, maps, strict=True):
        assert fmap.shape == (1, info["num_channels"], 96 // info["stride"], 160 // info["stride"])
    sub = mobilevit.create_model(name, features_only=True, out_indices=(1, 3))
    assert len(sub.feature_info) == 2
    with pytest.raises(ValueError, match="out_indices"):
        mobilevit.create_model(name, features_only=True, out_indices=(7,))


# FastViT-T8 and a one-block-per-stage FastViT with an attention stage stand for the family here
SMALL = [("fastvit_t8", {}), ("fastvit_t8", CUSTOM_SA), ("mobileone_s0", {})]


@pytest.mark.parametrize(("name", "overrides"), SMALL)
def test_contract(name: str, overrides: dict) -> None:
    model = mobilevit.create_model(name, num_classes=7, **overrides)
    assert model.training
    x = torch.randn(2, 3, 96, 128)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 3, 4)
    logits = model.forward_head(feats)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    assert torch.allclose(model.forward_head(feats, pre_logits=True), feats.mean((2, 3)))
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize(("name", "overrides"), SMALL)
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (97, 301)])
def test_any_input_size(name: str, overrides: dict, size: tuple[int, int]) -> None:
    model = mobilevit.create_model(name, **overrides).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="token_mixers"):
        mobilevit.create_model("fastvit_t8", token_mixers=("repmixer", "repmixer", "repmixer", "mhsa"))
    with pytest.raises(ValueError, match="one entry per stage"):
        mobilevit.create_model("fastvit_t8", depths=(2, 2, 2))
    with pytest.raises(ValueError, match="downsamples"):
        mobilevit.create_model("fastvit_t8", downsamples=(False, False, True, True))
    with pytest.raises(ValueError, match="se_blocks"):
        mobilevit.create_model("mobileone_s0", se_blocks=(0, 0, 11, 0))


def test_drop_path_rises_linearly() -> None:
    model = mobilevit.create_model("fastvit_t8", drop_path_rate=0.1)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)


# ml-fastvit fixtures: logits computed by the original code


@pytest.mark.parametrize(
    ("case", "overrides", "folded"),
    [("fastvit_t8", {}, False), ("fastvit_t8_reparam", {}, True), ("fastvit_custom_sa", CUSTOM_SA, False)],
)
def test_ml_fastvit_fixture(shared: Path, case: str, overrides: dict, folded: bool) -> None:
    from safetensors.torch import load_file

    path = shared / "fixtures" / case / f"{case}.pth.tar"
    model = mobilevit.create_model("fastvit_t8", pretrained=path, **overrides).eval()
    assert any("reparam_conv" in k for k in model.state_dict()) == folded
    io = load_file(str(shared / "fixtures" / case / "io.safetensors"))
    with torch.no_grad():
        for size in ("256", "odd"):
            out, ref = model(io[f"input_{size}"]), io[f"logits_{size}"]
            assert (out - ref).abs().max() <= 1e-5, f"{case} {size}: {(out - ref).abs().max():.2e}"


def test_ml_fastvit_unfused_loads_folded(shared: Path) -> None:
    """``reparameterized=True`` folds an unfused checkpoint after loading it: the original code's logits remain."""
    from safetensors.torch import load_file

    case = shared / "fixtures" / "fastvit_t8"
    model = mobilevit.create_model("fastvit_t8", pretrained=case / "fastvit_t8.pth.tar", reparameterized=True).eval()
    assert not any(".bn." in k for k in model.state_dict())
    io = load_file(str(case / "io.safetensors"))
    with torch.no_grad():
        assert (model(io["input_odd"]) - io["logits_odd"]).abs().max() <= 1e-5


def test_wrong_checkpoints_are_refused_with_the_keys(shared: Path) -> None:
    t8 = shared / "fixtures" / "fastvit_t8" / "fastvit_t8.pth.tar"
    with pytest.raises(CheckpointError, match=r"wrong shape: stem\.0\.conv_kxk\.0\.conv\.weight"):
        mobilevit.create_model("fastvit_t12", pretrained=t8)
    custom = shared / "fixtures" / "fastvit_custom_sa" / "fastvit_custom_sa.pth.tar"
    with pytest.raises(CheckpointError, match=r"network\.7\..*no place"):
        mobilevit.create_model("fastvit_t8", pretrained=custom)  # the attention stage's config was not given
    with pytest.raises(CheckpointError, match="cannot hold a mobileone_s0"):
        mobilevit.create_model("mobileone_s0", pretrained=t8)
    real = shared / "weights" / "mobileone_s0_reparam.safetensors"
    with pytest.raises(CheckpointError, match=r"stem\.reparam_conv\.weight: checkpoint \(48, 3, 3, 3\) vs model \(64,"):
        mobilevit.create_model("mobileone_s1", pretrained=real)


def test_format_detection() -> None:
    timm = pytest.importorskip("timm")
    for name in ("fastvit_t8", "mobileone_s4"):
        ours = mobilevit.create_model(name)
        assert detect_format(ours.state_dict()) == "native"
        assert detect_format(mobilevit.reparameterize_model(ours).state_dict()) == "native"
        assert detect_format(timm.create_model(name).state_dict()) == "timm"


# Apple's real ImageNet weights

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _imagenet_samples(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """MobileOne's evaluation preprocessing: resize the shorter side to 256 (bilinear), centre crop 224, mean/std."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = torch.stack([tf(Image.open(root / r["file"]).convert("RGB")) for r in rows])
    return images, torch.tensor([int(r["class_index"]) for r in rows])


def test_real_mobileone_s0_weights_classify_imagenet(shared: Path, tmp_path: Path) -> None:
    """77/100 top-1 and 93/100 top-5 with Apple's code; we allow one image of difference."""
    weights = shared / "weights" / "mobileone_s0_reparam.safetensors"
    model = mobilevit.create_model("mobileone_s0", pretrained=weights).eval()
    assert not any("conv_kxk" in k for k in model.state_dict())  # built directly in the folded form
    images, labels = _imagenet_samples(shared / "data" / "imagenet-samples-100")
    with torch.no_grad():
        logits = torch.cat([model(batch) for batch in images.split(25)])
    top5 = logits.topk(5).indices
    top1_hits = (top5[:, 0] == labels).sum().item()
    top5_hits = (top5 == labels[:, None]).any(1).sum().item()
    assert abs(top1_hits - 77) <= 1 and abs(top5_hits - 93) <= 1, (top1_hits, top5_hits)

    # the same weights as ml-mobileone ships them: a .pth.tar with a 'state_dict'
    from safetensors.torch import load_file

    ckpt = tmp_path / "mobileone_s0.pth.tar"
    torch.save({"state_dict": load_file(str(weights))}, ckpt)
    again = mobilevit.create_model("mobileone_s0", pretrained=ckpt).eval()
    with torch.no_grad():
        assert torch.allclose(again(images[:4]), logits[:4], atol=1e-5)
