"""Classification head (global average pool -> dropout -> linear) and the model contract built on it."""

from __future__ import annotations

from collections.abc import Callable

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


class ClassifierModel(nn.Module):
    """The contract every family shares: ``forward_head``, ``reset_classifier``, ``get_classifier`` and ``forward``.

    A subclass defines ``forward_features`` and ``forward_intermediates`` and sets ``head`` (a
    :class:`ClassifierHead`), ``num_classes`` and ``features_only``; ``init_classifier`` initialises a fresh
    classifier the way the family's original code does (PyTorch's default when ``None``).
    """

    head: ClassifierHead
    features_only: bool
    out_indices: tuple[int, ...]
    stages: nn.Sequential
    init_classifier: Callable[[nn.Module], None] | None = None

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def collect_stages(self, x: Tensor, outs: list[Tensor], first_level: int = 0) -> list[Tensor]:
        """Run ``stages`` on ``x``, appending to ``outs`` each output whose level (counted from ``first_level``) is in
        ``out_indices``: the body of every family's ``forward_intermediates``."""
        for level, stage in enumerate(self.stages, start=first_level):
            x = stage(x)
            if level in self.out_indices:
                outs.append(x)
        return outs

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled features (``pre_logits=True``) or logits from :meth:`forward_features` output."""
        return self.head(x, pre_logits=pre_logits)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` (0: no classifier)."""
        self.num_classes = num_classes
        self.head.reset(num_classes)
        if self.init_classifier is not None:
            self.head.fc.apply(type(self).init_classifier)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits, or with ``features_only`` the multi-scale feature maps."""
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))
