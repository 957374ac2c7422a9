"""The model contract every family shares, checked against timm's implementation of the same contract.

timm's ``forward_intermediates`` / ``prune_intermediate_layers`` (timm ``ByobNet`` for MobileViT and MobileOne,
``FastVit`` for FastViT) run on random weights; our model loads the same weights, so every feature map must agree.
timm's ``group_parameters`` reads our ``group_matcher()``, so the regexes mean what they mean to timm's optimizer
factory. The parameters without weight decay are checked against the recipe written out by module type.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.layers import PatchLayerNorm
from mobilevit.models.fastvit import LayerScale2d, RepCPE
from mobilevit.train.optim import layer_ids, no_weight_decay
from reference_utils import max_rel_diff, randomize_layer_scales

# one timm model per contract implementation: MobileViT v1 and v2, FastViT, MobileOne
TIMM_NAMES = ["mobilevit_xxs", "mobilevitv2_050", "fastvit_t8", "mobileone_s0"]
SIZE = (64, 96)
# (indices, stop_early): all levels, the last n, chosen levels, negative levels, one level with an early stop
INDICES = [(None, False), (1, False), (3, False), ([0, 2], False), ((-1, 1), False), ([1], True), ([0, 3], True)]


@pytest.fixture(scope="module", params=TIMM_NAMES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, nn.Module, Path]:
    """``(name, timm model with random weights in eval mode, path of its saved state dict)``."""
    timm = pytest.importorskip("timm")
    name = request.param
    torch.manual_seed(0)
    ref = randomize_layer_scales(randomize_batchnorm(timm.create_model(name))).eval()
    path = tmp_path_factory.mktemp(name) / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    return name, ref, path


def timm_intermediates(name: str, ref: nn.Module, x: Tensor, **kwargs) -> tuple[Tensor, list[Tensor]]:
    # timm's MobileViT counts the final 1x1 expansion into the last level; our last level is the stage output
    if not name.startswith("fastvit"):
        kwargs["exclude_final_conv"] = True
    with torch.no_grad():
        return ref.forward_intermediates(x, **kwargs)


def assert_maps_equal(ours: list[Tensor], ref: list[Tensor], what: str) -> None:
    assert [t.shape for t in ours] == [t.shape for t in ref], what
    for level, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert max_rel_diff(a, b) <= 1e-5, f"{what}: map {level}"


def test_forward_intermediates_match_timm(pair: tuple[str, nn.Module, Path]) -> None:
    name, ref, path = pair
    model = mobilevit.create_model(name, pretrained=path).eval()
    x = torch.randn(2, 3, *SIZE)
    for indices, stop_early in INDICES:
        what = f"{name} indices={indices} stop_early={stop_early}"
        ref_final, ref_maps = timm_intermediates(name, ref, x, indices=indices, stop_early=stop_early)
        with torch.no_grad():
            final, maps = model.forward_intermediates(x, indices=indices, stop_early=stop_early)
            only = model.forward_intermediates(x, indices=indices, stop_early=stop_early, intermediates_only=True)
        assert_maps_equal(maps, ref_maps, what)
        assert_maps_equal(only, ref_maps, f"{what}, intermediates_only")
        assert_maps_equal([final], [ref_final], f"{what}, final features")
    with torch.no_grad():
        final, _ = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))


def test_features_only_is_forward_intermediates(pair: tuple[str, nn.Module, Path]) -> None:
    name, ref, path = pair
    feat = mobilevit.create_model(name, pretrained=path, features_only=True, out_indices=(3, 1)).eval()
    assert feat.out_indices == (1, 3)  # level order, as the maps come
    assert [f["stride"] for f in feat.feature_info] == [ref.feature_info[i]["reduction"] for i in (1, 3)]
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        maps = feat(x)
    assert_maps_equal(maps, timm_intermediates(name, ref, x, indices=[1, 3])[1], f"{name} features_only")


def test_prune_intermediate_layers_matches_timm(pair: tuple[str, nn.Module, Path]) -> None:
    name, ref, path = pair
    model = mobilevit.create_model(name, pretrained=path).eval()
    ref = copy.deepcopy(ref)
    x = torch.randn(1, 3, *SIZE)
    assert model.prune_intermediate_layers([0, 2]) == ref.prune_intermediate_layers([0, 2])
    assert model.num_features == ref.num_features == model.feature_info[2]["num_channels"]
    assert len(model.stages) == len(ref.stages)
    with torch.no_grad():
        assert_maps_equal([model.forward_features(x)], [ref.forward_features(x)], f"{name} pruned features")
        assert_maps_equal(model.forward_intermediates(x)[1], timm_intermediates(name, ref, x)[1], f"{name} pruned")
        assert torch.allclose(model(x), model.forward_features(x).mean(dim=(2, 3)))  # pooled features, no classes


@pytest.mark.parametrize("name", ["mobilevit_xxs", "fastvit_t8", "mobileone_s0"])
def test_out_of_range_levels_are_usage_errors(name: str) -> None:
    model = mobilevit.create_model(name)
    x = torch.randn(1, 3, 32, 32)
    for indices in (7, 0, [9], [-9]):
        with pytest.raises(ValueError, match="out of range"):
            model.forward_intermediates(x, indices=indices)
    with pytest.raises(ValueError, match=r"out_indices \[9\] out of range"):
        mobilevit.create_model(name, features_only=True, out_indices=(0, 9))
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="features_only"):
        mobilevit.create_model(name, features_only=True).prune_intermediate_layers()


def _recipe_no_decay(model: nn.Module) -> set[str]:
    """The recipes' exemptions by module type: biases, norms, FastViT's layer scales and RepCPE position encoding."""
    exempt = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, PatchLayerNorm, LayerScale2d, RepCPE)
    names = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
    for prefix, module in model.named_modules():
        if isinstance(module, exempt):
            names |= {f"{prefix}.{name}" for name, _ in module.named_parameters()}
    return names


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


RECIPE_NAMES = ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "fastvit_sa12", "mobileone_s0"]


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_no_weight_decay_follows_the_recipe(name: str) -> None:
    model = mobilevit.create_model(name)
    assert no_weight_decay(model) == _recipe_no_decay(model)


def test_fastvit_no_weight_decay_hook_names_layer_scales_and_position_encoding() -> None:
    timm = pytest.importorskip("timm")
    ref_names = [n for n, _ in timm.create_model("fastvit_sa12").named_parameters()]
    expected = [n for n in ref_names if "layer_scale" in n or ".pos_emb." in n]
    hooked = mobilevit.create_model("fastvit_sa12").no_weight_decay()
    assert len(hooked) == len(expected) and all("layer_scale" in n or ".pos_emb." in n for n in hooked)
    assert mobilevit.create_model("mobilevit_xxs").no_weight_decay() == set()


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "fastvit_sa12", "mobileone_s0"])
def test_group_matcher_read_by_timm(name: str) -> None:
    """timm's ``group_parameters`` on our ``group_matcher()``: coarse groups are the optimizer's layers; fine groups
    are single blocks, in forward order."""
    timm_manipulate = pytest.importorskip("timm.models._manipulate")
    model = mobilevit.create_model(name)
    coarse = timm_manipulate.group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    ids, num_layers = layer_ids(model)
    assert coarse == ids
    assert num_layers == 1 + len(model.stages) + _has_params(model.final_conv) + 1

    fine = timm_manipulate.group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    order = [fine[n] for n, _ in model.named_parameters()]
    assert order == sorted(order)  # contiguous groups in forward order
    parts = [[s.downsample, s.pos_emb, *s.blocks] if hasattr(s, "blocks") else list(s) for s in model.stages]
    blocks = sum(_has_params(m) for stage in parts for m in stage)
    assert len(set(order)) == 1 + blocks + _has_params(model.final_conv) + 1
