"""Weights entries: the schema of every entry, and its preprocessing against timm's and transformers' own configs.

timm and transformers are dev dependencies; the checks that need them skip when they are missing. Nothing here touches
the network: timm's pretrained cfgs and transformers' processor defaults are installed code.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import mobilevit
from mobilevit.weights import catalog as C
from mobilevit.weights import entries as E
from mobilevit.weights.entries import WEIGHTS, Preprocess

ALL = sorted(WEIGHTS)
TIMM_ENTRIES = sorted(n for n, e in WEIGHTS.items() if e.source == "timm")
HF_ENTRIES = sorted(n for n, e in WEIGHTS.items() if e.source == "transformers")
MOBILEVIT_PREFIXES = ("mobilevit_", "mobilevitv2_", "mobilevitv3_")


# ---------------------------------------------------------------------------------------------------------------------
# Schema, every entry
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_entry_schema(name: str) -> None:
    e = WEIGHTS[name]
    assert e.name == name  # the table's key is the entry's own name
    assert e.arch in mobilevit.list_models(task=e.task)
    if e.task == "segmentation":
        assert e.num_classes == 21 and e.labels == "pascal-voc"
    elif e.task == "detection":
        assert e.num_classes == 81 and e.labels == "coco"
    else:
        assert e.num_classes == 1000 and e.labels == "imagenet-1k"
    assert e.license and e.paper and e.evidence, "license, paper and evidence are required"
    # where it lives
    if e.hub_repo_id:
        assert e.hub_repo_id.count("/") == 1
    for link in (e.url, e.download_page):
        assert link is None or link.startswith("https://")
    if e.url:
        assert e.filename and e.url.endswith("/" + e.filename)
    if e.source == "timm":
        assert e.hub_repo_id == f"timm/{name}" and e.filename == "model.safetensors"
    if e.source == "transformers":
        assert e.hub_repo_id.startswith("apple/") and e.filename is None
    # reparameterized files exist only for the reparameterizable families, in Apple's own releases
    if e.reparameterized:
        assert e.source in ("ml-fastvit", "ml-mobileone") and e.tag.endswith("_reparam")
    # published metrics, each with where it was published
    assert e.metrics
    for m in e.metrics:
        assert m.source
        if e.task == "segmentation":  # PASCAL VOC mean IoU
            assert m.top1 is None and m.top5 is None and 50.0 < m.miou < 100.0
            continue
        if e.task == "detection":  # MS-COCO box mAP
            assert m.top1 is None and m.top5 is None and m.miou is None and 10.0 < m.box_map < 100.0
            continue
        assert 50.0 < m.top1 < 100.0 and m.miou is None and m.box_map is None
        assert m.top5 is None or m.top1 < m.top5 < 100.0


@pytest.mark.parametrize("name", ALL)
def test_preprocess_is_sane(name: str) -> None:
    e = WEIGHTS[name]
    p = e.preprocess
    for pre in (p, e.upstream_preprocess) if e.upstream_preprocess else (p,):
        assert pre.interpolation in ("bilinear", "bicubic")
        assert pre.channel_order in ("RGB", "BGR")
        assert pre.resize_backend in ("pil", "opencv")
        assert pre.crop_offset in ("round", "floor")
        assert len(pre.mean) == 3 and len(pre.std) == 3
        assert all(0.0 <= m <= 1.0 for m in pre.mean) and all(0.0 < s <= 1.0 for s in pre.std)
    if e.task in ("segmentation", "detection"):  # the whole image, resized: every pixel gets a label, every box
        assert p.resize_mode == "exact" and p.crop_pct == 1.0 and p.resize_size == min(p.input_size)
    if e.arch.removeprefix("deeplabv3_").removeprefix("ssdlite_").startswith(MOBILEVIT_PREFIXES):
        # MobileViT: patches of 2 at stride 32 -> sizes are multiples of 32; pixels in [0, 1] without normalization
        assert p.input_size[0] % 32 == 0 and p.input_size[1] % 32 == 0
        assert p.mean == (0.0, 0.0, 0.0) and p.std == (1.0, 1.0, 1.0)
    else:
        assert p.mean == E.IMAGENET_MEAN and p.std == E.IMAGENET_STD and p.channel_order == "RGB"


def test_channel_order_per_source() -> None:
    """The conclusions of docs/weights.md, pinned: BGR exactly where the weights were trained on OpenCV input."""
    bgr = sorted(n for n, e in WEIGHTS.items() if e.preprocess.channel_order == "BGR")
    assert bgr == sorted(
        [
            "mobilevit_xxs.orig_in1k",
            "mobilevit_xs.orig_in1k",
            "mobilevit_s.orig_in1k",
            "mobilevit_xxs.hf_in1k",
            "mobilevit_xs.hf_in1k",
            "mobilevit_s.hf_in1k",
            "mobilevitv3_xxs.orig_in1k",
            "mobilevitv3_xs.orig_in1k",
            "mobilevitv3_s.orig_in1k",
            "deeplabv3_mobilevit_xxs.hf_voc",
            "deeplabv3_mobilevit_xs.hf_voc",
            "deeplabv3_mobilevit_s.hf_voc",
            "ssdlite_mobilevit_xxs.cvnets_coco",
            "ssdlite_mobilevit_xs.cvnets_coco",
            "ssdlite_mobilevit_s.cvnets_coco",
            "ssdlite_mobilevitv3_xxs.orig_coco",
            "ssdlite_mobilevitv3_xs.orig_coco",
            "ssdlite_mobilevitv3_s.orig_coco",
        ]
    )
    # cvnets v0.1 evaluated with cv2.resize (the DeepLabV3 and SSDLite models too); nothing else did
    assert {n for n, e in WEIGHTS.items() if e.preprocess.resize_backend == "opencv"} == {
        n for n in bgr if not n.endswith(".hf_in1k")
    }
    for name in ("mobilevitv2_100.hf_in1k", "deeplabv3_mobilevitv2_100.hf_voc"):
        v2 = WEIGHTS[name]
        assert v2.preprocess.channel_order == "RGB" and v2.upstream_preprocess.channel_order == "BGR"


def test_formats_have_converters() -> None:
    from mobilevit.weights.converters import CONVERTERS

    assert set(E.FORMATS) <= {fmt for fmt, _ in CONVERTERS}


def test_labels_are_imagenet_names() -> None:
    names = E.labels(WEIGHTS["mobilevit_xxs.cvnets_in1k"])
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
    assert E.labels("fastvit_t8.apple_in1k") == names  # by name too
    for e in WEIGHTS.values():
        assert len(E.labels(e)) == e.num_classes


# ---------------------------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------------------------
def test_defaults_and_lookup() -> None:
    archs_with_weights = {e.arch for e in WEIGHTS.values()}
    assert set(E.DEFAULT_TAGS) == archs_with_weights
    for arch in archs_with_weights:
        name = E.default_weights(arch)
        assert name in WEIGHTS and E.get_weights(arch) is WEIGHTS[name]
    assert E.default_weights("mobilevit_xxs") == "mobilevit_xxs.cvnets_in1k"
    assert E.get_weights("fastvit_sa12.apple_dist_in1k").arch == "fastvit_sa12"
    assert E.list_weights("mobileone_s0.*") == [
        "mobileone_s0.apple_in1k",
        "mobileone_s0.orig_in1k",
        "mobileone_s0.orig_in1k_reparam",
    ]


def test_unknown_names_suggest() -> None:
    with pytest.raises(KeyError, match=re.escape("mobilevit_xxs.cvnets_in1k")):
        E.get_weights("mobilevit_xxs.cvnet_in1k")  # typo in the tag: list that arch's weights
    with pytest.raises(KeyError, match=re.escape("Did you mean 'fastvit_t8.apple_in1k'")):
        E.get_weights("fastvit_t9.apple_in1k")  # typo in the arch
    with pytest.raises(KeyError, match="mobilevit_xxs"):
        E.default_weights("mobilevit_xxz")


def test_preprocess_validates() -> None:
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocess((256, 256), 256, 1.2, "bicubic", E.NO_MEAN, E.NO_STD, "RGB")
    with pytest.raises(ValueError, match="does not match"):
        Preprocess((256, 256), 320, 0.9, "bicubic", E.NO_MEAN, E.NO_STD, "RGB")


def test_orig_entries_share_timm_preprocessing() -> None:
    """Apple's own FastViT files are evaluated like timm's ports of them (ml-fastvit uses timm's pipeline)."""
    for name, e in WEIGHTS.items():
        if e.source == "ml-fastvit":
            variant = e.arch
            timm_tag = "apple_dist_in1k" if "_dist_" in name else "apple_in1k"
            assert e.preprocess == WEIGHTS[f"{variant}.{timm_tag}"].preprocess


# ---------------------------------------------------------------------------------------------------------------------
# Cross-checks against timm's pretrained cfgs (the authoritative source for the timm tags)
# ---------------------------------------------------------------------------------------------------------------------
def test_every_timm_tag_has_an_entry() -> None:
    timm = pytest.importorskip("timm")
    wanted = set(timm.list_pretrained("mobilevit*")) | set(timm.list_pretrained("mobileone*"))
    wanted |= {n for n in timm.list_pretrained("fastvit*") if not n.startswith("fastvit_mci")}  # MobileCLIP: not ours
    assert wanted == set(TIMM_ENTRIES)


@pytest.mark.parametrize("name", TIMM_ENTRIES)
def test_timm_entry_matches_timm_cfg(name: str) -> None:
    pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    e = WEIGHTS[name]
    cfg = get_pretrained_cfg(name).to_dict()
    p = e.preprocess
    assert cfg["hf_hub_id"] == e.hub_repo_id
    assert tuple(cfg["input_size"]) == (3, *p.input_size)
    assert cfg["crop_pct"] == p.crop_pct
    assert cfg["interpolation"] == p.interpolation
    assert cfg.get("crop_mode", "center") == "center"
    assert cfg["num_classes"] == e.num_classes
    assert all(math.isclose(a, b) for a, b in zip(cfg["mean"], p.mean, strict=True))
    assert all(math.isclose(a, b) for a, b in zip(cfg["std"], p.std, strict=True))
    assert e.license.startswith(cfg["license"] + ":")
    assert p.channel_order == "RGB" and p.resize_backend == "pil"  # timm decodes with PIL and never flips
    assert p.crop_offset == "round"  # torchvision CenterCrop
    # the resize before the crop, as timm's own eval transform builds it
    tf = create_transform(**resolve_data_config({}, pretrained_cfg=cfg), is_training=False)
    resize, crop = tf.transforms[0], tf.transforms[1]
    assert resize.size == p.resize_size == E.resize_size_for(p.input_size[0], p.crop_pct)
    assert tuple(crop.size) == p.input_size


# ---------------------------------------------------------------------------------------------------------------------
# Cross-checks against transformers' MobileViTImageProcessor
# ---------------------------------------------------------------------------------------------------------------------
def _hf_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.MobileViTImageProcessor, transformers.image_utils.PILImageResampling


def test_hf_processor_defaults_match_entries() -> None:
    proc_cls, resampling = _hf_processor()
    d = proc_cls()
    assert d.do_flip_channel_order is True  # RGB -> BGR unless the saved config says otherwise
    assert d.do_rescale and math.isclose(d.rescale_factor, 1 / 255)
    assert not d.do_normalize  # no mean/std: matches mean 0, std 1
    assert d.do_resize and d.do_center_crop
    for name in HF_ENTRIES:
        e = WEIGHTS[name]
        if e.task == "segmentation":
            continue  # saved with their own sizes, checked below
        upstream = e.upstream_preprocess or e.preprocess
        assert (d.crop_size.height, d.crop_size.width) == upstream.input_size
        assert upstream.channel_order == "BGR" and upstream.mean == E.NO_MEAN and upstream.std == E.NO_STD
    # what the converters saved: MobileViTImageProcessor(crop_size=256, size=288) with resample BILINEAR
    saved = proc_cls(crop_size=256, size=288, resample=resampling.BILINEAR)
    assert saved.size.shortest_edge == C.HF_PROCESSOR.resize_size == 288
    assert (saved.crop_size.height, saved.crop_size.width) == C.HF_PROCESSOR.input_size
    # and for the DeepLabV3 ports MobileViTImageProcessor(crop_size=512, size=544)
    saved = proc_cls(crop_size=512, size=544, resample=resampling.BILINEAR)
    assert saved.size.shortest_edge == C.HF_SEG_PROCESSOR.resize_size == 544
    assert (saved.crop_size.height, saved.crop_size.width) == C.HF_SEG_PROCESSOR.input_size
    for name in HF_ENTRIES:
        if WEIGHTS[name].task == "segmentation":
            assert WEIGHTS[name].upstream_preprocess == C.HF_SEG_PROCESSOR


@pytest.mark.parametrize("name", HF_ENTRIES)
def test_hf_upstream_transform_reproduces_processor(name: str) -> None:
    """Recorded upstream values, applied with torchvision, give the processor's tensor (within 1/255)."""
    proc_cls, resampling = _hf_processor()
    from torchvision.transforms.v2 import functional as F

    up = WEIGHTS[name].upstream_preprocess or WEIGHTS[name].preprocess
    image = torch.randint(0, 256, (3, 300, 420), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    image = F.gaussian_blur(image, [9, 9])  # smooth, so resampling differences stay small
    mode = {"bilinear": F.InterpolationMode.BILINEAR, "bicubic": F.InterpolationMode.BICUBIC}[up.interpolation]
    ours = F.resize(image, up.resize_size, interpolation=mode, antialias=True)
    assert up.crop_offset == "floor"  # transformers truncates the offset; torchvision's center_crop would round it
    top, left = ((n - c) // 2 for n, c in zip(ours.shape[1:], up.input_size, strict=True))
    ours = ours[:, top : top + up.input_size[0], left : left + up.input_size[1]].float() / 255.0
    if up.channel_order == "BGR":
        ours = ours.flip(0)
    processor = proc_cls(crop_size=up.input_size[0], size=up.resize_size, resample=resampling.BILINEAR)
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert theirs.shape == ours.shape == (3, *up.input_size)
    assert (theirs - ours).abs().max() <= 1 / 255 + 1e-6
    # and the channel order matters: unflipped is far off
    assert (theirs - ours.flip(0)).abs().max() > 0.05
