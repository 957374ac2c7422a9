"""Every place that normalizes pixels for a model (eval transform, training batches, train augmentation, the CoreML
image graph) gives, bit for bit, what torchvision's ``ToTensor`` + ``Normalize`` (and the same float32 arithmetic in
numpy) give for the weights' channel order, mean and std.

Three kinds of preprocessing are pinned: ImageNet mean/std in RGB (MobileOne), MobileViT v1's BGR without mean/std,
and a segmentation model's whole-image resize (BGR, no mean/std).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

from mobilevit.data.augment import train_transform
from mobilevit.data.transforms import eval_transform
from mobilevit.export.coreml import coreml_graph_module
from mobilevit.export.metadata import ExportMetadata
from mobilevit.train.build import BatchNormalize
from mobilevit.train.config import AugmentConfig
from mobilevit.weights.entries import IMAGENET_MEAN, IMAGENET_STD, Preprocess, get_weights

# weights name -> (channel order, mean, std, resize mode) the entry is known to have: the cases mean what they say
CASES = {
    "mobileone_s0.orig_in1k_reparam": ("RGB", IMAGENET_MEAN, IMAGENET_STD, "shorter_side"),
    "mobilevit_xxs.orig_in1k": ("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "shorter_side"),
    "deeplabv3_mobilevit_xxs.hf_voc": ("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "exact"),
}
STATS = {  # the arithmetic on its own: channel order, mean, std
    "imagenet": ("RGB", IMAGENET_MEAN, IMAGENET_STD),
    "bgr-plain": ("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "bgr-stats": ("BGR", (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)),
    "rgb-mean-only": ("RGB", (0.5, 0.25, 0.0), (1.0, 1.0, 1.0)),
    "rgb-std-only": ("RGB", (0.0, 0.0, 0.0), (0.3, 0.7, 1.0)),
}


def _preprocess(name: str) -> Preprocess:
    pre = get_weights(name).preprocess
    assert (pre.channel_order, tuple(pre.mean), tuple(pre.std), pre.resize_mode) == CASES[name]
    return pre


def _normalized(rgb: Tensor, order: str, mean: tuple, std: tuple) -> Tensor:
    """torchvision's ``Normalize`` of ``[..., 3, H, W]`` RGB in [0, 1], reordered first for BGR."""
    return TF.normalize(rgb.flip(-3) if order == "BGR" else rgb, list(mean), list(std))


def _reference(pixels_rgb: Tensor, order: str, mean: tuple, std: tuple) -> Tensor:
    """torchvision's ``ToTensor`` + ``Normalize`` of ``uint8 [..., 3, H, W]`` RGB pixels, reordered first for BGR."""
    return _normalized(pixels_rgb.to(torch.float32).div(255), order, mean, std)  # div: ToTensor's scaling


def _numpy_reference(pixels_rgb: np.ndarray, order: str, mean: tuple, std: tuple) -> np.ndarray:
    x = pixels_rgb[..., ::-1, :, :] if order == "BGR" else pixels_rgb
    x = x.astype(np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32).reshape(3, 1, 1)) / np.asarray(std, np.float32).reshape(3, 1, 1)


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (29, 37, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", list(CASES))
def test_eval_transform_normalizes_like_torchvision(name: str) -> None:
    pre = _preprocess(name)
    images = [_image(seed) for seed in range(2)]
    # the resized and cropped pixels in RGB: resizing is not what this test is about
    rgb = torch.stack([eval_transform(dataclasses.replace(pre, channel_order="RGB")).pixels(im) for im in images])
    expected = _reference(rgb, pre.channel_order, pre.mean, pre.std)
    assert np.array_equal(expected.numpy(), _numpy_reference(rgb.numpy(), pre.channel_order, pre.mean, pre.std))
    t = eval_transform(pre)
    assert torch.equal(torch.stack([t(im) for im in images]), expected)  # per image
    pixels = torch.stack([t.pixels(im) for im in images])
    assert torch.equal(pixels, rgb.flip(1) if pre.channel_order == "BGR" else rgb)  # uint8 in the channel order
    assert torch.equal(t.normalize(pixels), expected)  # per batch


@pytest.mark.parametrize("stats", list(STATS))
def test_training_batches_normalize_like_torchvision(stats: str) -> None:
    order, mean, std = STATS[stats]
    pre = dataclasses.replace(get_weights("mobileone_s0.orig_in1k_reparam").preprocess, mean=mean, std=std)
    pre = dataclasses.replace(pre, channel_order=order)
    rgb = torch.randint(0, 256, (2, 3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = rgb.to(torch.float32).div(255)
    before = batch.clone()
    assert torch.equal(BatchNormalize(pre)(batch), _reference(rgb, order, mean, std))
    assert torch.equal(batch, before)  # the loop reuses the batch for a teacher


@pytest.mark.parametrize("stats", list(STATS))
def test_train_transform_normalizes_like_torchvision(stats: str) -> None:
    order, mean, std = STATS[stats]
    fixed = AugmentConfig(rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), hflip=0.0)  # crops the whole square image
    image = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    plain = train_transform(fixed, 12)(image)  # [0, 1] RGB: nothing to normalize
    torch.testing.assert_close(plain, image.to(torch.float32).div(255), atol=1e-7, rtol=0)
    assert torch.equal(train_transform(fixed, 12, mean, std, order)(image), _normalized(plain, order, mean, std))


@pytest.mark.parametrize("name", list(CASES))
def test_coreml_image_graph_normalizes_like_torchvision(name: str) -> None:
    """The ImageType hands the graph pixels / 255 in the weights' channel order; the graph does mean and std."""
    pre = _preprocess(name)
    meta = ExportMetadata("x", "", (8, 6), (), 1, pre, ("a", "b"))
    graph = coreml_graph_module(nn.Identity(), meta, image_input=True, classifier=False)
    ordered = torch.randint(0, 256, (1, 3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = graph(ordered.to(torch.float32).div(255))
    # the reference reorders RGB itself: hand it the pixels in RGB
    rgb = ordered.flip(1) if pre.channel_order == "BGR" else ordered
    assert torch.equal(out, _reference(rgb, pre.channel_order, pre.mean, pre.std))
    tensor_graph = coreml_graph_module(nn.Identity(), meta, image_input=False, classifier=False)
    x = torch.rand(1, 3, 8, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(tensor_graph(x), x)  # a preprocessed tensor input is left alone
