"""The feature pyramid layer: its "lateral" wiring against torchvision's own FeaturePyramidNetwork (same weights), and
the shapes of both wirings at odd sizes. The "smoothed" wiring (ml-cvnets' Mask R-CNN) is checked against ml-cvnets'
own feature maps in tests/test_maskrcnn_model.py."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork

from mobilevit.layers import FeaturePyramid

WIDTHS = (8, 12, 16)
SIZES = ((20, 26), (10, 13), (5, 7))  # odd sizes: upsampling goes to the finer level's exact size


def maps() -> list[torch.Tensor]:
    return [torch.randn(2, c, h, w) for c, (h, w) in zip(WIDTHS, SIZES, strict=True)]


def test_lateral_wiring_is_torchvisions_fpn() -> None:
    ours = FeaturePyramid(WIDTHS, 6, wiring="lateral").eval()
    reference = FeaturePyramidNetwork(list(WIDTHS), 6).eval()
    for i in range(len(WIDTHS)):  # torchvision: inner_blocks (1x1) and layer_blocks (3x3), conv with bias
        ours.lateral[i].conv.load_state_dict(reference.inner_blocks[i][0].state_dict())
        ours.smooth[i].conv.load_state_dict(reference.layer_blocks[i][0].state_dict())
    x = maps()
    with torch.inference_mode():
        got = ours(x)
        expected = list(reference({str(i): m for i, m in enumerate(x)}).values())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("wiring", ["lateral", "smoothed"])
def test_every_level_has_the_width_and_extra_levels_halve(wiring: str) -> None:
    pyramid = FeaturePyramid(WIDTHS, 6, wiring=wiring, norm=True, extra_levels=2).eval()
    with torch.inference_mode():
        out = pyramid(maps())
    assert [tuple(m.shape) for m in out] == [(2, 6, h, w) for h, w in (*SIZES, (3, 4), (2, 2))]


def test_smoothed_wiring_keeps_the_top_level_unsmoothed() -> None:
    """ml-cvnets returns the coarsest level's projection itself; its 3x3 conv only feeds the top-down path."""
    pyramid = FeaturePyramid(WIDTHS, 6, wiring="smoothed").eval()
    x = maps()
    with torch.inference_mode():
        out = pyramid(x)
        torch.testing.assert_close(out[-1], pyramid.lateral[-1](x[-1]), atol=0, rtol=0)
        down = pyramid.smooth[-1](out[-1])
        up = torch.nn.functional.interpolate(down, size=SIZES[1], mode="nearest")
        torch.testing.assert_close(out[1], pyramid.smooth[1](pyramid.lateral[1](x[1]) + up), atol=1e-6, rtol=0)


def test_wrong_wiring_or_level_count_is_refused() -> None:
    with pytest.raises(ValueError, match="wiring"):
        FeaturePyramid(WIDTHS, 6, wiring="bottom-up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 feature maps"):
        FeaturePyramid(WIDTHS, 6)(maps()[:2])
