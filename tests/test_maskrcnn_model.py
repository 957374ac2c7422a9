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

import hashlib
import json

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

import mobilevit
from mobilevit.models.classifiers import CLASSIFIERS
from reference_utils import max_rel_diff

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


TINY = dict(fpn_channels=16, box_convs=(16,), mask_convs=(16,), representation_size=32, mask_predictor_channels=16)


@pytest.mark.parametrize(
    "name",
    ["maskrcnn_mobileone_s0"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in ("maskrcnn_fastvit_t8", "maskrcnn_mobilevitv2_050")],
)
def test_each_family_detects_folds_and_trains(name: str) -> None:
    """torchvision's outputs at the input's own size, the same after folding (MobileOne's branches, every
    BatchNorm of our modules), and torchvision's losses in train mode."""
    from conftest import randomize_batchnorm

    model = randomize_batchnorm(mobilevit.create_model(name, **TINY)).eval()
    x = torch.rand(1, 3, 96, 128)
    folded = mobilevit.reparameterize_model(model)
    with torch.inference_mode():
        out, again = model(x)[0], folded(x)[0]
        pyramid, pyramid_folded = model.backbone(x), folded.backbone(x)
    assert set(out) == {"boxes", "labels", "scores", "masks"} and out["masks"].shape[1:] == (1, 96, 128)
    for a, b in zip(pyramid.values(), pyramid_folded.values(), strict=True):
        assert max_rel_diff(b, a) <= 1e-4  # of the maps' scale, as tests/test_reparam.py
    assert len(again["labels"]) == len(out["labels"])
    mask = torch.zeros(1, 96, 128, dtype=torch.uint8)
    mask[0, 20:60, 30:90] = 1
    target = {"boxes": torch.tensor([[30.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([3]), "masks": mask}
    losses = model.train()(x, [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_a_classification_checkpoint_fills_the_backbone(tmp_path) -> None:
    """Fine-tuning start: the classifier's file loads into ``backbone.body``, the rest starts fresh; for inference
    it is refused."""
    from mobilevit.weights import CheckpointError

    classifier = mobilevit.create_model("mobilevit_xxs")
    path = tmp_path / "mobilevit_xxs.pt"
    torch.save(classifier.state_dict(), path)
    model = mobilevit.create_model("maskrcnn_mobilevit_xxs", pretrained=str(path), **TINY)
    assert torch.equal(
        model.backbone.body.state_dict()["stem.conv.weight"], classifier.state_dict()["stem.conv.weight"]
    )
    with pytest.raises(CheckpointError, match="rpn, roi_heads"):
        mobilevit.create_model("maskrcnn_mobilevit_xxs", pretrained=str(path), allow_random_head=False, **TINY)


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


def test_macs_are_the_backbone_plus_every_head_at_its_largest() -> None:
    """On the meta device (shapes only) the heads run on the most boxes they can get: 1000 proposals, 100
    detections. The heads' MACs at 256x256, counted by hand for the fixture's widths, plus the backbone's."""
    from mobilevit.bench.profile import count_macs

    with torch.device("meta"):
        model = mobilevit.create_model(CASE, **FIXTURE_CFG).eval()
    out = model(torch.zeros(1, 3, 256, 256, device="meta"))
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"} and len(out[0]["labels"]) == 0
    c, locations = 32, sum((256 // s) ** 2 for s in (4, 8, 16, 32, 64))
    rpn = locations * (2 * c * c * 9 + c * 3 + c * 12)  # two 3x3 convs, objectness and box 1x1 convs (3 anchors)
    box = 1000 * (4 * c * c * 9 * 7 * 7 + c * 7 * 7 * 128 + 128 * (81 + 81 * 4))  # 4 convs, FC, class + box FCs
    mask = 100 * (4 * c * c * 9 * 14 * 14 + c * 256 * 2 * 2 * 14 * 14 + 256 * 81 * 28 * 28)  # convs, deconv, 1x1
    assert count_macs(model, (256, 256)) == count_macs(model.backbone, (256, 256)) + rpn + box + mask


@pytest.fixture(scope="module")
def case(info: dict, shared) -> tuple[torch.nn.Module, dict]:
    from safetensors.torch import load_file

    folder = shared / "fixtures" / CASE
    # only the detection threshold is given: the widths are read from the checkpoint's tensors
    model = mobilevit.create_model(
        CASE, pretrained=str(folder / f"{CASE}.pt"), allow_random_head=False, box_score_thresh=0.2
    ).eval()
    return model, load_file(str(folder / "io.safetensors"))


def test_checkpoint_gives_the_config_and_coco_labels(case) -> None:
    model, _ = case
    for field, value in FIXTURE_CFG.items():
        assert getattr(model.cfg, field) == value, field
    assert model.num_classes == 81 and model.task == "instance-segmentation"
    names = model.pretrained_cfg.labels
    assert len(names) == 81 and names[:2] == ("background", "person") and names[80] == "toothbrush"
    layer_norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert layer_norms and all(m.eps == 1e-6 for m in layer_norms)  # ml-cvnets' update_layer_norm_eps


def test_new_num_classes_keeps_all_but_the_class_layers(case, shared) -> None:
    """Fine-tuning on other classes: the box predictor and the mask predictor's class conv start fresh, the rest
    (here the mask head) comes from the checkpoint."""
    model, _ = case
    path = shared / "fixtures" / CASE / f"{CASE}.pt"
    other = mobilevit.create_model(CASE, pretrained=str(path), num_classes=3)
    assert other.num_classes == 3 and other.pretrained_cfg.labels is None
    assert other.roi_heads.box_predictor.cls_score.out_features == 3
    assert other.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    ours, theirs = other.roi_heads.mask_head.state_dict(), model.roi_heads.mask_head.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(scope="module")
def run(case, info: dict) -> dict:
    """Per input tag: the pyramid's maps and the eval forward's detections (computed once per tag)."""
    model, _ = case
    done: dict[str, tuple] = {}

    def get(tag: str, seed: int, shape: tuple[int, ...]) -> tuple:
        if tag not in done:
            torch.manual_seed(seed)
            x = torch.randn(*shape)
            assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == info["inputs"][tag]["sha256_of_float32_bytes"]
            with torch.inference_mode():
                done[tag] = (x, model.backbone(x), model(x)[0])
        return done[tag]

    return get


@pytest.mark.parametrize(("tag", "seed", "shape"), INPUTS)
def test_feature_maps_match_ml_cvnets(case, run, tag: str, seed: int, shape: tuple[int, ...]) -> None:
    """The pyramid (ml-cvnets' wiring: the top level unsmoothed, the smoothed output going down) at every stored
    level, and the RPN head's objectness on them."""
    model, io = case
    _, features, _ = run(tag, seed, shape)
    assert list(features) == ["4", "8", "16", "32", "64"]
    stored = [k for k in features if f"features_{tag}_{k}" in io]
    assert stored
    for k in stored:
        assert max_rel_diff(features[k], io[f"features_{tag}_{k}"]) <= 1e-5, k
    if f"rpn_objectness_{tag}_4" in io:
        with torch.inference_mode():
            objectness, _ = model.rpn.head(list(features.values()))
        for k, logits in zip(features, objectness, strict=True):
            assert max_rel_diff(logits, io[f"rpn_objectness_{tag}_{k}"]) <= 1e-5, k


def test_box_head_matches_ml_cvnets_on_its_proposals(case, run) -> None:
    """The box head's class logits for ml-cvnets' own 1000 proposals: RoIAlign over five levels, 4 convs, the FC."""
    model, io = case
    x, features, _ = run("odd", 2, (1, 3, 384, 448))
    heads = model.roi_heads
    with torch.inference_mode():
        pooled = heads.box_roi_pool(features, [io["rpn_proposals_odd"]], [tuple(x.shape[-2:])])
        logits, _ = heads.box_predictor(heads.box_head(pooled))
    assert max_rel_diff(logits, io["box_class_logits_odd"]) <= 1e-5


def test_rpn_proposals_match_ml_cvnets(case, run) -> None:
    """The RPN's 1000 proposals as a set (each matched at IoU > 0.999 both ways): their order swaps where random-weight
    objectness scores nearly tie."""
    from torchvision.ops import box_iou

    model, io = case
    x, features, _ = run("odd", 2, (1, 3, 384, 448))
    with torch.inference_mode():
        images, _ = model.transform(list(x))
        proposals, _ = model.rpn(images, features)
    iou = box_iou(io["rpn_proposals_odd"], proposals[0])
    assert proposals[0].shape == (1000, 4)
    assert bool((iou.max(dim=1).values > 0.999).all()) and bool((iou.max(dim=0).values > 0.999).all())


@pytest.mark.parametrize(("tag", "seed", "shape"), INPUTS)
def test_detections_and_masks_match_ml_cvnets(case, run, info: dict, tag: str, seed: int, shape) -> None:
    """torchvision's eval output against ml-cvnets' ``predict()``: labels, scores and pixel boxes in order, the
    boxes normalised by W, H as ``predict()`` returns them, and the pasted masks against ml-cvnets' 28x28 mask
    probabilities pasted into the image (DETECTION.md: ``predict().masks`` is exactly that)."""
    _, io = case
    _, _, out = run(tag, seed, shape)
    H, W = shape[-2:]
    assert torch.equal(out["labels"], io[f"det_labels_{tag}"])
    torch.testing.assert_close(out["scores"], io[f"det_scores_{tag}"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["boxes"], io[f"det_boxes_pixels_{tag}"], atol=1e-3, rtol=0)
    normalised = out["boxes"] / torch.tensor([W, H, W, H])
    torch.testing.assert_close(normalised, io[f"det_boxes_{tag}"], atol=1e-5, rtol=0)
    assert out["masks"].shape == (len(out["labels"]), 1, H, W)
    expected = paste_masks_in_image(io[f"det_mask_probs28_{tag}"], io[f"det_boxes_pixels_{tag}"], (H, W))
    torch.testing.assert_close(out["masks"], expected, atol=1e-4, rtol=0)
    stats = info["detections"][tag]["pasted_mask_stats_per_detection"]
    for mask, stat in zip(out["masks"][:, 0], stats, strict=True):
        assert int((mask > 0.5).sum()) == stat["num_pixels_gt_0.5"]
        assert float(mask.double().sum()) == pytest.approx(stat["sum"], rel=1e-5)
