"""Checkpoint converters and loading: every upstream format gives the upstream logits, and bad checkpoints are refused.

The expected values always come from the reference implementation: timm and transformers models built here with random
weights (and randomized norms, so a swapped or dropped norm shows), and the logits that the original ml-cvnets /
MobileViTv3 code computed for the ``../shared/fixtures`` checkpoints. Nothing is compared against our own output.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import mobilevit
from conftest import one_per_family, randomize_batchnorm
from mobilevit.weights import CheckpointError, load_into, read_converted

TOL = 1e-4  # max abs logit difference, fp32

TIMM_ARCHS = [
    "mobilevit_xxs", "mobilevit_xs", "mobilevit_s",
    "mobilevitv2_050", "mobilevitv2_075", "mobilevitv2_100", "mobilevitv2_125",
    "mobilevitv2_150", "mobilevitv2_175", "mobilevitv2_200",
]  # fmt: skip
# (H, W): a square size; one that is not a multiple of 32 (odd maps from stride 8 on, so every MobileViT block resizes
# before unfolding); a non-square multiple of 64 (even maps everywhere, no resizing). Every variant is compared at the
# small sizes by default, and at the full sizes (256 is the training size) with -m slow.
SIZES = {"128": (128, 128), "104x136": (104, 136), "128x192": (128, 192)}
FULL_SIZES = {"256": (256, 256), "200x264": (200, 264), "192x320": (192, 320)}

# transformers configs of the official checkpoints (apple/mobilevit-*, apple/mobilevitv2-*)
HF_V1_CONFIGS = {
    "mobilevit_xxs": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0),
    "mobilevit_xs": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "mobilevit_s": dict(),  # the transformers defaults are MobileViT-S
}
HF_ARCHS = [*HF_V1_CONFIGS, *(n for n in TIMM_ARCHS if n.startswith("mobilevitv2_"))]
# transformers' MobileViTV2 zero-pads feature maps that are not a multiple of the patch grid instead of resizing them
# as ml-cvnets (and timm, and we) do, so it is no reference off that grid; only sizes that are multiples of 64 (even
# maps down to stride 32) are compared against transformers.
HF_SIZES = ["128", "128x192"]
HF_FULL_SIZES = ["256", "192x320"]


def _sizes(small: list[str], full: list[str]) -> list:
    """``small`` as they are, and ``full`` marked slow."""
    return [*small, *(pytest.param(size, marks=pytest.mark.slow) for size in full)]


def _input(size: str) -> Tensor:
    """Batch 1 at a square size, batch 2 otherwise."""
    height, width = (SIZES | FULL_SIZES)[size]
    return make_input((height, width), batch=1 if height == width else 2)


CVNETS_CASES = ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"]


# --------------------------------------------------------------------------------------------------------- helpers
def randomize_norms_and_biases(model: nn.Module, seed: int = 101) -> nn.Module:
    """Randomize BatchNorm statistics and affines, and also every other 1-D parameter (LayerNorm / GroupNorm affines,
    biases): at their initial 1 / 0 a converter that swaps ``norm1`` and ``norm2`` or mixes up q/k/v biases would pass.
    """
    randomize_batchnorm(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            for p in module.parameters(recurse=False):
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def assert_logits_close(ours: Tensor, ref: Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    diff = (ours - ref).abs().max().item()
    assert diff <= TOL, f"{what}: max abs logit difference {diff:.3g} > {TOL}"


def make_input(size: tuple[int, int], batch: int = 1, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@functools.cache
def timm_reference(name: str) -> tuple[nn.Module, dict[str, Tensor]]:
    """A timm model with seeded random weights and randomized norms, in eval mode, and its state dict."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = randomize_norms_and_biases(timm.create_model(name, pretrained=False)).eval()
    return ref, {k: v.clone() for k, v in ref.state_dict().items()}


def save_timm(name: str, path: Path) -> Path:
    torch.save(timm_reference(name)[1], path)
    return path


def hf_reference(name: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name.startswith("mobilevitv2_"):
        config = transformers.MobileViTV2Config(width_multiplier=int(name[-3:]) / 100, num_labels=1000)
        model = transformers.MobileViTV2ForImageClassification(config)
    else:
        config = transformers.MobileViTConfig(**HF_V1_CONFIGS[name], num_labels=1000)
        model = transformers.MobileViTForImageClassification(config)
    return randomize_norms_and_biases(model).eval()


# ------------------------------------------------------------------------------------------------------------ timm
def test_every_timm_mobilevit_is_covered() -> None:
    timm = pytest.importorskip("timm")
    assert set(timm.list_models("mobilevit*")) <= set(TIMM_ARCHS)
    assert set(TIMM_ARCHS) <= set(mobilevit.list_models())


@pytest.fixture(scope="module", params=one_per_family(TIMM_ARCHS))
def timm_pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module]:
    name = request.param
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = randomize_norms_and_biases(timm.create_model(name, pretrained=False)).eval()
    path = tmp_path_factory.mktemp(name) / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    return ref, mobilevit.create_model(name, pretrained=path).eval()


@pytest.mark.parametrize("size", _sizes(list(SIZES), list(FULL_SIZES)))
def test_timm_logits(timm_pair: tuple[nn.Module, nn.Module], size: str) -> None:
    ref, ours = timm_pair
    x = _input(size)
    with torch.inference_mode():
        assert_logits_close(ours(x), ref(x), f"timm at {size}")


# ---------------------------------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module", params=one_per_family(HF_ARCHS))
def hf_models(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A transformers model, and ours loaded from its state dict and from its saved folder."""
    name = request.param
    ref = hf_reference(name)
    tmp = tmp_path_factory.mktemp(name)
    torch.save(ref.state_dict(), tmp / "state_dict.pth")
    ref.save_pretrained(tmp / "folder")  # config.json + model.safetensors, as on the Hub
    assert (tmp / "folder" / "config.json").exists() and (tmp / "folder" / "model.safetensors").exists()
    ours = {
        "state_dict": mobilevit.create_model(name, pretrained=tmp / "state_dict.pth").eval(),
        "folder": mobilevit.create_model(name, pretrained=tmp / "folder").eval(),
    }
    return ref, ours


@pytest.mark.parametrize("size", _sizes(HF_SIZES, HF_FULL_SIZES))
def test_transformers_logits(hf_models: tuple[nn.Module, dict[str, nn.Module]], size: str) -> None:
    ref, ours = hf_models
    x = _input(size)
    with torch.inference_mode():
        # transformers' models take pixel_values as they are (the RGB->BGR flip lives in its image processor)
        expected = ref(pixel_values=x).logits
        for source, model in ours.items():
            assert_logits_close(model(x), expected, f"transformers ({source}) at {size}")


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_transformers_deeplabv3_backbone_loads_as_features(name: str, tmp_path: Path) -> None:
    """An ``apple/deeplabv3-mobilevit-*`` folder: the segmentation head is dropped and the backbone gives
    transformers' stage outputs (its v1 segmentation backbone has no 1x1 expansion, so it loads as features_only)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name.startswith("mobilevitv2_"):
        config = transformers.MobileViTV2Config(width_multiplier=0.5)
        seg = transformers.MobileViTV2ForSemanticSegmentation(config)
        backbone = seg.mobilevitv2
    else:
        seg = transformers.MobileViTForSemanticSegmentation(transformers.MobileViTConfig(**HF_V1_CONFIGS[name]))
        backbone = seg.mobilevit
    randomize_norms_and_biases(seg).eval()
    seg.save_pretrained(tmp_path / "deeplab")
    model = mobilevit.create_model(name, pretrained=tmp_path / "deeplab", features_only=True).eval()
    x = make_input((128, 128))
    with torch.inference_mode():
        expected = backbone(x, output_hidden_states=True).hidden_states  # the five stage outputs, strides 2-32
        ours = model(x)
        assert len(ours) == len(expected) == 5
        for level, (a, b) in enumerate(zip(ours, expected, strict=True)):
            assert_logits_close(a, b, f"stride-{2 ** (level + 1)} features")


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_transformers_base_model_loads(name: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name.startswith("mobilevitv2_"):
        base = transformers.MobileViTV2Model(transformers.MobileViTV2Config(width_multiplier=0.5))
    else:
        base = transformers.MobileViTModel(transformers.MobileViTConfig(**HF_V1_CONFIGS[name]))
    randomize_norms_and_biases(base).eval()
    base.save_pretrained(tmp_path / "base")
    model = mobilevit.create_model(name, pretrained=tmp_path / "base").eval()
    x = make_input((128, 128))
    with torch.inference_mode():
        assert_logits_close(model.forward_features(x), base(x).last_hidden_state, "base model features")


# ------------------------------------------------------------------------------------ ml-cvnets and MobileViTv3
@pytest.mark.parametrize("case", CVNETS_CASES)
def test_original_code_fixtures(shared: Path, case: str) -> None:
    from safetensors.torch import load_file

    folder = shared / "fixtures" / case
    info = json.loads((folder / "info.json").read_text())
    io = load_file(str(folder / "io.safetensors"))
    model = mobilevit.create_model(case, pretrained=folder / info["checkpoint_file"]).eval()
    assert sum(p.numel() for p in model.parameters()) == info["num_parameters"]
    with torch.inference_mode():
        assert_logits_close(model(io["input_256"]), io["logits_256"], f"{case} at 256")
        assert_logits_close(model(io["input_odd"]), io["logits_odd"], f"{case} at 200x264")


# ---------------------------------------------------------------------------------------------------- file formats
def _with_module_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"module.{k}": v for k, v in sd.items()}


def _write(fmt: str, sd: dict[str, Tensor], folder: Path) -> Path:
    """Write ``sd`` the way checkpoints are found in the wild."""
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = folder / "ckpt.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return path
    path, obj = {
        "pt": (folder / "ckpt.pt", sd),
        "pth": (folder / "ckpt.pth", sd),
        "pth.tar {'state_dict'}": (folder / "ckpt.pth.tar", {"state_dict": sd, "epoch": 300, "arch": "mobilevit_xxs"}),
        "{'model'} + training state": (
            folder / "ckpt.pth",
            {"model": sd, "epoch": 12, "best_metric": 0.5, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        ),
        "module. prefix (DDP)": (folder / "ckpt.pt", _with_module_prefix(sd)),
        "{'state_dict'} with module. prefix": (folder / "ckpt.pth.tar", {"state_dict": _with_module_prefix(sd)}),
    }[fmt]
    torch.save(obj, path)
    return path


FORMATS = [
    "pt",
    "pth",
    "pth.tar {'state_dict'}",
    "{'model'} + training state",
    "module. prefix (DDP)",
    "{'state_dict'} with module. prefix",
    "safetensors",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_formats_give_identical_models(fmt: str, tmp_path: Path) -> None:
    ref, sd = timm_reference("mobilevit_xxs")
    (tmp_path / "plain").mkdir()
    (tmp_path / fmt).mkdir()
    baseline = mobilevit.create_model("mobilevit_xxs", pretrained=_write("pt", sd, tmp_path / "plain")).eval()
    model = mobilevit.create_model("mobilevit_xxs", pretrained=_write(fmt, sd, tmp_path / fmt)).eval()
    expected = baseline.state_dict()
    got = model.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    x = make_input((128, 128))
    with torch.inference_mode():
        logits = model(x)
        assert torch.equal(logits, baseline(x))
        assert_logits_close(logits, ref(x), fmt)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
def test_our_safetensors_round_trip(name: str, tmp_path: Path) -> None:
    """safetensors in our own key names (the format we write) loads back into the same model."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = randomize_norms_and_biases(mobilevit.create_model(name)).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path), metadata={"arch": name})
    model = mobilevit.create_model(name, pretrained=path).eval()
    x = make_input((104, 136))
    with torch.inference_mode():
        assert torch.equal(model(x), source(x))


def test_our_safetensors_of_another_arch_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "xs.safetensors"
    state_dict = mobilevit.create_model("mobilevit_xs").state_dict()
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata={"arch": "mobilevit_xs"})
    with pytest.raises(CheckpointError, match="mobilevit_xs"):
        mobilevit.create_model("mobilevit_xxs", pretrained=path)


# -------------------------------------------------------------------------------------------------------- refusals
def _misfits(path: Path, arch: str) -> dict[str, list[str]]:
    """Keys of the converted checkpoint at ``path`` that do not fit a fresh ``arch`` model, by kind of fault."""
    converted = read_converted(path, arch, mobilevit.get_config(arch))
    expected = mobilevit.create_model(arch).state_dict()
    return {
        "missing": [k for k in expected if k not in converted],
        "unexpected": [k for k in converted if k not in expected],
        "shape": [k for k in converted if k in expected and converted[k].shape != expected[k].shape],
    }


def test_wrong_variant_is_refused(tmp_path: Path) -> None:
    path = save_timm("mobilevit_xs", tmp_path / "xs.pth")
    xs = read_converted(path, "mobilevit_xxs", mobilevit.get_config("mobilevit_xxs"))
    xxs = mobilevit.create_model("mobilevit_xxs").state_dict()
    misshaped = [k for k in xs if k in xxs and xs[k].shape != xxs[k].shape]
    assert misshaped, "xs and xxs differ in widths"
    with pytest.raises(CheckpointError) as err:
        mobilevit.create_model("mobilevit_xxs", pretrained=path)
    msg = str(err.value)
    assert str(path) in msg
    named = [k for k in misshaped if f"{k}:" in msg]
    assert named, f"no misshaped key named in: {msg}"
    assert str(tuple(xs[named[0]].shape)) in msg and str(tuple(xxs[named[0]].shape)) in msg, "both shapes are given"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("mobilevitv2_050", "mobilevit_xxs"),  # v2 weights into a v1 model
        ("mobilevit_xxs", "mobilevitv2_050"),  # v1 weights into a v2 model
        ("mobilevitv2_050", "mobilevitv3_050"),  # v2 weights into a v3 (v2-based) model
        ("mobilevit_xxs", "mobilevitv3_xxs"),  # v1 weights into a v3 (v1-based) model
    ],
)
def test_wrong_family_is_refused(source: str, target: str, tmp_path: Path) -> None:
    path = save_timm(source, tmp_path / f"{source}.pth")
    misfits = _misfits(path, target)
    with pytest.raises(CheckpointError) as err:
        mobilevit.create_model(target, pretrained=path)
    msg = str(err.value)
    assert any(k in msg for k in misfits["missing"] + misfits["unexpected"] + misfits["shape"]), msg


def test_transformers_v2_folder_into_v1_is_refused(tmp_path: Path) -> None:
    hf_reference("mobilevitv2_050").save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"missing|unexpected|wrong shape"):
        mobilevit.create_model("mobilevit_xxs", pretrained=tmp_path / "hf")


_KEY = re.compile(r"\b[a-z_]\w*(?:\.\w+)+\.(?:weight|bias|running_mean|running_var|num_batches_tracked)\b")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("mobilevitv2_050", "mobilevit_xxs"),
        ("mobilevit_xs", "mobilevit_xxs"),
        ("fastvit_t8", "mobilevit_xxs"),
        ("mobileone_s0", "mobilevit_xxs"),
    ],
)
def test_refusal_names_only_real_keys(source: str, target: str, tmp_path: Path) -> None:
    """Every key the error names is one of the checkpoint's (after conversion) or one of the requested model's."""
    timm = pytest.importorskip("timm")
    path = tmp_path / f"{source}.pth"
    torch.save(timm.create_model(source).state_dict(), path)
    real = set(read_converted(path, target, mobilevit.get_config(target))) | set(
        mobilevit.create_model(target).state_dict()
    )
    with pytest.raises(CheckpointError) as err:
        mobilevit.create_model(target, pretrained=path)
    named = set(_KEY.findall(str(err.value)))
    assert named, f"no key named in: {err.value}"
    assert named <= real, f"the error names keys that exist nowhere: {sorted(named - real)[:5]}"


def _edit(sd: dict[str, Tensor], fault: str) -> tuple[dict[str, Tensor], list[str]]:
    """``sd`` with one fault (key names shared by timm and our layout), and the strings the error must contain."""
    sd = dict(sd)
    if fault == "missing key":
        del sd["final_conv.bn.running_var"]
        return sd, ["missing", "final_conv.bn.running_var"]
    if fault == "extra key":
        sd["stages.1.0.bogus.weight"] = torch.zeros(3)
        return sd, ["unexpected", "stages.1.0.bogus.weight"]
    assert sd["stem.conv.weight"].shape == (16, 3, 3, 3)
    sd["stem.conv.weight"] = torch.zeros(16, 3, 5, 5)
    return sd, ["stem.conv.weight", "(16, 3, 5, 5)", "(16, 3, 3, 3)"]


@pytest.mark.parametrize("fault", ["missing key", "extra key", "wrong shape"])
def test_misfit_checkpoint_is_refused(fault: str, tmp_path: Path) -> None:
    bad, must_name = _edit(timm_reference("mobilevit_xxs")[1], fault)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        mobilevit.create_model("mobilevit_xxs", pretrained=tmp_path / "bad.pth")
    assert all(s in str(err.value) for s in must_name), f"{must_name} not all in: {err.value}"


def _not_a_checkpoint(kind: str, folder: Path) -> Path:
    rand = os.urandom(4096)
    path, data = {
        "random bytes .pth": (folder / "x.pth", rand),
        "random bytes .safetensors": (folder / "x.safetensors", rand),
        "text .pt": (folder / "x.pt", b"This is a README, not a checkpoint.\n" * 20),
        "empty .pth.tar": (folder / "x.pth.tar", b""),
    }.get(kind, (None, None))
    if path is not None:
        path.write_bytes(data)
        return path
    if kind == "folder without config.json":
        (folder / "hf").mkdir()
        (folder / "hf" / "model.safetensors").write_bytes(rand)
        return folder / "hf"
    path = folder / "x.pth"
    torch.save({"list of ints": [1, 2, 3]} if kind == "pickle without tensors" else [torch.zeros(2)], path)
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "random bytes .pth",
        "random bytes .safetensors",
        "text .pt",
        "empty .pth.tar",
        "folder without config.json",
        "pickle without tensors",
        "list of tensors",
    ],
)
def test_not_a_checkpoint_is_refused(kind: str, tmp_path: Path) -> None:
    path = _not_a_checkpoint(kind, tmp_path)
    with pytest.raises(CheckpointError) as err:
        mobilevit.create_model("mobilevit_xxs", pretrained=path)
    assert str(path) in str(err.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        mobilevit.create_model("mobilevit_xxs", pretrained=tmp_path / "nothing.pth")


@pytest.mark.parametrize("keep_head", [True, False])
@pytest.mark.parametrize("fault", ["missing key", "extra key", "wrong shape"])
def test_failed_load_leaves_model_unchanged(fault: str, keep_head: bool, tmp_path: Path) -> None:
    arch = "mobilevit_xxs"
    converted = read_converted(save_timm(arch, tmp_path / "ok.pth"), arch, mobilevit.get_config(arch))
    torch.manual_seed(1234)  # not the seed of the timm reference: its init would coincide with ours for some tensors
    model = mobilevit.create_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # every tensor of the checkpoint differs from the fresh model's, so any partial load would show
    assert all(not torch.equal(before[k], v) for k, v in converted.items() if v.is_floating_point())

    bad, _ = _edit(converted, fault)
    with pytest.raises(CheckpointError):
        load_into(model, bad, source="test", keep_head=keep_head)
    after = model.state_dict()
    assert list(after) == list(before)
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"a failed load changed {changed[:5]}"

    # control: the same comparison does see a successful load
    load_into(model, converted, source="test")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in converted.items())


# ----------------------------------------------------------------------------------------------------- num_classes
@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_new_num_classes_keeps_backbone(name: str, tmp_path: Path) -> None:
    ref, sd = timm_reference(name)
    path = save_timm(name, tmp_path / f"{name}.pth")
    full = mobilevit.create_model(name, pretrained=path).eval()
    ten = mobilevit.create_model(name, pretrained=path, num_classes=10).eval()
    full_sd, ten_sd = full.state_dict(), ten.state_dict()
    assert set(ten_sd) == set(full_sd)
    backbone = [k for k in full_sd if not k.startswith("head.fc.")]
    assert all(torch.equal(ten_sd[k], full_sd[k]) for k in backbone)
    assert ten_sd["head.fc.weight"].shape == (10, sd["head.fc.weight"].shape[1])
    assert ten_sd["head.fc.bias"].shape == (10,)
    assert not torch.equal(ten_sd["head.fc.weight"], sd["head.fc.weight"][:10]), "the new head is fresh, not a slice"

    x = make_input((128, 128))
    with torch.inference_mode():
        ref_features = ref.forward_features(x)
        assert_logits_close(ten.forward_features(x), ref_features, "features of the 10-class model")
        assert_logits_close(full.forward_features(x), ref_features, "features of the 1000-class model")
        assert ten(x).shape == (1, 10)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_same_num_classes_keeps_head(name: str, tmp_path: Path) -> None:
    ref, sd = timm_reference(name)
    model = mobilevit.create_model(name, pretrained=save_timm(name, tmp_path / "ckpt.pth"), num_classes=1000).eval()
    assert torch.equal(model.state_dict()["head.fc.weight"], sd["head.fc.weight"])
    x = make_input((128, 128))
    with torch.inference_mode():
        assert_logits_close(model(x), ref(x), "num_classes=1000")


def test_num_classes_zero_gives_pooled_features(tmp_path: Path) -> None:
    ref, _ = timm_reference("mobilevit_xxs")
    path = save_timm("mobilevit_xxs", tmp_path / "ckpt.pth")
    model = mobilevit.create_model("mobilevit_xxs", pretrained=path, num_classes=0).eval()
    x = make_input((128, 128))
    with torch.inference_mode():
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
        assert_logits_close(model(x), expected, "num_classes=0")


# ----------------------------------------------------------------------------------------- pickles never run code
_EXECUTED: list[str] = []


def _payload_ran() -> dict:
    _EXECUTED.append("unpickling ran code")
    return {}


class _Payload:
    """Unpickling this calls ``_payload_ran``: the stand-in for a malicious checkpoint."""

    def __reduce__(self) -> tuple:
        return (_payload_ran, ())


class _Custom:
    """An arbitrary class instance: harmless, but not something a weights-only unpickler may build."""


@pytest.mark.parametrize("kind", ["code in wrapper", "code as the whole file", "custom object", "argparse namespace"])
def test_pickles_are_loaded_weights_only(kind: str, tmp_path: Path) -> None:
    sd = timm_reference("mobilevit_xxs")[1]
    obj = {
        "code in wrapper": {"state_dict": sd, "x": _Payload()},
        "code as the whole file": _Payload(),
        "custom object": {"state_dict": sd, "x": _Custom()},
        "argparse namespace": {"state_dict": sd, "args": argparse.Namespace(model="mobilevit_xxs")},
    }[kind]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    _EXECUTED.clear()
    with pytest.raises(CheckpointError, match="weights_only") as err:
        mobilevit.create_model("mobilevit_xxs", pretrained=path)
    assert str(path) in str(err.value)
    assert not _EXECUTED, "loading a checkpoint ran code from it"

    # control: an unrestricted unpickler does build the object (and runs the payload), so the refusal is what counted
    torch.load(path, weights_only=False)
    assert bool(_EXECUTED) == kind.startswith("code")


def test_pickle_refusal_says_how_to_convert_a_trusted_file(tmp_path: Path) -> None:
    """The refusal is one line, and the command it gives turns a trusted pickle into a checkpoint that loads."""
    sd = timm_reference("mobilevit_xxs")[1]
    path = tmp_path / "trusted.pth.tar"
    torch.save({"state_dict": sd, "args": argparse.Namespace(model="mobilevit_xxs")}, path)
    with pytest.raises(CheckpointError) as err:
        mobilevit.create_model("mobilevit_xxs", pretrained=path)
    message = str(err.value)
    assert "\n" not in message and "executable pickled objects (argparse.Namespace" in message
    assert "will likely succeed" not in message
    command = re.search(r'python -c "([^"]+)"', message)
    assert command is not None, message
    exec(command.group(1), {})  # what the user would run, only for a file they trust
    converted = re.search(r"then pass (\S+)$", message)
    assert converted is not None, message
    torch.save(sd, tmp_path / "plain.pth")
    expected = mobilevit.create_model("mobilevit_xxs", pretrained=tmp_path / "plain.pth").state_dict()
    loaded = mobilevit.create_model("mobilevit_xxs", pretrained=converted.group(1)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_checkpoint_without_classifier_is_refused_for_inference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A backbone-only checkpoint leaves a classifier's head.fc random: create_model (fine-tuning) loads it with a
    warning naming head.fc; the inference loaders refuse it, naming the file, the model and head.fc, unless allowed."""
    from mobilevit.predict import load_predictor

    state = mobilevit.create_model("mobileone_s0").state_dict()
    path = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("head.fc.")}, path)
    with caplog.at_level(logging.WARNING, logger="mobilevit"):
        mobilevit.create_model("mobileone_s0", pretrained=path)
    assert any("head.fc" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records), caplog.text
    pattern = rf"Checkpoint {re.escape(str(path))} leaves the head of mobileone_s0 random \(head\.fc\)"
    with pytest.raises(CheckpointError, match=pattern):
        load_predictor("mobileone_s0", pretrained=path)
    with pytest.raises(CheckpointError, match=pattern):
        mobilevit.create_model("mobileone_s0", pretrained=path, allow_random_head=False)
