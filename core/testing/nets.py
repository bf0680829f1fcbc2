"""Test helpers shared by the explanation and GBP tests: seeded weights and random images."""

from __future__ import annotations

import math

import torch
from torch import nn


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every parameter and BN statistic from ``seed`` (non-trivial BN stats), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(max(p[0].numel(), 1))))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def random_images(n: int, c: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def module_state(model: nn.Module) -> tuple[list[bool], list[bool]]:
    """Every module's train flag and every parameter's requires_grad: what explaining must leave as it was."""
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def odd_state_model() -> nn.Module:
    """smallcnn in train mode with one BN in eval mode and some frozen parameters."""
    from layercut.stages.architectures import build_model

    model = seeded(build_model("smallcnn", 3)).train()
    model.features[1].eval()
    model.features[0].weight.requires_grad_(False)
    model.classifier.bias.requires_grad_(False)
    return model
