"""FastViT.

Paper: "FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization" (arXiv 2303.14189).
Upstream code followed: apple/ml-fastvit; the module and key names follow timm's port (``timm/models/fastvit.py``), so
timm checkpoints load with a single rename and ml-fastvit ones (unfused or re-parameterized) through
``mobilevit.weights.converters.from_apple``.

Layout: a stride-4 stem of three MobileOne blocks, four stages (the first at stride 4, each later one opening with a
stride-2 large-kernel patch embedding), a MobileOne 3x3 expansion with squeeze-excitation, a linear head. A stage mixes
tokens with RepMixer (a depthwise conv whose skip connection folds away) or, in SA/MA variants' last stage, with
multi-head self-attention after a conditional positional encoding (RepCPE); every block ends with a ConvFFN.

Every train-time branch has ``reparameterize()``; :func:`mobilevit.reparameterize_model` folds the whole network into
plain convolutions (and folds BatchNorm and layer scales into neighbouring layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..layers import (
    ClassifierHead,
    ClassifierModel,
    ConvNormAct,
    DropPath,
    LargeKernelConv,
    MobileOneBlock,
    MultiHeadAttention,
    StageStride,
    batchnorm_scale_shift,
    check_output_stride,
    conv_from_kernel,
    fold_input_affine_into_linear,
    identity_kernel,
    linear_from,
    scale_output,
    stage_strides,
    trunc_normal_init_,
)

TokenMixer = Literal["repmixer", "attention"]


@dataclass(frozen=True)
class FastViTConfig:
    """A FastViT architecture; the four per-stage tuples are indexed by stage."""

    depths: tuple[int, ...]  # blocks per stage
    embed_dims: tuple[int, ...]  # channels per stage
    mlp_ratios: tuple[float, ...]  # ConvFFN hidden width as a multiple of the stage channels
    token_mixers: tuple[TokenMixer, ...] = ("repmixer",) * 4  # SA/MA variants: attention in the last stage
    pos_embs: tuple[bool, ...] = (False,) * 4  # RepCPE (7x7 depthwise conditional position encoding) before the blocks
    downsamples: tuple[bool, ...] = (False, True, True, True)  # stage opens with a stride-2 patch embedding
    repmixer_kernel_size: int = 3  # depthwise kernel of RepMixer
    down_patch_size: int = 7  # large kernel of the patch embedding
    pos_emb_kernel_size: int = 7  # RepCPE kernel
    attention_head_dim: int = 32  # channels per attention head
    cls_ratio: float = 2.0  # width of the final 3x3 expansion, as a multiple of the last stage
    layer_scale_init_value: float | None = 1e-5  # initial per-channel residual scale; None: no layer scale
    in_channels: int = 3
    num_classes: int = 1000
    drop_rate: float = 0.0  # dropout before the classifier
    proj_drop_rate: float = 0.0  # dropout inside the ConvFFN
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly over all blocks
    # 32: the classifier. 16 / 8: the last one / two stages keep their resolution and dilate instead (segmentation)
    output_stride: int = 32

    def __post_init__(self) -> None:
        check_output_stride(self.output_stride)
        n = len(self.depths)
        fields = ("embed_dims", "mlp_ratios", "token_mixers", "pos_embs", "downsamples")
        wrong = [f for f in fields if len(getattr(self, f)) != n]
        if wrong:
            raise UsageError(f"{', '.join(wrong)} must have one entry per stage ({n}, as depths)")
        bad = [m for m in self.token_mixers if m not in ("repmixer", "attention")]
        if bad:
            raise UsageError(f"token_mixers must be 'repmixer' or 'attention', got {bad}")
        for i in range(1, n):
            if self.embed_dims[i] != self.embed_dims[i - 1] and not self.downsamples[i]:
                raise UsageError(f"stage {i} changes width, so it needs a patch embedding: set downsamples[{i}]=True")
        bad_heads = [d for d, m in zip(self.embed_dims, self.token_mixers, strict=True) if m == "attention"]
        if any(d % self.attention_head_dim for d in bad_heads):
            raise UsageError(f"attention stages need widths divisible by attention_head_dim {self.attention_head_dim}")


MODEL_CFGS: dict[str, FastViTConfig] = {
    "fastvit_t8": FastViTConfig(depths=(2, 2, 4, 2), embed_dims=(48, 96, 192, 384), mlp_ratios=(3, 3, 3, 3)),
    "fastvit_t12": FastViTConfig(depths=(2, 2, 6, 2), embed_dims=(64, 128, 256, 512), mlp_ratios=(3, 3, 3, 3)),
    "fastvit_s12": FastViTConfig(depths=(2, 2, 6, 2), embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4)),
    **{
        name: FastViTConfig(
            depths=depths,
            embed_dims=dims,
            mlp_ratios=(4, 4, 4, 4),
            token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
            pos_embs=(False, False, False, True),
        )
        for name, depths, dims in (
            ("fastvit_sa12", (2, 2, 6, 2), (64, 128, 256, 512)),
            ("fastvit_sa24", (4, 4, 12, 4), (64, 128, 256, 512)),
            ("fastvit_sa36", (6, 6, 18, 6), (64, 128, 256, 512)),
            ("fastvit_ma36", (6, 6, 18, 6), (76, 152, 304, 608)),
        )
    },
}


class LayerScale2d(nn.Module):
    """Multiply ``[B, C, H, W]`` by a learned per-channel ``gamma`` (``[C, 1, 1]``)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def _layer_scale(dim: int, init_value: float | None) -> nn.Module:
    return LayerScale2d(dim, init_value) if init_value is not None else nn.Identity()


@torch.no_grad()
def _fold_layer_scale(layer_scale: nn.Module, layer: nn.Conv2d | nn.Linear) -> nn.Module:
    """Fold ``layer_scale(layer(x))`` into ``layer``'s weights; returns what replaces the layer scale."""
    if isinstance(layer_scale, LayerScale2d):
        weight, bias = scale_output(layer.weight, layer.bias, layer_scale.gamma.flatten())
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return nn.Identity()


class RepMixer(nn.Module):
    """``x + layer_scale * (mixer(x) - norm(x))``: depthwise conv token mixing whose skip folds away at inference.

    ``mixer`` is a depthwise MobileOne block (kxk, 1x1 and identity branches), ``norm`` its BatchNorm-only counterpart.
    Everything is linear and depthwise, so ``reparameterize()`` turns the whole expression into one kxk depthwise conv.
    """

    def __init__(
        self, dim: int, kernel_size: int = 3, layer_scale_init_value: float | None = 1e-5, dilation: int = 1
    ) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.reparam_conv: nn.Conv2d | None = None
        self.norm = MobileOneBlock(
            dim, dim, kernel_size, groups=dim, num_conv_branches=0, use_scale_branch=False, act=None, dilation=dilation
        )
        self.mixer = MobileOneBlock(dim, dim, kernel_size, groups=dim, act=None, dilation=dilation)
        self.layer_scale = _layer_scale(dim, layer_scale_init_value)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        mixer_w, mixer_b = self.mixer.fused_kernel_bias()
        norm_w, norm_b = self.norm.fused_kernel_bias()
        gamma = (
            self.layer_scale.gamma if isinstance(self.layer_scale, LayerScale2d) else mixer_w.new_ones(self.dim, 1, 1)
        )
        weight = identity_kernel(self.dim, self.dim, self.kernel_size, mixer_w) + gamma[..., None] * (mixer_w - norm_w)
        bias = gamma.flatten() * (mixer_b - norm_b)
        self.reparam_conv = conv_from_kernel(weight, bias, groups=self.dim, dilation=self.dilation)
        self.norm = self.mixer = self.layer_scale = None


class RepCPE(nn.Module):
    """Conditional positional encoding ``x + depthwise_conv(x)`` ("Conditional Positional Encodings for Vision
    Transformers", arXiv 2102.10882); ``reparameterize()`` moves the skip into the kernel."""

    def __init__(self, dim: int, kernel_size: int = 7, dilation: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.reparam_conv: nn.Conv2d | None = None
        padding = dilation * (kernel_size // 2)
        self.pos_enc = nn.Conv2d(dim, dim, kernel_size, padding=padding, dilation=dilation, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.pos_enc(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        weight = self.pos_enc.weight + identity_kernel(
            self.dim, self.dim, self.pos_enc.kernel_size[0], self.pos_enc.weight
        )
        dilation = self.pos_enc.dilation[0]
        self.reparam_conv = conv_from_kernel(weight, self.pos_enc.bias, groups=self.dim, dilation=dilation)
        self.pos_enc = None


class ConvMlp(nn.Module):
    """FastViT's ConvFFN: 7x7 depthwise conv-BN -> 1x1 expand -> GELU -> 1x1 project (dropout after both 1x1s)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = ConvNormAct(dim, dim, 7, groups=dim, act=None, dilation=dilation)
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.fc1(self.conv(x)))
        return self.drop(self.fc2(self.drop(x)))


class RepMixerBlock(nn.Module):
    """``x = token_mixer(x)`` (RepMixer carries its own skip), then ``x + layer_scale * mlp(x)``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        kernel_size: int = 3,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init_value, dilation)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), proj_drop, dilation)
        self.layer_scale = _layer_scale(dim, layer_scale_init_value)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        return x + self.drop_path(self.layer_scale(self.mlp(x)))

    def reparameterize(self) -> None:
        """Fold the layer scale into the MLP's last 1x1 conv (the token mixer folds itself)."""
        self.layer_scale = _fold_layer_scale(self.layer_scale, self.mlp.fc2)


class AttentionBlock(nn.Module):
    """Pre-norm (BatchNorm) multi-head self-attention over all ``H*W`` positions, then the ConvFFN; both residual
    branches carry a layer scale."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        head_dim: int = 32,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.norm: nn.Module = nn.BatchNorm2d(dim)
        self.token_mixer = MultiHeadAttention(dim, dim // head_dim, qkv_bias=False)
        self.layer_scale_1 = _layer_scale(dim, layer_scale_init_value)
        self.drop_path1 = DropPath(drop_path)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), proj_drop, dilation)
        self.layer_scale_2 = _layer_scale(dim, layer_scale_init_value)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]
        mixed = self.token_mixer(tokens).transpose(1, 2).reshape(B, C, H, W)  # [B, H*W, C] -> [B, C, H, W]
        x = x + self.drop_path1(self.layer_scale_1(mixed))
        return x + self.drop_path2(self.layer_scale_2(self.mlp(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm into the qkv projection (which gains a bias) and the layer scales into the output
        projection and the MLP's last 1x1 conv."""
        if isinstance(self.norm, nn.BatchNorm2d):
            qkv = self.token_mixer.qkv
            self.token_mixer.qkv = linear_from(
                *fold_input_affine_into_linear(qkv.weight, qkv.bias, *batchnorm_scale_shift(self.norm))
            )
            self.norm = nn.Identity()
        self.layer_scale_1 = _fold_layer_scale(self.layer_scale_1, self.token_mixer.proj)
        self.layer_scale_2 = _fold_layer_scale(self.layer_scale_2, self.mlp.fc2)


class FastViTStage(nn.Module):
    """Optional patch embedding (stride-2 7x7 large-kernel conv + 1x1 MobileOne block), optional RepCPE, blocks.

    ``run`` says how the stage runs at the model's output stride: a dilated stage's patch embedding keeps the
    resolution (stride 1, dilated by ``run.first_dilation``) and its RepCPE, RepMixer and ConvFFN depthwise convs are
    dilated by ``run.dilation`` (attention is global either way), as the DeepLab recipe does for ResNets. Nothing was
    published this way for FastViT: the choice is ours.
    """

    def __init__(
        self, cfg: FastViTConfig, index: int, in_channels: int, drop_path: list[float], run: StageStride
    ) -> None:
        super().__init__()
        dim = cfg.embed_dims[index]
        if cfg.downsamples[index]:
            embed = LargeKernelConv(
                in_channels, dim, cfg.down_patch_size, run.stride, in_channels, 3, dilation=run.first_dilation
            )
            self.downsample: nn.Module = nn.Sequential(embed, MobileOneBlock(dim, dim, 1))
        else:
            self.downsample = nn.Identity()
        pos_emb = cfg.pos_embs[index]
        self.pos_emb = RepCPE(dim, cfg.pos_emb_kernel_size, run.dilation) if pos_emb else nn.Identity()
        common = dict(
            mlp_ratio=cfg.mlp_ratios[index],
            proj_drop=cfg.proj_drop_rate,
            layer_scale_init_value=cfg.layer_scale_init_value,
            dilation=run.dilation,
        )
        if cfg.token_mixers[index] == "repmixer":
            blocks = [
                RepMixerBlock(dim, kernel_size=cfg.repmixer_kernel_size, drop_path=dp, **common) for dp in drop_path
            ]
        else:
            blocks = [AttentionBlock(dim, head_dim=cfg.attention_head_dim, drop_path=dp, **common) for dp in drop_path]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.pos_emb(self.downsample(x)))


class FastViT(ClassifierModel):
    """FastViT classifier or multi-scale feature extractor.

    Args:
        cfg: the architecture (with ``cfg.output_stride`` 16 or 8, the last stages dilate: see :class:`FastViTStage`).
        features_only: build no head; ``forward`` returns the stage outputs (strides 4, 8, 16, 32 for the registered
            variants).
        out_indices: which stage outputs ``forward`` returns with ``features_only``.
    """

    # a stage's patch embedding and position encoding come before its blocks
    block_matchers = (
        (r"^stages\.(\d+)\.downsample\.", (-2,)),
        (r"^stages\.(\d+)\.pos_emb\.", (-1,)),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", None),
    )

    def __init__(self, cfg: FastViTConfig, features_only: bool = False, out_indices: tuple[int, ...] = (0, 1, 2, 3)):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.features_only = features_only
        dim0 = cfg.embed_dims[0]
        self.stem = nn.Sequential(
            MobileOneBlock(cfg.in_channels, dim0, 3, stride=2),
            MobileOneBlock(dim0, dim0, 3, stride=2, groups=dim0),
            MobileOneBlock(dim0, dim0, 1),
        )

        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").split(list(cfg.depths))
        stages = []
        in_channels, stride = dim0, 4
        self.feature_info: list[dict] = []
        layout = stage_strides([2 if down else 1 for down in cfg.downsamples], cfg.output_stride, stem_stride=stride)
        for i, (dim, run) in enumerate(zip(cfg.embed_dims, layout, strict=True)):
            stages.append(FastViTStage(cfg, i, in_channels, rates[i].tolist(), run))
            in_channels = dim
            stride *= run.stride
            self.feature_info.append({"stride": stride, "num_channels": dim, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.apply(_init_weights)
        self.select_out_indices(out_indices)
        if features_only:
            self.final_conv: nn.Module = nn.Identity()
            return
        self.num_features = int(in_channels * cfg.cls_ratio)
        self.final_conv = MobileOneBlock(in_channels, self.num_features, 3, groups=in_channels, use_se=True)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)
        self.head.fc.apply(_init_weights)

    def forward_stem(self, x: Tensor) -> Tensor:
        # The first block reads the image in NCHW memory: on channels-last memory, oneDNN (torch 2.14, CPU) crashes in
        # the backward pass of its stride-2 1x1 conv over 3 channels. Everything after it runs channels-last.
        x = self.stem[0](x.contiguous())
        x = x.contiguous(memory_format=torch.channels_last)  # [B, C, H, W] stored as [B, H, W, C]
        for block in self.stem[1:]:
            x = block(x)
        return x

    def no_weight_decay(self) -> set[str]:
        """Layer scales and the RepCPE position encoding, as the ml-fastvit recipe leaves undecayed."""
        return {
            f"{prefix}.{name}"
            for prefix, module in self.named_modules()
            if isinstance(module, (LayerScale2d, RepCPE))
            for name, _ in module.named_parameters()
        }


def _init_weights(module: nn.Module) -> None:
    """ml-fastvit's initialisation: truncated-normal (std 0.02) linears and ConvFFN convs, PyTorch defaults else."""
    if isinstance(module, ConvMlp):
        for conv in (module.conv.conv, module.fc1, module.fc2):
            trunc_normal_init_(conv)
    elif isinstance(module, nn.Linear):
        trunc_normal_init_(module)


FastViT.init_classifier = staticmethod(_init_weights)
