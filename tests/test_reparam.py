"""Structural re-parameterization of every registered model: the folded model computes the same logits (with
randomized BatchNorm statistics and layer scales), has fewer parameters and no more MACs, and can be saved and loaded
back directly in its folded form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mobilevit
from conftest import one_per_family, randomize_batchnorm
from mobilevit.bench import count_macs, count_params
from mobilevit.layers import ConvNormAct, LargeKernelConv, MobileOneBlock
from reference_utils import max_rel_diff, randomize_layer_scales

ALL = mobilevit.list_models(task="classification")
# A square size and one whose maps are odd at strides 8-32 (MobileViT resizes them before unfolding): every variant at
# the small pair in the default run, at the full-size pair with -m slow.
SIZES = [(256, 256), (200, 264)]
SMALL_SIZES = [(128, 128), (104, 136)]


def _randomized(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_layer_scales(randomize_batchnorm(mobilevit.create_model(name))).eval()


def _check_parity(name: str, sizes: list[tuple[int, int]]) -> None:
    model = _randomized(name)
    folded = mobilevit.reparameterize_model(model)
    assert folded is not model and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for size in sizes:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            diff = max_rel_diff(folded(x), model(x))
        assert diff <= 1e-4, f"{name} at {size}: {diff:.2e} of the logit scale"
    assert count_params(folded) < count_params(model)


@pytest.mark.parametrize("name", one_per_family(ALL))
def test_folded_model_gives_the_same_logits(name: str) -> None:
    _check_parity(name, SMALL_SIZES)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_folded_model_gives_the_same_logits_full_size(name: str) -> None:
    _check_parity(name, SIZES)


@pytest.mark.parametrize("name", one_per_family(ALL))
def test_nothing_foldable_is_left(name: str) -> None:
    folded = mobilevit.create_model(name, reparameterized=True)
    for module in folded.modules():
        if isinstance(module, ConvNormAct):
            assert not hasattr(module, "bn"), name
        if isinstance(module, (MobileOneBlock, LargeKernelConv)):
            assert module.reparam_conv is not None, name
    if name.startswith(("fastvit", "mobileone")):  # their attention pre-norm folds into qkv as well
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert not any("layer_scale" in k for k in folded.state_dict())


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "fastvit_t8", "fastvit_sa12", "mobileone_s0"])
def test_macs_drop(name: str) -> None:
    model = mobilevit.create_model(name)
    folded = mobilevit.reparameterize_model(model)
    before, after = count_macs(model, (64, 64)), count_macs(folded, (64, 64))
    if name.startswith("mobilevit"):  # BatchNorm is not counted as MACs: folding it leaves the count unchanged
        assert after <= before
    else:  # the parallel branches disappear (mostly depthwise in FastViT, so only a little compute goes with them)
        assert after < before, (before, after)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "fastvit_sa12", "mobileone_s0"])
def test_folded_model_saves_and_loads_directly(name: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folded = mobilevit.reparameterize_model(_randomized(name))
    # the folded layout is built directly, and a folded state dict loads into it strictly
    fresh = mobilevit.create_model(name, reparameterized=True).eval()
    fresh.load_state_dict(folded.state_dict(), strict=True)
    # and a file saved from it is recognised as folded by create_model
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in folded.state_dict().items()}, str(path))
    loaded = mobilevit.create_model(name, pretrained=path).eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        ref = folded(x)
        assert torch.equal(fresh(x), ref)
        assert torch.equal(loaded(x), ref)
    # a new head on the folded backbone, and the folded feature extractor
    assert mobilevit.create_model(name, pretrained=path, num_classes=5)(x).shape == (1, 5)
    feats = mobilevit.create_model(name, pretrained=path, features_only=True).eval()
    with torch.no_grad():
        assert feats(x)[-1].shape[1] == feats.feature_info[-1]["num_channels"]


def test_reparameterize_model_copies_unless_inplace() -> None:
    model = mobilevit.create_model("mobileone_s0")
    folded = mobilevit.reparameterize_model(model)
    assert len(model.stem.conv_kxk) == 1 and folded.stem.reparam_conv is not None
    assert model.training and folded.training  # the mode is left as it was
    same = mobilevit.reparameterize_model(model, inplace=True)
    assert same is model and model.stem.reparam_conv is not None
    again = mobilevit.reparameterize_model(model)  # folding a folded model changes nothing
    assert again.state_dict().keys() == model.state_dict().keys()
