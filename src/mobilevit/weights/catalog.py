"""Pretrained weights as data: one entry per official checkpoint, named ``arch.tag``.

Each :class:`~.schema.WeightsEntry` says where a checkpoint lives (Hugging Face Hub repo + file, or a URL), which of our
converters reads it, the eval transform that reproduces its published accuracy (:class:`~.schema.Preprocess`), its
labels, its published metrics and where they were published, and its license. Follows the torchvision
``models/_api.py`` idea that weights are data; the values were taken from the upstream sources listed in
``docs/weights.md`` and are written here as literals (this module imports neither timm nor transformers). Looking
entries up, the default tag of each architecture and the label names are :mod:`.entries`.

Tag vocabulary (the part after the dot):

- timm's own tags, unchanged, for the ``timm/<arch>.<tag>`` Hub repositories: ``cvnets_in1k``,
  ``cvnets_in22k_ft_in1k``, ``cvnets_in22k_ft_in1k_384``, ``apple_in1k``, ``apple_dist_in1k``.
- ``hf_in1k``: the Hugging Face transformers ports under ``apple/*``; ``hf_voc``: the DeepLabV3 ones, fine-tuned on
  PASCAL VOC 2012 (segmentation, 21 classes).
- ``orig_*``: the upstream authors' own file at its own URL (ml-cvnets, ml-fastvit, ml-mobileone, the MobileViTv3
  GitHub release); ``_reparam`` marks Apple's reparameterized (inference-form) FastViT / MobileOne files.

Channel order is recorded per entry as what the *weights* expect; see ``docs/weights.md`` for the evidence.
"""

from __future__ import annotations

import dataclasses

from .schema import IMAGENET_MEAN, IMAGENET_STD, NO_MEAN, NO_STD, Metric, Preprocess, Source, WeightsEntry

# PASCAL VOC 2012 segmentation classes in index order (255 in a mask means "ignore"), as transformers' and
# torchvision's VOC label files list them (torchvision spells index 0 "__background__")
VOC_LABELS: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
# ADE20K (SceneParsing, ADEChallengeData2016) segmentation classes in index order: the annotations' labels 1-150;
# their label 0 ("other") is not a class and is ignored, as mmsegmentation's reduce_zero_label does
ADE20K_LABELS: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
# --------------------------------------------------------------------------------------------------------------------
# Papers and licenses
# --------------------------------------------------------------------------------------------------------------------
PAPER_V1 = "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer (arXiv:2110.02178)"
PAPER_V2 = "Separable Self-attention for Mobile Vision Transformers (arXiv:2206.02680)"
PAPER_V3 = "MobileViTv3: Mobile-Friendly Vision Transformer with Simple and Effective Fusion (arXiv:2209.15159)"
PAPER_FASTVIT = "FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization (arXiv:2303.14189)"
PAPER_MOBILEONE = "MobileOne: An Improved One millisecond Mobile Backbone (arXiv:2206.04040)"

LICENSE_CVNETS = "cvnets-license: Apple sample code license, https://github.com/apple/ml-cvnets/blob/main/LICENSE"
LICENSE_FASTVIT = "fastvit-license: Apple, https://github.com/apple/ml-fastvit/blob/main/LICENSE"
LICENSE_MOBILEONE = "mobileone-license: Apple, https://github.com/apple/ml-mobileone/blob/main/LICENSE"
LICENSE_HF = "other: Apple sample code license (the HF model card points to https://github.com/apple/ml-cvnets/blob/main/LICENSE)"
LICENSE_V3 = (
    "Micron Technology software license, personal non-commercial use only: "
    "https://github.com/micronDLA/MobileViTv3/blob/main/LICENSE"
)

# --------------------------------------------------------------------------------------------------------------------
# Where published numbers come from
# --------------------------------------------------------------------------------------------------------------------
TIMM_RESULTS = "timm results/results-imagenet.csv (huggingface/pytorch-image-models)"
CVNETS_ZOO = "ml-cvnets docs/source/en/general/README-model-zoo.md"
CVNETS_ZOO_V1 = CVNETS_ZOO + " (MobileViTv1 legacy table: CVNets v0.1 results)"
MMPRETRAIN_V1 = (
    "mmpretrain configs/mobilevit/metafile.yml: the cvnets .pt files re-evaluated with BGR input, resize 288 / crop 256"
)
PAPER_V1_TABLE = "paper arXiv:2110.02178 (ImageNet-1k results)"
V3_README = "micronDLA/MobileViTv3 README.md (Classification ImageNet-1K table)"
V3_README_DET = "micronDLA/MobileViTv3 README.md (Detection COCO table)"
FASTVIT_README = "apple/ml-fastvit README.md (model zoo tables)"
PAPER_V1_SEG_TABLE = "paper arXiv:2110.02178 (PASCAL VOC 2012 segmentation, DeepLabv3, 512x512)"
CVNETS_ZOO_SEG = CVNETS_ZOO + " (Segmentation, Pascal VOC 2012 table)"
MOBILEONE_README = "apple/ml-mobileone README.md (model zoo table)"
CVNETS_ZOO_V1_DET = "apple/ml-cvnets@d38a116 (v0.1) examples/README-mobilevit.md (SSDLite on MS-COCO table)"
CVNETS_ZOO_DET = CVNETS_ZOO + " (Object Detection (MS-COCO) table)"
EV_CVNETS_DET = (
    "apple/ml-cvnets@d38a116 (v0.1) config/detection/ssd_mobilevit_*_320.yaml: SSD, output strides "
    "[16, 32, 64, 128, 256, -1], proj_channels [512, 256, 256, 128, 128, 64], aspect ratios [[2, 3] x5, [2]]; "
    "320x320 batches, resize interpolation unset (cv2 bilinear default); data/datasets/detection/coco.py "
    "validation_transforms = Resize(320x320) + NumpyToTensor; images read with cv2 (BGR)",
    "apple/ml-cvnets config/detection/ssd_coco/mobilevit_v2.yaml: image_augmentation.resize size [320, 320], "
    "interpolation bicubic; data/datasets/detection/coco_ssd.py validation: Resize, ToTensor (PIL, RGB)",
)

# --------------------------------------------------------------------------------------------------------------------
# Evidence strings, shared by the entries of one source (docs/weights.md has the argument)
# --------------------------------------------------------------------------------------------------------------------
EV_CVNETS_V01 = (
    "apple/ml-cvnets@d38a116 (v0.1) data/datasets/dataset_base.py: read_image = cv2.imread(path, IMREAD_COLOR), "
    "commented 'Image is read in BGR Format'; data/transforms/image.py NumpyToTensor only transposes and /255",
    "apple/ml-cvnets@d38a116 data/datasets/classification/imagenet.py: validation resize shorter side to size+32 "
    "(cv2 INTER_LINEAR), center crop size",
    CVNETS_ZOO_V1 + ": 'We discontinued the support of OpenCV and switched to PIL in v0.2. For MobileViTv1 "
    "results, see v0.1.'",
    "apple/ml-cvnets data/datasets/classification/imagenet_opencv.py (v0.2): OpenCV dataset kept 'for MobileViT "
    "evaluation'",
    MMPRETRAIN_V1 + " (to_rgb=False, i.e. BGR, reproduces 69.02 / 74.75 / 78.25)",
)
EV_CVNETS_V02 = (
    CVNETS_ZOO + ": MobileViTv2 weights are cvnets-v2 releases; 'switched to PIL in v0.2'",
    "apple/ml-cvnets data/datasets/classification/base_image_classification_dataset.py: read_image_pil, "
    "image_pil transforms (RGB)",
    "apple/ml-cvnets config/classification/imagenet/mobilevit_v2.yaml: eval resize 288 bicubic, center crop 256; "
    "finetune_higher_res_in1k/mobilevit_v2.yaml: resize 384, crop 384",
    TIMM_RESULTS + ": timm feeds RGB and reproduces the published v2 numbers (e.g. 70.138 vs 70.18)",
)
EV_TIMM_V1 = (
    "timm models/mobilevit.py: _create_mobilevit has no pretrained_filter_fn, so the Hub tensors are used as stored",
    TIMM_RESULTS + ": RGB input gives 68.932 / 74.636 / 78.312, matching the BGR-evaluated originals "
    "(69.0 / 74.7 / 78.3, and mmpretrain 69.02 / 74.75 / 78.25); a model fed the wrong channel order loses "
    "points (MobileOne-S0 on imagenet-samples-100: 77 -> 65 top-1), so the timm stem was flipped to RGB when "
    "the weights were converted (inferred; check in docs/weights.md)",
)
EV_TIMM_V2 = (
    "timm models/mobilevit.py: no pretrained_filter_fn; RGB pipeline (mean 0, std 1)",
    TIMM_RESULTS + ": RGB input reproduces the cvnets v0.2 (PIL, RGB) numbers",
)
EV_HF_V1 = (
    "huggingface/transformers src/transformers/models/mobilevit/convert_mlcvnets_to_pytorch.py: tensors renamed "
    "and qkv split, stem copied unchanged; processor saved as MobileViTImageProcessor(crop_size=256, size=288) "
    "with the defaults of the time (do_flip_channel_order=True, resample=BILINEAR)",
    "transformers MobileViT docs / PR #17354: 'the pretrained checkpoints expect images to be in BGR pixel order'",
)
EV_HF_V2 = (
    "huggingface/transformers src/transformers/models/mobilevitv2/convert_mlcvnets_to_pytorch.py: tensors renamed, "
    "stem copied unchanged; processor saved as MobileViTImageProcessor(crop_size=256, size=288), whose default "
    "do_flip_channel_order=True feeds BGR",
    *EV_CVNETS_V02[:2],
)
EV_HF_SEG_V1 = (
    "huggingface/transformers src/transformers/models/mobilevit/convert_mlcvnets_to_pytorch.py: deeplabv3_mobilevit_*: "
    "image_size 512, output_stride 16, 21 labels (pascal-voc-id2label.json), tensors renamed and qkv split; processor "
    "saved as MobileViTImageProcessor(crop_size=512, size=544) with the defaults of the time (flip to BGR, bilinear)",
    "apple/ml-cvnets@d38a116 (v0.1) config/segmentation/deeplabv3_mobilevit_*.yaml: DeepLabv3, output stride 16, "
    "ASPP 256, rates 6/12/18, 21 classes",
    "apple/ml-cvnets@d38a116 engine/eval_segmentation.py and data/datasets/segmentation/pascal_voc.py "
    "(evaluation_transforms with --evaluation.segmentation.resize-input-images): the BGR image cv2.resize'd to "
    "512x512 (INTER_LINEAR), the prediction resized back to the image",
    "transformers MobileViTImageProcessor.post_process_semantic_segmentation: logits (1/16 of the input) resized "
    "bilinearly, align_corners=False",
)
EV_HF_SEG_V2 = (
    "huggingface/transformers src/transformers/models/mobilevitv2/convert_mlcvnets_to_pytorch.py: voc_deeplabv3: "
    "image_size 512, output stride, ASPP rates, width and dropout read from the ml-cvnets config, the auxiliary head "
    "dropped; processor saved as MobileViTImageProcessor(crop_size=512, size=544) (flip to BGR, bilinear)",
    "apple/ml-cvnets config/segmentation/pascal_voc/deeplabv3_mobilevitv2.yaml: output stride 16, ASPP 512, rates "
    "6/12/18, aux head, resize 512x512 bicubic; cvnets v0.2 reads images with PIL (RGB)",
    "apple/ml-cvnets docs/source/en/models/segmentation/README-segmentation-mobilevit-v2.md: mIoU by cvnets-eval-seg "
    "--evaluation.segmentation.resize-input-images (shorter side to 512, aspect kept)",
    CVNETS_ZOO_SEG + ": DeepLabv3 MobileViTv2-1.0, 13.3 M parameters, 78.94 mIoU",
)
EV_FASTVIT = (
    "apple/ml-fastvit models/fastvit.py: _cfg crop_pct 0.9 (T/S), 0.95 (M), bicubic, IMAGENET_DEFAULT_MEAN/STD; "
    "validate.py is timm's (PIL, RGB)",
    "timm fastvit pretrained cfgs (same values)",
)
EV_MOBILEONE = (
    "ml-mobileone README.md: checkpoints; no eval script published",
    "timm mobileone pretrained cfgs: 224, bilinear, crop_pct 0.875 (S0) / 0.9 (S1-S4), ImageNet mean/std, RGB",
    "../shared weights/mobileone_s0_reparam.safetensors: RGB + ImageNet mean/std, resize 256 / crop 224 -> 77/100 "
    "top-1 on imagenet-samples-100; the same images fed BGR -> 65/100",
)

# --------------------------------------------------------------------------------------------------------------------
# Eval transforms, one per distinct pipeline
# --------------------------------------------------------------------------------------------------------------------
# timm MobileViT v1: 256, crop_pct 0.9 -> resize floor(256 / 0.9) = 284, bicubic, RGB, no normalization
TIMM_V1 = Preprocess((256, 256), 284, 0.9, "bicubic", NO_MEAN, NO_STD, "RGB")
# timm MobileViT v2: crop_pct 0.888 -> resize floor(256 / 0.888) = 288
TIMM_V2 = Preprocess((256, 256), 288, 0.888, "bicubic", NO_MEAN, NO_STD, "RGB")
TIMM_V2_384 = Preprocess((384, 384), 384, 1.0, "bicubic", NO_MEAN, NO_STD, "RGB")
# ml-cvnets v0.1 (OpenCV): cv2.imread BGR, cv2.resize INTER_LINEAR shorter side 288, crop 256
CVNETS_V1 = Preprocess((256, 256), 288, 0.8889, "bilinear", NO_MEAN, NO_STD, "BGR", "opencv", "floor")
# ml-cvnets v0.2 (PIL): RGB, resize 288 bicubic, crop 256; the 384 fine-tunes resize 384 and crop 384
CVNETS_V2 = Preprocess((256, 256), 288, 0.8889, "bicubic", NO_MEAN, NO_STD, "RGB")
CVNETS_V2_384 = Preprocess((384, 384), 384, 1.0, "bicubic", NO_MEAN, NO_STD, "RGB")
# transformers MobileViTImageProcessor as saved by the converters: shortest_edge 288, bilinear, crop 256 with the offset
# truncated (int((h - 256) / 2)), RGB->BGR
HF_PROCESSOR = Preprocess((256, 256), 288, 0.8889, "bilinear", NO_MEAN, NO_STD, "BGR", crop_offset="floor")
# the same geometry without the flip: what the MobileViTV2 weights (trained on RGB) expect
HF_PROCESSOR_RGB = dataclasses.replace(HF_PROCESSOR, channel_order="RGB")
# Segmentation (DeepLabV3 on PASCAL VOC, 512x512): ml-cvnets v0.1 evaluated the MobileViT v1 models on the whole image
# cv2.resize'd (bilinear) to 512x512 and read BGR; ml-cvnets v0.2 (MobileViTv2) reads RGB with PIL, resizes bicubic
SEG_SIZE = (512, 512)
CVNETS_V1_SEG = Preprocess(SEG_SIZE, 512, 1.0, "bilinear", NO_MEAN, NO_STD, "BGR", "opencv", "floor", "exact")
CVNETS_V2_SEG = Preprocess(SEG_SIZE, 512, 1.0, "bicubic", NO_MEAN, NO_STD, "RGB", resize_mode="exact")
# transformers' processor of apple/deeplabv3-mobilevit-* and apple/mobilevitv2-1.0-voc-deeplabv3 as the converters
# saved it (crop_size=512, size=544, the defaults of the time): shortest edge 544, bilinear, center crop 512, BGR
HF_SEG_PROCESSOR = Preprocess(SEG_SIZE, 544, 0.9412, "bilinear", NO_MEAN, NO_STD, "BGR", crop_offset="floor")
# Detection (SSDLite on MS-COCO, 320x320): ml-cvnets v0.1 resizes the whole image with cv2 (bilinear, its default) and
# reads BGR; ml-cvnets v0.2+ (MobileViTv2) reads RGB with PIL and resizes bicubic (config/detection/ssd_coco/*.yaml)
DET_SIZE = (320, 320)
CVNETS_V1_DET = Preprocess(DET_SIZE, 320, 1.0, "bilinear", NO_MEAN, NO_STD, "BGR", "opencv", "floor", "exact")
CVNETS_V2_DET = Preprocess(DET_SIZE, 320, 1.0, "bicubic", NO_MEAN, NO_STD, "RGB", resize_mode="exact")
# FastViT (timm and ml-fastvit): 256, bicubic, ImageNet mean/std; crop_pct 0.9 -> 284, MA36 0.95 -> 269
FASTVIT = Preprocess((256, 256), 284, 0.9, "bicubic", IMAGENET_MEAN, IMAGENET_STD, "RGB")
FASTVIT_MA36 = Preprocess((256, 256), 269, 0.95, "bicubic", IMAGENET_MEAN, IMAGENET_STD, "RGB")
# MobileOne: 224, bilinear, ImageNet mean/std; timm S0 crop 0.875 -> 256, S1-S4 crop 0.9 -> 248
MOBILEONE_875 = Preprocess((224, 224), 256, 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "RGB")
MOBILEONE_900 = Preprocess((224, 224), 248, 0.9, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "RGB")


# --------------------------------------------------------------------------------------------------------------------
# Entry builders, one per source: they fill in what is common to a source; every number is passed in literally.
# --------------------------------------------------------------------------------------------------------------------
def _timm(
    name: str,
    preprocess: Preprocess,
    license: str,
    paper: str,
    metrics: tuple[Metric, ...],
    evidence: tuple[str, ...] = (),
    notes: str = "",
) -> WeightsEntry:
    arch = name.split(".")[0]
    return WeightsEntry(
        name=name,
        arch=arch,
        source="timm",
        format="timm",
        hub_repo_id=f"timm/{name}",
        filename="model.safetensors",
        preprocess=preprocess,
        metrics=metrics,
        license=license,
        paper=paper,
        notes=notes,
        evidence=("timm.models.get_pretrained_cfg(name) (timm 1.0.31)", *evidence),
    )


def _timm_result(top1: float, top5: float) -> Metric:
    return Metric(top1, top5, TIMM_RESULTS, "timm's own eval with timm's transform")


def _cvnets(
    name: str,
    url: str,
    preprocess: Preprocess,
    paper: str,
    metrics: tuple[Metric, ...],
    evidence: tuple[str, ...],
    notes: str = "",
) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        arch=name.split(".")[0],
        source="cvnets",
        format="cvnets",
        url=url,
        filename=url.rsplit("/", 1)[1],
        preprocess=preprocess,
        metrics=metrics,
        license=LICENSE_CVNETS,
        paper=paper,
        notes=notes,
        evidence=evidence,
    )


_CVNETS_V1_URL = "https://docs-assets.developer.apple.com/ml-research/models/cvnets/classification/"
_CVNETS_V2_URL = "https://docs-assets.developer.apple.com/ml-research/models/cvnets-v2/classification/mobilevitv2/"
_CVNETS_V1_DET_URL = "https://docs-assets.developer.apple.com/ml-research/models/cvnets/detection/"
_CVNETS_V2_DET_URL = "https://docs-assets.developer.apple.com/ml-research/models/cvnets-v2/detection/mobilevitv2/"
_CVNETS_V2_SEG_URL = (
    "https://docs-assets.developer.apple.com/ml-research/models/cvnets-v2/segmentation/pascalvoc/mobilevitv2/"
)
_FASTVIT_URL = "https://docs-assets.developer.apple.com/ml-research/models/fastvit/"
_MOBILEONE_URL = "https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/"
_V3_RELEASE = "https://github.com/micronDLA/MobileViTv3/releases/tag/v1.0.0"


def _fastvit(variant: str, distilled: bool, reparam: bool, preprocess: Preprocess, top1: float) -> WeightsEntry:
    folder = "image_classification_distilled_models" if distilled else "image_classification_models"
    file = f"fastvit_{variant}{'_reparam' if reparam else ''}.pth.tar"
    tag = f"orig_{'dist_' if distilled else ''}in1k{'_reparam' if reparam else ''}"
    return WeightsEntry(
        name=f"fastvit_{variant}.{tag}",
        arch=f"fastvit_{variant}",
        source="ml-fastvit",
        format="ml-fastvit",
        url=f"{_FASTVIT_URL}{folder}/{file}",
        filename=file,
        reparameterized=reparam,
        preprocess=preprocess,
        metrics=(Metric(top1, None, FASTVIT_README + (" (distilled)" if distilled else "")),),
        license=LICENSE_FASTVIT,
        paper=PAPER_FASTVIT,
        notes=("Hard distillation from RegNetY-160. " if distilled else "")
        + (
            "Inference form (branches folded); weights under 'state_dict'."
            if reparam
            else "Train-time (unfused) form; weights under 'state_dict'."
        ),
        evidence=EV_FASTVIT,
    )


def _mobileone(variant: str, reparam: bool, top1: float) -> WeightsEntry:
    file = f"mobileone_{variant}{'' if reparam else '_unfused'}.pth.tar"
    return WeightsEntry(
        name=f"mobileone_{variant}.orig_in1k{'_reparam' if reparam else ''}",
        arch=f"mobileone_{variant}",
        source="ml-mobileone",
        format="ml-mobileone",
        url=_MOBILEONE_URL + file,
        filename=file,
        reparameterized=reparam,
        preprocess=MOBILEONE_875,
        metrics=(Metric(top1, None, MOBILEONE_README), Metric(top1, None, "paper arXiv:2206.04040")),
        license=LICENSE_MOBILEONE,
        paper=PAPER_MOBILEONE,
        notes=(
            "Inference form (Apple's 'fused' checkpoint, a plain state dict)."
            if reparam
            else "Train-time form (Apple's 'unfused' checkpoint, a plain state dict)."
        )
        + " Apple publishes no eval transform; resize 256 / crop 224 bilinear, timm's S0 pipeline, gives S0 77/100 "
        "top-1 on imagenet-samples-100. timm evaluates S1-S4 with crop_pct 0.9.",
        evidence=EV_MOBILEONE,
    )


def _v3_release(arch: str, tag: str, folder: str, preprocess: Preprocess, metric: Metric, **fields) -> WeightsEntry:
    """A MobileViTv3 entry: a folder of the authors' release (no direct file URL), their license and paper."""
    return WeightsEntry(
        name=f"{arch}.{tag}",
        arch=arch,
        source="mobilevitv3",
        format="cvnets",
        download_page=_V3_RELEASE,
        filename=f"{folder}/checkpoint_ema_best.pt",
        preprocess=preprocess,
        metrics=(metric,),
        license=LICENSE_V3,
        paper=PAPER_V3,
        **fields,
    )


def _v3(arch: str, folder: str, preprocess: Preprocess, top1: float, base: str) -> WeightsEntry:
    return _v3_release(
        arch,
        "orig_in1k",
        folder,
        preprocess,
        Metric(top1, None, V3_README),
        notes=(
            f"Trained with the MobileViTv3 files over apple/ml-cvnets {base}. The release ships one folder per model; "
            "its README says checkpoint_ema_best.pt produced the accuracy. No direct file URL is recorded (the "
            "release asset names were not verifiable offline): download from the release page and pass the file. "
            "Non-commercial license."
        ),
        evidence=(
            "micronDLA/MobileViTv3 README.md (model table, folder names, base ml-cvnets commits)",
            *(EV_CVNETS_V01[:2] if preprocess.channel_order == "BGR" else EV_CVNETS_V02[:3]),
        ),
    )


def _coco(
    arch: str, url: str, preprocess: Preprocess, metric: Metric, paper: str, notes: str, evidence: tuple[str, ...]
) -> WeightsEntry:
    """An ml-cvnets SSDLite entry: 81 MS-COCO classes (background included), a plain state dict at ``url``."""
    return WeightsEntry(
        name=f"{arch}.cvnets_coco",
        arch=arch,
        source="cvnets",
        format="cvnets",
        url=url,
        filename=url.rsplit("/", 1)[1],
        preprocess=preprocess,
        metrics=(metric,),
        license=LICENSE_CVNETS,
        paper=paper,
        num_classes=81,
        labels="coco",
        task="detection",
        notes=notes,
        evidence=evidence,
    )


def _v3_coco(arch: str, folder: str, preprocess: Preprocess, box_map: float, base: str) -> WeightsEntry:
    """A MobileViTv3 SSDLite entry: the authors' release folder, COCO box mAP from their README."""
    return _v3_release(
        arch,
        "orig_coco",
        folder,
        preprocess,
        Metric(None, None, V3_README_DET, box_map=box_map),
        num_classes=81,
        labels="coco",
        task="detection",
        notes=(
            f"SSDLite trained with the MobileViTv3 files over apple/ml-cvnets {base}; the preprocessing is that base's "
            "detection evaluation (320x320, the whole image resized). No direct file URL is recorded: download the "
            "folder from the release page and pass the file. Non-commercial license."
        ),
        evidence=("micronDLA/MobileViTv3 README.md (Detection COCO table, folder names, base ml-cvnets commits)",),
    )


def _voc(
    name: str,
    source: Source,
    preprocess: Preprocess,
    metric: Metric,
    paper: str,
    notes: str,
    evidence: tuple[str, ...],
    **where: str,
) -> WeightsEntry:
    """A DeepLabV3 entry: 21 PASCAL VOC 2012 classes; ``where`` is the Hub repository or the URL and file name. The
    transformers ports also record the processor saved with them as ``upstream_preprocess``."""
    hf = source == "transformers"
    return WeightsEntry(
        name=name,
        arch=name.split(".")[0],
        source=source,
        format="transformers" if hf else "cvnets",
        preprocess=preprocess,
        upstream_preprocess=HF_SEG_PROCESSOR if hf else None,
        metrics=(metric,),
        license=LICENSE_HF if hf else LICENSE_CVNETS,
        paper=paper,
        num_classes=21,
        labels="pascal-voc",
        task="segmentation",
        notes=notes,
        evidence=evidence,
        **where,
    )


# --------------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------------
_V1_TIMM_NOTE = (
    "timm's port of the ml-cvnets weights. Fed RGB; evidence says timm flipped the stem's input channels when "
    "converting, so these tensors differ from the cvnets/HF ones in the first conv only (see docs/weights.md)."
)
_V2_TIMM_NOTE = "timm's port of the ml-cvnets MobileViTv2 weights; RGB like the original v0.2 training pipeline."

_ENTRIES: list[WeightsEntry] = [
    # ---- MobileViT v1: timm Hub ------------------------------------------------------------------------------------
    _timm(
        "mobilevit_xxs.cvnets_in1k",
        TIMM_V1,
        LICENSE_CVNETS,
        PAPER_V1,
        (_timm_result(68.932, 88.942), Metric(69.0, None, PAPER_V1_TABLE)),
        EV_TIMM_V1,
        _V1_TIMM_NOTE,
    ),
    _timm(
        "mobilevit_xs.cvnets_in1k",
        TIMM_V1,
        LICENSE_CVNETS,
        PAPER_V1,
        (_timm_result(74.636, 92.346), Metric(74.8, None, PAPER_V1_TABLE)),
        EV_TIMM_V1,
        _V1_TIMM_NOTE,
    ),
    _timm(
        "mobilevit_s.cvnets_in1k",
        TIMM_V1,
        LICENSE_CVNETS,
        PAPER_V1,
        (_timm_result(78.312, 94.144), Metric(78.4, None, PAPER_V1_TABLE)),
        EV_TIMM_V1,
        _V1_TIMM_NOTE,
    ),
    # ---- MobileViT v2: timm Hub ------------------------------------------------------------------------------------
    _timm(
        "mobilevitv2_050.cvnets_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(70.138, 89.920), Metric(70.18, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE,
    ),
    _timm(
        "mobilevitv2_075.cvnets_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(75.608, 92.744), Metric(75.56, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE,
    ),
    _timm(
        "mobilevitv2_100.cvnets_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(78.076, 94.170), Metric(78.09, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE,
    ),
    _timm(
        "mobilevitv2_125.cvnets_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(79.680, 94.858), Metric(79.65, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE,
    ),
    _timm(
        "mobilevitv2_150.cvnets_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(80.370, 95.074), Metric(80.38, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE,
    ),
    _timm(
        "mobilevitv2_175.cvnets_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(80.860, 95.256), Metric(80.84, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE,
    ),
    _timm(
        "mobilevitv2_200.cvnets_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(81.134, 95.362), Metric(81.17, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE,
    ),
    _timm(
        "mobilevitv2_150.cvnets_in22k_ft_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(81.488, 95.668), Metric(81.46, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE + " ImageNet-21k pretrained, fine-tuned on ImageNet-1k at 256.",
    ),
    _timm(
        "mobilevitv2_175.cvnets_in22k_ft_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(81.938, 95.790), Metric(81.94, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE + " ImageNet-21k pretrained, fine-tuned on ImageNet-1k at 256.",
    ),
    _timm(
        "mobilevitv2_200.cvnets_in22k_ft_in1k",
        TIMM_V2,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(82.332, 95.942), Metric(82.36, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE + " ImageNet-21k pretrained, fine-tuned on ImageNet-1k at 256.",
    ),
    _timm(
        "mobilevitv2_150.cvnets_in22k_ft_in1k_384",
        TIMM_V2_384,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(82.586, 96.314), Metric(82.60, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE + " ImageNet-21k pretrained, fine-tuned on ImageNet-1k at 256 then 384.",
    ),
    _timm(
        "mobilevitv2_175.cvnets_in22k_ft_in1k_384",
        TIMM_V2_384,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(82.938, 96.426), Metric(82.93, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE + " ImageNet-21k pretrained, fine-tuned on ImageNet-1k at 256 then 384.",
    ),
    _timm(
        "mobilevitv2_200.cvnets_in22k_ft_in1k_384",
        TIMM_V2_384,
        LICENSE_CVNETS,
        PAPER_V2,
        (_timm_result(83.400, 96.582), Metric(83.41, None, CVNETS_ZOO)),
        EV_TIMM_V2,
        _V2_TIMM_NOTE + " ImageNet-21k pretrained, fine-tuned on ImageNet-1k at 256 then 384.",
    ),
    # ---- FastViT: timm Hub (top-1 from Apple's README; the stored timm results CSV predates FastViT) -----------------
    *[
        _timm(
            f"fastvit_{v}.{tag}",
            FASTVIT_MA36 if v == "ma36" else FASTVIT,
            LICENSE_FASTVIT,
            PAPER_FASTVIT,
            (Metric(top1, None, FASTVIT_README + (" (distilled)" if "dist" in tag else "")),),
            EV_FASTVIT,
            "timm's port of Apple's unfused FastViT weights (timm key names, train-time form).",
        )
        for v, tag, top1 in [
            ("t8", "apple_in1k", 76.2),
            ("t8", "apple_dist_in1k", 77.2),
            ("t12", "apple_in1k", 79.3),
            ("t12", "apple_dist_in1k", 80.3),
            ("s12", "apple_in1k", 79.9),
            ("s12", "apple_dist_in1k", 81.1),
            ("sa12", "apple_in1k", 80.9),
            ("sa12", "apple_dist_in1k", 81.9),
            ("sa24", "apple_in1k", 82.7),
            ("sa24", "apple_dist_in1k", 83.4),
            ("sa36", "apple_in1k", 83.6),
            ("sa36", "apple_dist_in1k", 84.2),
            ("ma36", "apple_in1k", 83.9),
            ("ma36", "apple_dist_in1k", 84.6),
        ]
    ],
    # ---- MobileOne: timm Hub ---------------------------------------------------------------------------------------
    *[
        _timm(
            f"mobileone_{v}.apple_in1k",
            pre,
            LICENSE_MOBILEONE,
            PAPER_MOBILEONE,
            (Metric(top1, None, MOBILEONE_README),),
            EV_MOBILEONE,
            "timm's port of Apple's unfused MobileOne weights (timm key names, train-time form).",
        )
        for v, pre, top1 in [
            ("s0", MOBILEONE_875, 71.4),
            ("s1", MOBILEONE_900, 75.9),
            ("s2", MOBILEONE_900, 77.4),
            ("s3", MOBILEONE_900, 78.1),
            ("s4", MOBILEONE_900, 79.4),
        ]
    ],
    # ---- MobileViT v1 / v2: Hugging Face transformers ports ----------------------------------------------------------
    *[
        WeightsEntry(
            name=f"{arch}.hf_in1k",
            arch=arch,
            source="transformers",
            format="transformers",
            hub_repo_id=repo,
            preprocess=HF_PROCESSOR,
            metrics=(Metric(top1, None, CVNETS_ZOO_V1 + "; same tensors as the cvnets file"),),
            license=LICENSE_HF,
            paper=PAPER_V1,
            notes=(
                "The ml-cvnets v1 weights renamed for transformers (stem unchanged), so BGR input like the original. "
                "The processor config on the Hub (shortest_edge 288, crop 256, bilinear, flip to BGR) is what the "
                "converter saved; transformers 5.x changed the class default resample to bicubic, but the saved "
                "config overrides it."
            ),
            evidence=EV_HF_V1 + EV_CVNETS_V01[:1],
        )
        for arch, repo, top1 in [
            ("mobilevit_xxs", "apple/mobilevit-xx-small", 69.0),
            ("mobilevit_xs", "apple/mobilevit-x-small", 74.7),
            ("mobilevit_s", "apple/mobilevit-small", 78.3),
        ]
    ],
    WeightsEntry(
        name="mobilevitv2_100.hf_in1k",
        arch="mobilevitv2_100",
        source="transformers",
        format="transformers",
        hub_repo_id="apple/mobilevitv2-1.0-imagenet1k-256",
        preprocess=HF_PROCESSOR_RGB,
        upstream_preprocess=HF_PROCESSOR,
        metrics=(Metric(78.09, None, CVNETS_ZOO + "; same tensors as the cvnets file, evaluated on RGB"),),
        license=LICENSE_HF,
        paper=PAPER_V2,
        notes=(
            "The ml-cvnets MobileViTv2-1.0 weights renamed for transformers (stem unchanged). Those weights were "
            "trained and evaluated by cvnets v0.2 on RGB (PIL), but the transformers processor saved with them flips "
            "to BGR (do_flip_channel_order defaults to True). We feed RGB; upstream_preprocess is the transformers "
            "pipeline exactly. Other apple/mobilevitv2-* classification repositories could not be established."
        ),
        evidence=EV_HF_V2,
    ),
    # ---- DeepLabV3 on MobileViT v1 / v2: Hugging Face transformers ports (PASCAL VOC 2012 segmentation) -------------
    *[
        _voc(
            f"deeplabv3_{arch}.hf_voc",
            "transformers",
            CVNETS_V1_SEG,
            Metric(None, None, PAPER_V1_SEG_TABLE, f"{params} parameters", miou=miou),
            PAPER_V1,
            "ml-cvnets v0.1 DeepLabv3 weights (ImageNet-1k backbone, fine-tuned on PASCAL VOC 2012), renamed for "
            "transformers: BGR input like the original. We feed the whole image resized to 512x512, as ml-cvnets "
            "evaluated it; the transformers processor (upstream_preprocess) resizes the shorter side to 544 and crops "
            "512, so it cuts off the borders of the mask.",
            EV_HF_SEG_V1,
            hub_repo_id=repo,
        )
        for arch, repo, miou, params in [
            ("mobilevit_xxs", "apple/deeplabv3-mobilevit-xx-small", 73.6, "1.9M"),
            ("mobilevit_xs", "apple/deeplabv3-mobilevit-x-small", 77.1, "2.9M"),
            ("mobilevit_s", "apple/deeplabv3-mobilevit-small", 79.1, "6.4M"),
        ]
    ],
    _voc(
        "deeplabv3_mobilevitv2_100.hf_voc",
        "transformers",
        CVNETS_V2_SEG,
        Metric(None, None, CVNETS_ZOO_SEG, "13.3M parameters (without the auxiliary head)", miou=78.94),
        PAPER_V2,
        "ml-cvnets v0.2 DeepLabv3 MobileViTv2-1.0 weights (PASCAL VOC 2012, trained on RGB with PIL), renamed for "
        "transformers, auxiliary head dropped. The transformers processor flips to BGR (its default) and crops 512 "
        "out of a 544 resize; we feed RGB, the whole image resized to 512x512 (bicubic, the cvnets config's resize). "
        "The published mIoU was measured with the shorter side resized to 512 and the aspect kept.",
        EV_HF_SEG_V2,
        hub_repo_id="apple/mobilevitv2-1.0-voc-deeplabv3",
    ),
    # ---- DeepLabV3 on MobileViT v2: ml-cvnets originals (PASCAL VOC 2012, cvnets v0.2, PIL, RGB) ---------------------
    *[
        _voc(
            f"deeplabv3_mobilevitv2_{w}.orig_voc",
            "cvnets",
            CVNETS_V2_SEG,
            Metric(None, None, CVNETS_ZOO_SEG, f"{params} parameters (without the auxiliary head)", miou=miou),
            PAPER_V2,
            "Plain state dict of ml-cvnets' SegEncoderDecoder (encoder.* + seg_head.*); its auxiliary head is a "
            "training-only branch and is dropped. RGB input, no normalization, the whole image resized to 512x512 "
            "(the published mIoU kept the aspect ratio with the shorter side at 512).",
            EV_HF_SEG_V2[1:],
            url=f"{_CVNETS_V2_SEG_URL}deeplabv3-mobilevitv2-{mult}.pt",
            filename=f"deeplabv3-mobilevitv2-{mult}.pt",
        )
        for w, mult, miou, params in [
            ("050", "0.5", 75.07, "6.2M"),
            ("100", "1.0", 78.94, "13.3M"),
            ("125", "1.25", 79.68, "17.7M"),
            ("150", "1.5", 80.30, "22.6M"),
        ]
    ],
    # ---- MobileViT v1: ml-cvnets originals (trained and evaluated with the OpenCV/BGR pipeline of v0.1) --------------
    *[
        _cvnets(
            f"{arch}.orig_in1k",
            _CVNETS_V1_URL + file,
            CVNETS_V1,
            PAPER_V1,
            (Metric(zoo, None, CVNETS_ZOO_V1), Metric(paper, None, PAPER_V1_TABLE), Metric(mm1, mm5, MMPRETRAIN_V1)),
            EV_CVNETS_V01,
            "Plain state dict, cvnets key names. BGR input, no normalization.",
        )
        for arch, file, zoo, paper, mm1, mm5 in [
            ("mobilevit_xxs", "mobilevit_xxs.pt", 69.0, 69.0, 69.02, 88.91),
            ("mobilevit_xs", "mobilevit_xs.pt", 74.7, 74.8, 74.75, 92.32),
            ("mobilevit_s", "mobilevit_s.pt", 78.3, 78.4, 78.25, 94.09),
        ]
    ],
    # ---- MobileViT v2: ml-cvnets originals (cvnets v0.2, PIL, RGB) ---------------------------------------------------
    *[
        _cvnets(
            f"mobilevitv2_{w}.{tag}",
            f"{_CVNETS_V2_URL}{folder}/mobilevitv2-{mult}.pt",
            CVNETS_V2_384 if folder.endswith("384x384") else CVNETS_V2,
            PAPER_V2,
            (Metric(top1, None, CVNETS_ZOO),),
            EV_CVNETS_V02,
            "Plain state dict, cvnets key names. RGB input, no normalization."
            + (" ImageNet-21k pretrained, fine-tuned on ImageNet-1k." if "in22k" in tag else ""),
        )
        for w, mult, tag, folder, top1 in [
            ("050", "0.5", "orig_in1k", "imagenet1k/256x256", 70.18),
            ("075", "0.75", "orig_in1k", "imagenet1k/256x256", 75.56),
            ("100", "1.0", "orig_in1k", "imagenet1k/256x256", 78.09),
            ("125", "1.25", "orig_in1k", "imagenet1k/256x256", 79.65),
            ("150", "1.5", "orig_in1k", "imagenet1k/256x256", 80.38),
            ("175", "1.75", "orig_in1k", "imagenet1k/256x256", 80.84),
            ("200", "2.0", "orig_in1k", "imagenet1k/256x256", 81.17),
            ("050", "0.5", "orig_in1k_384", "imagenet1k/384x384", 72.14),
            ("075", "0.75", "orig_in1k_384", "imagenet1k/384x384", 76.98),
            ("100", "1.0", "orig_in1k_384", "imagenet1k/384x384", 79.68),
            ("125", "1.25", "orig_in1k_384", "imagenet1k/384x384", 80.94),
            ("150", "1.5", "orig_in1k_384", "imagenet1k/384x384", 81.50),
            ("175", "1.75", "orig_in1k_384", "imagenet1k/384x384", 82.04),
            ("200", "2.0", "orig_in1k_384", "imagenet1k/384x384", 82.17),
            ("150", "1.5", "orig_in22k_ft_in1k", "imagenet21k_to_1k/256x256", 81.46),
            ("175", "1.75", "orig_in22k_ft_in1k", "imagenet21k_to_1k/256x256", 81.94),
            ("200", "2.0", "orig_in22k_ft_in1k", "imagenet21k_to_1k/256x256", 82.36),
            ("150", "1.5", "orig_in22k_ft_in1k_384", "imagenet21k_to_1k/384x384", 82.60),
            ("175", "1.75", "orig_in22k_ft_in1k_384", "imagenet21k_to_1k/384x384", 82.93),
            ("200", "2.0", "orig_in22k_ft_in1k_384", "imagenet21k_to_1k/384x384", 83.41),
        ]
    ],
    # ---- MobileViT v3: micronDLA/MobileViTv3 release -----------------------------------------------------------------
    _v3("mobilevitv3_xxs", "mobilevitv3_XXS_e300_7098", CVNETS_V1, 70.98, "v0.1 (d38a116, OpenCV/BGR)"),
    _v3("mobilevitv3_xs", "mobilevitv3_XS_e300_7671", CVNETS_V1, 76.7, "v0.1 (d38a116, OpenCV/BGR)"),
    _v3("mobilevitv3_s", "mobilevitv3_S_e300_7930", CVNETS_V1, 79.3, "v0.1 (d38a116, OpenCV/BGR)"),
    _v3("mobilevitv3_050", "mobilevitv3_0_5_0", CVNETS_V2, 72.33, "v0.2 (84d992f, PIL/RGB)"),
    _v3("mobilevitv3_075", "mobilevitv3_0_7_5", CVNETS_V2, 76.55, "v0.2 (84d992f, PIL/RGB)"),
    _v3("mobilevitv3_100", "mobilevitv3_1_0_0", CVNETS_V2, 78.64, "v0.2 (84d992f, PIL/RGB)"),
    # ---- SSDLite on MobileViT v1 / v2: ml-cvnets originals (MS-COCO detection, 320x320) --------------------------
    *[
        _coco(
            f"ssdlite_mobilevit_{v}",
            f"{_CVNETS_V1_DET_URL}ssd_mobilevit_{v}_320.pt",
            CVNETS_V1_DET,
            Metric(None, None, CVNETS_ZOO_V1_DET, f"{params} parameters", box_map=box_map),
            PAPER_V1,
            "Plain state dict of ml-cvnets v0.1's SSD (encoder.* + extra_layers.* + ssd_heads.*). BGR input, no "
            "normalization, the whole image resized to 320x320.",
            EV_CVNETS_DET[:1],
        )
        for v, box_map, params in [("xxs", 19.9, "1.8M"), ("xs", 24.8, "2.7M"), ("s", 27.9, "5.7M")]
    ],
    *[
        _coco(
            f"ssdlite_mobilevitv2_{w}",
            f"{_CVNETS_V2_DET_URL}coco-ssd-mobilevitv2-{mult}.pt",
            CVNETS_V2_DET,
            Metric(None, None, CVNETS_ZOO_DET, f"{params} parameters", box_map=box_map),
            PAPER_V2,
            "Plain state dict of ml-cvnets' SSD (encoder.* + extra_layers.* + ssd_heads.*). RGB input, no "
            "normalization, the whole image resized to 320x320 (bicubic).",
            (CVNETS_ZOO_DET, *EV_CVNETS_DET[1:]),
        )
        for w, mult, box_map, params in [
            ("050", "0.5", 21.24, "2.0M"),
            ("075", "0.75", 24.57, "3.6M"),
            ("100", "1.0", 26.47, "5.6M"),
            ("125", "1.25", 27.85, "8.2M"),
            ("150", "1.5", 28.83, "11.3M"),
            ("175", "1.75", 29.52, "14.9M"),
            ("200", "2.0", 30.21, "19.1M"),
        ]
    ],
    # ---- SSDLite on MobileViTv3: the authors' release (MS-COCO detection, 320x320) ---------------------------------
    _v3_coco("ssdlite_mobilevitv3_xxs", "mobilevitv3_XXS_coco_e200_1930", CVNETS_V1_DET, 19.3, "v0.1 (OpenCV/BGR)"),
    _v3_coco("ssdlite_mobilevitv3_xs", "mobilevitv3_XS_coco_e200_2560", CVNETS_V1_DET, 25.6, "v0.1 (OpenCV/BGR)"),
    _v3_coco("ssdlite_mobilevitv3_s", "mobilevitv3_S_coco_e200_2730", CVNETS_V1_DET, 27.3, "v0.1 (OpenCV/BGR)"),
    _v3_coco("ssdlite_mobilevitv3_050", "mobilevitv3_coco_0_5_0", CVNETS_V2_DET, 21.8, "v0.2 (PIL/RGB)"),
    _v3_coco("ssdlite_mobilevitv3_075", "mobilevitv3_coco_0_7_5", CVNETS_V2_DET, 25.0, "v0.2 (PIL/RGB)"),
    _v3_coco("ssdlite_mobilevitv3_100", "mobilevitv3_coco_1_0_0", CVNETS_V2_DET, 27.0, "v0.2 (PIL/RGB)"),
    # ---- FastViT: ml-fastvit originals, unfused and reparameterized --------------------------------------------------
    *[
        _fastvit(v, distilled, reparam, FASTVIT_MA36 if v == "ma36" else FASTVIT, top1)
        for v, plain, dist in [
            ("t8", 76.2, 77.2),
            ("t12", 79.3, 80.3),
            ("s12", 79.9, 81.1),
            ("sa12", 80.9, 81.9),
            ("sa24", 82.7, 83.4),
            ("sa36", 83.6, 84.2),
            ("ma36", 83.9, 84.6),
        ]
        for distilled, top1 in [(False, plain), (True, dist)]
        for reparam in (False, True)
    ],
    # ---- MobileOne: ml-mobileone originals, unfused and reparameterized ----------------------------------------------
    *[
        _mobileone(v, reparam, top1)
        for v, top1 in [("s0", 71.4), ("s1", 75.9), ("s2", 77.4), ("s3", 78.1), ("s4", 79.4)]
        for reparam in (False, True)
    ],
]

WEIGHTS: dict[str, WeightsEntry] = {e.name: e for e in _ENTRIES}
assert len(WEIGHTS) == len(_ENTRIES), "duplicate weights names"
