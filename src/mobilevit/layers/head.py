"""Classification head (global average pool -> dropout -> linear) and the model contract built on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import UsageError


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
    """The contract every family shares, after timm's: features, head, feature levels and optimizer hooks.

    A family sets ``stem``, ``stages`` (an ``nn.Sequential``), ``final_conv`` (an ``Identity`` where it has none or
    with ``features_only``), ``head`` (a :class:`ClassifierHead`, absent with ``features_only``), ``num_classes``,
    ``features_only`` and ``feature_info`` (one ``{stride, num_channels, module}`` per feature level), calls
    :meth:`select_out_indices` once ``feature_info`` is complete, and defines :meth:`forward_stem`. The feature levels
    are the stem output when ``stem_is_level`` (MobileOne), then each stage's output. ``init_classifier`` initialises a
    fresh classifier the way the family's original code does (PyTorch's default when ``None``); ``block_matchers`` are
    the fine-grained block regexes of :meth:`group_matcher`.
    """

    task = "classification"  # what the model's output means (the DeepLabV3 models say "segmentation")
    label_set = "imagenet-1k"  # the class names of its outputs when nothing else names them and they are as many
    output_axes: tuple[str, ...] = ("batch", "classes")  # what each axis of the logits is
    classifier_name = "head.fc"  # the parameters that a new ``num_classes`` replaces
    stem: nn.Module
    stages: nn.Sequential
    final_conv: nn.Module
    head: ClassifierHead
    features_only: bool
    out_indices: tuple[int, ...]
    feature_info: list[dict]
    stem_is_level: bool = False
    init_classifier: Callable[[nn.Module], None] | None = None
    # (regex, suffix): a parameter's place is the numbers the regex captures, then the suffix
    block_matchers: tuple[tuple[str, tuple[int, ...] | None], ...] = ((r"^stages\.(\d+)\.(\d+)\.", None),)

    def forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def feature_levels(self, indices: int | Sequence[int] | None = None, what: str = "indices") -> list[int]:
        """The feature levels ``indices`` selects, sorted: all for ``None``, the last ``n`` for an int ``n``, else the
        given levels (negative ones count from the end).

        Raises:
            UsageError: a level that does not exist; ``what`` names the argument in the message.
        """
        n = len(self.stages) + self.stem_is_level
        family = type(self).__name__
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise UsageError(f"{what}={indices} out of range: {family} has {n} feature levels (last 1 to {n})")
            return list(range(n - indices, n))
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise UsageError(f"{what} {bad} out of range: {family} has {n} feature levels (0-{n - 1})")
        return sorted({i % n for i in indices})

    def select_out_indices(self, out_indices: Sequence[int]) -> None:
        """Set ``out_indices``; with ``features_only`` check them and keep only their ``feature_info`` entries."""
        self.out_indices = tuple(out_indices)
        if self.features_only:
            self.out_indices = tuple(self.feature_levels(out_indices, "out_indices"))
            self.feature_info = [self.feature_info[i] for i in self.out_indices]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The feature maps of the selected levels and the final features, from one pass (timm's signature).

        Args:
            x: ``[B, in_channels, H, W]`` images.
            indices: the levels (see :meth:`feature_levels`): all for ``None``, the last ``n`` for an int ``n``, or a
                sequence of levels.
            norm: accepted for timm's signature; these families have no final norm, so it changes nothing.
            stop_early: run no stage after the last selected level.
            output_fmt: ``"NCHW"``, the only layout.
            intermediates_only: return only the maps.

        Returns:
            ``(final_features, intermediates)``: :meth:`forward_features`' output (with ``stop_early``, the last map
            computed) and the selected levels' ``[B, C, H, W]`` maps in level order, in channels-last memory; or only
            the maps with ``intermediates_only``.
        """
        if output_fmt != "NCHW":
            raise UsageError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take = self.feature_levels(indices)
        first = int(self.stem_is_level)  # the level of the first stage's output
        x = self.forward_stem(x)
        intermediates = [x] if take[0] < first else []
        stages = self.stages[: take[-1] + 1 - first] if stop_early else self.stages
        for level, stage in enumerate(stages, start=first):
            x = stage(x)
            if level in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.final_conv(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last level ``indices`` selects; drop the head with ``prune_head`` (timm's
        contract).

        ``final_conv`` goes with the head or with the last stage, and then a classifier with no classes (pooled
        features) takes the head's place, sized to the new ``num_features``.

        Args:
            indices: the levels still wanted (see :meth:`feature_levels`).
            prune_norm: accepted for timm's signature; these families have no final norm.
            prune_head: remove the classifier even when every stage is kept.

        Returns:
            The selected levels.
        """
        if self.features_only:
            raise UsageError("prune_intermediate_layers works on classifiers; a features_only model has no head")
        take = self.feature_levels(indices)
        last = take[-1]
        if prune_head or last + 1 < len(self.feature_info):
            self.final_conv = nn.Identity()
            self.num_features = self.feature_info[last]["num_channels"]
            self.head = ClassifierHead(self.num_features, 0, self.head.drop.p)
            self.head.train(self.training)
            self.num_classes = 0
        self.stages = self.stages[: last + 1 - self.stem_is_level]
        self.feature_info = self.feature_info[: last + 1]
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_channels, H, W] -> [B, num_features, H/32, W/32]``: stem, stages and ``final_conv``.

        The network runs on channels-last memory (same values; the CPU convolutions and MobileViT's patch unfold/fold
        are faster that way), so the returned map is channels-last too.
        """
        return self.final_conv(self.stages(self.forward_stem(x)))

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

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters the family's recipe exempts from weight decay beyond the 1-D ones (norms and
        biases), which every recipe exempts and the optimizer handles. None by default."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes that group parameter names for layer-wise learning-rate decay (timm's contract).

        Groups come in the dict's order: ``stem``; ``blocks``, a list of ``(regex, suffix)`` where a parameter's place
        is the numbers its regex captures followed by ``suffix`` (whole stages with ``coarse``, else single blocks);
        ``final_conv``. Parameters no regex matches are the head's, the last group.
        """
        blocks = [(r"^stages\.(\d+)\.", None)] if coarse else list(self.block_matchers)
        return {"stem": r"^stem\.", "blocks": blocks, "final_conv": r"^final_conv\."}

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits, or with ``features_only`` the maps of the ``out_indices`` feature levels."""
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))
