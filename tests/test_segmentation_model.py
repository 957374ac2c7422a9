"""DeepLabV3 segmentation models: every backbone, the output stride, labels and preprocessing, folding, loading.

References: transformers' ``MobileViTForSemanticSegmentation`` / ``MobileViTV2ForSemanticSegmentation`` built here with
the published configs, random weights and randomized norms; the logits ml-cvnets computed for the ``../shared``
segmentation fixtures; transformers' mask post-processing and torchvision's PASCAL VOC label list. The dilated
backbones are checked against the strided ones they come from (same weights, same layout).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.models.classifiers import CLASSIFIERS
from mobilevit.weights import model_io
from reference_utils import max_rel_diff
from test_converters import HF_V1_CONFIGS, randomize_norms_and_biases

# one per family and block kind: MobileViT v1, v2, v3 on v1, FastViT with an attention stage, MobileOne
FAMILIES = [
    "deeplabv3_mobilevit_xxs",
    "deeplabv3_mobilevitv2_050",
    "deeplabv3_mobilevitv3_xxs",
    "deeplabv3_fastvit_sa12",
    "deeplabv3_mobileone_s0",
]
SIZE = (64, 96)  # small and not square


def seeded(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(mobilevit.create_model(name, **overrides)).eval()


def test_every_classifier_has_a_deeplabv3() -> None:
    classifiers = mobilevit.list_models(task="classification")
    assert classifiers == sorted(CLASSIFIERS)
    assert mobilevit.list_models("deeplabv3_*") == mobilevit.list_models(task="segmentation")
    assert mobilevit.list_models("deeplabv3_*") == sorted(f"deeplabv3_{name}" for name in classifiers)
    detectors = mobilevit.list_models(task="detection")
    instances = mobilevit.list_models(task="instance-segmentation")
    assert mobilevit.list_models() == sorted(classifiers + mobilevit.list_models("deeplabv3_*") + detectors + instances)
    for name in mobilevit.list_models("deeplabv3_*"):
        cfg = mobilevit.get_config(name)
        assert cfg.backbone == name.removeprefix("deeplabv3_") and cfg.output_stride == 16 and cfg.num_classes == 21
        assert cfg.aspp_rates == (6, 12, 18) and cfg.dropout == 0.1
        # ml-cvnets' published widths: 512 behind MobileViT v2 (and MobileViTv3 on v2), 256 behind v1
        separable = getattr(mobilevit.get_config(cfg.backbone), "attention", "") == "separable"
        assert cfg.aspp_channels == (512 if separable else 256)


@pytest.mark.parametrize(("name", "paper_m"), [("xxs", 1.9), ("xs", 2.9), ("s", 6.4)])
def test_parameter_counts_match_the_mobilevit_paper(name: str, paper_m: float) -> None:
    """The MobileViT paper (arXiv 2110.02178, PASCAL VOC table): DeepLabV3-MobileViT-XXS/XS/S 1.9M/2.9M/6.4M."""
    model = mobilevit.create_model(f"deeplabv3_mobilevit_{name}")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == paper_m


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name", FAMILIES)
def test_logits_come_at_the_output_stride(name: str, output_stride: int) -> None:
    model = seeded(name, output_stride=output_stride)
    assert model.task == "segmentation" and model.output_stride == output_stride
    x = torch.randn(2, 3, *SIZE)
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape == (2, 21, SIZE[0] // output_stride, SIZE[1] // output_stride)
    assert torch.isfinite(logits).all()
    up = model.upsample_logits(logits, SIZE)
    assert up.shape == (2, 21, *SIZE)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "fastvit_sa12", "mobileone_s0"])
def test_dilated_backbone_keeps_the_classifier_layout(name: str) -> None:
    """A dilated stage has the parameters of the strided one (ImageNet checkpoints load into it) and, fed the same
    weights, the same feature maps up to the first dilated stage."""
    strided = seeded(name, features_only=True)
    for output_stride in (16, 8):
        dilated = mobilevit.create_model(name, features_only=True, output_stride=output_stride).eval()
        shapes = {k: v.shape for k, v in strided.state_dict().items()}
        assert {k: v.shape for k, v in dilated.state_dict().items()} == shapes
        dilated.load_state_dict(strided.state_dict())
        strides = [level["stride"] for level in dilated.feature_info]
        assert strides == [min(level["stride"], output_stride) for level in strided.feature_info]
        x = torch.randn(1, 3, 64, 64)
        with torch.inference_mode():
            for level, (a, b, stride) in enumerate(zip(dilated(x), strided(x), strides, strict=True)):
                assert a.shape[-2:] == (64 // stride, 64 // stride), level
                if strided.feature_info[level]["stride"] <= output_stride:
                    torch.testing.assert_close(a, b, msg=f"level {level}")


def test_segmentation_backbone_takes_classifier_weights() -> None:
    """The backbone is the classifier's trunk: its state dict, under ``backbone.``, minus classifier and expansion."""
    seg = mobilevit.create_model("deeplabv3_mobilevit_s")
    cls = mobilevit.create_model("mobilevit_s")
    trunk = {k for k in cls.state_dict() if not k.startswith(("head.", "final_conv."))}
    assert {k.removeprefix("backbone.") for k in seg.state_dict() if k.startswith("backbone.")} == trunk
    assert {k.split(".")[0] for k in seg.state_dict()} == {"backbone", "head"}


def test_model_io_of_random_weights() -> None:
    """Random weights: VOC's 21 names (torchvision's list) and the whole image resized to 512x512."""
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    voc = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    expected = ("background", *voc[1:])  # torchvision spells index 0 "__background__"
    for name in ("deeplabv3_mobilevit_xxs", "deeplabv3_mobilevitv2_100", "deeplabv3_fastvit_t8"):
        io = model_io(mobilevit.create_model(name))
        assert io.task == "segmentation" and io.labels == expected, name
        pre = io.preprocess
        assert pre.resize_mode == "exact" and pre.input_size == (512, 512) and pre.crop_pct == 1.0
    # MobileViT v1 DeepLabV3 weights were trained on OpenCV's BGR; FastViT backbones on ImageNet-normalized RGB
    assert model_io(mobilevit.create_model("deeplabv3_mobilevit_xxs")).preprocess.channel_order == "BGR"
    fastvit = model_io(mobilevit.create_model("deeplabv3_fastvit_t8")).preprocess
    assert fastvit.channel_order == "RGB" and fastvit.mean == (0.485, 0.456, 0.406)
    assert model_io(mobilevit.create_model("mobilevit_xxs")).task == "classification"
    assert model_io(mobilevit.create_model("deeplabv3_mobileone_s0", num_classes=3)).labels == (
        "class_0",
        "class_1",
        "class_2",
    )


def test_exact_resize_keeps_the_whole_image() -> None:
    """The segmentation transform maps the image onto the input without cropping: a white border stays in it."""
    import numpy as np
    from PIL import Image

    from mobilevit.data.transforms import transform_for

    image = np.zeros((300, 600, 3), np.uint8)
    image[:, :30] = 255  # a white band along the left edge, which a center crop of the wide image would cut off
    x = transform_for(mobilevit.create_model("deeplabv3_mobilevitv2_050"))(Image.fromarray(image))
    assert x.shape == (3, 512, 512)
    assert x[:, :, :20].min() > 0.9 and x[:, :, 40:].max() < 0.1


def test_masks_match_transformers_post_processing() -> None:
    """``upsample_logits`` then argmax is transformers' ``post_process_semantic_segmentation``."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import SemanticSegmenterOutput

    model = seeded("deeplabv3_mobilevit_xxs")
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 128, 96))
    sizes = [(200, 150), (77, 301)]
    processor = transformers.MobileViTImageProcessor()
    theirs = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), target_sizes=sizes)
    for i, size in enumerate(sizes):
        ours = model.upsample_logits(logits[i : i + 1], size).argmax(1)[0]
        assert torch.equal(ours, theirs[i]), size


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name", FAMILIES)
def test_folded_model_gives_the_same_logits(name: str, output_stride: int) -> None:
    """``reparameterize_model`` folds the dilated convs and the ASPP's BatchNorms without changing the logits."""
    from reference_utils import randomize_layer_scales

    model = randomize_layer_scales(seeded(name, output_stride=output_stride))
    folded = mobilevit.reparameterize_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.head.modules())
    x = torch.randn(1, 3, *SIZE)
    with torch.inference_mode():
        ref = model(x)
        torch.testing.assert_close(folded(x), ref, atol=1e-4 * ref.abs().max().item(), rtol=0)


def test_new_num_classes_and_reset_classifier() -> None:
    model = mobilevit.create_model("deeplabv3_mobileone_s0", num_classes=5)
    assert model.num_classes == 5 and model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 4, 4)
    model.reset_classifier(2)
    assert model.get_classifier().out_channels == 2 and model(torch.randn(2, 3, 64, 64)).shape[1] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"output_stride": 32}, "output_stride"),
        ({"output_stride": 4}, "output_stride"),
        ({"backbone": "mobilevit_xxss"}, "mobilevit_xxs"),
        ({"dropout": 1.0}, "dropout"),
        ({"aspp_rates": ()}, "aspp_rates"),
    ],
)
def test_bad_config_is_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mobilevit.create_model("deeplabv3_mobilevit_xxs", **overrides)


def test_features_only_points_to_the_backbone() -> None:
    with pytest.raises(ValueError, match=r"create_model\('mobilevit_xxs', features_only=True, output_stride=16\)"):
        mobilevit.create_model("deeplabv3_mobilevit_xxs", features_only=True)
    with pytest.raises(ValueError, match="output_stride"):
        mobilevit.create_model("mobilevit_xxs", output_stride=12)


@pytest.mark.slow
@pytest.mark.parametrize("name", mobilevit.list_models(task="segmentation"))
def test_every_segmentation_model_runs(name: str) -> None:
    model = seeded(name)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 21, 4, 6)


# ------------------------------------------------------------------------------------- transformers checkpoints
# transformers configs of the published segmentation checkpoints (output stride 16, 21 VOC classes): apple/deeplabv3-
# mobilevit-{xx-small,x-small,small} (ASPP 256) and apple/mobilevitv2-1.0-voc-deeplabv3 (ASPP 512), from transformers'
# convert_mlcvnets_to_pytorch.py; the other v2 widths take the v2 settings
HF_SEG_V1 = {
    "mobilevit_xxs": dict(HF_V1_CONFIGS["mobilevit_xxs"], hidden_dropout_prob=0.05),
    "mobilevit_xs": HF_V1_CONFIGS["mobilevit_xs"],
    "mobilevit_s": HF_V1_CONFIGS["mobilevit_s"],
}
HF_SEG_V2 = ["mobilevitv2_050", "mobilevitv2_100", "mobilevitv2_200"]
# (H, W): non-square multiples of 64 (every MobileViT map even down to stride 32), and for v1 one that is not a
# multiple of 32 (every MobileViT block resizes before unfolding; transformers' v2 zero-pads there, see docs/models.md)
HF_SIZES = {"128x192": (128, 192), "256": (256, 256), "192x320": (192, 320), "104x136": (104, 136)}
HF_FAST = [
    ("mobilevit_xxs", 16, "128x192"),
    ("mobilevit_xxs", 8, "104x136"),
    ("mobilevitv2_050", 16, "128x192"),
    ("mobilevitv2_050", 8, "128x192"),
]
HF_SLOW = [
    (name, output_stride, size)
    for name in [*HF_SEG_V1, *HF_SEG_V2]
    for output_stride in (16, 8)
    for size in ("128x192", "256", "192x320", *(("104x136",) if name in HF_SEG_V1 else ()))
    if (name, output_stride, size) not in HF_FAST
]


def hf_segmentation_reference(name: str, output_stride: int) -> nn.Module:
    """A transformers segmentation model with the published config at ``output_stride``, random weights and
    randomized norms and biases, in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(output_stride=output_stride, num_labels=21, atrous_rates=[6, 12, 18], aspp_dropout_prob=0.1)
    if name in HF_SEG_V1:
        config = transformers.MobileViTConfig(**HF_SEG_V1[name], aspp_out_channels=256, **common)
        model = transformers.MobileViTForSemanticSegmentation(config)
    else:
        width = int(name[-3:]) / 100
        config = transformers.MobileViTV2Config(width_multiplier=width, aspp_out_channels=512, **common)
        model = transformers.MobileViTV2ForSemanticSegmentation(config)
    return randomize_norms_and_biases(model).eval()


def _check_transformers(name: str, output_stride: int, size: str, tmp_path) -> None:
    ref = hf_segmentation_reference(name, output_stride)
    ref.save_pretrained(tmp_path / "folder")  # config.json + model.safetensors, as on the Hub
    torch.save(ref.state_dict(), tmp_path / "state_dict.pth")
    # transformers' MobileViTV2 leaves the local convs of its dilated stages undilated (ml-cvnets dilates them)
    options = {"dilate_local_conv": False} if name in HF_SEG_V2 else {}
    ours = {
        "folder": mobilevit.create_model(f"deeplabv3_{name}", pretrained=tmp_path / "folder", **options),
        "state_dict": mobilevit.create_model(
            f"deeplabv3_{name}", pretrained=tmp_path / "state_dict.pth", output_stride=output_stride, **options
        ),
    }
    height, width = HF_SIZES[size]
    x = torch.randn(1 if height == width else 2, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = ref(pixel_values=x).logits
        # transformers' logits come at 1/output_stride of the input, not upsampled
        assert expected.shape[-2:] == (-(-height // output_stride), -(-width // output_stride))
        for source, model in ours.items():
            assert model.cfg.output_stride == output_stride, source  # the folder's config.json says it
            got = model.eval()(x)
            assert got.shape == expected.shape, source
            diff = max_rel_diff(got, expected)
            assert diff <= 1e-4, f"{name} os {output_stride} at {size} ({source}): {diff:.2e} of the logit scale"


@pytest.mark.parametrize(("name", "output_stride", "size"), HF_FAST)
def test_transformers_logits(name: str, output_stride: int, size: str, tmp_path) -> None:
    _check_transformers(name, output_stride, size, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "output_stride", "size"), HF_SLOW)
def test_transformers_logits_full_sweep(name: str, output_stride: int, size: str, tmp_path) -> None:
    _check_transformers(name, output_stride, size, tmp_path)


def test_transformers_v2_differs_where_it_does_not_dilate(tmp_path) -> None:
    """With the default (ml-cvnets') dilated local convs, a v2 model is not transformers' at output stride 16: the
    option is what closes the gap (and the ml-cvnets fixture below is what the default reproduces)."""
    ref = hf_segmentation_reference("mobilevitv2_050", 16)
    ref.save_pretrained(tmp_path)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        default = mobilevit.create_model("deeplabv3_mobilevitv2_050", pretrained=tmp_path).eval()(x)
        assert max_rel_diff(default, ref(pixel_values=x).logits) > 1e-4


def test_published_entries_load_from_the_hf_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``arch.hf_voc`` with ``pretrained=True`` reads the repository from the Hub cache (no network here)."""
    from test_hub import put_in_hf_cache

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = hf_segmentation_reference("mobilevit_xxs", 16)
    ref.save_pretrained(tmp_path / "saved")
    files = {f: tmp_path / "saved" / f for f in ("config.json", "model.safetensors")}
    put_in_hf_cache(tmp_path / "hf", "apple/deeplabv3-mobilevit-xx-small", files)
    model = mobilevit.create_model("deeplabv3_mobilevit_xxs.hf_voc", pretrained=True).eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert max_rel_diff(model(x), ref(pixel_values=x).logits) <= 1e-4
    io = model_io(model)
    assert io.weights == "deeplabv3_mobilevit_xxs.hf_voc" and io.task == "segmentation"
    assert io.labels[0] == "background" and len(io.labels) == 21
    assert io.preprocess.channel_order == "BGR" and io.preprocess.resize_mode == "exact"
    # the bare architecture name takes the same default weights
    assert mobilevit.create_model("deeplabv3_mobilevit_xxs", pretrained=True).pretrained_cfg.entry.tag == "hf_voc"


# ---------------------------------------------------------------------------------------- ml-cvnets checkpoints
@pytest.mark.parametrize("case", ["deeplabv3_mobilevit_xxs", "deeplabv3_mobilevitv2_050"])
def test_original_code_fixtures(shared, case: str) -> None:
    """Checkpoints saved by ml-cvnets' SegEncoderDecoder (output stride 16; the v2 one with an auxiliary head, which
    inference drops) give the logits ml-cvnets computed, before its final upsampling."""
    import json

    from safetensors.torch import load_file

    folder = shared / "fixtures" / case
    info = json.loads((folder / "info.json").read_text())
    io = load_file(str(folder / "io.safetensors"))
    model = mobilevit.create_model(case, pretrained=folder / info["checkpoint_file"]).eval()
    settings = info["key_settings"]
    assert model.cfg.output_stride == settings["output_stride"] and model.cfg.num_classes == info["num_classes"]
    assert model.cfg.aspp_channels == settings["aspp_out_channels"]
    assert list(model.cfg.aspp_rates) == settings["aspp_rates"]
    assert sum(p.numel() for p in model.parameters()) == info["num_parameters_without_aux_head"]
    with torch.inference_mode():
        for key in ("512", "odd"):
            expected = io[f"logits_lowres_{key}"]
            got = model(io[f"input_{key}"])
            assert got.shape == expected.shape
            assert max_rel_diff(got, expected) <= 1e-4, f"{case} at {key}: {max_rel_diff(got, expected):.2e}"
    if case == "deeplabv3_mobilevitv2_050":  # the cvnets release's entry reads the same file format
        named = mobilevit.create_model(f"{case}.orig_voc", pretrained=folder / info["checkpoint_file"])
        assert model_io(named).weights == f"{case}.orig_voc" and model_io(named).preprocess.channel_order == "RGB"


# ------------------------------------------------------------------------------------------- backbone weights
@pytest.mark.parametrize("form", ["state_dict", "saved folder", "folded"])
def test_classification_checkpoint_initialises_the_backbone(form: str, tmp_path) -> None:
    """A classifier's checkpoint loads into a segmentation model's backbone (its head and expansion dropped); the
    head stays fresh and the pixels follow the classifier's weights."""
    classifier = seeded("mobilevit_xxs")
    if form == "saved folder":
        path = mobilevit.save_pretrained(classifier, tmp_path / "folder")
    else:
        weights = mobilevit.reparameterize_model(classifier) if form == "folded" else classifier
        path = tmp_path / "classifier.pt"
        torch.save(weights.state_dict(), path)
    seg = mobilevit.create_model("deeplabv3_mobilevit_xxs", pretrained=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = classifier.forward_intermediates(x, indices=[3], intermediates_only=True)[0]  # stride 16: not dilated
        got = seg.backbone.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    assert max_rel_diff(got, ref) <= 1e-4
    io = model_io(seg)
    assert io.weights is None and io.labels[0] == "background"
    pixels = model_io(classifier).preprocess
    got = io.preprocess
    assert (got.channel_order, got.mean, got.std, got.interpolation) == (
        pixels.channel_order,
        pixels.mean,
        pixels.std,
        pixels.interpolation,
    )
    assert got.resize_mode == "exact" and got.input_size == (512, 512)


def test_unpublished_segmentation_model_takes_the_imagenet_backbone(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pretrained=True`` for a DeepLabV3 without weights of its own: the backbone's default (timm) weights."""
    from test_hub import put_in_hf_cache

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classifier = seeded("mobileone_s0")  # timm's MobileOne S0 has exactly our key names
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(tmp_path / "model.safetensors"))
    put_in_hf_cache(
        tmp_path / "hf", "timm/mobileone_s0.apple_in1k", {"model.safetensors": tmp_path / "model.safetensors"}
    )
    seg = mobilevit.create_model("deeplabv3_mobileone_s0", pretrained=True)
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}
    assert seg.backbone.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in seg.backbone.state_dict().items())
    assert model_io(seg).preprocess.mean == (0.485, 0.456, 0.406)
