"""SSDLite detection models: registry, raw outputs, anchors, folding, and parity with ml-cvnets' own outputs.

References: the ``../shared/fixtures/ssdlite_*`` cases (``fixtures/DETECTION.md``): checkpoints of ml-cvnets' SSD on
random weights, the raw head outputs and anchors its ``ssd_forward`` returned for two regenerated inputs, and its
parameter counts. The anchor formula is checked against the values DETECTION.md lists.
"""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

import mobilevit
from mobilevit.models.classifiers import CLASSIFIERS
from reference_utils import max_rel_diff

FIXTURES = ("ssdlite_mobilevit_xxs", "ssdlite_mobilevitv2_050")
# DETECTION.md: (tag, seed, shape) of the inputs, regenerated and checked against info.json's sha256
INPUTS = (("320", 1, (1, 3, 320, 320)), ("odd", 2, (2, 3, 384, 288)))


def test_every_classifier_has_an_ssdlite() -> None:
    names = mobilevit.list_models(task="detection")
    assert names == mobilevit.list_models("ssdlite_*") == sorted(f"ssdlite_{n}" for n in CLASSIFIERS)
    cfg = mobilevit.get_config("ssdlite_mobilevit_s")
    assert cfg.num_classes == 81 and cfg.proj_channels == (512, 256, 256, 128, 128, 64)
    assert cfg.aspect_ratios == ((2, 3),) * 5 + ((2,),)


def test_anchor_scales_are_the_documented_ones() -> None:
    """DETECTION.md lists s_min / s_max per level: 0.1/0.1607, 0.2583/0.3281, ... 0.8917/0.9676."""
    listed = [(0.1, 0.1607), (0.2583, 0.3281), (0.4167, 0.4895), (0.575, 0.6494), (0.7333, 0.8086), (0.8917, 0.9676)]
    shapes = mobilevit.get_config("ssdlite_mobilevit_xxs").anchor_shapes()
    assert [len(level) for level in shapes] == [6, 6, 6, 6, 6, 4]
    for level, (s_min, s_max) in zip(shapes, listed, strict=True):
        assert level[0] == pytest.approx((s_min, s_min), abs=1e-4)
        assert level[1] == pytest.approx((s_max, s_max), abs=1e-4)
        assert level[2] == pytest.approx((s_min * math.sqrt(2), s_min / math.sqrt(2)), abs=1e-4)


@pytest.mark.parametrize(("name", "zoo_m"), [("xxs", 1.8), ("xs", 2.7), ("s", 5.7)])
def test_parameter_counts_match_the_published_ones(name: str, zoo_m: float) -> None:
    """ml-cvnets v0.1's model zoo (examples/README-mobilevit.md, SSDLite on MS-COCO): XXS/XS/S 1.8M/2.7M/5.7M."""
    with torch.device("meta"):
        model = mobilevit.create_model(f"ssdlite_mobilevit_{name}")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == zoo_m


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return mobilevit.create_model("ssdlite_mobilevit_xxs").eval()


def test_outputs_and_anchor_count_follow_the_input_size(small: torch.nn.Module) -> None:
    """64x96: levels 4x6, 2x3, 1x2, 1x1, 1x1, 1x1 -> 6 * (24 + 6 + 2 + 1 + 1) + 4 anchors."""
    assert small.task == "detection"
    with torch.inference_mode():
        out = small(torch.randn(2, 3, 64, 96))
    anchors = 6 * (24 + 6 + 2 + 1 + 1) + 4
    assert out._fields == ("logits", "boxes", "anchors")
    assert out.logits.shape == (2, anchors, 81) and out.boxes.shape == (2, anchors, 4)
    assert out.anchors.shape == (2, anchors, 4) and out.anchors.min() >= 0.0 and out.anchors.max() <= 1.0


@pytest.mark.parametrize("name", ["ssdlite_mobilevit_xxs", "ssdlite_mobileone_s0"])
def test_folded_model_gives_the_same_outputs(small: torch.nn.Module, name: str) -> None:
    """BatchNorms and (MobileOne) branches fold; the outputs stay."""
    from conftest import randomize_batchnorm

    model = small if name == "ssdlite_mobilevit_xxs" else randomize_batchnorm(mobilevit.create_model(name)).eval()
    x = torch.randn(1, 3, 64, 64)
    folded = mobilevit.reparameterize_model(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        for a, b in zip(folded(x), model(x), strict=True):
            assert max_rel_diff(a, b) <= 1e-4  # of the outputs' scale, as tests/test_reparam.py


def test_new_num_classes_keeps_the_rest(small: torch.nn.Module) -> None:
    model = mobilevit.create_model("ssdlite_mobilevit_xxs", num_classes=3)
    assert model.num_classes == 3
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 3, 64, 64)).logits.shape[-1] == 3


# issue / ml-cvnets model zoos (v0.1 examples/README-mobilevit.md; README-model-zoo.md): COCO val box mAP
PUBLISHED_MAP = {
    "ssdlite_mobilevit_xxs": 19.9,
    "ssdlite_mobilevit_xs": 24.8,
    "ssdlite_mobilevit_s": 27.9,
    **dict(
        zip(
            [f"ssdlite_mobilevitv2_{w}" for w in ("050", "075", "100", "125", "150", "175", "200")],
            [21.24, 24.57, 26.47, 27.85, 28.83, 29.52, 30.21],
            strict=True,
        )
    ),
}
# micronDLA/MobileViTv3 README (Detection COCO)
PUBLISHED_MAP_V3 = {
    f"ssdlite_mobilevitv3_{v}": m
    for v, m in [("xxs", 19.3), ("xs", 25.6), ("s", 27.3), ("050", 21.8), ("075", 25.0), ("100", 27.0)]
}


def test_weights_entries_carry_the_published_map_and_pixels() -> None:
    """One ml-cvnets COCO entry per published checkpoint, its default: mAP as published; 320x320, the whole image,
    pixels in [0, 1]; BGR for the v0.1 (OpenCV) MobileViT v1 files, RGB for the MobileViTv2 ones, as classification."""
    from mobilevit.weights.entries import get_weights, labels, list_weights

    expected = [f"{a}.cvnets_coco" for a in PUBLISHED_MAP] + [f"{a}.orig_coco" for a in PUBLISHED_MAP_V3]
    assert list_weights("ssdlite_*") == sorted(expected)
    for arch, published in {**PUBLISHED_MAP, **PUBLISHED_MAP_V3}.items():
        e = get_weights(arch)
        assert e.task == "detection" and e.format == "cvnets" and e.box_map == published
        assert (e.url or e.download_page).startswith(
            ("https://docs-assets.developer.apple.com/", "https://github.com/")
        )
        p = e.preprocess
        assert p.input_size == (320, 320) and p.resize_mode == "exact" and p.mean == (0, 0, 0) and p.std == (1, 1, 1)
        v1_base = arch.rsplit("_", 1)[1] in ("xxs", "xs", "s")  # MobileViT v1 and MobileViTv3 on v1 (cvnets v0.1)
        assert p.channel_order == ("BGR" if v1_base else "RGB")
        names = labels(e)
        assert len(names) == 81 and names[0] == "background" and names[1] == "person" and names[80] == "toothbrush"


# ------------------------------------------------------------------------------------------- ml-cvnets' own outputs
@pytest.fixture(scope="module", params=FIXTURES)
def case(request: pytest.FixtureRequest, shared) -> tuple[str, dict, torch.nn.Module, dict]:
    from safetensors.torch import load_file

    name = request.param
    folder = shared / "fixtures" / name
    if not folder.is_dir():
        pytest.skip(f"detection fixture {folder} not found")
    info = json.loads((folder / "info.json").read_text())
    model = mobilevit.create_model(name, pretrained=str(folder / f"{name}.pt"), allow_random_head=False).eval()
    assert model.pretrained_cfg.labels[:2] == ("background", "person")  # COCO's names for an 81-class detector
    return name, info, model, load_file(str(folder / "io.safetensors"))


def test_parameter_counts_match_ml_cvnets(case) -> None:
    _, info, model, _ = case
    assert sum(p.numel() for p in model.parameters()) == info["num_parameters"]
    assert sum(p.numel() for p in model.backbone.parameters()) == info["num_parameters_encoder"]


@pytest.mark.parametrize(("tag", "seed", "shape"), INPUTS)
def test_raw_outputs_match_ml_cvnets(case, tag: str, seed: int, shape: tuple[int, ...]) -> None:
    """Sample 0 of each batch against ``ssd_forward``'s logits, regression and anchors (atol 1e-5: the logits are
    ~0.5, the batch-vs-single difference in the original ~3e-7)."""
    _, info, model, io = case
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == info["inputs"][tag]["sha256_of_float32_bytes"]
    with torch.inference_mode():
        out = model(x)
    assert out.logits.shape[0] == shape[0]
    torch.testing.assert_close(out.logits[:1], io[f"conf_logits_{tag}"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.boxes[:1], io[f"locations_{tag}"], atol=1e-5, rtol=0)
    for anchors in out.anchors:  # the same anchors for every image
        torch.testing.assert_close(anchors[None], io[f"anchors_{tag}"], atol=0, rtol=0)


def test_a_classification_checkpoint_fills_the_backbone(tmp_path) -> None:
    """Fine-tuning start: the backbone loads from the classifier's file, the rest starts fresh, and the detector's
    preprocessing is the backbone's pixels with the whole image at 320x320; for inference it is refused."""
    from mobilevit.weights import CheckpointError

    classifier = mobilevit.create_model("mobilevit_xxs")
    path = tmp_path / "mobilevit_xxs.pt"
    torch.save(classifier.state_dict(), path)
    model = mobilevit.create_model("ssdlite_mobilevit_xxs", pretrained=str(path))
    stem = model.backbone.state_dict()["stem.conv.weight"]
    assert torch.equal(stem, classifier.state_dict()["stem.conv.weight"])
    assert model.pretrained_cfg.preprocess.input_size == (320, 320)
    with pytest.raises(CheckpointError, match="extras, heads, classifier"):
        mobilevit.create_model("ssdlite_mobilevit_xxs", pretrained=str(path), allow_random_head=False)


def test_end_to_end_detections_match_ml_cvnets(case) -> None:
    """Our forward, then the detection task's post-processing, against ``predict()`` at 320: the count, the label
    histogram and the sorted scores (DETECTION.md: the order of near-tied random-weight scores is not stable)."""
    from mobilevit.tasks.detection import detect

    _, _, model, io = case
    torch.manual_seed(1)
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 320, 320))
    _, labels, scores = detect(out.logits[0], out.boxes[0], out.anchors[0])
    assert len(labels) == len(io["det_labels_320"])
    assert torch.equal(torch.bincount(labels, minlength=81), torch.bincount(io["det_labels_320"], minlength=81))
    torch.testing.assert_close(scores.sort().values, io["det_scores_320"].sort().values, atol=1e-6, rtol=0)
