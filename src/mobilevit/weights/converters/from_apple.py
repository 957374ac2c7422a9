"""apple/ml-fastvit and apple/ml-mobileone checkpoints (``.pth.tar``, train-time or re-parameterized) -> ours.

Both repositories name MobileOne branches ``rbr_conv`` / ``rbr_scale`` / ``rbr_skip`` and the folded conv
``reparam_conv``. ml-fastvit keeps the stem as ``patch_embed`` and puts stages, patch embeddings and positional
encodings side by side in one list ``network`` (``[RepCPE], stage 0, patch embed, [RepCPE], stage 1, ...``), whose
indices depend on the configuration; ml-mobileone names its stages ``stage0`` (the stem) to ``stage4``.

ml-fastvit's re-parameterized form folds the MobileOne blocks, RepMixer and RepCPE but keeps BatchNorms of the
ConvFFN and attention blocks and the block layer scales; :func:`mobilevit.reparameterize_model` folds those too, so the
converter finishes the folding (with the same tensor algebra, BatchNorm eps 1e-5 as in the original code).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError
from ...layers import bn_scale_shift, fold_input_affine_into_linear, scale_output
from ._common import rename

_BRANCH_RULES = [
    (r"\.rbr_conv\.", ".conv_kxk."),
    (r"\.rbr_scale\.", ".conv_scale."),
    (r"\.rbr_skip\.", ".identity."),
    (r"\.se\.reduce\.", ".se.fc1."),
    (r"\.se\.expand\.", ".se.fc2."),
]

_FASTVIT_RULES = [
    (r"^patch_embed\.", "stem."),
    (r"^conv_exp\.", "final_conv."),
    (r"^head\.", "head.fc."),
    *_BRANCH_RULES,
    (r"\.lkb_origin\.", ".large_conv."),
    (r"\.lkb_reparam\.", ".reparam_conv."),
    (r"\.pe\.", ".pos_enc."),
    (r"\.convffn\.", ".mlp."),
    (r"\.(layer_scale(_[12])?)$", r".\1.gamma"),
]

_MOBILEONE_RULES = [
    (r"^stage0\.", "stem."),
    (r"^stage(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"^linear\.", "head.fc."),
    *_BRANCH_RULES,
]

_BN_STATS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _network_prefixes(cfg: Any) -> dict[str, str]:
    """ml-fastvit ``network.<i>.`` prefix -> ours, following how ml-fastvit lays out the list for this config."""
    if cfg.downsamples[0]:
        raise UsageError("ml-fastvit has no patch embedding before stage 0; this config (downsamples[0]=True) has one")
    prefixes, index = {}, 0
    for i in range(len(cfg.depths)):
        if cfg.pos_embs[i]:
            prefixes[f"network.{index}."] = f"stages.{i}.pos_emb."
            index += 1
        prefixes[f"network.{index}."] = f"stages.{i}.blocks."
        index += 1
        if i + 1 < len(cfg.depths) and cfg.downsamples[i + 1]:
            prefixes[f"network.{index}.proj."] = f"stages.{i + 1}.downsample."
            index += 1
    return prefixes


@torch.no_grad()
def _finish_folding(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold what ml-fastvit's re-parameterization leaves unfolded, as our blocks' ``reparameterize()`` do."""
    sd = dict(sd)

    def pop_bn(prefix: str) -> tuple[Tensor, Tensor]:
        stats = {name: sd.pop(prefix + name, None) for name in _BN_STATS}
        return bn_scale_shift(stats["weight"], stats["bias"], stats["running_mean"], stats["running_var"])

    for key in [k for k in sd if k.endswith(".conv.bn.weight")]:  # ConvFFN depthwise conv-BN
        conv = key[: -len("bn.weight")] + "conv."
        sd[conv + "weight"], sd[conv + "bias"] = scale_output(sd[conv + "weight"], None, *pop_bn(key[: -len("weight")]))
    for key in [k for k in sd if re.search(r"\.blocks\.\d+\.norm\.weight$", k)]:  # attention pre-norm -> qkv
        block = key[: -len("norm.weight")]
        qkv = block + "token_mixer.qkv."
        sd[qkv + "weight"], sd[qkv + "bias"] = fold_input_affine_into_linear(
            sd[qkv + "weight"], sd.get(qkv + "bias"), *pop_bn(block + "norm.")
        )
    targets = {"layer_scale": "mlp.fc2.", "layer_scale_1": "token_mixer.proj.", "layer_scale_2": "mlp.fc2."}
    for key in [k for k in sd if re.search(r"\.blocks\.\d+\.layer_scale(_[12])?\.gamma$", k)]:
        block, name = re.match(r"(.*\.blocks\.\d+\.)(layer_scale(?:_[12])?)\.gamma$", key).groups()
        layer = block + targets[name]
        sd[layer + "weight"], sd[layer + "bias"] = scale_output(
            sd[layer + "weight"], sd[layer + "bias"], sd.pop(key).flatten()
        )
    return sd


def convert_fastvit(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Convert an ml-fastvit ``FastViT`` state dict, unfused or re-parameterized, to our keys.

    Args:
        state_dict: ``torch.load(path)['state_dict']`` of an ml-fastvit checkpoint.
        cfg: our :class:`~mobilevit.models.fastvit.FastViTConfig`; it fixes the indices of ml-fastvit's ``network``.

    Returns:
        Our train-time layout for an unfused checkpoint, our fully folded layout (as :func:`reparameterize_model`
        gives) for a re-parameterized one.
    """
    prefixes = _network_prefixes(cfg)
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("network."):
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix is None:
                raise UsageError(
                    f"ml-fastvit key {key!r} has no place in this configuration (it has network entries "
                    f"{sorted({p.split('.')[1] for p in prefixes}, key=int)})"
                )
            key = prefixes[prefix] + key[len(prefix) :]
        renamed[key] = value
    out = rename(renamed, _FASTVIT_RULES)
    if any(".reparam_conv." in k for k in out):
        out = _finish_folding(out)
    return out


def convert_mobileone(state_dict: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Convert an ml-mobileone ``MobileOne`` state dict (train-time or inference-mode) to our keys (``cfg`` unused:
    the layout is the same for every variant)."""
    return rename(state_dict, _MOBILEONE_RULES)
