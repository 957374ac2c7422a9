"""Classification head: global average pool -> dropout -> linear."""

from __future__ import annotations

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """Pool ``[B, C, H, W]`` features to ``[B, C]`` and classify them.

    Args:
        in_features: channels of the pooled features.
        num_classes: number of outputs; 0 gives pooled features (``fc`` is an ``Identity``).
        drop_rate: dropout before the classifier.
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))  # [B, C, H, W] -> [B, C]
        x = self.drop(x)
        return x if pre_logits else self.fc(x)
