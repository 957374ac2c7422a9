"""Mask R-CNN models: registry, config, parameter counts, and parity with ml-cvnets' own Mask R-CNN.

References: the ``../shared/fixtures/maskrcnn_mobilevit_xxs`` case (``fixtures/DETECTION.md``): a checkpoint of
ml-cvnets' ``MaskRCNNDetector`` (torchvision 0.29.1's ``MaskRCNN`` inside) on random weights with narrower heads, the
feature maps, RPN objectness, proposals, box class logits and final detections (boxes, scores, labels, 28x28 mask
probabilities) it gave for two regenerated inputs, its parameter counts per part and its settings.

Tolerances: the feature maps within 1e-5 of their scale; the detections of this fixture survive 1e-6 feature noise in
the original (``detection_robustness``: order, labels and boxes unchanged, boxes within 2e-4 px, scores within
1.4e-6), so they are compared in order, scores at 1e-5 and boxes at 1e-3 px.
"""

from __future__ import annotations

import json

import pytest
import torch

import mobilevit
from mobilevit.models.classifiers import CLASSIFIERS

CASE = "maskrcnn_mobilevit_xxs"
# DETECTION.md: (tag, seed, shape) of the inputs, regenerated and checked against info.json's sha256; the 512 input
# (1.4 s more) is behind `-m slow`, the odd one covers all five levels
INPUTS = [pytest.param("512", 1, (1, 3, 512, 512), marks=pytest.mark.slow), ("odd", 2, (1, 3, 384, 448))]
# the fixture's settings (info.json -> detection_options), in our config's names
FIXTURE_CFG = dict(
    fpn_channels=32, box_convs=(32,) * 4, mask_convs=(32,) * 4, representation_size=128, box_score_thresh=0.2
)
RANGE_AUGMENT = 6  # ml-cvnets' encoder holds 6 RangeAugment scalars (training only), which our backbone drops
# ml-cvnets' parts (info.json -> num_parameters_by_part) -> ours
PARTS = {
    "model.backbone.backbone_proj_layers": "backbone.fpn.lateral",
    "model.backbone.fpn_proj_layers": "backbone.fpn.smooth",
    "model.backbone.extra_layers": "backbone.fpn.extra",
    "model.rpn.head": "rpn.head",
    "model.roi_heads.box_head": "roi_heads.box_head",
    "model.roi_heads.box_predictor": "roi_heads.box_predictor",
    "model.roi_heads.mask_head": "roi_heads.mask_head",
    "model.roi_heads.mask_predictor": "roi_heads.mask_predictor",
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_classifier_has_a_maskrcnn_with_ml_cvnets_defaults() -> None:
    assert mobilevit.list_models("maskrcnn_*") == sorted(f"maskrcnn_{n}" for n in CLASSIFIERS)
    assert mobilevit.list_models(task="instance-segmentation") == mobilevit.list_models("maskrcnn_*")
    cfg = mobilevit.get_config("maskrcnn_mobilevit_s")
    assert cfg.levels == (4, 8, 16, 32, 64) and cfg.fpn_channels == 256 and cfg.anchor_sizes == (32, 64, 128, 256, 512)
    assert cfg.box_convs == cfg.mask_convs == (256,) * 4 and cfg.representation_size == 1024 and cfg.rpn_convs == 2
    assert cfg.box_score_thresh == 0.05 and cfg.box_detections_per_img == 100 and cfg.layer_norm_eps == 1e-6
    with pytest.raises(TypeError, match="representation_size"):
        mobilevit.create_model("maskrcnn_mobilevit_xxs", representation=128)
    with pytest.raises(ValueError, match="anchor_sizes"):
        mobilevit.create_model("maskrcnn_mobilevit_xxs", anchor_sizes=(32, 64))
    with pytest.raises(ValueError, match="features_only"):
        mobilevit.create_model("maskrcnn_mobilevit_xxs", features_only=True)


@pytest.fixture(scope="module")
def info(shared) -> dict:
    folder = shared / "fixtures" / CASE
    if not folder.is_dir():
        pytest.skip(f"Mask R-CNN fixture {folder} not found")
    return json.loads((folder / "info.json").read_text())


def test_parameter_counts_match_ml_cvnets(info: dict) -> None:
    """Our model built from the fixture's settings, part by part (meta device: shapes only)."""
    with torch.device("meta"):
        model = mobilevit.create_model(CASE, **FIXTURE_CFG)
    parts = info["num_parameters_by_part"]
    assert count(model) == info["num_parameters"] - RANGE_AUGMENT
    assert count(model.backbone.body) == parts["model.backbone.encoder"] - RANGE_AUGMENT
    for theirs, ours in PARTS.items():
        assert count(model.get_submodule(ours)) == parts[theirs], ours
