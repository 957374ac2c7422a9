"""Semantic FPN (semfpn_*): logits against an independent reference of mmsegmentation's FPN neck + FPNHead, reading a
state dict in mmsegmentation's key names through the converter; the shapes, the registry, the models page.

The reference: mmsegmentation (1.2.2) does not install cleanly on CPU next to our torch (it needs mmcv's compiled ops:
``mmseg.utils`` imports ``mmcv.ops``, absent from ``mmcv-lite``, and mmcv-lite pulls ``opencv-python`` beside our
``opencv-python-headless``), so it is rebuilt here from its documented arithmetic: the neck is torchvision's
``FeaturePyramidNetwork`` (mmseg's ``FPN`` with no norm and ``num_outs`` = the input levels is the same computation:
1x1 laterals, nearest top-down to the finer size, 3x3 outputs, convs with bias); the head is written out below from
``FPNHead`` (per level ``max(1, log2(stride / 4))`` times conv3x3-BN-ReLU then 2x bilinear ``align_corners=False``
upsampling, none at stride 4; the levels resized to the stride-4 size and summed; dropout; ``conv_seg``). Once, with
mmseg 1.2.2 unpacked outside the venv and ``mmcv.ops`` stubbed (FPN and FPNHead use none of it), mmseg's own ``FPN``
and ``FPNHead`` loaded :func:`mmseg_neck_head`'s tensors strictly and gave this reference's logits exactly (max
difference 0.0 at 70x98, 64x64, 33x47); and ``tests/fixtures/semfpn_mmseg`` holds the logits mmseg's own modules
gave on fixed maps, with their state dict in mmseg's key names, which our pyramid and head reproduce.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.weights.load import convert_checkpoint, detect_format

STRIDES = (4, 8, 16, 32)
SIZE = (70, 98)  # not a multiple of 32: the summation's resize to the stride-4 size is not a no-op
FPN_CHANNELS, HEAD_CHANNELS, CLASSES = 24, 16, 7  # small, so that the reference runs in milliseconds
FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"


def mmseg_neck_head(widths: list[int], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in mmsegmentation's names for an FPN neck over ``widths`` and an FPNHead, BatchNorms with
    non-trivial statistics."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for i, c in enumerate(widths):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = 0.2 * torch.randn(FPN_CHANNELS, c, 1, 1, generator=g)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = 0.1 * torch.randn(FPN_CHANNELS, generator=g)
        sd[f"neck.fpn_convs.{i}.conv.weight"] = 0.1 * torch.randn(FPN_CHANNELS, FPN_CHANNELS, 3, 3, generator=g)
        sd[f"neck.fpn_convs.{i}.conv.bias"] = 0.1 * torch.randn(FPN_CHANNELS, generator=g)
    for i, stride in enumerate(STRIDES):
        for k in range(max(1, int(math.log2(stride / STRIDES[0])))):
            prefix = f"decode_head.scale_heads.{i}.{2 * k if stride > STRIDES[0] else 0}."  # upsamplings in between
            c_in = FPN_CHANNELS if k == 0 else HEAD_CHANNELS
            sd[prefix + "conv.weight"] = 0.1 * torch.randn(HEAD_CHANNELS, c_in, 3, 3, generator=g)
            sd[prefix + "bn.weight"] = 1 + 0.1 * torch.randn(HEAD_CHANNELS, generator=g)
            sd[prefix + "bn.bias"] = 0.1 * torch.randn(HEAD_CHANNELS, generator=g)
            sd[prefix + "bn.running_mean"] = 0.1 * torch.randn(HEAD_CHANNELS, generator=g)
            sd[prefix + "bn.running_var"] = 0.5 + torch.rand(HEAD_CHANNELS, generator=g)
            sd[prefix + "bn.num_batches_tracked"] = torch.tensor(0)
    sd["decode_head.conv_seg.weight"] = 0.1 * torch.randn(CLASSES, HEAD_CHANNELS, 1, 1, generator=g)
    sd["decode_head.conv_seg.bias"] = 0.1 * torch.randn(CLASSES, generator=g)
    return sd


def reference_logits(sd: dict[str, torch.Tensor], features: list[torch.Tensor]) -> torch.Tensor:
    """mmsegmentation's FPN + FPNHead (eval mode) on ``features`` (strides 4-32), from the tensors of ``sd``."""
    widths = [f.shape[1] for f in features]
    neck = FeaturePyramidNetwork(widths, sd["neck.fpn_convs.0.conv.weight"].shape[0]).eval()
    for i in range(len(widths)):
        neck.inner_blocks[i][0].weight.data = sd[f"neck.lateral_convs.{i}.conv.weight"]
        neck.inner_blocks[i][0].bias.data = sd[f"neck.lateral_convs.{i}.conv.bias"]
        neck.layer_blocks[i][0].weight.data = sd[f"neck.fpn_convs.{i}.conv.weight"]
        neck.layer_blocks[i][0].bias.data = sd[f"neck.fpn_convs.{i}.conv.bias"]
    pyramid = list(neck({str(i): f for i, f in enumerate(features)}).values())
    total = None
    for i, (stride, x) in enumerate(zip(STRIDES, pyramid, strict=True)):
        for k in range(max(1, int(math.log2(stride / STRIDES[0])))):
            p = f"decode_head.scale_heads.{i}.{2 * k if stride > STRIDES[0] else 0}."
            x = F.conv2d(x, sd[p + "conv.weight"], padding=1)
            x = F.batch_norm(
                x, sd[p + "bn.running_mean"], sd[p + "bn.running_var"], sd[p + "bn.weight"], sd[p + "bn.bias"], eps=1e-5
            )
            x = F.relu(x)
            if stride > STRIDES[0]:
                x = F.interpolate(x, size=(2 * x.shape[2], 2 * x.shape[3]), mode="bilinear", align_corners=False)
        if total is None:
            total = x
        else:
            total = total + F.interpolate(x, size=total.shape[-2:], mode="bilinear", align_corners=False)
    return F.conv2d(total, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])  # dropout: eval


def test_neck_and_head_give_mmsegmentations_own_logits() -> None:
    """The fixture made by running mmsegmentation's own FPN and FPNHead (tests/fixtures/semfpn_mmseg/make_fixture.py):
    its state dict, in mmseg's key names, converts and loads strictly into our pyramid and head, which give its logits
    on its feature maps (a 38x54 input: levels 10x14, 5x7, 3x4, 2x2, so the resizes to the stride-4 size are not
    no-ops). The reference above gives them too."""
    from safetensors.torch import load_file

    from mobilevit.layers import FeaturePyramid
    from mobilevit.models.semfpn import FPN_STRIDES, SemanticFPNHead
    from mobilevit.weights.converters.from_mmseg import convert_semfpn

    fixture = load_file(Path(__file__).with_name("fixtures") / "semfpn_mmseg" / "mmseg_fpn_head.safetensors")
    features = [fixture.pop(f"input.{i}") for i in range(4)]
    expected = fixture.pop("logits")
    ours = torch.nn.Module()
    ours.neck = FeaturePyramid([f.shape[1] for f in features], 16, wiring="lateral")
    ours.head = SemanticFPNHead(16, 8, 5, FPN_STRIDES, dropout=0.1)
    cfg = mobilevit.get_config("semfpn_fastvit_t8")  # its backbone takes no tensors here
    ours.load_state_dict(convert_semfpn(fixture, cfg), strict=True)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.head(ours.neck(features)), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(reference_logits(fixture, features), expected, atol=1e-5, rtol=0)


def small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = mobilevit.create_model(name, num_classes=CLASSES, fpn_channels=FPN_CHANNELS, head_channels=HEAD_CHANNELS)
    return randomize_batchnorm(model).eval()


@pytest.mark.parametrize("name", ["semfpn_fastvit_t8", pytest.param("semfpn_mobilevit_xxs", marks=pytest.mark.slow)])
def test_logits_match_mmsegmentations_arithmetic_through_the_converter(name: str) -> None:
    """An mmsegmentation checkpoint (the backbone in our names, FastViT's fork_feat norms as ``backbone.norm{0,2,4,6}``,
    neck and head in mmseg's names) converts, loads strictly, and gives the reference's logits on our backbone's
    features (each through its norm)."""
    model = small(name)
    widths = [info["num_channels"] for info in model.backbone.feature_info]
    sd = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    for i, norm in enumerate(model.feature_norms):
        sd.update({f"backbone.norm{2 * i}.{k}": v.clone() + 0.05 for k, v in norm.state_dict().items()})
    sd.update(mmseg_neck_head(widths, seed=1))
    assert detect_format(sd) == "mmseg"
    converted = convert_checkpoint(sd, {}, name, model.cfg, source="mmseg")
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        features = [norm(f) for norm, f in zip(model.feature_norms, model.backbone(x), strict=True)]
        got = model(x)
        expected = reference_logits(sd, features)
    assert got.shape == (2, CLASSES, math.ceil(SIZE[0] / 4), math.ceil(SIZE[1] / 4))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_fastvit_backbone_in_ml_fastvits_names_converts() -> None:
    """ml-fastvit's fork_feat backbone (``patch_embed.`` / ``network.``, no classifier) inside an mmseg checkpoint: the
    ml-fastvit fixture's tensors load; the backbone gives the features of the classifier loaded from that file."""
    fixture = FIXTURES / "fastvit_t8" / "fastvit_t8.pth.tar"
    if not fixture.exists():
        pytest.skip(f"{fixture} not found")
    upstream = torch.load(fixture, map_location="cpu", weights_only=True)["state_dict"]
    model = small("semfpn_fastvit_t8")
    widths = [info["num_channels"] for info in model.backbone.feature_info]
    sd = {f"backbone.{k}": v for k, v in upstream.items() if not k.startswith(("conv_exp.", "head."))}
    for i, c in enumerate(widths):
        sd.update({f"backbone.norm{2 * i}.{k}": v for k, v in torch.nn.BatchNorm2d(c).state_dict().items()})
    sd.update(mmseg_neck_head(widths, seed=2))
    model.load_state_dict(convert_checkpoint(sd, {}, "semfpn_fastvit_t8", model.cfg, source="mmseg"), strict=True)
    features = mobilevit.create_model("fastvit_t8", pretrained=fixture, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        for a, b in zip(model.backbone(x), features(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_defaults_are_the_fastvit_and_poolformer_ade20k_config() -> None:
    """PoolFormer's / ml-fastvit's sem_fpn configs (mmseg's fpn_r50 base): FPN out_channels 256, FPNHead channels 128,
    dropout 0.1, 150 ADE20K classes; ml-fastvit's fork_feat norms on FastViT only."""
    names = mobilevit.list_models("semfpn_*")
    assert names == sorted(f"semfpn_{name}" for name in mobilevit.list_models(task="classification"))
    for name in names:
        cfg = mobilevit.get_config(name)
        assert (cfg.fpn_channels, cfg.head_channels, cfg.dropout, cfg.num_classes) == (256, 128, 0.1, 150)
        assert cfg.feature_norm == name.startswith("semfpn_fastvit_")
    assert set(names) <= set(mobilevit.list_models(task="segmentation"))


def test_head_parameters_follow_mmsegmentations_layout() -> None:
    """The neck and head of semfpn_fastvit_sa12 hold the tensors of mmseg's FPN (widths 64/128/256/512 -> 256) and
    FPNHead (7 conv-BN of 128: 1 + 1 + 2 + 3 by level; 150-class conv_seg), counted from those layouts."""
    model = mobilevit.create_model("semfpn_fastvit_sa12")
    widths = (64, 128, 256, 512)
    neck = sum(c * 256 + 256 for c in widths) + 4 * (256 * 256 * 9 + 256)
    convs = 4 * 256 * 128 * 9 + 3 * 128 * 128 * 9 + 7 * 2 * 128  # first conv per level, the others, BN affine
    head = convs + 128 * 150 + 150
    assert sum(p.numel() for p in model.neck.parameters()) == neck
    assert sum(p.numel() for p in model.head.parameters()) == head
    assert sum(p.numel() for p in model.feature_norms.parameters()) == 2 * sum(widths)


def test_logits_at_a_quarter_and_upsampled_to_the_input() -> None:
    model = small("semfpn_mobileone_s0")
    x = torch.randn(1, 3, *SIZE)
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape[-2:] == (math.ceil(SIZE[0] / 4), math.ceil(SIZE[1] / 4))
    full = model.upsample_logits(logits, SIZE)
    assert full.shape == (1, CLASSES, *SIZE)
    torch.testing.assert_close(full, F.interpolate(logits, SIZE, mode="bilinear", align_corners=False))
    model.reset_classifier(3)
    assert model(x).shape[1] == 3 and model.get_classifier().out_channels == 3


def test_an_mmsegmentation_file_loads_with_its_widths(tmp_path: Path) -> None:
    """``create_model(name, pretrained=path)`` on a file as mmsegmentation saves it (``meta``, ``state_dict``): the
    format is detected, the widths and the class count come from its tensors, and the logits are the reference's."""
    model = small("semfpn_fastvit_t8")
    widths = [info["num_channels"] for info in model.backbone.feature_info]
    sd = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    for i, norm in enumerate(model.feature_norms):
        sd.update({f"backbone.norm{2 * i}.{k}": v for k, v in norm.state_dict().items()})
    sd.update(mmseg_neck_head(widths, seed=3))
    path = tmp_path / "iter_40000.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": sd, "optimizer": {}}, path)
    loaded = mobilevit.create_model("semfpn_fastvit_t8", pretrained=path).eval()
    assert (loaded.cfg.fpn_channels, loaded.cfg.head_channels, loaded.num_classes) == (
        FPN_CHANNELS,
        HEAD_CHANNELS,
        CLASSES,
    )
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = [norm(f) for norm, f in zip(model.feature_norms, model.backbone(x), strict=True)]
        torch.testing.assert_close(loaded(x), reference_logits(sd, features), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])  # ONNX: 18 s
def test_export_gives_the_eager_logits_at_other_sizes(fmt: str, tmp_path: Path) -> None:
    """A file traced at 96x128 runs at 70x98 (not a multiple of 32: the 2x upsamplings and the resize to the stride-4
    size follow the input) and a batch of 2 with the eager logits, and records the segmentation task."""
    pytest.importorskip("onnxscript" if fmt == "onnx" else "torch")
    from mobilevit.export import check_export, export_model, read_metadata

    model = small("semfpn_mobileone_s0")
    path = export_model(model, fmt, tmp_path / f"semfpn.{'onnx' if fmt == 'onnx' else 'pt'}", input_size=(96, 128))
    parity = check_export(model, path, input_size=SIZE, batch_size=2)
    assert parity.input_shape == (2, 3, *SIZE)
    assert parity.max_rel_diff < 1e-4, parity
    assert read_metadata(path).task == "segmentation"


def ade20k_folder(root: Path) -> Path:
    """An ADE20K-layout folder (images/<split>/, annotations/<split>/) with two validation and two training pairs;
    the annotations hold 0 ("other"), 1 (wall) and 150 (flag)."""
    from PIL import Image

    for split, names in (("validation", ("a", "b")), ("training", ("c", "d"))):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (48, 32), (120, 80, 40)).save(root / "images" / split / f"ADE_{name}.jpg")
            labels = torch.zeros(32, 48, dtype=torch.uint8)
            labels[:, 16:32], labels[:, 32:] = 1, 150
            Image.fromarray(labels.numpy()).save(root / "annotations" / split / f"ADE_{name}.png")
    return root


def test_ade20k_layout_reads_labels_less_one_and_ignores_other(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """ADE20K as it ships: ``val``/``validation`` and ``train``/``training`` name its folders; 0 ("other") is read as
    255 (ignored), 1-150 as classes 0-149 (mmsegmentation's reduce_zero_label); ``eval --task segmentation`` scores
    a Semantic FPN model on it with ADE20K's class names."""
    import json

    from mobilevit.cli import main
    from mobilevit.data.segmentation import list_segmentation_set, read_mask
    from mobilevit.train.build import data_paths

    root = ade20k_folder(tmp_path / "ADEChallengeData2016")
    pairs = list_segmentation_set(root, "val")
    assert [(i.name, m.name) for i, m in pairs] == [("ADE_a.jpg", "ADE_a.png"), ("ADE_b.jpg", "ADE_b.png")]
    assert list_segmentation_set(root, "validation") == pairs and len(list_segmentation_set(root, "train")) == 2
    assert data_paths(root) == (str(root), str(root))  # `train --data`: both splits from the one folder
    mask = read_mask(pairs[0][1])
    assert mask.shape == (32, 48) and (mask[:, :16] == 255).all() and (mask[:, 16:32] == 0).all()
    assert (mask[:, 32:] == 149).all()
    argv = ["eval", str(root), "--model", "semfpn_mobileone_s0", "--random-weights", "--task", "segmentation"]
    assert main([*argv, "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 2 and result["failed"] == []
    assert list(result["per_class_iou"])[:2] == ["wall", "building"] and len(result["per_class_iou"]) == 150


@pytest.mark.slow  # 2.5 s; by default the ADE20K layout test checks the folders training reads
def test_cli_trains_the_ade20k_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``mobilevit train --recipe semfpn_fastvit_sa12 --data <ADE20K folder>`` (one step at 64x64, on the smallest
    backbone): its training split trains, its validation split is scored, the saved model is a 150-class Semantic
    FPN."""
    from mobilevit.cli import main

    root = ade20k_folder(tmp_path / "ade")
    out = tmp_path / "run"
    code = main(
        ["train", "--recipe", "semfpn_fastvit_sa12", "--data", str(root), "--output", str(out), "--no-progress",
         "model.pretrained=none", "sampler.base_size=64", "sampler.batch_size=2", "data.val_crop=64",
         "data.num_workers=0", "max_iters=1", "model.name=semfpn_mobilevit_xxs"]
    )  # fmt: skip
    assert code == 0 and "val mIoU 0." in capsys.readouterr().out
    model = mobilevit.create_model(out / "final")
    assert type(model).__name__ == "SemanticFPN" and model.num_classes == 150


def test_reparameterized_model_gives_the_same_logits() -> None:
    """``reparameterize_model`` folds the FastViT backbone (and the feature norms stay): the same logits."""
    from mobilevit import reparameterize_model

    model = small("semfpn_fastvit_t8")
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(reparameterize_model(model)(x), model(x), atol=1e-4, rtol=1e-4)
