"""Truncation: keep the layers up to a cut point with their trained weights and attach a new head.

The slim model is a real, smaller ``nn.Module`` (docs/design.md §1): the kept feature layers followed by
global average pooling, dropout and one linear layer to the classes.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from layercut.stages.cutpoints import (
    CutPoint,
    CutPointRule,
    NamedModule,
    cut_points,
    feature_sequence,
    forward_features,
    register_cut_point_rule,
)

DEFAULT_DROPOUT = 0.2
HEAD_SEED = 0x5EED


class SlimNet(nn.Module):
    """The kept feature layers of a base model plus a new classification head."""

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        cut_point_names: list[str],
        channels: int,
        num_classes: int,
        dropout: float = DEFAULT_DROPOUT,
    ) -> None:
        super().__init__()
        # nn.Sequential child names may not contain dots; keep the base model's names beside it.
        self.body = nn.Sequential(OrderedDict((name.replace(".", "_"), m) for name, m in layers))
        self.layer_names = [name for name, _ in layers]
        self.cut_point_names = list(cut_point_names)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(self.body(x)), 1)))

    def named_layers(self) -> list[NamedModule]:
        """The kept layers under the base model's names: the slim model's feature sequence."""
        return list(zip(self.layer_names, self.body))

    def is_cut_point(self, name: str, module: nn.Module) -> bool:
        """The base model's cut points up to the cut stay the slim model's cut points."""
        return name in self.cut_point_names


# The slim model is a family of its own: its cut points are the base model's, kept under their names.
register_cut_point_rule(SlimNet, CutPointRule(SlimNet.named_layers, SlimNet.is_cut_point))


def cut_channels(model: nn.Module, point: CutPoint, in_channels: int = 3, image_size: int = 64) -> int:
    """Number of channels at ``point``, found by running a small dummy input."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward_features(model, torch.zeros(1, in_channels, image_size, image_size), keep={point.index})
    finally:
        model.train(was_training)
    return int(out[point.index].shape[1])


def truncate(
    model: nn.Module,
    point: CutPoint,
    num_classes: int,
    dropout: float = DEFAULT_DROPOUT,
    image_size: int = 64,
) -> SlimNet:
    """A ``SlimNet`` that shares nothing with ``model`` but holds copies of its weights up to ``point``.

    The new head's initial weights are drawn from a generator seeded by the cut point's index, so cutting the same
    model at the same point always gives the same slim model (and its retraining the same result).
    """
    sequence = feature_sequence(model)[: point.position + 1]
    kept = [(name, copy.deepcopy(module)) for name, module in sequence]
    names = [p.name for p in cut_points(model) if p.position <= point.position]
    channels = cut_channels(model, point, image_size=max(image_size, 32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED + point.index)
        return SlimNet(kept, names, channels, num_classes, dropout)
