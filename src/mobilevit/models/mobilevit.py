"""MobileViT v1, v2 and v3.

Papers:
    v1: "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer" (arXiv 2110.02178)
    v2: "Separable Self-attention for Mobile Vision Transformers" (arXiv 2206.02680)
    v3: "MobileViTv3: Mobile-Friendly Vision Transformer with Simple and Effective Fusion of Local, Global and
        Input Features" (arXiv 2209.15159)
Upstream code followed: apple/ml-cvnets (v1, v2) and micronDLA/MobileViTv3 (v3), whose checkpoints load with
``mobilevit.converters`` and give the same logits, at any input size.

All variants share one skeleton: a stride-2 3x3 stem, five stages (strides 1, 2, 2, 2, 2, so outputs at strides 2, 4,
8, 16, 32) of MobileNetV2 blocks where stages 3-5 end with a MobileViT block, an optional 1x1 expansion, a linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..layers import (
    ClassifierHead,
    ClassifierModel,
    ConvNormAct,
    InvertedResidual,
    PatchLayerNorm,
    TransformerLayer,
    check_output_stride,
    fold_patches,
    kaiming_init_,
    make_divisible,
    stage_strides,
    trunc_normal_init_,
    unfold_patches,
)


@dataclass(frozen=True)
class MobileViTStage:
    """One stage: ``depth`` MobileNetV2 blocks (the first with ``stride``), then a MobileViT block if
    ``transformer_depth > 0``."""

    out_channels: int
    depth: int
    stride: int
    expand_ratio: float  # MobileNetV2 hidden width / input width
    transformer_dim: int = 0  # token channels inside the MobileViT block
    transformer_depth: int = 0  # transformer layers; 0 means a plain MobileNetV2 stage
    mlp_dim: int = 0  # hidden width of each transformer layer's MLP


@dataclass(frozen=True)
class MobileViTConfig:
    """Architecture of one MobileViT variant. Fields are checked; a typo in an override raises."""

    stem_channels: int
    stages: tuple[MobileViTStage, ...]
    attention: Literal["mha", "separable"]  # v1/v3-v1: multi-head attention; v2/v3-v2: separable self-attention
    v3_fusion: bool = False  # MobileViTv3 block: depthwise local conv, 1x1 fusion of local+global, input residual
    num_features: int = 0  # channels of the 1x1 expansion before the head (v1, v3-v1); 0: no expansion (v2)
    num_heads: int = 4  # heads of the multi-head attention (cvnets and timm use 4 in every v1/v3 variant)
    patch_size: int = 2  # unfold patch height and width
    kernel_size: int = 3  # local representation conv kernel
    in_channels: int = 3
    num_classes: int = 1000
    drop_rate: float = 0.0  # dropout before the classifier
    attn_drop_rate: float = 0.0  # dropout on attention weights
    proj_drop_rate: float = 0.0  # dropout after attention/MLP projections ("dropout" in cvnets)
    mlp_drop_rate: float = 0.0  # dropout between the MLP layers ("ffn_dropout" in cvnets)
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly over the transformer layers
    # 32: the classifier. 16 / 8: the last one / two stages keep their resolution and dilate instead (segmentation)
    output_stride: int = 32
    # in a dilated stage, dilate the v2 / v3-v2 block's depthwise local conv too, as ml-cvnets (which trained the
    # published DeepLabV3 weights) does; transformers' MobileViTV2 leaves it undilated (False reproduces it)
    dilate_local_conv: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ("mha", "separable"):
            raise UsageError(f"attention must be 'mha' or 'separable', got {self.attention!r}")
        if len(self.stages) != 5:
            raise UsageError(f"MobileViT has 5 stages, got {len(self.stages)}")
        check_output_stride(self.output_stride)


def _v1_config(
    channels: tuple[int, ...],
    transformer_dims: tuple[int, int, int],
    expand_ratio: float,
    num_features: int,
    v3_fusion: bool = False,
    proj_drop_rate: float = 0.1,
) -> MobileViTConfig:
    """MobileViT v1 layout (and v3 on the v1 base): ``channels`` are the five stage outputs."""
    depths = (1, 3, 1, 1, 1)
    strides = (1, 2, 2, 2, 2)
    transformer_depths = (0, 0, 2, 4, 3)
    dims = (0, 0, *transformer_dims)
    stages = tuple(
        MobileViTStage(c, d, s, expand_ratio, dim, td, 2 * dim)
        for c, d, s, dim, td in zip(channels, depths, strides, dims, transformer_depths, strict=True)
    )
    return MobileViTConfig(
        stem_channels=16,
        stages=stages,
        attention="mha",
        v3_fusion=v3_fusion,
        num_features=num_features,
        drop_rate=0.1,
        proj_drop_rate=proj_drop_rate,
    )


def _v2_config(width: float, v3_fusion: bool = False) -> MobileViTConfig:
    """MobileViT v2 width family (and v3 on the v2 base): every width derives from the 1.0 model."""
    channels = (
        make_divisible(64 * width, 16),
        make_divisible(128 * width, 8),
        make_divisible(256 * width, 8),
        make_divisible(384 * width, 8),
        make_divisible(512 * width, 8),
    )
    transformer_dims = (0, 0, *(make_divisible(d * width, 8) for d in (128, 192, 256)))
    depths = (1, 2, 1, 1, 1)
    strides = (1, 2, 2, 2, 2)
    transformer_depths = (0, 0, 2, 4, 3)
    stages = tuple(
        MobileViTStage(c, d, s, 2.0, dim, td, (2 * dim) // 16 * 16)
        for c, d, s, dim, td in zip(channels, depths, strides, transformer_dims, transformer_depths, strict=True)
    )
    stem = make_divisible(min(max(32 * width, 16), 64), 8, min_value=16)
    return MobileViTConfig(stem_channels=stem, stages=stages, attention="separable", v3_fusion=v3_fusion)


MODEL_CFGS: dict[str, MobileViTConfig] = {
    # v1 (cvnets xx_small / x_small / small)
    "mobilevit_xxs": _v1_config((16, 24, 48, 64, 80), (64, 80, 96), 2.0, 320, proj_drop_rate=0.05),
    "mobilevit_xs": _v1_config((32, 48, 64, 80, 96), (96, 120, 144), 4.0, 384),
    "mobilevit_s": _v1_config((32, 64, 96, 128, 160), (144, 192, 240), 4.0, 640),
    # v2
    "mobilevitv2_050": _v2_config(0.50),
    "mobilevitv2_075": _v2_config(0.75),
    "mobilevitv2_100": _v2_config(1.00),
    "mobilevitv2_125": _v2_config(1.25),
    "mobilevitv2_150": _v2_config(1.50),
    "mobilevitv2_175": _v2_config(1.75),
    "mobilevitv2_200": _v2_config(2.00),
    # v3 on the v1 base (MobileViTv3-v1 xx_small_v3 / x_small_v3 / small_v3): wider stages 3-5
    "mobilevitv3_xxs": _v1_config((16, 24, 64, 80, 128), (64, 80, 96), 2.0, 512, v3_fusion=True, proj_drop_rate=0.05),
    "mobilevitv3_xs": _v1_config((32, 48, 96, 160, 160), (96, 120, 144), 4.0, 640, v3_fusion=True),
    "mobilevitv3_s": _v1_config((32, 64, 128, 256, 320), (144, 192, 240), 4.0, 960, v3_fusion=True),
    # v3 on the v2 base (MobileViTv3-v2 width 0.5 / 0.75 / 1.0)
    "mobilevitv3_050": _v2_config(0.50, v3_fusion=True),
    "mobilevitv3_075": _v2_config(0.75, v3_fusion=True),
    "mobilevitv3_100": _v2_config(1.00, v3_fusion=True),
}


def _patch_grid_size(h: int, w: int, patch: int) -> tuple[int, int]:
    """The smallest size at or above ``(h, w)`` that is a multiple of ``patch``.

    Integer arithmetic only, so that under ``torch.export`` symbolic heights and widths stay symbolic and the exported
    graph computes the size from its input's shape.
    """
    return (h + patch - 1) // patch * patch, (w + patch - 1) // patch * patch


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Bilinear resize of ``[B, C, H, W]`` to ``size``, emitted even when ``size`` is already ``(H, W)``.

    Resizing to the input's own size returns the input exactly (every output pixel samples one input pixel with
    weight 1). Emitting it unconditionally, rather than behind a Python ``if`` on the shape, is what keeps an exported
    graph (ONNX, ``torch.export``) valid at every input size: a branch would be decided once, at the traced size.
    """
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _transformer(
    dim: int,
    mlp_dim: int,
    depth: int,
    attention: Literal["mha", "separable"],
    num_heads: int,
    drop: tuple[float, float, float],
    drop_path: tuple[float, ...],
) -> nn.Sequential:
    """``depth`` transformer layers; ``drop`` is (attention, projection, MLP) dropout, ``drop_path`` one rate per
    layer (none: 0 everywhere)."""
    rates = drop_path or (0.0,) * depth
    return nn.Sequential(*(TransformerLayer(dim, mlp_dim, attention, num_heads, *drop, rate) for rate in rates))


class MobileViTBlock(nn.Module):
    """MobileViT v1 block, or the MobileViTv3 block on the v1 base (``v3_fusion=True``).

    v1: ``x -> 3x3 conv -> 1x1 conv (local) -> unfold -> transformer -> fold -> 1x1 conv -> 3x3 conv over
    concat(x, global)``. v3: the 3x3 local conv is depthwise, the fusion is a 1x1 conv over concat(local, global) and
    ``x`` is added at the end. Feature maps that are not a multiple of the patch are resized (bilinear) before
    unfolding and back after folding, as in cvnets.
    """

    def __init__(
        self,
        in_channels: int,
        transformer_dim: int,
        mlp_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 2,
        kernel_size: int = 3,
        v3_fusion: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mlp_drop: float = 0.0,
        drop_path: tuple[float, ...] = (),
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.v3_fusion = v3_fusion
        self.conv_local = ConvNormAct(in_channels, in_channels, kernel_size, groups=in_channels if v3_fusion else 1)
        self.conv_embed = nn.Conv2d(in_channels, transformer_dim, 1, bias=False)
        self.transformer = _transformer(
            transformer_dim, mlp_dim, depth, "mha", num_heads, (attn_drop, proj_drop, mlp_drop), drop_path
        )
        self.norm = nn.LayerNorm(transformer_dim)
        self.conv_proj = ConvNormAct(transformer_dim, in_channels, 1)
        if v3_fusion:
            self.conv_fusion = ConvNormAct(transformer_dim + in_channels, in_channels, 1)
        else:
            self.conv_fusion = ConvNormAct(2 * in_channels, in_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        local = self.conv_embed(self.conv_local(x))
        H, W = local.shape[-2:]
        p = self.patch_size
        new_h, new_w = _patch_grid_size(H, W, p)
        g = _resize(local, (new_h, new_w), align_corners=False)  # identity when H and W are multiples of p
        tokens = unfold_patches(g, p, p)  # [B, C, new_h, new_w] -> [B, P, N, C]
        B, P, N, C = tokens.shape
        tokens = self.norm(self.transformer(tokens.reshape(B * P, N, C)))  # attention over N within each P
        g = fold_patches(tokens.reshape(B, P, N, C), new_h // p, new_w // p, p, p)  # -> [B, C, new_h, new_w]
        g = self.conv_proj(_resize(g, (H, W), align_corners=False))  # back to [B, C, H, W]
        if self.v3_fusion:
            return self.conv_fusion(torch.cat((local, g), dim=1)) + x
        return self.conv_fusion(torch.cat((x, g), dim=1))


class MobileViTV2Block(nn.Module):
    """MobileViT v2 block, or the MobileViTv3 block on the v2 base (``v3_fusion=True``).

    v2: ``x -> depthwise 3x3 -> 1x1 (local) -> unfold -> separable-attention layers -> fold -> 1x1 conv``.
    v3: the projection sees concat(global, local) and ``x`` is added at the end. An input that is not a multiple of the
    patch is resized (bilinear, corners aligned) at the block entry and the block keeps that size, as in cvnets.
    ``dilation`` dilates the depthwise local conv in a dilated stage, as ml-cvnets (v2) and MobileViTv3-v2 do (the v1
    block's local conv is never dilated, there or in transformers).
    """

    def __init__(
        self,
        in_channels: int,
        transformer_dim: int,
        mlp_dim: int,
        depth: int,
        patch_size: int = 2,
        kernel_size: int = 3,
        v3_fusion: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mlp_drop: float = 0.0,
        drop_path: tuple[float, ...] = (),
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.v3_fusion = v3_fusion
        self.conv_local = ConvNormAct(in_channels, in_channels, kernel_size, groups=in_channels, dilation=dilation)
        self.conv_embed = nn.Conv2d(in_channels, transformer_dim, 1, bias=False)
        self.transformer = _transformer(
            transformer_dim, mlp_dim, depth, "separable", 1, (attn_drop, proj_drop, mlp_drop), drop_path
        )
        self.norm = PatchLayerNorm(transformer_dim)
        proj_in = 2 * transformer_dim if v3_fusion else transformer_dim
        self.conv_proj = ConvNormAct(proj_in, in_channels, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size
        new_h, new_w = _patch_grid_size(H, W, p)
        x = _resize(x, (new_h, new_w), align_corners=True)  # identity when H and W are multiples of p
        local = self.conv_embed(self.conv_local(x))
        tokens = self.norm(self.transformer(unfold_patches(local, p, p)))  # [B, P, N, C]
        g = fold_patches(tokens, new_h // p, new_w // p, p, p)  # -> [B, C, new_h, new_w]
        if self.v3_fusion:
            return self.conv_proj(torch.cat((g, local), dim=1)) + x
        return self.conv_proj(g)


class MobileViT(ClassifierModel):
    """MobileViT v1 / v2 / v3 classifier or multi-scale feature extractor.

    Args:
        cfg: the architecture. With ``cfg.output_stride`` 16 or 8 the stages beyond it keep their resolution and dilate
            (the DeepLabV3 backbones), and ``feature_info`` gives the strides that result.
        features_only: build no head; ``forward`` returns the stage outputs at strides 2, 4, 8, 16 and 32.
        out_indices: which stage outputs ``forward`` returns with ``features_only``.
    """

    def __init__(
        self, cfg: MobileViTConfig, features_only: bool = False, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.features_only = features_only
        self.stem = ConvNormAct(cfg.in_channels, cfg.stem_channels, 3, stride=2)

        num_layers = sum(s.transformer_depth for s in cfg.stages)
        rates = torch.linspace(0, cfg.drop_path_rate, num_layers, device="cpu").tolist() if num_layers else []
        stages = []
        in_channels = cfg.stem_channels
        stride = 2
        self.feature_info: list[dict] = []
        layout = stage_strides([stage.stride for stage in cfg.stages], cfg.output_stride, stem_stride=stride)
        for i, (stage, run) in enumerate(zip(cfg.stages, layout, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(stage.depth):
                first = j == 0
                blocks.append(
                    InvertedResidual(
                        in_channels,
                        stage.out_channels,
                        run.stride if first else 1,
                        stage.expand_ratio,
                        dilation=run.first_dilation if first else run.dilation,
                    )
                )
                in_channels = stage.out_channels
            if stage.transformer_depth:
                drop_path = tuple(rates[: stage.transformer_depth])
                rates = rates[stage.transformer_depth :]
                blocks.append(self._make_block(cfg, stage, drop_path, run.dilation))
            stages.append(nn.Sequential(*blocks))
            stride *= run.stride
            self.feature_info.append({"stride": stride, "num_channels": stage.out_channels, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.select_out_indices(out_indices)
        # before the head exists, so that a feature extractor gets the same init (and, under one seed, the same
        # numbers) as the classifier's backbone
        self.apply(_init_weights)
        if features_only:
            self.final_conv = nn.Identity()
            return
        if cfg.num_features:
            self.final_conv: nn.Module = ConvNormAct(in_channels, cfg.num_features, 1)
            self.num_features = cfg.num_features
        else:
            self.final_conv = nn.Identity()
            self.num_features = in_channels
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)
        self.final_conv.apply(_init_weights)
        self.head.apply(_init_weights)

    @staticmethod
    def _make_block(
        cfg: MobileViTConfig, stage: MobileViTStage, drop_path: tuple[float, ...], dilation: int
    ) -> nn.Module:
        common = dict(
            in_channels=stage.out_channels,
            transformer_dim=stage.transformer_dim,
            mlp_dim=stage.mlp_dim,
            depth=stage.transformer_depth,
            patch_size=cfg.patch_size,
            kernel_size=cfg.kernel_size,
            v3_fusion=cfg.v3_fusion,
            attn_drop=cfg.attn_drop_rate,
            proj_drop=cfg.proj_drop_rate,
            mlp_drop=cfg.mlp_drop_rate,
            drop_path=drop_path,
        )
        if cfg.attention == "mha":
            return MobileViTBlock(num_heads=cfg.num_heads, **common)
        return MobileViTV2Block(dilation=dilation if cfg.dilate_local_conv else 1, **common)

    def forward_stem(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # [B, C, H, W] stored as [B, H, W, C]
        return self.stem(x)


def _init_weights(module: nn.Module) -> None:
    """cvnets' initialisation: Kaiming-normal convolutions, truncated-normal (std 0.02) linears, unit norms."""
    if isinstance(module, nn.Linear):
        trunc_normal_init_(module)
    else:
        kaiming_init_(module)


MobileViT.init_classifier = staticmethod(_init_weights)
