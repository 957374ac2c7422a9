"""Helpers shared by the converters: ordered regex renames with collision checks."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import Tensor

from ...errors import UsageError

Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]

# Our token mixers and MLPs are linear layers; upstream v2 code uses 1x1 convolutions for them.
_LINEAR_IN_TRANSFORMER = re.compile(r"transformer\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])\.weight$")


def rename(state_dict: dict[str, Tensor], rules: Sequence[Rule]) -> dict[str, Tensor]:
    """Apply every ``(pattern, replacement)`` rule in order to every key; refuse if two keys collide."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise UsageError(f"Conversion maps two tensors to {new!r} (second one: {key!r})")
        out[new] = value
    assert len(out) == len(state_dict)
    return out


def squeeze_pointwise(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``[out, in, 1, 1]`` 1x1-conv weights of transformer layers -> ``[out, in]`` linear weights."""
    return {k: v.flatten(1) if v.ndim == 4 and _LINEAR_IN_TRANSFORMER.search(k) else v for k, v in state_dict.items()}
