"""Classification and segmentation answers pinned, so that a change of how the path is organised cannot change them.

These are the one place where expected values come from this package itself: they were recorded from the
package's predictor and segmenter before the path was reorganised into task objects, and they hold the answers
still: labels in order, scores within float rounding (1e-5 relative; the CPU kernels may round differently on
other processors), and every class's pixel count of a mask within two pixels (a pixel whose top two classes tie
within rounding may fall either way, which moves its classes' mean probabilities by about one over their pixels).
The inputs are a random-weights MobileViT-XXS and DeepLabV3 (seed 0, BatchNorm statistics randomised) on synthetic
gradients and, with ``../shared``, Apple's MobileOne-S0 on three ImageNet photos and the segmenter on a VOC photo.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED, random_model
from mobilevit.predict import Predictor
from mobilevit.segment import Segmenter

PHOTOS = SHARED / "data" / "imagenet-samples-100"
S0_WEIGHTS = SHARED / "weights" / "mobileone_s0_reparam.safetensors"
VOC_PHOTO = SHARED / "data" / "voc-mini" / "JPEGImages" / "2007_000032.jpg"

XXS_ANSWERS = [
    [("swab", 0.0014293636195361614), ("grand piano", 0.0014174141688272357), ("toyshop", 0.0014109289040789008)],
    [("swab", 0.0014293593121692538), ("grand piano", 0.0014174140524119139), ("toyshop", 0.0014109291369095445)],
]
S0_ANSWERS = {
    "n01440764_tench.JPEG": [
        ("tench", 0.8544511198997498),
        ("goldfish", 0.025501182302832603),
        ("puffer", 0.012232024222612381),
    ],
    "n01530575_brambling.JPEG": [
        ("brambling", 0.535710334777832),
        ("junco", 0.35864609479904175),
        ("goldfinch", 0.01577596552670002),
    ],
    "n01641577_bullfrog.JPEG": [
        ("bullfrog", 0.9496954679489136),
        ("tailed frog", 0.01607205905020237),
        ("tree frog", 0.005934900138527155),
    ],
}
# (image size, pixels per class, mean probability of each present class)
SEGMENTATION_GRADIENT = (
    (240, 321),
    {2: 33055, 3: 2595, 9: 29759, 17: 11476, 20: 155},
    {2: 0.722343133901832, 3: 0.6302153321704423, 9: 0.6873762178210314, 17: 0.642007121194963, 20: 0.4280725921353986},
)
SEGMENTATION_VOC = (
    (281, 500),
    {2: 60356, 3: 4745, 9: 54160, 17: 20940, 20: 299},
    {
        2: 0.7221609983820115,
        3: 0.6297479697286266,
        9: 0.6876276703003898,
        17: 0.6419584641782807,
        20: 0.42443599948117566,
    },
)


def gradient(height: int, width: int) -> np.ndarray:
    """An RGB image whose channels are a horizontal ramp, a vertical ramp and a diagonal stripe pattern."""
    y, x = np.mgrid[0:height, 0:width]
    channels = (x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), ((x + y) * 7) % 256)
    return np.stack(channels, -1).astype(np.uint8)


def assert_answers(answers: list, expected: list) -> None:
    for answer, pinned in zip(answers, expected, strict=True):
        assert [p.label for p in answer] == [label for label, _ in pinned]
        assert [p.score for p in answer] == pytest.approx([score for _, score in pinned], rel=1e-5)


def assert_segmentation(result, expected: tuple) -> None:
    size, pixels, scores = expected
    assert result.mask.shape == size
    counts = np.bincount(result.mask.ravel(), minlength=len(result.labels))
    assert {c: int(n) for c, n in enumerate(counts) if n} == pytest.approx(pixels, abs=2)
    present = {c: float(result.scores[c]) for c in pixels}
    assert present == pytest.approx(scores, rel=1e-4)  # one pixel more or less moves a class's mean by ~1/pixels


def test_classifier_answers_are_pinned() -> None:
    torch.manual_seed(0)
    predictor = Predictor.from_model(random_model("mobilevit_xxs"), pretrained=False)
    assert_answers(predictor.predict([gradient(300, 401), gradient(97, 64)], top_k=3), XXS_ANSWERS)


def test_real_mobileone_answers_are_pinned(shared) -> None:
    predictor = Predictor.from_pretrained("mobileone_s0", pretrained=str(S0_WEIGHTS))
    answers = predictor.predict([str(PHOTOS / name) for name in S0_ANSWERS], top_k=3)
    assert_answers(answers, list(S0_ANSWERS.values()))


def test_segmentation_masks_are_pinned() -> None:
    segmenter = Segmenter.from_model(random_model("deeplabv3_mobilevit_xxs"), pretrained=False)
    images = [gradient(240, 321)] + ([str(VOC_PHOTO)] if VOC_PHOTO.is_file() else [])
    results = segmenter.segment(images, scores=True)
    assert_segmentation(results[0], SEGMENTATION_GRADIENT)
    if len(results) > 1:
        assert_segmentation(results[1], SEGMENTATION_VOC)
