"""DeepLabV3 segmentation models: every backbone, the output stride, labels and preprocessing, folding.

References: transformers' MobileViT image processor (its mask post-processing) and torchvision's PASCAL VOC label list;
the dilated backbones are checked against the strided ones they come from (same weights, same layout).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilevit
from conftest import randomize_batchnorm
from mobilevit.models.classifiers import CLASSIFIERS
from mobilevit.weights import model_io

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
    assert mobilevit.list_models() == sorted(classifiers + mobilevit.list_models("deeplabv3_*"))
    for name in mobilevit.list_models("deeplabv3_*"):
        cfg = mobilevit.get_config(name)
        assert cfg.backbone == name.removeprefix("deeplabv3_") and cfg.output_stride == 16 and cfg.num_classes == 21
        assert cfg.aspp_rates == (6, 12, 18) and cfg.dropout == 0.1
        # ml-cvnets' published widths: 512 behind MobileViT v2 (and MobileViTv3 on v2), 256 behind v1
        separable = getattr(mobilevit.get_config(cfg.backbone), "attention", "") == "separable"
        assert cfg.aspp_channels == (512 if separable else 256)


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
